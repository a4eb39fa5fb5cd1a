"""The stage contract, damaged every way: for every file a stage reads (namd.run.contract) in one
finished tiny run, each of deleted / cut to half / overwritten with garbage, every reader of
it is called in-process. Each raises RunFileError, one line naming the file and what to do
(or does what the contract documents instead: a missing run_info.json is "not done", a damaged
latent cache is rebuilt), and leaves no half-written folder behind."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SMALL

from namd.cli.main import main
from namd.cli.options import resolve_config
from namd.cohort.known_futures import read_known_futures
from namd.cohort.store import Cohort
from namd.config import load_config, methods
from namd.evaluation import evaluate
from namd.evaluation.report.build import build_section, section_table, stage_reports_html
from namd.evaluation.report.inputs import Context
from namd.inference.sampler import load_context_encoder
from namd.models.calibration import load_calibration
from namd.models.evaluator import load_evaluator
from namd.models.null_context import load_null
from namd.models.probe import load_probe
from namd.models.schedules import load_scheduler_config
from namd.models.unet import load_unet
from namd.models.vae import load_trained_vae
from namd.run.contract import RunFile, RunFileError, contracts, sampler_reader
from namd.run.layout import RunDir
from namd.run.readers import check_safetensors
from namd.training import imageflownet as imageflownet_stage
from namd.training.latents import LatentStore, cache_path, load_or_build, rotations_needed
from namd.training.mcwgan import read_classifier

# The folders of a run of NAMD and the compared methods, without the ablations (whose folders
# hold the same files, read by the same functions); "" is RUN itself. A compared method's VAE
# and samples are read as NAMD's are; its conditional model is its own.
FOLDERS = ("", "cohort", "cache", "vae", "prior", "cond", "evaluator", "samples", "eval", "report",
           "cond_sd15", "cond_flux", "cond_ddlcxr", "classifier_mcwgan", "cond_mcwgan",
           "autoencoder_corrflownet", "cond_corrflownet", "autoencoder_imageflownet",
           "cond_imageflownet")
COMPARED = ("sd15", "flux", "ddlcxr", "mcwgan", "corrflownet_ode", "corrflownet_sde", "imageflownet")
# their stages at their smallest: they check that the files fit together, not what they learn
COMPARED_SMALL = ["--set", "flux.train.max_steps=2", "--set", "flux.sampling_steps=2",
                  "--set", "ddlcxr.vae.train.max_steps=2", "--set", "ddlcxr.train.max_steps=2",
                  "--set", "ddlcxr.sampling_steps=2"]
COMPARED_SMALL += [x for o in (
    "mcwgan.classifier.train.max_steps=2", "mcwgan.classifier.train.batch_size=4",
    "mcwgan.classifier.widths=[8,16]", "mcwgan.train.max_steps=2", "mcwgan.train.batch_size=4",
    "mcwgan.train.val_every=1", "mcwgan.predictor_widths=[8,16]", "mcwgan.critic_widths=[8,16]",
    "corrflownet.autoencoder.channels=[8,8]", "corrflownet.autoencoder.norm_groups=4",
    "corrflownet.autoencoder.head_width=8", "corrflownet.autoencoder.train.max_steps=2",
    "corrflownet.autoencoder.train.batch_size=4", "corrflownet.flow.block_out_channels=[8,16]",
    "corrflownet.flow.norm_num_groups=4", "corrflownet.train.max_steps=2",
    "corrflownet.train.batch_size=4", "corrflownet.sampling_steps=2",
    "imageflownet.unet.channels=[4,8]", "imageflownet.unet.norm_groups=2",
    "imageflownet.recon.train.max_steps=1", "imageflownet.recon.train.batch_size=4",
    "imageflownet.train.max_steps=1", "imageflownet.train.batch_size=4",
    "imageflownet.solver_steps=1", "imageflownet.sampling_steps=1") for x in ("--set", o)]
LOCKS = ".locks"  # namd.run.locking: RUN/.locks/<stage>.lock, runtime state rather than run data
LEFTOVER = re.compile(r"^\..*\.(partial|tmp)$|\.old-\d+$")


def _delete(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a new file: the copy's files are hard links to the finished run's
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    size = path.stat().st_size
    path.unlink()
    path.write_bytes(np.random.default_rng(size).bytes(size))


DAMAGES: dict[str, Callable[[Path], None]] = {"deleted": _delete, "truncated": _truncate,
                                              "garbage": _garbage}


@dataclass
class Finished:
    """The finished run and what the readers need from it."""

    path: Path
    config: Any
    pairs: Any
    crop_size: int
    snapshot: dict[str, tuple[int, int]]


@dataclass
class Case:
    """One reader call on a damaged copy of the run."""

    run: Path
    folder: str
    finished: Finished


def _args() -> argparse.Namespace:
    return argparse.Namespace(preset=None, config=None, overrides=[])


def _latents(c: Case) -> LatentStore:
    cfg = c.finished.config
    return load_or_build(cache_path(c.run, "vae"), c.run / "cohort", c.run / "vae",
                         cfg.data.window_hu, cfg.diffusion.encode_batch, "cpu")


def _images(c: Case) -> np.ndarray:
    cohort = Cohort(c.run / "cohort")
    return cohort.images(np.arange(len(cohort)))


def _sampler(c: Case) -> Any:
    """The sampler of the first method that reads c.folder (NAMD's otherwise)."""
    owner = next((m for m in methods.METHODS.values() if c.folder in m.uses.values()),
                 methods.get(methods.REFERENCE))
    return owner.load_sampler(RunDir(c.run), c.finished.config)


# reader (as the contract names it) -> how a stage or command calls it on the run
READERS: dict[str, Callable[[Case], Any]] = {
    "namd.run.layout.RunDir.is_done": lambda c: RunDir(c.run).is_done(c.folder),
    "namd.run.layout.RunDir.saved_config": lambda c: RunDir(c.run).saved_config(),
    "namd.cli.options.resolve_config": lambda c: resolve_config(_args(), RunDir(c.run)),
    "namd.cohort.store.Cohort": lambda c: Cohort(c.run / "cohort"),
    "namd.cohort.store.Cohort.images": _images,
    "namd.cohort.known_futures.read_known_futures": lambda c: read_known_futures(c.run / "cohort"),
    "namd.models.vae.load_trained_vae": lambda c: load_trained_vae(c.run / c.folder),
    "namd.models.probe.load_probe": lambda c: load_probe(c.run / c.folder),
    "namd.training.latents.load_or_build": _latents,
    "namd.models.unet.load_unet": lambda c: load_unet(c.run / c.folder),
    "namd.models.schedules.load_scheduler_config": lambda c: load_scheduler_config(c.run / c.folder),
    "namd.models.null_context.load_null": lambda c: load_null(c.run / c.folder),
    "namd.inference.sampler.load_context_encoder": lambda c: load_context_encoder(c.run / c.folder),
    "namd.inference.sampler.FollowUpSampler.from_run": _sampler,
    **{sampler_reader(methods.get(n)): _sampler for n in COMPARED},
    "namd.training.mcwgan.read_classifier": lambda c: read_classifier(RunDir(c.run), c.folder,
                                                                      "mcwgan"),
    "namd.training.imageflownet.load_unet": lambda c: imageflownet_stage.load_unet(
        RunDir(c.run), c.folder, c.finished.config.imageflownet, 0),
    "namd.models.evaluator.load_evaluator": lambda c: load_evaluator(c.run / c.folder),
    "namd.models.calibration.load_calibration": lambda c: load_calibration(c.run / c.folder),
    "namd.evaluation.sample_folder.load_samples": lambda c: evaluate.load_samples(
        c.run / c.folder, c.finished.pairs, "test", c.finished.crop_size),
    "namd.evaluation.report.inputs.Context.metrics": lambda c: Context(
        RunDir(c.run), c.finished.config).metrics(),
    "namd.evaluation.report.inputs.Context.per_nodule": lambda c: Context(
        RunDir(c.run), c.finished.config).per_nodule(),
    "namd.evaluation.report.inputs.Context.samples": lambda c: Context(
        RunDir(c.run), c.finished.config).samples(c.folder),
    "namd.evaluation.report.build.stage_reports_html": lambda c: stage_reports_html(RunDir(c.run)),
}

CASES = [(s.folder, f, damage, reader) for s in contracts() if s.folder in FOLDERS
         for f in s.writes for damage in DAMAGES for reader in f.readers]


def _id(case: tuple[str, RunFile, str, str]) -> str:
    folder, f, damage, reader = case
    return f"{folder or 'RUN'}/{f.pattern}-{damage}-{reader.rsplit('.', 2)[-2]}.{reader.rsplit('.', 1)[-1]}"


def _build(out: Path) -> None:
    assert main(["demo", "--out", str(out), "--jobs", "1", "--methods", ",".join(("namd", *COMPARED)),
                 *SMALL, *COMPARED_SMALL]) == 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Finished:
    """One finished tiny run (no ablations), shared by xdist workers through a file lock."""
    from filelock import FileLock

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    out = root / "contract" / "run"
    with FileLock(str(root / "contract.lock")):
        if not (root / "contract" / "built").is_file():
            shutil.rmtree(out, ignore_errors=True)
            _build(out)
            (root / "contract" / "built").touch()
    config = load_config(base=RunDir(out).saved_config())
    cohort = Cohort(out / "cohort")
    return Finished(out, config, evaluate.test_pairs(cohort, "test")[0], cohort.crop_size, _snapshot(out))


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def _copy(finished: Finished, tmp_path: Path) -> Path:
    """The finished run as hard links (fast); damage replaces files, never writes into them.
    Lock files (RUN/.locks) are written in place by whoever locks, so they are not linked."""
    run = tmp_path / "run"
    shutil.copytree(finished.path, run, copy_function=os.link, ignore=shutil.ignore_patterns(LOCKS))
    return run


def _files(run: Path, folder: str, pattern: str) -> list[Path]:
    base = run / folder
    return sorted(p for p in base.rglob("*") if p.is_file()
                  and fnmatch(p.relative_to(base).as_posix(), pattern))


def _leftovers(run: Path) -> list[str]:
    return [str(p) for p in run.rglob("*") if LEFTOVER.search(p.name)]


@pytest.mark.parametrize("folder,file,damage,reader", CASES, ids=[_id(c) for c in CASES])
def test_damaged_file(finished, tmp_path, folder, file, damage, reader):
    run = _copy(finished, tmp_path)
    targets = _files(run, folder, file.pattern)
    assert targets, f"the finished run has no {folder}/{file.pattern}"
    for path in targets:
        DAMAGES[damage](path)
    before = sorted(p.name for p in run.iterdir())
    call = READERS[reader]
    if file.rebuilt:
        store = call(Case(run, folder, finished))
        assert isinstance(store, LatentStore) and check_safetensors(targets[0])  # rebuilt whole
    elif damage == "deleted" and reader in file.absent_ok:
        result = call(Case(run, folder, finished))
        assert result is False or result is None or result == "" or (
            isinstance(result, tuple) and str(result[1]).startswith("not run")) or (
            isinstance(result, str) and result.startswith("not available: ")) or (
            isinstance(result, str) and f"<th>RUN/{folder}</th>" not in result
            and "Latent-space" in result)  # None: no calibration; the other VAEs' reports
    else:
        with pytest.raises(RunFileError) as info:
            call(Case(run, folder, finished))
        message = str(info.value)
        assert "\n" not in message and " — " in message
        assert any(str(p) in message for p in targets), message
        assert any(word in info.value.remedy for word in ("namd ", "restore", "delete"))
    assert sorted(p.name for p in run.iterdir()) == before  # no stage folder made or removed
    assert not _leftovers(run)


def _flip(path: Path) -> None:
    """One bit of the last value changed: a safetensors file that still parses."""
    data = bytearray(path.read_bytes())
    path.unlink()
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def _nan(path: Path) -> None:
    """A NaN in place of the first value of an array that still loads (an integer array, such as
    the known futures' int16 HU, becomes float32 to hold it)."""
    arr = np.array(np.load(path))
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    path.unlink()
    arr.flat[0] = np.nan
    np.save(path, arr)


def _reorder(path: Path) -> None:
    """The rows of a CSV table reversed, its header kept: a table that still parses."""
    lines = path.read_text().splitlines(keepends=True)
    path.unlink()
    path.write_text(lines[0] + "".join(reversed(lines[1:])))


def _edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """A JSON file with one value changed so that it still parses."""
    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        path.unlink()
        change(data)
        path.write_text(json.dumps(data))
    return damage


# Damage that parses (issue 27): each reader must still refuse it, naming the file.
MEANING: dict[str, Callable[[Path], None]] = {
    "flipped": _flip, "nan": _nan, "reordered": _reorder,
    "inverted": _edit_json(lambda d: d.update(method="platt", status="ok", intercept=0.0,
                                              slope=-abs(float(d.get("slope") or 1.0)))),
    "non-finite": _edit_json(lambda d: d.update(n_test=float("nan"))),
}


def _meaning_damages(folder: str, f: RunFile) -> list[str]:
    """The damages that parse which apply to a file of the contract."""
    if f.kind == "safetensors" and f.readers:
        return ["flipped"]
    if f.kind == "npy" and f.readers:
        return ["nan"]
    return {"index.csv": ["reordered"], "calibration.json": ["inverted"],
            "metrics.json": ["non-finite"]}.get(f.pattern, [])


PARSING = [(s.folder, f, damage, reader) for s in contracts() if s.folder in FOLDERS
           for f in s.writes for damage in _meaning_damages(s.folder, f) for reader in f.readers]


@pytest.mark.parametrize("folder,file,damage,reader", PARSING, ids=[_id(c) for c in PARSING])
def test_damage_that_parses_is_refused(finished, tmp_path, folder, file, damage, reader):
    """A flipped byte, a NaN, reordered rows, an inverted calibration, a non-finite metric:
    files that parse but mean something else are refused in one line naming them (a damaged
    cache is rebuilt), never read as if they were what namd wrote."""
    run = _copy(finished, tmp_path)
    targets = _files(run, folder, file.pattern)
    assert targets, f"the finished run has no {folder}/{file.pattern}"
    for path in targets:
        MEANING[damage](path)
    call = READERS[reader]
    if file.rebuilt:
        store = call(Case(run, folder, finished))  # rebuilt: every entry a stage reads is finite
        needed = torch.from_numpy(rotations_needed(Cohort(run / "cohort"), store.rotations))
        assert isinstance(store, LatentStore)
        assert bool((torch.isfinite(store.latents.flatten(2)).all(2) == needed).all())
        return
    with pytest.raises(RunFileError) as info:
        call(Case(run, folder, finished))
    message = str(info.value)
    assert "\n" not in message and " — " in message
    assert any(str(p) in message for p in targets), message
    assert not _leftovers(run)


def test_every_file_of_the_run_is_in_the_contract(finished):
    by_folder = {s.folder: s for s in contracts()}
    unknown = []
    for path in sorted(p for p in finished.path.rglob("*") if p.is_file()):
        rel = path.relative_to(finished.path)
        folder = rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in by_folder else ""
        inner = rel.relative_to(folder).as_posix() if folder else rel.as_posix()
        if not any(fnmatch(inner, f.pattern) for f in by_folder[folder].writes):
            unknown.append(str(rel))
    assert not unknown
    for folder in FOLDERS:  # every folder of the matrix is there, with its read files
        for f in by_folder[folder].writes:
            if f.readers:
                assert _files(finished.path, folder, f.pattern), (folder, f.pattern)


def test_every_reader_named_by_the_contract_exists():
    names = {r for s in contracts() for f in s.writes for r in (*f.readers, *f.absent_ok, *f.unchecked)}
    for name in names:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        assert callable(obj), name
    assert {r for s in contracts() for f in s.writes for r in f.readers} <= set(READERS)


def test_every_file_a_stage_reads_is_written_by_another():
    for stage in contracts():
        for read in stage.reads:  # "folder/pattern" ("*" for any folder), or a file of RUN
            folder, pattern = read.split("/", 1) if "/" in read else ("", read)
            writers = [s for s in contracts() if fnmatch(s.folder, folder) and bool(s.folder) == bool(folder)]
            assert writers, (stage.folder, read)
            assert any(fnmatch(pattern, f.pattern) or fnmatch(f.pattern, pattern)
                       for s in writers for f in s.writes), (stage.folder, read)


def test_readme_states_the_size_of_the_matrix():
    files = {(c[0], c[1].pattern) for c in CASES}
    text = (Path(__file__).parents[2] / "docs" / "reliability.md").read_text()
    section = text.split("## The damage matrix")[1].split("\n## ")[0]
    assert f"{len(CASES)} cases" in section and f"{len(files)} files" in section
    parsing = {(c[0], c[1].pattern) for c in PARSING}
    assert f"{len(parsing)} files, {len(PARSING)} cases" in section


@pytest.mark.parametrize("text,problem", [
    ("", "empty"),
    ("data: [1,\n", "not valid YAML"),
    ("- a list\n", "holds a YAML list, not a mapping"),
    ("data:\n  crop_size: many\n", "not a valid namd config (config field data.crop_size"),
])
def test_a_bad_config_yaml_says_what_is_wrong(finished, tmp_path, text, problem):
    run = _copy(finished, tmp_path)
    (run / "config.yaml").unlink()
    (run / "config.yaml").write_text(text)
    with pytest.raises(RunFileError, match=re.escape(f"{run / 'config.yaml'}: {problem}")):
        resolve_config(_args(), RunDir(run))


def test_cli_says_one_line_and_exits_1_traceback_only_with_v(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    weights = run / "cond" / "unet" / "diffusion_pytorch_model.safetensors"
    _truncate(weights)
    assert main(["sample", "--run", str(run), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(weights) in err
    assert f"namd train cond --run {run} --overwrite" in err
    assert RunDir(run).is_done("samples") and not _leftovers(run)  # the old samples stay
    with pytest.raises(RunFileError) as info:
        main(["-v", "sample", "--run", str(run), "--overwrite"])
    assert info.value.__traceback__ is not None and info.value.path == weights


def test_demo_on_a_damaged_run_is_one_line(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    _garbage(run / "vae" / "run_info.json")  # never "not done", which would retrain over it
    assert main(["demo", "--out", str(run), "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vae/run_info.json: not text" in err
    _delete(run / "config.yaml")  # a run whose stages ran with a config cannot lose it
    assert main(["demo", "--out", str(run), "--jobs", "1"]) == 1
    assert "config.yaml: missing, though stage(s) vae" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()


def test_report_on_a_corrupt_input_is_an_error(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    index = (run / "report" / "index.html").stat().st_ino
    (run / "eval" / "metrics.json").unlink()
    (run / "eval" / "metrics.json").write_text('{"rows": [')
    assert main(["report", "--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json: not valid JSON" in err
    assert f"namd evaluate --run {run}" in err
    assert (run / "report" / "index.html").stat().st_ino == index and not _leftovers(run)


def test_report_missing_optional_input_stays_a_note(finished, tmp_path):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "eval")  # not run (yet): the section says which command makes it
    section = build_section(Context(RunDir(run), finished.config), "table", "t", section_table)
    assert section.status == "missing" and f"namd evaluate --run {run}" in section.body
    for report in run.glob("vae*/report.json"):  # NAMD's, and the compared methods' VAEs
        report.unlink()
    assert stage_reports_html(RunDir(run)) == ""


def test_the_finished_run_was_never_written_into(finished):
    """Every case damaged its own copy: the hard-linked originals are as the demo left them."""
    assert _snapshot(finished.path) == finished.snapshot


def test_every_method_of_the_run_loads_in_the_pipeline_and_predicts(finished):
    """NAMDPipeline.from_run (namd predict, namd serve) loads any method's trained model, NAMD's
    or a compared method's own, and draws its K follow-ups for a new patient; `namd export`
    writes NAMD's layout only and refuses a compared method's own networks in one line."""
    from namd.cohort.ehr import EHR
    from namd.inference.pipeline import NAMDPipeline

    crop = Cohort(finished.path / "cohort").images([0])[0]
    for name in ("namd", *(n for n in COMPARED if n in methods.loadable())):
        pipe = NAMDPipeline.from_run(finished.path, method=name)
        [pred] = pipe.predict([crop], [EHR(age=61.0, gender=1, SCT_LONG_DIA=6.0)], keys=["p"], k=2)
        assert pred.samples.shape == (2, finished.crop_size, finished.crop_size), name
        assert np.isfinite(pred.samples).all() and pipe.provenance(pipe.sampling_config(), "key")["method"] == name
    with pytest.raises(ValueError, match="flux has networks of its own: load it with NAMDPipeline.from_run"):
        NAMDPipeline.from_run(finished.path, method="flux").save_pretrained(finished.path.parent / "x")


def test_a_compared_methods_steps_are_its_own_and_steps_sets_them(finished, tmp_path, capsys):
    """`namd sample --method flux` draws with flux.sampling_steps (not NAMD's sampling.steps),
    says so in its estimate and its run_info; `--steps N` sets the method's own field."""
    run = _copy(finished, tmp_path)
    assert main(["sample", "--run", str(run), "--method", "flux", "--overwrite", "--k", "2"]) == 0
    info = json.loads((run / "samples_flux" / "run_info.json").read_text())
    assert info["steps"] == finished.config.flux.sampling_steps == 2
    assert main(["sample", "--run", str(run), "--method", "flux", "--overwrite", "--k", "2",
                 "--steps", "3"]) == 0
    assert json.loads((run / "samples_flux" / "run_info.json").read_text())["steps"] == 3
    assert "x 3 steps" in capsys.readouterr().out


def test_the_deterministic_rows_sample_once_and_the_stochastic_ones_k_times(finished):
    """McWGAN and the CorrFlowNet ODE draw one follow-up per nodule, whatever sampling.k; the
    CorrFlowNet SDE and ImageFlowNet draw K; each through the same sample files."""
    for name in ("mcwgan", "corrflownet_ode", "corrflownet_sde", "imageflownet"):
        method = methods.get(name)
        k = np.load(finished.path / method.samples / "samples.npy", mmap_mode="r").shape[1]
        assert k == (finished.config.sampling.k if method.stochastic else 1), name
    ode = np.load(finished.path / "samples_corrflownet_ode" / "samples.npy")
    sde = np.load(finished.path / "samples_corrflownet_sde" / "samples.npy")
    assert not np.array_equal(ode[:, 0], sde[:, 0])  # the SDE's diffusion term is drawn
