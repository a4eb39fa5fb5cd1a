"""NLST tables (official codes, missing codes, public release without diagemph/fam*),
positions, the pairing table and the matching rule, and the label rule."""

import numpy as np
import pandas as pd
import pytest

from namd.cohort.ingest import prepare
from namd.cohort.ingest.errors import IngestError
from namd.cohort.ingest.nlst import Participant
from namd.cohort.ingest.nlst_pairing import nlst_label
from namd.cohort.store import Cohort
from namd.config import load_config

SPACING, ORIGIN = (0.7, 0.7, 2.0), (-10.0, -20.0, 0.0)


def _w(i, j, k):
    return [o + v * s for o, v, s in zip(ORIGIN, (i, j, k), SPACING, strict=True)]


def _scan(build, folder, balls):
    vol = np.maximum.reduce([build.ball((6, 48, 48), (3, j, i), r) for i, j, r in balls])
    build.write_series(folder, vol, SPACING, ORIGIN)


@pytest.fixture(scope="module")
def images(tmp_path_factory, build):
    """T0 and T1 exams of three participants as IMAGES/<pid>/T<yr> (built once, read only)."""
    img = tmp_path_factory.mktemp("nlst") / "images"
    _scan(build, img / "100001" / "T0", [(24, 24, 3)])
    _scan(build, img / "100001" / "T1", [(24, 24, 4), (10, 38, 2)])
    _scan(build, img / "100002" / "T0", [(24, 24, 3)])
    _scan(build, img / "100002" / "T1", [(22, 24, 3), (27, 24, 3)])
    _scan(build, img / "100003" / "T0", [(24, 24, 3)])
    _scan(build, img / "100003" / "T1", [(25, 24, 3)])
    return img


@pytest.fixture
def nlst(tmp_path, build, images):
    """Public-style prsn (no diagemph, no fam*), ctab with missing codes, positions."""
    img = images
    prsn = [{"pid": 100001, "age": 63, "gender": 1, "can_scr": 1, "cancyr": 1},
            {"pid": 100002, "age": 70, "gender": 2, "can_scr": 0, "cancyr": ".N"},
            {"pid": 100003, "age": 58, "gender": 2, "can_scr": 4, "cancyr": 5}]
    nod = {"sct_ab_desc": 51, "sct_pre_att": 1, "sct_epi_loc": 1, "sct_long_dia": 6,
           "sct_perp_dia": 4, "sct_margins": 2, "sct_slice_num": 999}
    abn = [{"pid": 100001, "study_yr": 0, "sct_ab_num": 1, **nod, "sct_margins": ".M"},
           {"pid": 100001, "study_yr": 0, "sct_ab_num": 2, **nod, "sct_ab_desc": 53, "sct_pre_att": ".N"},
           {"pid": 100001, "study_yr": 1, "sct_ab_num": 1, **nod, "sct_epi_loc": 6, "sct_long_dia": 3, "sct_perp_dia": 2},
           {"pid": 100001, "study_yr": 1, "sct_ab_num": 2, **nod, "sct_long_dia": 9, "sct_slice_num": 4},
           {"pid": 100002, "study_yr": 0, "sct_ab_num": 1, **nod},
           {"pid": 100002, "study_yr": 1, "sct_ab_num": 1, **nod},
           {"pid": 100002, "study_yr": 1, "sct_ab_num": 2, **nod},
           {"pid": 100003, "study_yr": 0, "sct_ab_num": 1, **nod, "sct_pre_att": 2},
           {"pid": 100003, "study_yr": 1, "sct_ab_num": 1, **nod, "sct_pre_att": 3},
           {"pid": 100003, "study_yr": 1, "sct_ab_num": 3, **nod}]  # no position
    pos = [(100001, 0, 1, _w(24, 24, 3)), (100001, 1, 1, _w(10, 38, 3)),
           (100001, 1, 2, _w(24, 24, 3)[:2] + [None]),  # slice from sct_slice_num (InstanceNumber 4)
           (100002, 0, 1, _w(24, 24, 3)), (100002, 1, 1, _w(22, 24, 3)), (100002, 1, 2, _w(27, 24, 3)),
           (100003, 0, 1, _w(24, 24, 3)), (100003, 1, 1, _w(25, 24, 3))]
    positions = [{"pid": p, "study_yr": y, "sct_ab_num": a, "coordX": c[0], "coordY": c[1],
                  "coordZ": "" if c[2] is None else c[2]} for p, y, a, c in pos]
    files = {"prsn": build.write_csv(tmp_path / "prsn.csv", prsn),
             "abn": build.write_csv(tmp_path / "ctab.csv", abn),
             "positions": build.write_csv(tmp_path / "positions.csv", positions), "images": img}
    return tmp_path, files


