"""`namd serve` without a browser: the EHR form, safe uploads (suffix, size and file-count
limits, zip slip), the slice view and click mapping, predictions equal to NAMDPipeline.predict,
the download bundle (no file name, no id), one-line errors, and the command without gradio.
The page itself is driven by tests/serve/test_browser.py."""

from __future__ import annotations

import html
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from namd.cli.main import main
from namd.cohort.ehr import CATEGORICAL, EHR, EHR_FIELDS, EHRError, report_sentence
from namd.cohort.ingest.errors import IngestError
from namd.inference.scan import crop_nodule
from namd.serve.bundle import EPOCH
from namd.serve.form import MISSING, ehr_from_form, field_specs, form_from_ehr, sentence_of
from namd.serve.readout import READOUT_NOTICE, fmt_p, numbers_html, provenance_html
from namd.serve.server import is_loopback, where_line
from namd.serve.session import CohortNodules, Session, page_line
from namd.serve.upload import Limits, ScanStore, UploadError, open_upload, unsafe_member
from namd.serve.views import MARKER, click_to_voxel, slice_view, stored_voxel, world_of, zoom_factor

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "fixtures" / "lung-pet-ct-dx-A0002" / "dicom"
TUMOUR_VOXEL = (167.0, 291.5, 1.0)  # tests/test_crops.py: the same point both ways
TUMOUR_WORLD = (-65.2138671875, -105.7265625, 200.0)
NAME = "SMITH_JOHN_MRN-77123456.nii.gz"  # an upload whose name is an identifier


def _ball(path: Path, flip: bool = False) -> Path:
    """A (12, 40, 40) image, 1 x 1 x 2 mm: a +100 HU ball at voxel (24, 20, 6) in -900 HU;
    `flip` stores it with x and y reversed (RAS-like storage), so storage order != LPS."""
    z, y, x = np.indices((12, 40, 40))
    r = np.sqrt(((z - 6) * 2.0) ** 2 + (y - 20) ** 2 + (x - 24) ** 2)
    image = sitk.GetImageFromArray(np.where(r <= 5, 100, -900).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-20.0, 10.0, 50.0))
    if flip:
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))
    return path


