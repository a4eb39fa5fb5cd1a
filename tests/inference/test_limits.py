"""The limits of a long request are said (issue 27): `namd predict` and `namd sample` print
their estimated time, memory and disk before sampling, `namd serve` refuses a click past its
bound, `predict --out` is all or nothing and draws at most GRID_MAX follow-ups, and of two
`namd export` runs into the same new folder exactly one succeeds (tiny_run: tests/conftest.py;
it is copied before anything writes into it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import SIZE, disc

import namd.inference.pipeline
import namd.inference.sample_stage
from namd.cli.commands.predict import GRID_MAX, terminate_as_exit
from namd.cli.main import main
from namd.config import methods
from namd.inference.estimate import Request, estimate, model_cost
from namd.inference.pipeline import run_files
from namd.run.provenance import atomic_dir, reclaim_partials


@pytest.fixture
def inputs(tmp_path):
    np.save(tmp_path / "c.npy", disc(3, np.random.default_rng(2)))
    (tmp_path / "e.json").write_text(json.dumps({"SCT_LONG_DIA": 6.0}))
    return ["--ehr", str(tmp_path / "e.json"), "--crop", str(tmp_path / "c.npy")]


@pytest.fixture(scope="module")
def cost(tiny_run):
    return model_cost(run_files(tiny_run, dict(methods.get(methods.REFERENCE).uses)))


# -- the estimate ----------------------------------------------------------------------------
def test_the_model_cost_is_what_a_real_forward_counts(tiny_run, cost):
    """FLOPs counted on the meta copy are those of the loaded U-Net's and VAE's real forward
    (within 10%: meta tensors take attention's math path, counted as its matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pipe = namd.inference.pipeline.NAMDPipeline.from_run(tiny_run, device="cpu")
    unet, vae = pipe.sampler.unet, pipe.sampler.vae
    c, h, w = cost.latent
    context = torch.zeros(1, pipe.sampler.encoder.n_tokens, pipe.sampler.encoder.dim)
    with FlopCounterMode(display=False) as flops, torch.inference_mode():
        unet(torch.zeros(1, unet.config.in_channels, h, w), torch.tensor([1]), encoder_hidden_states=context)
    assert flops.get_total_flops() == pytest.approx(cost.unet_flops, rel=0.1)
    with FlopCounterMode(display=False) as flops, torch.inference_mode():
        vae.decode(torch.zeros(1, c, h, w))
    assert flops.get_total_flops() == pytest.approx(cost.decode_flops, rel=0.1)
    assert cost.weight_bytes > 0 and (h, w) == (SIZE // 4, SIZE // 4)


def test_the_estimate_scales_with_the_request_and_says_the_issue_numbers(cost):
    one = estimate(Request(130, 20, 10, 64), cost, "cpu")
    assert one.seconds > 0 and one.memory_bytes > 0
    big = estimate(Request(130, 10000, 10, 64), cost, "cpu")
    assert big.disk_bytes == pytest.approx(130 * 10000 * 64 * 64 * 4, rel=1e-3)  # the issue's 21 GB
    assert "21.3 GB on disk" in big.line()
    assert 400 < big.seconds / one.seconds < 600  # linear in K, up to the fixed cost per call
    longer = estimate(Request(130, 20, 50, 64), cost, "cpu")
    assert 4 < longer.seconds / one.seconds < 5.5  # the U-Net's share grows with the steps
    kept = estimate(Request(1, 10000, 10, 64, samples_in_memory=True), cost, "cpu")
    assert kept.memory_bytes - estimate(Request(1, 10000, 10, 64), cost, "cpu").memory_bytes \
        == 2 * 10000 * 64 * 64 * 4
    gpu = estimate(Request(130, 20, 10, 64), cost, "cuda:0")
    assert gpu.seconds is None and "time not estimated on cuda" in gpu.line()


def test_predict_prints_its_estimate_before_sampling(tiny_run, inputs, tmp_path, capsys, monkeypatch):
    calls = []
    load = namd.inference.pipeline.NAMDPipeline.from_run
    monkeypatch.setattr(namd.inference.pipeline.NAMDPipeline, "from_run",
                        lambda *a, **kw: calls.append(capsys.readouterr().out) or load(*a, **kw))
    assert main(["predict", "--run", str(tiny_run.path), *inputs, "--k", "3", "--steps", "2"]) == 0
    printed = calls[0].strip().splitlines()  # everything printed before the model loaded
    assert len(printed) == 1 and printed[0].startswith("estimate: 1 nodule(s) x K = 3 x 2 steps = 6 ")
    assert "on this cpu" in printed[0] and "of memory" in printed[0] and "on disk" in printed[0]


def test_sample_prints_its_estimate_before_sampling(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    assert main(["sample", "--run", str(run), "--k", "3", "--steps", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("estimate: 2 nodule(s) x K = 3 x 2 steps = 12 latent-steps: about ")
    assert out[-1].startswith("sample: done")


# -- serve's bound ---------------------------------------------------------------------------
def test_serve_refuses_a_click_past_its_time_bound(tiny_run, monkeypatch):
    import namd.serve.session as session_module

    pipe = namd.inference.pipeline.NAMDPipeline.from_run(tiny_run, device="cpu")
    session = session_module.Session(pipe)
    try:
        assert session.sampling(200, 999, 1) == (200, 999, 1)  # the tiny model is fast enough
        seconds = session.estimate(pipe.sampling_config(200, 999, 1)).seconds
        monkeypatch.setattr(session_module, "MAX_SECONDS", seconds / 2)
        with pytest.raises(ValueError, match=r"k = 200 with 999 steps is too long for this page "
                                             r"\(estimate: 1 nodule\(s\) x K = 200 x 999 steps"):
            session.sampling(200, 999, 1)
        assert session.sampling(2, 999, 1) == (2, 999, 1)
    finally:
        session.close()


# -- predict --out: all or nothing, a readable grid ------------------------------------------
def test_predict_out_draws_at_most_grid_max_follow_ups(tiny_run, inputs, tmp_path, monkeypatch):
    drawn = []
    save = namd.inference.sample_stage.save_grid
    monkeypatch.setattr(namd.inference.sample_stage, "save_grid",
                        lambda path, base, follow, samples, *a: drawn.append((len(samples), a[-1]))
                        or save(path, base, follow, samples, *a))
    k = GRID_MAX + 5
    assert main(["predict", "--run", str(tiny_run.path), *inputs, "--k", str(k), "--steps", "1",
                 "--out", str(tmp_path / "p")]) == 0
    assert np.load(tmp_path / "p" / "samples.npy").shape == (k, SIZE, SIZE)  # all samples kept
    assert drawn[0][0] == GRID_MAX and f"the first {GRID_MAX} of {k}" in drawn[0][1]
    assert (tmp_path / "p" / "grid.png").stat().st_size > 0


def test_sigterm_while_writing_leaves_nothing(tiny_run, inputs, tmp_path, monkeypatch):
    """A stop while the outputs are written (SIGTERM, as `timeout` and kill send) leaves no
    folder and no partial folder: the signal ends the command through atomic_dir's cleanup."""
    save = namd.inference.sample_stage.save_grid

    def stopped(*args):
        save(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(namd.inference.sample_stage, "save_grid", stopped)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--run", str(tiny_run.path), *inputs, "--k", "2", "--out", str(tmp_path / "p")])
    assert stop.value.code == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "e.json"]
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the block


def test_terminate_as_exit_is_only_for_its_block():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match=str(128 + signal.SIGTERM)), terminate_as_exit():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == previous


def test_partial_folders_of_killed_runs_are_reclaimed(tiny_run, inputs, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    killed = tmp_path / f".p.pid{dead}-abc123.partial"
    alive = tmp_path / f".p.pid{os.getpid()}-def456.partial"  # a writer still at work
    for folder in (killed, alive):
        folder.mkdir()
        (folder / "samples.npy").write_bytes(b"half")
    assert main(["predict", "--run", str(tiny_run.path), *inputs, "--k", "2", "--out", str(tmp_path / "p")]) == 0
    assert not killed.exists() and alive.exists() and (tmp_path / "p" / "prediction.json").is_file()
    assert reclaim_partials(tmp_path / "p") == []  # the live one is never taken


# -- two writers of one new folder -----------------------------------------------------------
def test_a_folder_that_appears_meanwhile_is_not_replaced(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(FileExistsError, match=r"out appeared while this command was writing it .*"
                                              r"use --overwrite to replace it"):
        with atomic_dir(final) as tmp:
            (tmp / "mine.txt").write_text("mine")
            final.mkdir()
            (final / "theirs.txt").write_text("theirs")
    assert [p.name for p in final.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial left
    with atomic_dir(final, overwrite=True) as tmp:  # with overwrite the last writer wins, as before
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in final.iterdir()] == ["mine.txt"]


def test_two_exports_into_one_new_folder_exactly_one_succeeds(tiny_run, tmp_path, capsys, monkeypatch):
    both_writing = threading.Barrier(2, timeout=120)
    save_config = namd.inference.pipeline.save_config

    def meet(*args):  # both exports are inside their partial folders before either publishes
        both_writing.wait()
        save_config(*args)

    monkeypatch.setattr(namd.inference.pipeline, "save_config", meet)
    # loaded once: torch's model loading is not thread-safe (accelerate patches torch.nn while
    # it builds on the meta device), and two exports are two processes, not two threads
    pipe = namd.inference.pipeline.NAMDPipeline.from_run(tiny_run, device="cpu")
    monkeypatch.setattr(namd.inference.pipeline.NAMDPipeline, "from_run", lambda *a, **kw: pipe)
    out, codes = tmp_path / "m", []
    threads = [threading.Thread(target=lambda: codes.append(main(["export", str(tiny_run.path), str(out)])))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = capsys.readouterr().err.strip().splitlines()
    assert sorted(codes) == [0, 1]
    assert len(err) == 1 and err[0].startswith("namd export: error:") and "appeared while" in err[0]
    namd.inference.pipeline.verify_folder(out)  # the winner's folder, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