def _edit(path, row, **values):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for k, v in values.items():
        df.loc[row, k] = str(v)
    df.to_csv(path, index=False)


def test_matching_rule_labels_and_public_prsn(nlst, cfg, build):
    tmp_path, files = nlst
    summary, errors = prepare("nlst", files, cfg, tmp_path / "out")
    report = summary
    assert report["not_nodules"] == 1 and report["nodules_without_position"] == 1
    assert report["pairing"]["ambiguous"] == 1  # 100002: two same-lobe candidates at T1
    assert report["pairing"]["details"]["ambiguous"] == [
        {"pid": "100002", "baseline": "T0-1", "candidates": ["T1-1", "T1-2"]}]
    c = Cohort(tmp_path / "out")
    pairs = c.pairs().set_index("pair_id")
    assert sorted(pairs.index) == ["100001:T0-1>T1-2", "100003:T0-1>T1-1"]
    p = pairs.loc["100001:T0-1>T1-2"]
    assert p["label"] == 1  # cancyr 1 <= 0 + 2
    assert pairs.loc["100003:T0-1>T1-1", "label"] == 0  # cancyr 5 is after the window
    assert pd.isna(p["SCT_MARGINS"]) and p["SCT_LONG_DIA"] == 6 and p["followup_SCT_LONG_DIA"] == 9
    assert pd.isna(p["diagemph"]) and pd.isna(p["famfather"])  # public prsn: missing, not "No"
    assert p["age"] == 63 and p["gender"] == 1
    assert pairs.loc["100003:T0-1>T1-1", "SCT_PRE_ATT"] == 2
    assert pairs.loc["100003:T0-1>T1-1", "followup_SCT_PRE_ATT"] == 3
    follow = c.manifest.loc[p["followup_index"]]
    assert "slice 3" in follow["provenance"] and "NLST abnormality T1-2" in follow["provenance"]
    assert follow["nodule_id"] == "T0-1" and follow["timepoint"] == 1
    assert c.images([p["followup_index"]])[0, 15:17, 15:17].min() == 40.0
    assert build.no_phi(tmp_path / "out")


def test_pairing_table_and_label_window(nlst, cfg, build):
    tmp_path, files = nlst
    files["pairs"] = build.write_csv(tmp_path / "pairs.csv", [
        {"pid": 100002, "base_yr": 0, "base_ab_num": 1, "follow_yr": 1, "follow_ab_num": 2, "label": ""},
        {"pid": 100001, "base_yr": 0, "base_ab_num": 1, "follow_yr": 1, "follow_ab_num": 2, "label": 0}])
    cfg0 = load_config(overrides=["data.crop_size=32", "data.pixel_spacing_mm=1.0",
                                  "ingest.label_window_years=0"])
    summary, _ = prepare("nlst", files, cfg0, tmp_path / "out")
    pairs = Cohort(tmp_path / "out").pairs().set_index("pair_id")
    assert summary["pairing"] == {"rule": "pairing table", "pairs": 2}
    assert pairs.loc["100002:T0-1>T1-2", "label"] == 0  # can_scr 0
    assert pairs.loc["100001:T0-1>T1-2", "label"] == 0  # the table's label wins
    _edit(files["pairs"], 1, follow_yr=2)
    with pytest.raises(IngestError, match=r"pairs\.csv line 3, field follow_ab_num: no positioned nodule"):
        prepare("nlst", files, cfg, tmp_path / "out2")


def test_label_column_overrides_rule(nlst, cfg, build):
    tmp_path, files = nlst
    df = pd.read_csv(files["abn"], dtype=str, keep_default_na=False)
    df["truth"] = ["0"] * len(df)
    df.to_csv(files["abn"], index=False)
    files["label_column"] = "truth"
    prepare("nlst", files, cfg, tmp_path / "out")
    assert set(Cohort(tmp_path / "out").manifest["label"]) == {0}