def _zip(path: Path, entries: dict[str, bytes], link: str | None = None) -> Path:
    """A zip of name -> bytes, plus an optional symbolic-link entry."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, "/etc/passwd")
    return path


@pytest.fixture(scope="module")
def session(tiny_run, tmp_path_factory):
    from namd.inference.pipeline import NAMDPipeline

    pipe = NAMDPipeline.from_run(tiny_run, device="cpu")
    s = Session(pipe, Limits(1 << 20, 2 << 20, 50), CohortNodules(tiny_run.stage("cohort")),
                root=tmp_path_factory.mktemp("serve"))
    yield s
    s.close()


# -- the EHR form --------------------------------------------------------------------------
def test_form_has_the_13_fields_with_codes_meanings_and_ranges():
    specs = field_specs()
    assert [s.name for s in specs] == list(EHR_FIELDS)
    for spec in specs:
        if spec.name in CATEGORICAL:
            assert spec.choices[0] == (MISSING, MISSING)
            assert spec.choices[1:] == tuple((f"{c}: {m}", str(c)) for c, m in CATEGORICAL[spec.name].items())
        else:
            assert spec.range and f"{spec.range[0]:g} to {spec.range[1]:g}" in spec.info
    age = next(s for s in specs if s.name == "age")
    assert age.info == "18 to 110 years; empty = missing"


def test_form_round_trip_missing_and_the_sentence():
    ehr = EHR(SCT_PRE_ATT=3, SCT_EPI_LOC=1, SCT_LONG_DIA=12.5, SCT_MARGINS=1, age=63.0, gender=2,
              famfather=1, diagemph=0)
    values = form_from_ehr(ehr)
    assert values[:4] == ["3", "1", "12.5", ""]  # PERP_DIA missing: an empty number
    assert ehr_from_form(values) == ehr
    assert ehr_from_form([MISSING] * 2 + [""] * 2 + [MISSING, " ", *[MISSING] * 7]) == EHR()
    assert sentence_of(values) == report_sentence(ehr)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("age", "150", "record the form: field age = '150' is outside [18, 110]"),
    ("SCT_LONG_DIA", "abc", "record the form: field SCT_LONG_DIA has non-numeric value 'abc'"),
    ("SCT_PERP_DIA", "0", None),  # in range (0 mm allowed)
])
def test_an_out_of_range_or_non_numeric_field_is_the_cli_message(field, value, message):
    values = form_from_ehr(EHR(SCT_LONG_DIA=10.0))
    values[EHR_FIELDS.index(field)] = value
    if message is None:
        ehr_from_form(values)
        return
    with pytest.raises(EHRError) as err:
        ehr_from_form(values)
    assert str(err.value) == message


# -- uploads -------------------------------------------------------------------------------
def test_a_file_that_is_not_a_scan(tmp_path):
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(UploadError, match=r"^notes\.pdf: not a scan; upload a zipped DICOM folder "):
        open_upload(tmp_path / "notes.pdf", tmp_path, Limits())
    (tmp_path / "garbage.nii").write_bytes(b"not a nifti at all" * 10)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UploadError) as err:
        open_upload(tmp_path / "garbage.nii", work, Limits())
    text = str(err.value)
    assert text.startswith("garbage.nii: cannot read image") and "\n" not in text
    assert str(work) not in text and str(tmp_path) not in text  # named as uploaded, no temp path


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/cron.d/evil", "a/../../evil", "C:\\evil.dcm",
                                  "..\\evil.dcm"])
def test_zip_slip_is_refused(tmp_path, name):
    assert unsafe_member(name)
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(UploadError, match=r"scan\.zip: entry .* points outside the zip: refused"):
        open_upload(_zip(tmp_path / "scan.zip", {"ok/1.dcm": b"x", name: b"y"}), work, Limits())
    assert not (tmp_path / "evil.dcm").exists() and not list(work.rglob("*.dcm"))


def test_zip_links_size_and_file_count_limits(tmp_path):
    def refused(entries, limits, pattern, link=None):
        work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
        work.mkdir()
        with pytest.raises(UploadError, match=pattern):
            open_upload(_zip(tmp_path / "scan.zip", entries, link), work, limits)

    assert not unsafe_member("series/1-14.dcm") and not unsafe_member("a/./b")
    refused({"a": b"x"}, Limits(), "is a symbolic link: refused", link="series/link")
    refused({f"{i}.dcm": b"x" for i in range(6)}, Limits(max_files=5), "6 entries, over the limit of 5")
    big = {"a.dcm": b"\0" * 5000}  # deflates to a few bytes: the unpacked size counts
    refused(big, Limits(max_unpacked_bytes=4000), "unpacks to 5000 bytes, over the limit of 4000 bytes")
    (tmp_path / "huge.mha").write_bytes(b"\0" * 3000)
    with pytest.raises(UploadError, match=r"huge\.mha: 3000 bytes, over the upload limit of 2000 bytes \(namd serve --max-upload-mb\)"):
        open_upload(tmp_path / "huge.mha", tmp_path, Limits(max_upload_bytes=2000))


def test_zip_that_lies_about_its_size_stops_while_unpacking(tmp_path, monkeypatch):
    import namd.serve.upload as upload

    monkeypatch.setattr(upload, "CHUNK", 64)
    monkeypatch.setattr(upload, "zip_members", lambda archive, name, limits: archive.infolist())
    with pytest.raises(UploadError, match=r"s\.zip: unpacks to more than 500 bytes, the limit \(its entries state smaller sizes\)"):
        upload.extract_zip(_zip(tmp_path / "s.zip", {"a": b"\0" * 1000}), tmp_path, "s.zip",
                           Limits(max_unpacked_bytes=500))


def test_a_damaged_zip_is_page_line(tmp_path):
    data = bytearray((_zip(tmp_path / "ok.zip", {"a.dcm": bytes(range(256)) * 40})).read_bytes())
    data[60:90] = b"\xff" * 30  # inside the deflated data of the only entry
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    (tmp_path / "text.zip").write_text("not a zip")
    for name in ("bad.zip", "text.zip"):
        work = tmp_path / f"w-{name}"
        work.mkdir()
        with pytest.raises(UploadError, match=rf"^{name}: not a readable zip \("):
            open_upload(tmp_path / name, work, Limits())


def test_zipped_dicom_folder_nifti_and_a_zip_without_a_scan(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for f in sorted(REAL.iterdir()):
            archive.write(f, f"export/series/{f.name}")
    (tmp_path / "ct.zip").write_bytes(buf.getvalue())
    for name, expected in (("ct.zip", (512, 512, 3)), ("ball.nii.gz", (40, 40, 12))):
        path = tmp_path / name if name == "ct.zip" else _ball(tmp_path / name)
        work = tmp_path / f"w-{name}"
        work.mkdir()
        assert open_upload(path, work, Limits()).size == expected
    work = tmp_path / "w3"
    work.mkdir()
    with pytest.raises(UploadError, match=r"^empty\.zip: no DICOM files found \(1 other file"):
        open_upload(_zip(tmp_path / "empty.zip", {"readme.txt": b"hi"}), work, Limits())


def test_the_store_keeps_the_last_scans_and_deletes_the_others(tmp_path):
    store = ScanStore(tmp_path / "scans", Limits(), capacity=2)
    path = _ball(tmp_path / "b.nii.gz")
    tokens = [store.add(path)[0] for _ in range(3)]
    assert len(list((tmp_path / "scans").iterdir())) == 2
    with pytest.raises(UploadError, match="no longer held .* upload it again"):
        store.get(tokens[0])
    assert store.get(tokens[2]).volume.size == (40, 40, 12)
    with pytest.raises(UploadError, match="no scan: upload a scan first"):
        store.get(None)
    with pytest.raises(UploadError, match="missing.nii.gz: the upload is missing on the server"):
        store.add(tmp_path / "missing.nii.gz")  # a failed upload leaves no folder behind
    assert len(list((tmp_path / "scans").iterdir())) == 2
    store.close()
    assert not list((tmp_path / "scans").iterdir())


# -- slice view and click mapping ------------------------------------------------------------
@pytest.mark.parametrize("flip", [False, True])
def test_a_click_maps_to_the_voxel_and_world_point_that_crop_the_same(tmp_path, flip):
    from namd.cohort.ingest.volume import open_volume

    volume = open_volume(_ball(tmp_path / "b.nii.gz", flip))
    factor = zoom_factor(volume.size[:2], 384)
    assert factor == 10  # 40 pixels shown at 400
    ball = volume.voxel_to_world(np.array([24.0, 20.0, 6.0]))  # stored order
    np.testing.assert_allclose(ball, (-44, -10, 62) if flip else (4, 30, 62))
    col, row, k = volume.to_index(ball)  # where it is shown: LPS columns and rows
    assert (col, row) == ((15, 19) if flip else (24, 20)) and k == 6
    rgb, shown = slice_view(volume, 6, (-1000.0, 400.0), marker=(col, row))
    assert shown == factor and rgb.shape == (400, 400, 3)
    red = np.argwhere((rgb == MARKER).all(-1))
    assert len(red) == 4 * 9  # an open cross of four 9-pixel arms
    np.testing.assert_allclose(red.mean(0), ((row + 0.5) * factor - 0.5, (col + 0.5) * factor - 0.5), atol=1)
    assert rgb[int(row * factor + 5), int(col * factor + 5), 0] == 200  # the +100 HU ball, unmarked
    voxel = click_to_voxel(col * factor + 4.5, row * factor + 4.5, 6, factor)  # the pixel's middle
    np.testing.assert_allclose(voxel, (col, row, 6))
    world = world_of(volume, voxel)
    np.testing.assert_allclose(world, ball)
    np.testing.assert_allclose(stored_voxel(volume, world), (24, 20, 6), atol=1e-9)
    by_world = crop_nodule(volume.source, world, crop_size=16, spacing_mm=1.0)
    by_voxel = crop_nodule(volume.source, (24, 20, 6), space="voxel", crop_size=16, spacing_mm=1.0)
    np.testing.assert_allclose(by_world, by_voxel, atol=1e-3)
    assert by_world[6:10, 6:10].min() > 0  # the ball is at the crop's centre


def test_a_click_on_the_real_series_gives_the_tumour_in_both_spaces():
    from namd.cohort.ingest.volume import open_volume

    volume = open_volume(REAL)
    assert zoom_factor(volume.size[:2], 384) == 1
    world = world_of(volume, click_to_voxel(167, 291.5, 1, 1))
    np.testing.assert_allclose(world, TUMOUR_WORLD, atol=1e-6)
    np.testing.assert_allclose(stored_voxel(volume, world), TUMOUR_VOXEL, atol=1e-6)


# -- predictions, the numbers shown and the bundle -------------------------------------------
def test_a_test_nodule_prediction_is_namd_pipeline_predict(session, tiny_run):
    pair = session.nodules.choices()[-1][1]
    base = session.nodule_baseline(pair)
    assert base.key == pair and base.followup is not None and base.ehr is not None
    result = session.predict(base, base.ehr, 2, 2, 5)
    expected = session.pipe.predict([base.crop], [base.ehr], k=2, num_inference_steps=2, seed=5,
                                    keys=[pair])[0]
    assert result.prediction.as_json() == expected.as_json()
    np.testing.assert_array_equal(result.prediction.samples, expected.samples)
    assert result.p_real_followup == pytest.approx(float(session.pipe.probabilities(base.followup[None])[0]))
    shown = numbers_html(result)
    assert f'data-namd="p_baseline" data-value="{expected.p_baseline!r}">{fmt_p(expected.p_baseline)}<' in shown
    for i, p in enumerate(expected.p_followup):
        assert f'data-namd="p_followup_{i}" data-value="{p!r}">{fmt_p(p)}<' in shown
    assert f"{fmt_p(expected.p_followup_mean)}</span> ± " in shown and "p_real_followup" in shown
    readout = expected.readout  # the radiologist's readout, with its notice, under the numbers
    assert 'data-namd="lungrads_baseline_record"' in shown and READOUT_NOTICE in html.unescape(shown)
    assert f'data-namd="lungrads_not_measurable">{readout["not_measurable"]["count"]} of 2' in shown
    if readout["followup"].get("status") == "ok":
        p = readout["followup"]["p_growth_gt_1_5mm"]
        assert f'data-namd="lungrads_p_growth_1_5" data-value="{p!r}">{fmt_p(p)}<' in shown
    prov = provenance_html(result)
    assert session.pipe.model_hash in prov and ">5<" in prov and "pair id" in prov


def test_the_bundle_holds_everything_and_no_file_name_or_id(session, tmp_path):
    token, _ = session.add_scan(_ball(tmp_path / NAME), NAME)
    base = session.scan_baseline(token, ("4.0", "30.0", "62.0"), "world")
    assert base.key is None and base.source == {"input": "scan", "center": [4.0, 30.0, 62.0],
                                                "space": "world", "flags": []}
    ehr = EHR(SCT_LONG_DIA=9.0, age=70.0)
    result = session.predict(base, ehr, 3, 2, 23)
    assert result.prediction.seed_from == "crop" and result.p_real_followup is None
    data = result.bundle.read_bytes()
    assert result.bundle.name == "namd-prediction.zip"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(["README.txt", "prediction.json", "readout.txt", "baseline.npy", "samples.npy", "mean.npy",
                                "variance.npy", "png/baseline.png", "png/mean.png", "png/variance.png",
                                "png/probabilities.png", "png/grid.png",
                                *(f"png/followup_{i:03d}.png" for i in (1, 2, 3))])
        assert {info.date_time for info in archive.infolist()} == {EPOCH}
        record = json.loads(archive.read("prediction.json"))
        samples = np.load(io.BytesIO(archive.read("samples.npy")))
        contents = b"".join(archive.read(n) for n in names) + "".join(names).encode()
        text = (archive.read("prediction.json") + archive.read("README.txt")).decode() + "".join(names)
        text_readout = archive.read("readout.txt").decode()
    np.testing.assert_array_equal(samples, result.prediction.samples)
    assert record["p_followup"] == result.prediction.p_followup and record["ehr"]["age"] == 70.0
    assert record["provenance"]["model_sha256"] == session.pipe.model_hash
    assert record["notice"] == "Research use only, not a medical device."
    assert record["readout"] == result.prediction.readout and record["readout"]["k"] == 3
    assert result.prediction.readout["summary"] in text_readout and READOUT_NOTICE in text_readout
    for secret in ("SMITH", "77123456", NAME, str(tmp_path), str(session.root)):
        assert secret.encode() not in contents and secret.encode() not in data
    assert "nii" not in text  # the upload's type, too short to search for in binary data
    pair = session.nodules.choices()[0][1]
    nodule = session.predict(session.nodule_baseline(pair), EHR(), 2, 2, 23)
    with zipfile.ZipFile(nodule.bundle) as archive:
        assert "real_followup.npy" in archive.namelist()
        text = archive.read("prediction.json").decode() + archive.read("README.txt").decode()
    assert pair not in text and "p6" not in text  # no pair or patient id


def test_bad_inputs_are_one_line_errors(session, tmp_path):
    token, _ = session.add_scan(_ball(tmp_path / "b.mha"))
    with pytest.raises(IngestError, match=r"lies outside the volume along z") as err:
        session.scan_baseline(token, ("4", "30", "900"), "world")
    assert "\n" not in str(err.value)
    with pytest.raises(IngestError, match="outside the volume in-plane"):
        session.scan_baseline(token, ("400", "30", "62"), "world")
    with pytest.raises(ValueError, match="centre y is empty"):
        session.scan_baseline(token, ("4", " ", "62"), "world")
    with pytest.raises(ValueError, match="centre x = 'a' is not a number"):
        session.scan_baseline(token, ("a", "1", "62"), "world")
    base = session.nodule_baseline(session.nodules.choices()[0][1])
    for k, steps, message in ((0, 2, "k = 0 must be a whole number from 1 to 200"),
                              (2, 1001, "steps = 1001 must be a whole number from 1 to 1000"),
                              (None, 2, "k is empty"), (2.5, 2, "k = 2.5 must be a whole number"),
                              ("two", 2, "k = 'two' is not a number")):
        with pytest.raises(ValueError, match=message):
            session.predict(base, EHR(), k, steps, 23)
    with pytest.raises(ValueError, match="no test nodule 'nope'"):
        session.nodule_baseline("nope")
    assert page_line(ValueError("a\n  b")) == "a b"
    unexpected = page_line(RuntimeError("boom\nline 2"))
    assert unexpected.startswith("unexpected RuntimeError: boom line 2") and "\n" not in unexpected


def test_handlers_turn_every_error_into_a_line_in_the_page(session, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from namd.serve.handlers import NODULE, SCAN, Page

    page = Page(session)
    (tmp_path / "notes.txt").write_text("hello")
    out = page.on_upload(str(tmp_path / "notes.txt"))
    assert out[0] is None and 'data-namd="error">error: notes.txt: not a scan;' in out[-1]
    fields = form_from_ehr(EHR(age=60.0))
    fields[EHR_FIELDS.index("age")] = "150"
    out = page.on_predict(NODULE, session.nodules.choices()[0][1], None, "", "", "", "world", 2, 2,
                          23, *fields, progress=lambda *a, **k: None)
    assert "error: record the form: field age = &#x27;150&#x27; is outside [18, 110]" in out[-1]
    assert out[4] == [] and out[0] is None  # stale results cleared
    sentence, message = page.on_record(*fields)
    assert sentence == "error: record the form: field age = '150' is outside [18, 110]"
    monkeypatch.setattr(session, "predict", lambda *a, **k: 1 / 0)
    out = page.on_predict(NODULE, session.nodules.choices()[0][1], None, "", "", "", "world", 2, 2,
                          23, *form_from_ehr(EHR()), progress=lambda *a, **k: None)
    assert "error: unexpected ZeroDivisionError: division by zero" in out[-1]
    out = page.on_predict(SCAN, None, None, "1", "2", "3", "world", 2, 2, 23, *form_from_ehr(EHR()),
                          progress=lambda *a, **k: None)
    assert "error: no scan: upload a scan first" in out[-1]


def test_a_model_folder_serves_uploads_only(session, tmp_path):
    pytest.importorskip("gradio")
    from namd.serve.app import build_page
    from namd.serve.handlers import SCAN
    from namd.serve.server import load_session

    folder = session.pipe.save_pretrained(tmp_path / "model")
    served = load_session(None, str(folder), "namd", "cpu", 1.0)
    try:
        assert served.nodules is None and served.limits == Limits(1 << 20, 2 << 20, 10_000)
        assert (served.default_k, served.default_steps) == (20, 50)  # the paper's K and DDIM steps
        assert served.pipe.model_hash == session.pipe.model_hash
        config = build_page(served).get_config_file()
        radios = [c["props"] for c in config["components"] if c["props"].get("elem_id") == "namd-source"]
        assert [choice[0] for choice in radios[0]["choices"]] == [SCAN]
        with pytest.raises(ValueError, match="test nodules need a run"):
            served.nodule_baseline("pair6")
    finally:
        served.close()
    assert not served.root.exists()


# -- the command -----------------------------------------------------------------------------
def test_serve_without_gradio_is_one_line_naming_the_extra(monkeypatch, capsys, tiny_run):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["serve", "--run", str(tiny_run.path)]) == 1
    err = capsys.readouterr().err
    assert err == "namd serve: error: gradio is not installed; install the serve extra: pip install 'namd[serve]'\n"


def test_the_cli_and_serve_help_import_no_gradio():
    code = ("import sys; from namd.cli.main import build_parser; p = build_parser(); "
            "assert 'gradio' not in sys.modules; import namd.serve.session, namd.serve.bundle, namd.serve.app, namd.serve.server; "
            "assert 'gradio' not in sys.modules, 'the pure logic imports gradio'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    help_text = subprocess.run([sys.executable, "-m", "namd.cli", "serve", "--help"], capture_output=True,
                               text=True, check=False).stdout
    assert "--host" in help_text and "127.0.0.1" in help_text and "not a medical device" in help_text


def test_the_server_says_where_it_listens():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert "reachable from this machine only" in where_line("127.0.0.1", 7860)
    assert where_line("127.0.0.1", 7860).startswith("namd serve: http://127.0.0.1:7860/ (bound to 127.0.0.1")
    assert "anyone who can reach this machine" in where_line("0.0.0.0", 80)
