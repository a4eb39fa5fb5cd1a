"""The report's known-futures section: the table of every scored row and its one-sentence reading."""

from __future__ import annotations

from namd.evaluation.report.known_futures import known_futures_table, reading


def _d(delta: float, lo: float, hi: float) -> dict:
    return {"delta": delta, "ci95": [lo, hi]}


def _block() -> dict:
    row = {"status": "ok", "energy_diameter_mm": 0.5, "energy_density_hu": 20.0, "energy_image_hu": 30.0}
    return {"status": "ok", "shuffled_of": "namd", "bootstrap": {"level": 0.95}, "rows": {
        "namd": {**row, "vs_copy_baseline": {"diameter_mm": _d(-0.4, -0.6, -0.2)}},
        "no_align": {**row, "energy_diameter_mm": 0.9, "vs_namd": {"diameter_mm": _d(0.4, 0.2, 0.6)}},
        "null_context": {**row, "vs_namd": {"diameter_mm": _d(0.01, -0.1, 0.1)}},
        "held_out_futures": {**row, "energy_diameter_mm": 0.01},
        "shuffled": {**row, "energy_diameter_mm": 3.0, "vs_namd": {"diameter_mm": _d(2.5, 2.0, 3.0)}},
        "real_followup": {"status": "not computed: test"}}}


def test_the_table_lists_every_row_with_its_paired_deltas():
    page = known_futures_table(_block())
    assert "Held-out futures (the ceiling)" in page and "shuffled" in page
    assert "-0.40 [-0.60, -0.20]" in page and "+2.50 [+2.00, +3.00]" in page
    assert "not computed: test" in page


def test_the_reading_says_which_way_each_interval_points():
    text = reading(_block())
    assert "closer to the futures than copying the baseline" in text
    assert "(shuffled) score worse than its own" in text
    assert "NAMD without L_align / L_pred is further than" in text
    assert "with null context (image only) is not separated from" in text
    block = _block()
    block["rows"]["namd"] = {"status": "not run: RUN/samples not found"}
    assert "was not scored (not run: RUN/samples not found)" in reading(block)
