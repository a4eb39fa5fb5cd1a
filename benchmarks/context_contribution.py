"""What the record adds (issue 18): each context variant against its null-context counterpart.

    python benchmarks/context_contribution.py --base runs/bench --root runs/ctx_bench --split val \
        --variant ref --variant cfg15_g2 --variant structured --variant pooled \
        --out benchmarks/results/context_contribution

A variant is a lever folder under --root whose cond stage `benchmarks/follow_baseline.py` trained
(the config's difference from --base is its command). Its counterparts, sampled and scored on the
same split with the same seeds:
- the separately trained image-only model: ROOT/null/cond_null_context, trained once with the code as it
  is now on the base's VAE and prior (`namd train cond --method null_context`) and sampled once per split
  there; its samples_null_context is linked into every variant folder, so the variant's own metrics.json
  holds both;
- for a variant trained with condition dropout, the same model sampled with C = its null context
  (`sampling.drop_context`), in the sibling folder ROOT/VARIANT_dropC.
Per variant: the mean-probability AUROC with its CI, the paired DeLong test against each
counterpart, the gap closure with its paired bootstrap CI, the generated malignant-benign growth
gap and the share of it that nulling C removes, image fidelity, and the seconds of its cond stage.
Score the test split once, for the variants chosen on the validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from _results import load_line, machine, publish, start_load

SHARED = ("cohort", "evaluator", "vae", "cache", "prior")


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def namd(argv: list[str], log: Path, threads: int) -> None:
    """One namd command in its own process, its output appended to `log`; raises on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("a") as out:
        code = subprocess.call([sys.executable, "-m", "namd.cli", *argv], env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"namd {' '.join(argv)} exited {code} (see {log})")


def link(src: Path, dst: Path) -> None:
    """dst -> src, unless dst already exists."""
    if not dst.exists() and src.exists():
        dst.symlink_to(src.resolve())


def overrides(base: Path, folder: Path) -> list[str]:
    """KEY=VALUE of every config value where the variant differs from the base run."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    from namd.config import load_config

    # the base read through today's config classes, so fields added since it ran count as defaults
    a = flat(load_config(base=yaml.safe_load((base / "config.yaml").read_text())).model_dump(mode="json"))
    b = flat(yaml.safe_load((folder / "config.yaml").read_text()))
    return [f"{k}={b[k]}" for k in sorted(b) if a.get(k) != b[k]]


def null_model(base: Path, root: Path, threads: int) -> Path:
    """ROOT/null/cond_null_context: the image-only model retrained on the base's VAE and prior."""
    folder = root / "null"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.yaml").exists():
        (folder / "config.yaml").write_text((base / "config.yaml").read_text())
    for name in SHARED:
        link(base / name, folder / name)
    if not _json(folder / "cond_null_context" / "run_info.json").get("complete"):
        namd(["train", "cond", "--run", str(folder), "--method", "null_context", "--resume"], folder / "study.log", threads)
    return folder / "cond_null_context"


def sampled(folder: Path, stage: str, split: str, threads: int) -> None:
    """FOLDER/STAGE sampled on `split`, unless it already is."""
    info = _json(folder / stage / "run_info.json")
    if info.get("config", {}).get("sampling", {}).get("split") != split or not info.get("complete"):
        flag = ["--method", "null_context"] if stage == "samples_null_context" else []
        namd(["sample", "--run", str(folder), "--split", split, "--overwrite", *flag],
             folder / "study.log", threads)


def scored(folder: Path, split: str, threads: int, *, null: bool) -> None:
    """Sample on `split` (with `null`, link the shared cond_null_context's samples, drawn once per split
    in ROOT/null), then evaluate, each only when what is there was made for another split."""
    wanted = ["samples"] + (["samples_null_context"] if null else [])
    sampled(folder, "samples", split, threads)
    if null:
        sampled(folder.parent / "null", "samples_null_context", split, threads)
        if not (folder / "samples_null_context").is_symlink():
            shutil.rmtree(folder / "samples_null_context", ignore_errors=True)
        link(folder.parent / "null" / "samples_null_context", folder / "samples_null_context")
    log = folder / "study.log"
    if _json(folder / "eval" / "metrics.json").get("split") != split or any(
            (folder / s / "run_info.json").stat().st_mtime > (folder / "eval" / "metrics.json").stat().st_mtime
            for s in wanted):
        namd(["evaluate", "--run", str(folder), "--split", split], log, threads)


