"""The plain-language reading of a run's results, written from its numbers.

Every sentence is conditional on the values in RUN/eval/metrics.json and on facts the figures
measured (variance plateau, t-SNE order); nothing here states a conclusion the numbers do not.
"""

from __future__ import annotations

from typing import Any

from namd.config import methods
from namd.evaluation.rows import row_label
from namd.evaluation.table_text import k_differs

SIGNIFICANCE = 0.05  # the level at which a paired test's p-value is called significant
FEW_POSITIVES = 30  # below this many malignant test nodules, CIs are flagged as wide
# Appendix D's "the variance stabilizes", made explicit (the paper gives no number): the mean
# running variance counts as settled when it stays within evaluate's tolerance of its value at K
# over at least the last quarter of the K samples.
SETTLED_SHARE = 0.25


def ok_rows(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of the table that were run, by name."""
    return {r["name"]: r for r in metrics.get("rows", [])
            if r.get("status", "ok") == "ok" and (r.get("auroc") or {}).get("mean") is not None}


def stat(row: dict[str, Any], metric: str = "auroc") -> str:
    """'0.805 (CI 0.770-0.840)' for one metric of a row (the level is stated once, up front)."""
    m = row.get(metric) or {}
    ci = m.get("ci95")
    return f"{m['mean']:.3f}" + (f" (CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _mean(row: dict[str, Any], metric: str = "auroc") -> float:
    """The mean of one metric of a row."""
    return float(row[metric]["mean"])


def _by(delta: float, up: str = "higher", down: str = "lower") -> str:
    """'higher by 0.120', 'lower by 0.050', or 'the same to three decimals'."""
    if abs(delta) < 5e-4:
        return "the same to three decimals"
    return f"{up if delta > 0 else down} by {abs(delta):.3f}"


def _cis_overlap(a: dict[str, Any], b: dict[str, Any], metric: str = "auroc") -> bool | None:
    """Whether two rows' intervals overlap (None when one is missing)."""
    ca, cb = (a.get(metric) or {}).get("ci95"), (b.get(metric) or {}).get("ci95")
    if not ca or not cb:
        return None
    return not (ca[1] < cb[0] or cb[1] < ca[0])


def _evidence(row: dict[str, Any], other: dict[str, Any]) -> str:
    """The paired test against the real baseline when recorded, else whether the CIs overlap."""
    vs = row.get("vs_real_baseline") or {}
    if vs.get("p_value") is not None:
        verdict = "significant" if vs["p_value"] < SIGNIFICANCE else "not significant"
        on = " on the mean probability over K" if row.get("mean_prob_auroc") is not None else ""
        delta = (f"difference {vs['delta_auroc']:+.3f}, " if vs.get("delta_auroc") is not None
                 else "")
        return (f"paired {vs.get('test', 'test')} test{on}: {delta}p = {vs['p_value']:.3g}, "
                f"{verdict} at the {SIGNIFICANCE:.0%} level")
    overlap = _cis_overlap(row, other)
    return ("no test recorded" if overlap is None else
            "the CIs overlap" if overlap else "the CIs do not overlap")


def _main_comparison(rows: dict[str, dict]) -> list[str]:
    """NAMD against the real baseline crop, and how much of the gap to the follow-up it closes."""
    namd, base, follow = rows.get("namd"), rows.get("real_baseline"), rows.get("real_followup")
    if namd is None or base is None:
        which = " and ".join(n for n, r in (("NAMD", namd), ("the real baseline", base))
                             if r is None)
        return [f"{which} has no result, so NAMD cannot be compared with the real baseline crop."]
    d = _mean(namd) - _mean(base)  # the difference of the numbers shown; the test's own below
    out = [f"NAMD's virtual follow-ups give an AUROC of {stat(namd)}, against {stat(base)} for the "
           f"real baseline crop: {_by(d)} ({_evidence(namd, base)}). "
           f"AUPRC: {stat(namd, 'auprc')} against {stat(base, 'auprc')}."]
    if follow is not None:
        gap = _mean(follow) - _mean(base)
        if gap > 0:
            share = (_mean(namd) - _mean(base)) / gap
            out.append(f"The real follow-up crop reaches {stat(follow)}; NAMD closes "
                       f"{max(share, 0):.0%} of the gap between baseline and follow-up in the "
                       "mean AUROC over K"
                       + (" (it lies below the baseline)" if share < 0 else "")
                       + "; the gap-closure section gives it on the mean probability, with its "
                       "paired bootstrap interval.")
        else:
            out.append(f"The real follow-up crop ({stat(follow)}) does not beat the baseline crop "
                       "here, so this test set cannot show a gain from predicting the follow-up.")
    return out


def _ablations(rows: dict[str, dict]) -> list[str]:
    """Each method that says what it changes against NAMD (namd.config.methods: the ablations)
    against full NAMD."""
    namd = rows.get(methods.REFERENCE)
    what = {m.name: m.about for m in methods.METHODS.values() if m.about}
    out = []
    for name, text in what.items():
        row = rows.get(name)
        if row is None or namd is None:
            continue
        d = _mean(row) - _mean(namd)
        overlap = _cis_overlap(row, namd)
        out.append(f"{text} the AUROC is {stat(row)}; against full NAMD it is "
                   f"{_by(d, 'better', 'worse')}"
                   + ("" if overlap is None else
                      "; the CIs overlap, so the difference is not resolved." if overlap
                      else "; the CIs do not overlap.")
                   + (" This is the drop the paper reports." if name == "no_align" and d < 0
                      and overlap is False else ""))
    return out


def _ehr_rows(rows: dict[str, dict]) -> list[str]:
    """How much the EHR alone explains, and NAMD against the row with the same inputs."""
    out = []
    ehr = {n: rows[n] for n in ("brock", "ehr_logistic") if n in rows}
    if ehr:
        parts = "; ".join(f"{row_label(n)} {stat(r)}" for n, r in ehr.items())
        out.append(f"From the EHR alone, the AUROC is: {parts}.")
        best_name, best = max(ehr.items(), key=lambda kv: _mean(kv[1]))
        if "namd" in rows:
            d = _mean(rows["namd"]) - _mean(best)
            out.append(f"Against the best EHR-only model ({row_label(best_name)}), NAMD is "
                       f"{_by(d)}.")
    both = rows.get("baseline_plus_ehr")
    if both is not None:
        sentence = f"The real baseline crop plus the EHR gives {stat(both)}"
        if "real_baseline" in rows:
            sentence += f", {_mean(both) - _mean(rows['real_baseline']):+.3f} over the crop alone"
        if "namd" in rows:
            d = _mean(rows["namd"]) - _mean(both)
            sentence += f"; NAMD, which sees the same inputs, is {_by(d)}"
        out.append(sentence + ".")
    copy = rows.get("vae_copy_baseline") or rows.get("copy_baseline")
    if copy is not None and "namd" in rows:
        d = _mean(rows["namd"]) - _mean(copy)
        what = ("Passing the baseline through the run's VAE unchanged"
                if copy["name"] == "vae_copy_baseline" else "Copying the baseline crop")
        test = rows["namd"].get(f"vs_{copy['name']}") or {}
        p = f" (mean probability, DeLong p = {test['p_value']:.3g})" if test.get("p_value") is not None else ""
        out.append(f"{what} as the 'follow-up' gives {stat(copy)}; NAMD's samples are {_by(d)}"
                   f"{p}: that is what the generator adds beyond passing the baseline through.")
    return out


def _image_quality(quality: dict[str, Any]) -> list[str]:
    """NAMD's samples against the unchanged baseline crop as a guess of the follow-up."""
    namd, copy = quality.get("namd") or {}, quality.get("copy_baseline") or {}

    def mean(d: dict, key: str) -> float | None:
        v = d.get(key)
        return v.get("mean") if isinstance(v, dict) else v if isinstance(v, int | float) else None

    a, b = mean(namd, "mae_hu"), mean(copy, "mae_hu")
    if a is None or b is None:
        return []
    closer = "closer to" if a < b else "farther from" if a > b else "as close to"
    text = (f"Pixel-wise, NAMD's samples are {closer} the real follow-up than the unchanged "
            f"baseline crop (mean absolute error {a:.1f} vs {b:.1f} HU")
    sa, sb = mean(namd, "ssim"), mean(copy, "ssim")
    both = sa is not None and sb is not None
    return [text + (f", SSIM {sa:.3f} vs {sb:.3f})." if both else ").")]


def _facts(facts: dict[str, Any]) -> list[str]:
    """Sentences from what the figures measured."""
    out = []
    var = facts.get("variance")
    if var:
        out.append(f"For {row_label(var['variant'])}, the evaluator's probability varies over "
                   f"the K samples with mean variance {var['mean']:.3g} (median "
                   f"{var['median_benign']:.3g} for benign, {var['median_malignant']:.3g} for "
                   "malignant nodules).")
    stable = facts.get("stable")
    if stable and stable["k"] > 1:
        k, first = stable["k"], stable["stable_k"]
        settled = first <= k - max(1, round(SETTLED_SHARE * k))
        out.append(f"The mean running variance of {row_label(stable['variant'])} stays within "
                   f"{stable['tolerance']:.0%} of its value at K = {k} from k = {first} on: "
                   + ("it settles well before K, so K looks sufficient." if settled else
                      "it has not settled within the last quarter of the samples; more samples "
                      "per nodule would steady the estimates."))
    tsne = facts.get("tsne")
    if tsne and "aligned" in tsne:
        text = (f"In the latent t-SNE, map neighbours differ in diameter by {tsne['aligned']:.2f} "
                "of the average difference with alignment")
        if "unaligned" in tsne:
            text += (f" and {tsne['unaligned']:.2f} without; the aligned space is "
                     + ("more" if tsne["aligned"] < tsne["unaligned"] else "not more")
                     + " ordered by diameter")
        out.append(text + " (lower = more ordered, 1 = no order).")
    return out


def reading(metrics: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    """The sentences of the report's reading section."""
    rows = ok_rows(metrics)
    n_mal = metrics.get("n_malignant")
    boot = metrics.get("bootstrap") or {}
    out = [f"The test set holds {metrics.get('n_test')} nodules ({n_mal} malignant); generated "
           f"rows are scored over K = {metrics.get('k')} samples per nodule. CIs are "
           f"{boot.get('level', 0.95):.0%} bootstrap confidence intervals over nodules."]
    differs = k_differs(metrics)
    if differs:
        which = ", ".join(f"{row_label(n)} ran with K = {k}" for n, k in differs.items())
        out.append(f"Not comparable as they stand: {which}, not K = {metrics.get('k')}; "
                   "its mean ± std over K and its mean-of-K score "
                   "differ in meaning from the other generated rows'.")
    if isinstance(n_mal, int) and n_mal < FEW_POSITIVES:
        out.append(f"With fewer than {FEW_POSITIVES} malignant nodules the confidence intervals "
                   "are wide: differences inside them are not resolved.")
    out += _main_comparison(rows) + _ablations(rows) + _ehr_rows(rows)
    out += _image_quality(metrics.get("image_quality") or {}) + _facts(facts)
    below = [f"{row_label(n)} ({_mean(r):.3f})" for n, r in rows.items() if _mean(r) < 0.5]
    if below:
        out.append("Below chance (AUROC < 0.5): " + "; ".join(below) + ". Such a score ranks "
                   "malignant nodules lower than benign ones on this test set.")
    skipped = [f"{row_label(r['name'])} ({r.get('status')})" for r in metrics.get("rows", [])
               if r.get("status", "ok") != "ok"]
    if skipped:
        out.append("Not run: " + "; ".join(skipped) + ".")
    return out
