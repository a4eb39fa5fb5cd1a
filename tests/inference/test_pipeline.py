"""The load-once NAMDPipeline: sampling as `namd sample` samples, predictions with provenance,
save_pretrained / from_pretrained with every file's sha256 checked, `namd export`, the model
card, and the lazy `namd` namespace (tiny_run and its helpers: tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SIZE, disc, flip_bit

import namd.inference.sampler
from namd.cli.main import main
from namd.cohort.ehr import EHR
from namd.config import ConfigError, methods
from namd.inference.pipeline import NAMDPipeline
from namd.inference.prediction import crop_digest
from namd.models.device import resolve_device
from namd.run.contract import RunFileError


@pytest.fixture(scope="module")
def pipe(tiny_run) -> NAMDPipeline:
    return NAMDPipeline.from_run(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def exported(pipe, tmp_path_factory) -> Path:
    return pipe.save_pretrained(tmp_path_factory.mktemp("model") / "namd")


def _inputs(n: int = 2) -> tuple[np.ndarray, list[EHR]]:
    rng = np.random.default_rng(7)
    return (np.stack([disc(2 + i, rng) for i in range(n)]),
            [EHR(SCT_LONG_DIA=5.0 + i, age=60.0 + i) for i in range(n)])


def test_call_shapes_reproducible_and_as_namd_sampling(pipe, tiny_run):
    crops, ehrs = _inputs()
    samples = pipe(crops, ehrs, k=3, num_inference_steps=2, seed=5, keys=["a", "b"])
    assert samples.shape == (2, 3, SIZE, SIZE) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, pipe(crops, ehrs, k=3, num_inference_steps=2, seed=5,
                                                keys=["a", "b"]))
    assert np.abs(samples - pipe(crops, ehrs, k=3, num_inference_steps=2, seed=6,
                                 keys=["a", "b"])).max() > 0  # the seed matters
    # the same keys through namd.inference.sampler directly give the same follow-ups
    cfg = pipe.sampling_config(k=3, steps=2, seed=5)
    sampler = namd.inference.sampler.FollowUpSampler.from_run(tiny_run, methods.get(methods.REFERENCE).uses, pipe.config)
    latents = sampler.generate(sampler.conditioning(["a", "b"], crops, ehrs), cfg)
    np.testing.assert_allclose(samples[1], sampler.decode(latents[1]), atol=1e-5)


def test_numbers_go_through_the_config(pipe):
    crops, ehrs = _inputs(1)
    with pytest.raises(ConfigError, match=r"sampling\.k"):
        pipe(crops, ehrs, k=0)
    with pytest.raises(ConfigError, match=r"sampling\.steps"):
        pipe.predict(crops, ehrs, num_inference_steps=-3)
    with pytest.raises(ValueError, match="ehrs: 2 records given for 1 baselines"):
        pipe(crops, ehrs * 2)


def test_predict_two_patients_own_noises_and_provenance(pipe, monkeypatch):
    keys: list[str] = []
    seed_of = namd.inference.sampler.sample_seed
    monkeypatch.setattr(namd.inference.sampler, "sample_seed", lambda s, key, k: keys.append(key) or seed_of(s, key, k))
    crops, ehrs = _inputs()
    first, second = pipe.predict(crops, ehrs, k=2)
    assert set(keys) == {f"crop-sha256:{crop_digest(c)[:32]}" for c in crops}
    assert np.abs(first.samples - second.samples).max() > 0
    assert len(first.p_followup) == 2 and 0 <= first.p_followup_mean <= 1
    prov = first.provenance
    assert prov["method"] == "namd" and prov["model_sha256"] == pipe.model_hash
    assert prov["probability"] == ("raw" if pipe.calibration is None else "calibrated")
    assert prov["k"] == 2 and prov["scheduler"] == "ddim"
    assert prov["seed_from"] == "crop" and "sha256" in prov["seed_rule"]
    assert json.dumps(first.as_json())  # JSON-ready, without the image array


def test_a_baseline_may_be_a_scan_and_centre(pipe, monkeypatch):
    import namd.inference.scan

    calls = []
    crop = disc(3, np.random.default_rng(4))

    def fake(path, center, space="world", crop_size=64, spacing_mm=0.7, *, config=None):
        calls.append((path, tuple(center), space, config.data.crop_size))
        return crop

    monkeypatch.setattr(namd.inference.scan, "crop_nodule", fake)
    ehr = EHR(SCT_LONG_DIA=6.0)
    by_scan = pipe.predict([("scan.nii.gz", (1, 2, 3), "voxel")], [ehr], k=2)[0]
    assert calls == [("scan.nii.gz", (1, 2, 3), "voxel", SIZE)]
    assert by_scan.baseline_sha256 == crop_digest(crop)
    np.testing.assert_array_equal(by_scan.samples, pipe.predict([crop], [ehr], k=2)[0].samples)


def test_calibration_is_applied_per_sample_before_the_mean(pipe, monkeypatch):
    class Halve:  # stands in for namd.models.calibration.Calibration
        def apply(self, p):
            return np.asarray(p) / 2

    crops, ehrs = _inputs(1)
    monkeypatch.setattr(pipe, "calibration", None)
    raw = pipe.predict(crops, ehrs)[0]
    monkeypatch.setattr(pipe, "calibration", Halve())
    cal = pipe.predict(crops, ehrs)[0]
    np.testing.assert_allclose(cal.p_followup, np.asarray(raw.p_followup) / 2)
    assert cal.p_followup_mean == pytest.approx(raw.p_followup_mean / 2)
    assert cal.provenance["probability"] == "calibrated" and raw.provenance["probability"] == "raw"


def test_save_and_load_give_identical_samples(pipe, exported, tiny_run):
    index = json.loads((exported / "model_index.json").read_text())
    fitted = (tiny_run.stage("evaluator") / "calibration.json").is_file()
    assert ("evaluator/calibration.json" in index["files"]) == fitted
    assert set(index["components"]) == {"vae", "unet", "scheduler", "context_encoder", "evaluator"}
    assert index["method"] == "namd" and "vae/diffusion_pytorch_model.safetensors" in index["files"]
    assert not list(exported.rglob("optimizer*")) and not (exported / "cohort").exists()
    loaded = NAMDPipeline.from_pretrained(exported, device="cpu")
    crops, ehrs = _inputs()
    np.testing.assert_array_equal(pipe(crops, ehrs, k=2), loaded(crops, ehrs, k=2))
    assert loaded.model_hash == pipe.model_hash == index["model_sha256"]
    a, b = pipe.predict(crops[:1], ehrs[:1])[0], loaded.predict(crops[:1], ehrs[:1])[0]
    assert a.p_followup == b.p_followup and a.p_baseline == b.p_baseline


def test_a_model_folder_of_an_older_namd_still_loads(exported, tmp_path):
    """Before the table of methods, model_index.json named the method `variant`."""
    old = tmp_path / "old"
    shutil.copytree(exported, old)
    index = json.loads((old / "model_index.json").read_text())
    index["variant"] = index.pop("method")
    (old / "model_index.json").write_text(json.dumps(index))
    assert NAMDPipeline.from_pretrained(old, device="cpu").method == "namd"


def test_model_card_has_data_table_and_curves(exported):
    card = (exported / "README.md").read_text()
    assert "research use, not a medical device" in card.lower()
    assert "| train | 4 | 4 |" in card and "| test | 2 | 2 |" in card  # patients, pairs per split
    assert "Not evaluated" in card  # the tiny run has no eval/metrics.json
    pngs = sorted(p.name for p in (exported / "curves").glob("*.png"))
    assert pngs == ["cond.png", "evaluator.png", "prior.png"]  # the VAE was not trained by namd
    assert all(f"curves/{name}" in card for name in pngs)
    assert all((exported / "curves" / n).read_bytes()[:4] == b"\x89PNG" for n in pngs)
    assert "## Radiologist's readout" in card and "| solid | +0.74 | 1.10 | 0.67 |" in card
    assert "Sizes are read from one 2D crop" in card  # the readout's notice


def test_a_tampered_file_is_refused_naming_it(exported, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    flip_bit(copy / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(RunFileError, match=r"unet/diffusion_pytorch_model\.safetensors: sha256 .* differs"):
        NAMDPipeline.from_pretrained(copy, device="cpu")
    shutil.rmtree(copy / "evaluator")
    with pytest.raises(RunFileError, match="evaluator: missing"):
        NAMDPipeline.from_pretrained(copy, device="cpu")


def test_not_a_model_unknown_variant_missing_variant_and_device(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a namd model folder .no model_index.json"):
        NAMDPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="method must be one of namd, no_align, null_context, sd15, flux, ddlcxr, got 'big'"):
        NAMDPipeline.from_run(tiny_run, method="big")
    with pytest.raises(FileNotFoundError, match=r"vae_no_align not found.*namd train vae --run .* --method no_align"):
        NAMDPipeline.from_run(tiny_run, method="no_align")
    with pytest.raises(FileNotFoundError, match=r"cond_null_context not found.*--method null_context"):
        NAMDPipeline.from_run(tiny_run, method="null_context")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu7")
    if not namd.inference.sampler.torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available on this machine"):
            NAMDPipeline.from_run(tiny_run, device="cuda")


def test_export_command_and_predict_from_the_folder(tiny_run, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["export", str(tiny_run.path), str(out)]) == 0
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    assert main(["export", str(tiny_run.path), str(out)]) == 1  # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
    np.save(tmp_path / "c.npy", disc(3, np.random.default_rng(2)))
    (tmp_path / "e.json").write_text(json.dumps({"SCT_LONG_DIA": 6.0}))
    assert main(["predict", "--model", str(out), "--ehr", str(tmp_path / "e.json"), "--crop",
                 str(tmp_path / "c.npy"), "--k", "2", "--out", str(tmp_path / "p")]) == 0
    result = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert result["k"] == 2 and result["provenance"]["method"] == "namd"
    assert str(tmp_path) not in (tmp_path / "p" / "prediction.json").read_text()


def test_import_namd_does_not_import_torch():
    code = ("import sys, namd; assert 'torch' not in sys.modules; from namd import EHR; "
            "assert 'torch' not in sys.modules; print(namd.NAMDPipeline.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "NAMDPipeline"
