"""Weights are the ones written (issue 27, goal 4): a finished stage records the sha256 of every
weight file it wrote in its run_info.json (`weights_sha256`), and every reader of a weight file
checks it, so one flipped byte (which still parses) is a one-line error naming the file, from
the API and the CLI alike; a stage made by an older namd (no record) is read as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import disc, flip_bit

from namd.cli.main import main
from namd.config import load_config
from namd.inference.pipeline import NAMDPipeline
from namd.models.unet import load_unet
from namd.run import provenance
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, WEIGHTS_KEY, file_sha256
from namd.training.latents import cache_path, load_or_build

UNET = "cond/unet/diffusion_pytorch_model.safetensors"
EVALUATOR = "evaluator/checkpoints/best/ema_vit.safetensors"  # the EMA weights (evaluator.train.ema_decay)
VAE = "vae/autoencoder/diffusion_pytorch_model.safetensors"
WRITER = {UNET: "namd train cond", EVALUATOR: "namd train evaluator", VAE: "namd train vae"}


def _copy(tiny_run: RunDir, tmp_path: Path) -> Path:
    """A copy of the finished tiny run that a test may damage."""
    return Path(shutil.copytree(tiny_run.path, tmp_path / "run"))


_flip = flip_bit  # one bit of the last byte (tensor data: the file still parses)


def _forget_records(run: Path) -> None:
    """Every stage's run_info.json as an older namd wrote it: without `weights_sha256`."""
    for info in run.glob(f"*/{RUN_INFO}"):
        data = json.loads(info.read_text())
        data.pop(WEIGHTS_KEY, None)
        info.write_text(json.dumps(data))


def _recorded(run: Path, stage: str) -> dict[str, str]:
    return json.loads((run / stage / RUN_INFO).read_text()).get(WEIGHTS_KEY, {})


def test_a_finished_stage_records_the_weights_its_readers_read(tiny_run):
    run = tiny_run.path
    assert set(_recorded(run, "vae")) == {"autoencoder/diffusion_pytorch_model.safetensors"}
    assert set(_recorded(run, "prior")) == {"unet/diffusion_pytorch_model.safetensors",
                                            "null_context.safetensors"}
    assert set(_recorded(run, "cond")) == {"unet/diffusion_pytorch_model.safetensors",
                                           "context_encoder.safetensors"}
    # the evaluator's best checkpoint is what inference reads; resume state is never recorded
    assert set(_recorded(run, "evaluator")) == {"checkpoints/best/ema_vit.safetensors"}
    for stage in ("vae", "prior", "cond", "evaluator"):
        for rel, digest in _recorded(run, stage).items():
            assert digest == file_sha256(run / stage / rel)


@pytest.mark.parametrize("rel", [UNET, EVALUATOR, VAE])
def test_a_flipped_byte_is_named_by_the_api(tiny_run, tmp_path, rel):
    run = _copy(tiny_run, tmp_path)
    _flip(run / rel)
    with pytest.raises(RunFileError) as info:
        NAMDPipeline.from_run(RunDir(run))
    assert info.value.path == run / rel
    message = str(info.value)
    assert "\n" not in message and "sha256 differs" in message and WRITER[rel] in message
    assert f"{WRITER[rel]} --run {run} --overwrite" in info.value.remedy
    assert "changed after" not in message and "retrain prior" not in message  # not the order


@pytest.mark.parametrize("command,rel", [("sample", UNET), ("sample", VAE), ("predict", UNET),
                                         ("predict", EVALUATOR), ("predict", VAE)])
def test_a_flipped_byte_is_one_line_from_the_cli(tiny_run, tmp_path, capsys, command, rel):
    run = _copy(tiny_run, tmp_path)
    _flip(run / rel)
    np.save(tmp_path / "c.npy", disc(3, np.random.default_rng(1)))
    (tmp_path / "e.json").write_text(json.dumps({"SCT_LONG_DIA": 6.0}))
    args = {"sample": ["sample", "--run", str(run)],
            "predict": ["predict", "--run", str(run), "--ehr", str(tmp_path / "e.json"),
                        "--crop", str(tmp_path / "c.npy"), "--k", "2", "--steps", "1"]}[command]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / rel}: its sha256 differs" in err
    assert not (run / "samples").exists()


def test_a_damaged_vae_is_named_by_the_latent_cache(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    _flip(run / VAE)
    config = load_config(base=RunDir(run).saved_config())
    with pytest.raises(RunFileError, match="its sha256 differs") as info:
        load_or_build(cache_path(run, "vae"), run / "cohort", run / "vae", config.data.window_hu)
    assert info.value.path == run / VAE


def test_an_untouched_run_loads_and_hashes_each_file_once(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    pipe = NAMDPipeline.from_run(RunDir(run))
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert pipe.hashes[weights] == _recorded(run, "cond")[weights]  # the same file, as written
    before = provenance._cached_sha256.cache_info().misses
    load_unet(run / "cond")
    assert provenance._cached_sha256.cache_info().misses == before  # cached: same size, mtime
    _flip(run / UNET)  # a new state of the file is hashed again, and refused
    with pytest.raises(RunFileError, match="its sha256 differs"):
        load_unet(run / "cond")
    assert provenance._cached_sha256.cache_info().misses == before + 1


def test_a_run_of_an_older_namd_loads_as_before(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    _forget_records(run)
    NAMDPipeline.from_run(RunDir(run))
    _flip(run / UNET)  # nothing recorded, nothing to check against: read as before
    NAMDPipeline.from_run(RunDir(run))


def test_a_damaged_record_is_named(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    info = run / "cond" / RUN_INFO
    data = json.loads(info.read_text())
    data[WEIGHTS_KEY] = ["not", "a", "map"]
    info.write_text(json.dumps(data))
    with pytest.raises(RunFileError, match=f"{WEIGHTS_KEY} is not an object") as caught:
        load_unet(run / "cond")
    assert caught.value.path == info