@pytest.mark.parametrize("table, row, values, message", [
    ("abn", 0, {"sct_margins": 4}, r"ctab\.csv line 2, field SCT_MARGINS: has code '4'"),
    ("abn", 0, {"sct_ab_desc": 70}, r"ctab\.csv line 2, field sct_ab_desc: unknown code '70'"),
    ("abn", 0, {"study_yr": 5}, r"ctab\.csv line 2, field study_yr: unknown code '5'"),
    ("abn", 1, {"sct_ab_num": 1}, r"ctab\.csv line 3, field sct_ab_num: duplicate abnormality"),
    ("abn", 0, {"pid": 999999}, r"ctab\.csv line 2, field pid: pid 999999 is not in the participant"),
    ("abn", 0, {"sct_perp_dia": 8}, r"ctab\.csv line 2, field SCT_PERP_DIA: = 8 exceeds SCT_LONG_DIA"),
    ("prsn", 1, {"cancyr": 2}, r"prsn\.csv line 3, field cancyr: cancyr 2 given but can_scr 0"),
    ("prsn", 0, {"gender": 3}, r"prsn\.csv line 2, field gender: has code '3'"),
    ("prsn", 0, {"can_scr": 9}, r"prsn\.csv line 2, field can_scr: unknown code '9'"),
    ("positions", 0, {"sct_ab_num": 7}, r"positions\.csv line 2, field sct_ab_num: no nodule"),
    ("positions", 0, {"coordZ": 400}, r"positions\.csv line 2, field z: coordinate .* outside"),
    ("positions", 2, {"coordX": ""}, r"positions\.csv line 4, field coordX: missing value"),
])
def test_bad_tables_named_and_nothing_written(nlst, cfg, table, row, values, message):
    tmp_path, files = nlst
    _edit(files[table], row, **values)
    with pytest.raises(IngestError, match=message):
        prepare("nlst", files, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("table, column, field", [
    ("prsn", "gendr", "gender"), ("prsn", "Sex", "gender"), ("abn", "sct_long_dai", "SCT_LONG_DIA"),
    ("abn", "sct_pre_at", "SCT_PRE_ATT"),
])
def test_column_spelt_like_an_ehr_field_is_an_error(nlst, cfg, table, column, field):
    tmp_path, files = nlst
    df = pd.read_csv(files[table], dtype=str, keep_default_na=False)
    df = df.rename(columns={field.lower(): column}) if field.lower() in df else df.assign(**{column: "1"})
    df.to_csv(files[table], index=False)
    name = files[table].name
    with pytest.raises(IngestError, match=rf"{name}, field {column}: column '{column}' looks like "
                                          rf"the EHR field {field}"):
        prepare("nlst", files, cfg, tmp_path / "out", on_error="skip")
    assert not (tmp_path / "out").exists()


def test_real_nlst_columns_are_not_taken_for_misspellings(nlst, cfg):
    """The full prsn and ctab tables have hundreds of other columns (race is 2 edits from age)."""
    tmp_path, files = nlst
    for table, extra in (("prsn", ["race", "educat", "cigsmok", "pkyr", "age_quit", "diaghype"]),
                         ("abn", ["sct_ab_attn", "sct_found_after_comp", "dataset_version"])):
        df = pd.read_csv(files[table], dtype=str, keep_default_na=False)
        df.assign(**{c: "1" for c in extra}).to_csv(files[table], index=False)
    summary, _ = prepare("nlst", files, cfg, tmp_path / "out")
    assert summary["pairs"] > 0


def test_exams_table_missing_exam_and_missing_column(nlst, cfg, build):
    tmp_path, files = nlst
    files["exams"] = build.write_csv(tmp_path / "exams.csv", [
        {"pid": 100001, "study_yr": 0, "path": "100001/T0"},
        {"pid": 100003, "study_yr": 1, "path": "100003/T9"}])  # others: IMAGES/<pid>/T<yr>
    summary, errors = prepare("nlst", files, cfg, tmp_path / "out", on_error="skip")
    assert errors.counts() == {"missing image": 1} and summary["pairs"] == 1
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped["reason"][0].startswith("exam not found") and skipped["line"][0] == 9
    df = pd.read_csv(files["abn"]).drop(columns=["sct_long_dia"])
    df.to_csv(files["abn"], index=False)
    with pytest.raises(IngestError, match=r"ctab\.csv, field sct_long_dia: missing column"):
        prepare("nlst", files, cfg, tmp_path / "out2")


def test_label_rule():
    def person(can_scr, cancyr):
        return Participant("1", 2, {}, can_scr, cancyr)

    assert nlst_label(person(1, 1), 0, 2) == 1
    assert nlst_label(person(1, 3), 0, 2) == 0
    assert nlst_label(person(1, 3), 1, 2) == 1
    assert nlst_label(person(0, None), 0, 2) == 0
    assert nlst_label(person(2, None), 0, 2) is None  # cancer, year unknown
    assert nlst_label(person(None, None), 0, 2) is None