def dropped(folder: Path) -> Path:
    """ROOT/VARIANT_dropC: the variant's own model, sampled with C = its null context."""
    sibling = folder.with_name(folder.name + "_dropC")
    sibling.mkdir(exist_ok=True)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["sampling"].update(drop_context=True, guidance_scale=1.0)
    (sibling / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name in (*SHARED, "cond"):
        link(folder / name, sibling / name)
    return sibling


def versus(folder: Path, row: str, other: Path, other_row: str) -> dict:
    """Paired DeLong test of the mean probability, and the growth gap nulling C removes."""
    from namd.evaluation.metrics import delong_test

    a = pd.read_csv(folder / "eval" / "per_nodule.csv")
    b = pd.read_csv(other / "eval" / "per_nodule.csv").set_index("pair_id")[f"{other_row}_mean_prob"]
    a = a[a["label"].notna()]
    test = delong_test(a["label"].to_numpy(int), a[f"{row}_mean_prob"].to_numpy(),
                       a["pair_id"].map(b).to_numpy())
    mine, theirs = _json(folder / "eval" / "metrics.json"), _json(other / "eval" / "metrics.json")
    gap = mine["growth"]["generated"][row].get("difference_mm")
    gap_null = theirs["growth"]["generated"][other_row].get("difference_mm")
    auc = next(r for r in theirs["rows"] if r["name"] == other_row)
    return {"auroc": auc.get("mean_prob_auroc"), "delta_auroc": test["delta_auroc"],
            "p_value": test["p_value"], "growth_gap_mm": gap_null,
            "share_removed": None if not gap or gap_null is None else 1 - gap_null / gap}


def ceiling(folder: Path, split: str) -> dict:
    """How much of the real growth gap the record predicts: the real one-year growth (mm, the
    `growth` block's size) regressed on the 13 fields (the ehr_logistic row's features,
    a ridge regression instead of the logistic) over the training pairs, and the malignant -
    benign gap of its prediction on the split. A generator that grew every follow-up by the
    growth its record predicts would add about this much gap to what the image gives."""
    from sklearn.linear_model import Ridge

    from namd.cohort.store import Cohort
    from namd.config import load_config
    from namd.evaluation.baselines import ehr_model, ehr_table
    from namd.evaluation.evaluate import test_pairs
    from namd.evaluation.growth import label_difference, nodule_size_mm

    ev = load_config(base=yaml.safe_load((folder / "config.yaml").read_text())).eval
    cohort = Cohort(folder / "cohort")
    def growth(pairs: pd.DataFrame) -> np.ndarray:
        spacing = pairs["pixel_spacing_mm"].to_numpy(dtype=np.float64)
        size = [nodule_size_mm(cohort.images(pairs[f"{k}_index"]), spacing) for k in ("baseline", "followup")]
        return size[1] - size[0]
    train = cohort.pairs("train")
    model = ehr_model(ev.seed)
    model.steps[-1] = ("ridge", Ridge(alpha=1.0))
    model.fit(ehr_table(train), growth(train))
    pairs, _ = test_pairs(cohort, split)
    y = pairs["label"].astype(int).to_numpy()
    real = label_difference(growth(pairs), y, ev.bootstrap, ev.seed, ev.ci)
    pred = label_difference(model.predict(ehr_table(pairs)), y, ev.bootstrap, ev.seed, ev.ci)
    return {"real": real["difference_mm"], "record": pred["difference_mm"],
            "record_ci95": pred["difference_ci95"], "n_train": len(train)}


def pooled_scale(cond: Path) -> float | None:
    """Mean |scale| of the pooled-context embedding's last LayerNorm (diffusion.pooled_context):
    it starts at 0, so how far training moved it says whether the loss rewarded a record-wide
    shift of the time embedding. None without that path."""
    from safetensors.torch import load_file

    state = load_file(str(cond / "unet" / "diffusion_pytorch_model.safetensors"))
    weight = state.get("add_embedding.norm2.weight")
    return None if weight is None else float(weight.abs().mean())


def variant(name: str, args: argparse.Namespace) -> dict:
    """Score one variant and its counterparts on the split."""
    root, base = Path(args.root), Path(args.base)
    folder = root / name
    link(null_model(base, root, args.threads), folder / "cond_null_context")
    scored(folder, args.split, args.threads, null=True)
    metrics = _json(folder / "eval" / "metrics.json")
    row = next(r for r in metrics["rows"] if r["name"] == "namd")
    growth = metrics["growth"]["generated"]["namd"]
    closure = metrics["gap_closure"]["generated"]["namd"]
    fidelity = metrics["fidelity"]["namd"]
    cond_info = _json(folder / "cond" / "run_info.json")
    out = {"name": name, "overrides": overrides(base, folder), "split": metrics["split"],
           "n": metrics["n_test"], "n_malignant": metrics["n_malignant"],
           "auroc": row["mean_prob_auroc"], "auroc_ci95": row["mean_prob_ci95"]["auroc"],
           "real_baseline": closure.get("real_baseline_auroc"),
           "real_followup": closure.get("real_followup_auroc"),
           "gap_closure": closure.get("point"), "gap_closure_ci95": closure.get("ci95"),
           "growth_gap_mm": growth.get("difference_mm"), "growth_gap_ci95": growth.get("difference_ci95"),
           "real_growth_gap_mm": metrics["growth"]["real_followup"]["difference_mm"],
           "mae_to_vae_copy": fidelity.get("mean_of_k_mae_to_vae_copy"),
           "nearest_own": fidelity.get("nearest_own_followup_share"),
           "cond_seconds": args.seconds.get(name, {}).get("cond"),
           "vs_cond_null": versus(folder, "namd", folder, "null_context")}
    out["pooled_scale"] = pooled_scale(folder / "cond")
    if float(cond_info.get("condition_dropout") or 0) > 0:
        sibling = dropped(folder)
        scored(sibling, args.split, args.threads, null=False)
        out["vs_drop_c"] = versus(folder, "namd", sibling, "namd")
    return out


def markdown(record: dict) -> str:
    """One row per variant and counterpart."""
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"
    def ci(v, d=2):
        return "" if not v else f" [{v[0]:.{d}f}, {v[1]:.{d}f}]"
    first = record["variants"][0]
    lines = [f"# What the record adds ({first['split']} split, {first['n']} nodules, "
             f"{first['n_malignant']} malignant)", "",
             f"`{record['command']}`", "",
             f"Real baseline AUROC {f(first['real_baseline'])}, real follow-up {f(first['real_followup'])}; "
             f"real follow-ups' malignant - benign growth gap {f(first['real_growth_gap_mm'], 2)} mm.", "",
             "| variant | overrides | mean-prob AUROC [95% CI] | null-context counterpart: its AUROC, "
             "variant - counterpart, paired DeLong p | gap closure [95% CI] | growth gap mm [95% CI] | share of it removed "
             "by nulling C | mean-of-K MAE / VAE copy | nearest own | cond s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = ["", "Share removed = 1 - (counterpart's growth gap) / (the variant's): negative when the "
             "model without the record separates malignant from benign growth more. Goal of issue 18: "
             "the counterpart below the variant with p < 0.05, a share >= 0.3 and a gap closure >= 0.6. "
             "The cond seconds are the stage's in the lever study that trained it (two or three "
             "one-thread jobs sharing the two cores): compare them with each other only; no other "
             "number here depends on the load."]
    for v in record["variants"]:
        if "error" in v:
            lines.append(f"| {v['name']} | {v['error']} |")
            continue
        counterparts = [("cond_null_context", v["vs_cond_null"])] + ([("C = null", v["vs_drop_c"])] if "vs_drop_c" in v else [])
        null_text = "; ".join(f"{k}: {f(c['auroc'])}, {c['delta_auroc']:+.3f}, p = {c['p_value']:.2f}"
                              for k, c in counterparts)
        removed = "; ".join(f"{k}: {f(c['share_removed'], 2)}" for k, c in counterparts)
        lines.append(
            f"| {v['name']} | {' '.join(v['overrides']) or '(base)'} | {f(v['auroc'])}{ci(v['auroc_ci95'])} | "
            f"{null_text} | {f(v['gap_closure'], 2)}{ci(v['gap_closure_ci95'])} | "
            f"{f(v['growth_gap_mm'], 2)}{ci(v['growth_gap_ci95'])} | {removed} | "
            f"{f(v['mae_to_vae_copy'], 2)} | {f(v['nearest_own'], 2)} | {f(v['cond_seconds'], 0)} |")
    lines += notes
    scales = [f"{v['name']} {v['pooled_scale']:.4f}" for v in record["variants"] if v.get("pooled_scale") is not None]
    if scales:
        lines += ["", "Pooled-context path (`diffusion.pooled_context`), mean |scale| of its last LayerNorm "
                  "after training, from 0 at the start (Adam moves a weight with a consistent gradient "
                  "about one learning rate, 1e-3, per step): " + ", ".join(scales) + "."]
    c = record.get("ceiling")
    if c:
        lines += ["", f"What the record says about growth: the real one-year growth regressed on the 13 "
                  f"fields over the {c['n_train']} training pairs (ridge on the ehr_logistic row's "
                  f"features) predicts a malignant - benign gap of {c['record']:.2f} mm "
                  f"[{c['record_ci95'][0]:.2f}, {c['record_ci95'][1]:.2f}] on this split (real "
                  f"{c['real']:.2f} mm): about what a generator that grew each follow-up by its "
                  "record's expected growth would add to what the image gives."]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Score the variants one after the other and publish the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the run the variants were trained from")
    p.add_argument("--root", required=True, help="folder of the variants' runs")
    p.add_argument("--variant", action="append", default=[], help="a lever folder under --root (repeatable)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--study", action="append", default=[],
                   help="a follow_baseline.py results .json: the variants' stage seconds (repeatable)")
    p.add_argument("--out", default=None, help="results path without suffix (.json and .md)")
    args = p.parse_args()
    args.seconds = {lv["name"]: lv.get("seconds", {}) for path in args.study
                    for lv in _json(Path(path)).get("levers", [])}
    before = start_load()
    results = []
    for name in args.variant:
        try:
            results.append(variant(name, args))
        except (RuntimeError, KeyError, StopIteration, FileNotFoundError) as exc:
            results.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
    record = {"machine": machine(before, threads=args.threads), "command": " ".join(["python", *sys.argv]),
              "variants": results, "ceiling": ceiling(Path(args.root) / args.variant[0], args.split)}
    publish(args.out, record, lambda r: markdown(r) + "\n" + load_line(r["machine"]) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
