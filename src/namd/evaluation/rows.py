"""The rows of Table 1, in order, each with the one label every table, figure and report uses:
the real crops, one row per method of the table (namd.config.methods, its own label), the two
copies of the baseline and the clinical rows that see no generated image.

Light on purpose (no numerical imports): the report's figures and the evaluation share it.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from namd.config import methods

REAL_ROWS = {"real_baseline": "Real baseline crop",
             "real_followup": "Real follow-up crop (reference)"}
COPY_REFERENCE = "vae_copy_baseline"  # generated rows are also tested against it
COPY_ROWS = {"copy_baseline": "Copy of the baseline (identity)",
             COPY_REFERENCE: "Baseline through the VAE, no change (the generator's ceiling)"}
CLINICAL_ROWS = {"brock": "Brock model (EHR only)",
                 "ehr_logistic": "Logistic regression on the EHR",
                 "baseline_plus_ehr": "Evaluator on the baseline crop + EHR"}


# The paper's Table 1 for the rows that are not methods (real crops of its NLST test set)
PAPER_REAL = {"real_baseline": {"auroc": 0.742, "auprc": 0.263},
              "real_followup": {"auroc": 0.819, "auprc": 0.393}}


def paper_numbers(name: str) -> dict[str, float]:
    """The paper's Table 1 numbers of a row (LPIPS, FID, AUROC, AUPRC and their std over its 20
    samples where given), {} when the paper has no such row."""
    if name in PAPER_REAL:
        return dict(PAPER_REAL[name])
    return dict(methods.METHODS[name].paper) if name in methods.METHODS else {}


def generated() -> dict[str, str]:
    """Each method of the table -> its sample folder: the generated rows, in table order."""
    return {m.name: m.samples for m in methods.METHODS.values()}


def listed(name: str, present: Mapping[str, object] | Container[str]) -> bool:
    """Whether a table of the run lists method `name`: NAMD and its ablations always (a 'not
    run' line when absent), a compared method (run with `namd demo --methods`) only when
    `present` (what the run scored) holds it."""
    return name in present or methods.get(name).in_demo


def rows() -> dict[str, str]:
    """Every row of Table 1 in order -> its label."""
    labels = {m.name: m.label for m in methods.METHODS.values()}
    return {**REAL_ROWS, **labels, **COPY_ROWS, **CLINICAL_ROWS}


def quality_rows() -> tuple[str, ...]:
    """The rows whose images are compared with the real follow-up."""
    return (*generated(), *COPY_ROWS)


def image_rows() -> tuple[str, ...]:
    """The rows the evaluator scores from images: the real crops, the methods, the copies."""
    return (*REAL_ROWS, *generated(), *COPY_ROWS)


def vae_of(name: str) -> str | None:
    """The VAE folder a generated row decodes with (None for a method without one)."""
    return methods.get(name).uses.get("vae")


def row_label(name: str) -> str:
    """The label of a row (an unknown row keeps its key)."""
    return rows().get(name, name)
