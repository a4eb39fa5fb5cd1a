"""The numbers of a prediction as the page shows them: probabilities with four decimals, each
in an element marked `data-namd="<name>"` with the unrounded value in `data-value`, so that a
reader sees them and a test can check them against `NAMDPipeline.predict`.
"""

from __future__ import annotations

import html
import ipaddress
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from namd.serve.result import Result

from namd.clinical import NOTICE, READOUT_NOTICE

__all__ = ["NOTICE", "READOUT_NOTICE", "numbers_html", "readout_html", "readout_text",
           "provenance_html", "error_html", "status_html", "is_loopback", "fmt_p"]
SEED_FROM = {"id": "the test nodule's pair id (as namd sample)", "crop": "the sha256 of the crop"}


def fmt_p(p: float) -> str:
    """A probability as shown: four decimals."""
    return f"{p:.4f}"


def _value(name: str, value: float | None, missing: str = "not available") -> str:
    """A number in its marked element (the text shown when it is None)."""
    if value is None:
        return f'<span data-namd="{name}" data-value="">{html.escape(missing)}</span>'
    return f'<span data-namd="{name}" data-value="{value!r}">{fmt_p(value)}</span>'


def _rows(rows: list[tuple[str, str]]) -> str:
    """An HTML table of (heading, cell HTML) rows."""
    body = "".join(f"<tr><th>{html.escape(head)}</th><td>{cell}</td></tr>" for head, cell in rows)
    return f'<table class="namd-table">{body}</table>'


def numbers_html(result: Result) -> str:
    """The malignancy estimate: baseline, mean +- std over K, each follow-up, Brock, the real
    follow-up when known, and how the probabilities are calibrated."""
    pred = result.prediction
    each = ", ".join(_value(f"p_followup_{i}", p) for i, p in enumerate(pred.p_followup))
    rows = [("evaluator on the baseline crop", _value("p_baseline", pred.p_baseline)),
            (f"evaluator on the K = {pred.k} virtual follow-ups (mean ± std)",
             f"{_value('p_followup_mean', pred.p_followup_mean)} ± "
             f"{_value('p_followup_std', pred.p_followup_std)}"),
            ("each virtual follow-up", f'<span data-namd="p_followup">{each}</span>'),
            ("Brock model (EHR only, no image)",
             _value("brock", pred.brock, "not computable without the longest diameter"))]
    if result.baseline.followup is not None:
        rows.append(("evaluator on the real follow-up (reference)",
                     _value("p_real_followup", result.p_real_followup)))
    calibrated = pred.provenance.get("probability") == "calibrated"
    note = ("Each probability is calibrated (Platt scaling fitted on the run's validation split) "
            "before the mean over K." if calibrated else "Raw evaluator outputs (the run fitted no "
            "calibration).")
    return (f'<div class="namd-readout">{_rows(rows)}<p class="namd-note">{html.escape(note)}</p>'
            f"</div>{readout_html(pred.readout)}")


def _text(name: str, text: str) -> str:
    """Text in its marked element."""
    return f'<span data-namd="{name}">{html.escape(text)}</span>'


def _category(block: dict[str, Any]) -> str:
    """'4A (solid at baseline, 8 to < 15 mm)' or why it is not available."""
    if block.get("status") != "ok":
        return block["status"]
    notes = "; ".join(block.get("notes", []))
    return f"{block['category']} ({block['rule']}{'; ' + notes if notes else ''})"


def _vdt_text(vdt: dict[str, Any]) -> str:
    """'310 days [180, 900]' with "no growth" for an infinite bound."""
    def day(v: Any) -> str:
        return v if isinstance(v, str) else f"{v:.0f} days"
    lo, hi = vdt["range_days"]
    return f"{day(vdt['median_days'])} [{day(lo)}, {day(hi)}] ({vdt['level']:.0%} interval)"


