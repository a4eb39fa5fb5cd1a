"""Table 1 as the paper prints it: groups, mean +- std over K, the paper's numbers, why a column is empty."""

from __future__ import annotations

import re

from namd.evaluation.report.table1 import groups, table1
from namd.evaluation.rows import generated, paper_numbers


def _block(mean: float, std: float) -> dict:
    return {"mean": mean, "std": std, "ci95": [mean - 0.1, mean + 0.1]}


def _metrics() -> dict:
    rows = [{"name": "real_baseline", "status": "ok", "k": 1, "auroc": _block(0.66, 0.0),
             "auprc": _block(0.2, 0.0)},
            {"name": "namd", "status": "ok", "k": 20, "auroc": _block(0.731, 0.029),
             "auprc": _block(0.27, 0.036), "mean_prob_auroc": 0.748, "mean_prob_auprc": 0.269},
            {"name": "no_align", "status": "not run: RUN/samples_no_align not found"}]
    quality = {"namd": {"status": "ok", "lpips": "not computed: eval.lpips_weights is not set",
                        "fid": 12.3456, "fid_std": 0.5,
                        "evaluator_feature_distance": {"mean": 0.1234, "std": 0.0012}}}
    futures = {"status": "ok", "rows": {"namd": {"energy_diameter_mm": 0.8771}}}
    return {"rows": rows, "image_quality": quality, "known_futures": futures}


def _cells(page: str, label_start: str) -> list[str]:
    row = next(r for r in page.split("<tr") if label_start in r)
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


def test_rows_read_like_the_papers():
    page = table1(_metrics())
    namd = _cells(page, "NAMD (generated")
    # LPIPS not computed, FID mean +- std over K, evaluator distance, known futures, AUROC, AUPRC
    assert namd[1:8] == ["–", "12.3 ± 0.5", "0.123 ± 0.001", "0.877", "0.731 ± 0.029",
                         "0.270 ± 0.036", "0.748 / 0.269"]
    assert namd[8].startswith("0.220 ± 0.001 / 83.1 ± 0.7 / 0.805 ± 0.018")  # the paper's row
    base = _cells(page, "Real baseline")
    assert base[5] == "0.660" and base[-1] == "– / – / 0.742 / 0.263"  # one run: no ± std
    assert "not run: RUN/samples_no_align" in page
    assert "LPIPS: not computed: eval.lpips_weights is not set" in page
    assert page.index("Real image baselines") < page.index("Deterministic") < page.index("Stochastic")


def test_without_known_futures_the_table_says_why():
    m = _metrics()
    m["known_futures"] = {"status": "not available: a real cohort has no simulator"}
    assert "Known futures: not available: a real cohort has no simulator" in table1(m)
    del m["known_futures"]
    assert "no known_futures block" in table1(m)


def test_every_generated_row_has_a_group_and_the_paper_rows_are_the_papers():
    grouped = [n for _, names in groups() for n in names]
    assert set(generated()) <= set(grouped)
    assert paper_numbers("namd")["auroc"] == 0.805 and paper_numbers("no_align")["fid"] == 101.301
    assert paper_numbers("real_followup") == {"auroc": 0.819, "auprc": 0.393}
    assert paper_numbers("null_context") == {}  # not a row of the paper