def _followup_rows(f: dict[str, Any], k: int) -> list[tuple[str, str]]:
    """The follow-up rows of the readout table."""
    shares = " · ".join(f"{c}: {p:.0%}" for c, p in f["category_share"].items() if p > 0)
    return [(f"follow-up category over the K = {k} futures (measurement error drawn)",
             _text("lungrads_followup_share", shares)),
            ("most likely follow-up category and its management",
             _text("lungrads_most_likely", f"{f['most_likely']} ({f['most_likely_share']:.0%}): "
                                           f"{f['management']}")),
            ("P(4A or higher)", _value("lungrads_p_4a", f["p_4a_or_higher"])),
            ("P(growth > 1.5 mm)", _value("lungrads_p_growth_1_5", f["p_growth_gt_1_5mm"])),
            ("P(growth ≥ 2 mm)", _value("lungrads_p_growth_2", f["p_growth_ge_2mm"])),
            ("volume-doubling time", _text("lungrads_vdt", _vdt_text(f["vdt"]))),
            ("P(doubling time < 400 days)", _value("lungrads_p_vdt_400", f["vdt"]["p_below_400_days"]))]


def readout_html(readout: dict[str, Any]) -> str:
    """The radiologist's readout (namd.clinical.readout) as the page shows it, with its notice;
    '' for a prediction without one."""
    if not readout:
        return ""
    base, f, nm = readout["baseline_category"], readout["followup"], readout["not_measurable"]
    rows = [(f"Lung-RADS {readout['lung_rads']} at baseline, from the record",
             _text("lungrads_baseline_record", _category(base["record"]))),
            ("at baseline, from the image", _text("lungrads_baseline_image", _category(base["image"]))),
            ("attenuation", _text("lungrads_attenuation", f"{readout['attenuation']['type']} "
                                                          f"({readout['attenuation']['source']})"))]
    rows += _followup_rows(f, readout["k"]) if f.get("status") == "ok" else \
        [("follow-up readout", _text("lungrads_followup_status", f["status"]))]
    reasons = "; ".join(f"{n} {why}" for why, n in nm["reasons"].items())
    rows.append(("samples not measurable", _text("lungrads_not_measurable",
                                                  f"{nm['count']} of {readout['k']}"
                                                  + (f" ({reasons})" if reasons else ""))))
    return (f'<div class="namd-lungrads">{_rows(rows)}<p class="namd-note" data-namd="readout_notice">'
            f"{html.escape(readout['notice'])}</p></div>")


def readout_text(readout: dict[str, Any]) -> str:
    """The readout in plain text (readout.txt of the zip)."""
    if not readout:
        return "No readout was made for this prediction.\n"
    base = readout["baseline_category"]
    lines = [readout["notice"], "",
             f"Lung-RADS {readout['lung_rads']} at baseline: {_category(base['record'])} (record); "
             f"{_category(base['image'])} (image)",
             f"Attenuation: {readout['attenuation']['type']} ({readout['attenuation']['source']})",
             readout["summary"]]
    return "\n".join(lines) + "\n"


def provenance_rows(provenance: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, heading, shown text) of the provenance the page lists."""
    return [("model_sha256", "model sha256", provenance["model_sha256"]),
            ("method", "method", provenance["method"]),
            ("namd_version", "namd version", provenance["namd_version"]),
            ("seed", "seed", str(provenance["seed"])),
            ("seed_from", "noises seeded from", SEED_FROM.get(provenance["seed_from"],
                                                              provenance["seed_from"])),
            ("k", "k (virtual follow-ups)", str(provenance["k"])),
            ("steps", "steps", f"{provenance['steps']} ({provenance['scheduler']}, eta "
                               f"{provenance['eta']:g}, guidance {provenance['guidance_scale']:g})"),
            ("probability", "probabilities", provenance["probability"])]


def provenance_html(result: Result) -> str:
    """What produced the prediction (no path, no id): NAMDPipeline.provenance."""
    rows = [(head, f'<span data-namd="{name}">{html.escape(text)}</span>')
            for name, head, text in provenance_rows(result.prediction.provenance)]
    return f'<div class="namd-provenance">{_rows(rows)}</div>'


def error_html(message: str) -> str:
    """A one-line error as the page shows it."""
    return f'<div class="namd-error" data-namd="error">error: {html.escape(message)}</div>'


def status_html(message: str) -> str:
    """A one-line status (no error) as the page shows it."""
    return f'<div class="namd-status" data-namd="status">{html.escape(message)}</div>'


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
