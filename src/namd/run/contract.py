"""The stage contract: which files each stage of a run writes, which files of other stages it
reads, and the one error a missing or damaged run file raises.

Every reader of a run file goes through the helpers of namd.run.readers (read_json, read_yaml,
read_csv, load_npy, check_safetensors, load_safetensors, reading), which turn whatever a parser
raises into RunFileError: one line, "<path>: <what is wrong> — <what to do>", where what to do
(remedy_for) names the command that writes the file again. tests/run/test_contract.py damages
every file listed here (deleted, cut to half, overwritten with garbage, and in ways that parse)
and calls every one of its readers.

Light on purpose (standard library only at import): the CLI imports it for `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from namd.config import methods
from namd.config.methods import Method, Stage
from namd.run.errors import one_line
from namd.run.provenance import RUN_INFO

CONFIG_FILE = "config.yaml"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
MAX_DETAIL = 480  # characters of the problem and of the remedy kept in the one-line error (paths of a
# run in a deep folder make a remedy long; a library parser's message can be longer still)


class RunFileError(ValueError):
    """A run file that is missing or damaged: "<path>: <what is wrong> — <what to do>"."""

    def __init__(self, path: str | Path, problem: str, remedy: str | None = None,
                 writer: str | None = None):
        self.path = Path(path)
        self.problem = one_line(problem, MAX_DETAIL)
        self.remedy = one_line(remedy or remedy_for(self.path, writer), MAX_DETAIL)
        super().__init__(f"{self.path}: {self.problem} — {self.remedy}")


@dataclass(frozen=True)
class RunFile:
    """One file (or glob pattern) of a stage folder and the functions that read it.

    readers: functions (module.qualname) that read it through the helpers of this module.
    absent_ok: readers for which a missing file means "not made yet" (a note, "not run" or
        "not done"), not damage. rebuilt: a cache its readers rebuild when it is damaged.
    unchecked: readers that do not go through these helpers yet (their errors may not say
        what to do)."""

    pattern: str
    kind: str  # json | yaml | csv | npy | safetensors | png | html | log | lock
    readers: tuple[str, ...] = ()
    absent_ok: tuple[str, ...] = ()
    rebuilt: bool = False
    unchecked: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageContract:
    """A folder of RUN ("" = RUN itself): what writes it, what it holds, what it reads."""

    folder: str
    command: str  # how to make it; {run} = the run folder, {dir} = this folder
    writes: tuple[RunFile, ...]
    reads: tuple[str, ...] = ()  # files of other folders, "folder/pattern"
    overwrite: str = " --overwrite"  # what `command` needs to replace a finished folder


# -- readers, by the name the contract uses -----------------------------------------------------
IS_DONE = "namd.run.layout.RunDir.is_done"
SAVED_CONFIG = "namd.run.layout.RunDir.saved_config"
RESOLVE_CONFIG = "namd.cli.options.resolve_config"
COHORT = "namd.cohort.store.Cohort"
COHORT_IMAGES = "namd.cohort.store.Cohort.images"
KNOWN_FUTURES = "namd.cohort.known_futures.read_known_futures"
LOAD_VAE = "namd.models.vae.load_trained_vae"
LOAD_PROBE = "namd.models.probe.load_probe"
LATENTS = "namd.training.latents.load_or_build"
LOAD_UNET = "namd.models.unet.load_unet"
LOAD_SCHEDULE = "namd.models.schedules.load_scheduler_config"
LOAD_NULL = "namd.models.null_context.load_null"
LOAD_CONTEXT = "namd.inference.sampler.load_context_encoder"
SAMPLER = "namd.inference.sampler.FollowUpSampler.from_run"
LOAD_EVALUATOR = "namd.models.evaluator.load_evaluator"
LOAD_CALIBRATION = "namd.models.calibration.load_calibration"
LOAD_SAMPLES = "namd.evaluation.sample_folder.load_samples"
REPORT_METRICS = "namd.evaluation.report.inputs.Context.metrics"
REPORT_TABLE = "namd.evaluation.report.inputs.Context.per_nodule"
REPORT_SAMPLES = "namd.evaluation.report.inputs.Context.samples"
REPORT_VAE = "namd.evaluation.report.build.stage_reports_html"


def _run_info(*readers: str) -> RunFile:
    """run_info.json: written last, so a stage without it is unfinished (not damaged)."""
    return RunFile(RUN_INFO, "json", (IS_DONE, *readers), absent_ok=(IS_DONE, LOAD_SAMPLES))


def internal_files() -> tuple[RunFile, ...]:
    """What only the stage itself reads again: checkpoints (on --resume) and the training log."""
    return (RunFile("checkpoints/*", "safetensors"), RunFile("log.csv", "csv"))


_VAE_FILES = ("autoencoder/config.json", f"autoencoder/{DIFFUSERS_WEIGHTS}", "latent_scale.json")
_UNET_FILES = ("unet/config.json", f"unet/{DIFFUSERS_WEIGHTS}")
_COND_FILES = (*_UNET_FILES, "scheduler/scheduler_config.json", "context_encoder.json",
               "context_encoder.safetensors", RUN_INFO)
_SAMPLE_FILES = ("samples.npy", "index.csv", RUN_INFO)
_COHORT_FILES = ("cohort.json", "manifest.csv", "images/*.npy")


def _kind(pattern: str) -> str:
    """json for .json files, else safetensors (the model files of a stage)."""
    return "json" if pattern.endswith(".json") else "safetensors"


def _flag(method: Method) -> str:
    """What selects a method on a stage's command line, with its leading space."""
    return "".join(f" {a}" for a in method.argv)


def _model_files(folder: str, files: tuple[str, ...]) -> tuple[str, ...]:
    """`folder/file` for each of `files` and the stage's run_info.json."""
    return tuple(f"{folder}/{p}" for p in (*files, RUN_INFO))


def _vae(method: Method, stage: Stage) -> StageContract:
    """A VAE stage (RUN/vae, RUN/vae_no_align) of a method."""
    return StageContract(stage.folder, f"namd train vae --run {{run}}{_flag(method)}", (
        *(RunFile(p, _kind(p), (LOAD_VAE, SAMPLER, LATENTS)) for p in _VAE_FILES),
        RunFile("probe.safetensors", "safetensors", (LOAD_PROBE,)),
        RunFile("report.json", "json", (REPORT_VAE,), absent_ok=(REPORT_VAE,)),
        RunFile("alignment.json", "json", unchecked=("namd.evaluation.vae_report.write_report",)),
        RunFile("*.png", "png"), _run_info(), *internal_files()),
        (CONFIG_FILE, *(f"cohort/{p}" for p in _COHORT_FILES)))


def _prior(method: Method, stage: Stage) -> StageContract:
    """The unconditional prior trained on the latents of the method's VAE."""
    return StageContract(stage.folder, f"namd train prior --run {{run}}{_flag(method)}", (
        *(RunFile(p, _kind(p), (LOAD_UNET,)) for p in _UNET_FILES),
        RunFile("scheduler/scheduler_config.json", "json", (LOAD_SCHEDULE,)),
        RunFile("null_context.safetensors", "safetensors", (LOAD_NULL,), absent_ok=(LOAD_NULL,)),
        _run_info(), *internal_files()),
        (CONFIG_FILE, *(f"cohort/{p}" for p in _COHORT_FILES),
         *_model_files(method.uses["vae"], _VAE_FILES), "cache/latents_*.safetensors"))


def _cond(method: Method, stage: Stage) -> StageContract:
    """A conditional model: U-Net started from the method's prior (or from pretrained weights
    when it has none: SD1.5's row), context encoder, on its VAE's latents."""
    prior = (_model_files(method.uses["prior"], (*_UNET_FILES, "scheduler/scheduler_config.json"))
             if "prior" in method.uses else ())
    return StageContract(stage.folder, f"namd train cond --run {{run}}{_flag(method)}", (
        *(RunFile(p, _kind(p), (LOAD_UNET, SAMPLER)) for p in _UNET_FILES),
        RunFile("scheduler/scheduler_config.json", "json", (LOAD_SCHEDULE, SAMPLER)),
        RunFile("context_encoder.json", "json", (LOAD_CONTEXT, SAMPLER)),
        RunFile("context_encoder.safetensors", "safetensors", (LOAD_CONTEXT, SAMPLER)),
        RunFile("baseline_use.json", "json",
                unchecked=("namd.evaluation.evaluate.baseline_use_blocks",)),
        _run_info(SAMPLER), *internal_files()),
        (CONFIG_FILE, *(f"cohort/{p}" for p in _COHORT_FILES),
         *_model_files(method.uses["vae"], _VAE_FILES), *prior, "cache/latents_*.safetensors"))


def sampler_reader(method: Method) -> str:
    """The contract's name of a method's sampler loader ("module.Class.from_run")."""
    return method.sampler.replace(":", ".")


def _own(method: Method, stage: Stage) -> StageContract:
    """A compared method's own model (Stage.files): every file read by its sampler when the
    sampler reads the folder, else by its Stage.reader (McWGAN's classifier); on the
    latents of the VAE it uses, or on the model files of the stages it needs."""
    sampled = stage.folder in method.uses.values()
    reader = (sampler_reader(method),) if sampled else ((stage.reader,) if stage.reader else ())
    return StageContract(stage.folder, f"namd train {stage.kind} --run {{run}}{_flag(method)}", (
        *(RunFile(p, _kind(p), reader) for p in stage.files if p != RUN_INFO),
        _run_info(*reader), *internal_files()),
        (CONFIG_FILE, *(f"cohort/{p}" for p in _COHORT_FILES), *_inputs(method, stage.needs)))


def _stage_files(folder: str) -> tuple[str, ...]:
    """`folder/file` of every model file a trained stage folder holds: its Stage.files, a VAE's
    (with the latent cache built from it), else NAMD's conditional model's."""
    found = methods.owner(folder)
    stage = found[1] if found else None
    if stage is not None and stage.files:
        return _model_files(folder, tuple(p for p in stage.files if p != RUN_INFO))
    if stage is not None and stage.kind == "vae":
        return (*_model_files(folder, _VAE_FILES), "cache/latents_*.safetensors")
    return _model_files(folder, _COND_FILES[:-1])


def _inputs(method: Method, folders: tuple[str, ...]) -> tuple[str, ...]:
    """The model files of the trained folders a stage of `method` reads."""
    return tuple(dict.fromkeys(f for n in folders if n != "cohort" for f in _stage_files(n)))


def _stage(method: Method, stage: Stage) -> StageContract:
    """The contract of one trained stage of a method: its own files when it declares them,
    else NAMD's kind of stage, else run_info and checkpoints."""
    if stage.files:
        return _own(method, stage)
    return KINDS.get(stage.kind, _trained)(method, stage)


def _trained(method: Method, stage: Stage) -> StageContract:
    """A stage of a kind this module does not describe file by file: its run_info.json and
    checkpoints, reading the folders it needs."""
    return StageContract(stage.folder, f"namd train {stage.kind} --run {{run}}{_flag(method)}",
                         (_run_info(), *internal_files()),
                         (CONFIG_FILE, *(f"{n}/{RUN_INFO}" for n in stage.needs)))


KINDS = {"vae": _vae, "prior": _prior, "cond": _cond}


def _samples(method: Method) -> StageContract:
    """A method's K virtual follow-ups per nodule, from the model folders its sampler reads (its
    VAE, when it has one, and its own networks; not the prior, which only training reads)."""
    folders = tuple(f for k, f in method.uses.items() if k != "prior") or method.sample_needs
    models = tuple(f for f in _inputs(method, folders) if not f.startswith("cache/"))
    return StageContract(method.samples, f"namd sample --run {{run}} --split test{_flag(method)}", (
        RunFile("samples.npy", "npy", (LOAD_SAMPLES, REPORT_SAMPLES)),
        RunFile("index.csv", "csv", (LOAD_SAMPLES, REPORT_SAMPLES)),
        RunFile("grids/*", "png"), _run_info(LOAD_SAMPLES)),
        (CONFIG_FILE, *(f"cohort/{p}" for p in _COHORT_FILES), *models))


def _start() -> list[StageContract]:
    """RUN itself, the cohort and the latent cache."""
    return [
        StageContract("", "start a new run (`namd demo`)", (
            RunFile(CONFIG_FILE, "yaml", (SAVED_CONFIG, RESOLVE_CONFIG)),
            RunFile("pipeline.json", "json"), RunFile("logs/*", "log"),
            RunFile(".locks/*", "lock"))),
        StageContract("cohort", "namd synth --out {dir} --config {run}/config.yaml", (
            RunFile("cohort.json", "json", (COHORT, LATENTS)),
            RunFile("manifest.csv", "csv", (COHORT, LATENTS)),
            RunFile("images/*.npy", "npy", (COHORT_IMAGES, LATENTS)),
            # a synthetic cohort's known futures (docs/cohort-format.md); absent: "not available"
            RunFile("known_futures.npy", "npy", (KNOWN_FUTURES,), absent_ok=(KNOWN_FUTURES,)),
            RunFile("known_futures.csv", "csv", (KNOWN_FUTURES,), absent_ok=(KNOWN_FUTURES,)),
            RunFile("contact_sheet.png", "png"), _run_info()), (CONFIG_FILE,)),
        StageContract("cache", "namd train prior --run {run} --resume", (
            RunFile("latents_*.safetensors", "safetensors", (LATENTS,), rebuilt=True),),
            overwrite=""),
    ]


def _vae_folders() -> list[str]:
    """Every VAE stage folder of the table."""
    return [s.folder for m in methods.METHODS.values() for s in m.trains if s.kind == "vae"]


def _end() -> list[StageContract]:
    """The evaluator, the evaluation and the report."""
    table = methods.METHODS.values()
    cohort_in = tuple(f"cohort/{p}" for p in _COHORT_FILES)
    sample_in = tuple(f"{m.samples}/{p}" for m in table for p in _SAMPLE_FILES)
    vae_in = tuple(f for v in _vae_folders() for f in _model_files(v, _VAE_FILES))
    cond_in = tuple(f"{s.folder}/baseline_use.json" for m in table for s in m.trains
                    if s.kind == "cond" and not s.files)
    return [
        StageContract("evaluator", "namd train evaluator --run {run}", (
            RunFile("checkpoints/best/state.json", "json", (LOAD_EVALUATOR,)),
            RunFile("checkpoints/best/*vit.safetensors", "safetensors", (LOAD_EVALUATOR,)),
            RunFile("checkpoints/last/*", "safetensors"), RunFile("log.csv", "csv"),
            RunFile("calibration.json", "json", (LOAD_CALIBRATION,), absent_ok=(LOAD_CALIBRATION,)),
            _run_info(LOAD_EVALUATOR)), (CONFIG_FILE, *cohort_in)),
        StageContract("eval", "namd evaluate --run {run}", (
            RunFile("metrics.json", "json", (REPORT_METRICS,), unchecked=("namd.cli.commands.demo.run",)),
            RunFile("per_nodule.csv", "csv", (REPORT_TABLE,)), _run_info()),
            (CONFIG_FILE, *cohort_in, "cohort/known_futures.*", "evaluator/run_info.json",
             "evaluator/checkpoints/best/*", "evaluator/calibration.json", *sample_in, *vae_in,
             *cond_in),
            overwrite=""),
        StageContract("report", "namd report --run {run}", (
            RunFile("index.html", "html"), RunFile("*.png", "png"), _run_info()),
            (CONFIG_FILE, *cohort_in, "eval/metrics.json", "eval/per_nodule.csv", *sample_in,
             *vae_in, *(f"{v}/report.json" for v in _vae_folders()), "*/run_info.json"),
            overwrite=""),
    ]


def contracts() -> tuple[StageContract, ...]:
    """The contract of every folder a run can hold: RUN itself, the cohort and the cache, each
    stage of each method of the table (namd.config.methods), its samples, and the end."""
    table = methods.METHODS.values()
    trained = [_stage(m, s) for m in table for s in m.trains]
    return (*_start(), *trained, *(_samples(m) for m in table), *_end())


def by_folder() -> dict[str, StageContract]:
    """The contracts by folder name."""
    return {s.folder: s for s in contracts()}


def stage_of(path: Path, writer: str | None = None) -> tuple[StageContract, Path] | None:
    """The contract folder a path lies in (the nearest one; with `writer`, the nearest of that
    stage or its variants, e.g. vae -> vae, vae_no_align) and that folder, if any."""
    path = Path(path)
    if path.name == CONFIG_FILE:
        return by_folder()[""], path.parent
    table = by_folder()
    family = [f for f in table if f and (writer is None or f == writer
                                             or f.startswith(f"{writer}_"))]
    for folder in (path, *path.parents):
        if folder.name in family:
            return table[folder.name], folder
    return None


def command_for(run: str | Path, folder: str) -> str:
    """The command that makes stage folder `folder` of run `run`, as its contract says (a
    method's stage carries its --method)."""
    return by_folder()[folder].command.format(run=run, dir=Path(run) / folder)


def remedy_for(path: Path, writer: str | None = None) -> str:
    """What to do about a missing or damaged run file: the command that writes it again.

    The stage is the contract folder the path lies in, else `writer` (RUN then stands for the
    run folder); a stage folder that is not there at all is made, not re-made."""
    path = Path(path)
    found = stage_of(path, writer)
    if found is None and writer == "cohort":
        folder = path.parent.parent if path.parent.name == "images" else path.parent
        return f"re-make the cohort: `namd synth --out {folder} --overwrite` (or `namd prepare`)"
    if found is None and writer in by_folder():
        found = by_folder()[writer], Path("RUN") / writer
    if found is None:
        return "re-run the `namd` stage that writes it, with --overwrite"
    stage, folder = found
    if stage.folder == "":
        return ("restore it (each stage's run_info.json holds the config it ran with, under "
                "`config`) or start a new run")
    command = command_for(folder.parent, stage.folder)
    if stage.folder == "cache":
        return f"delete it; `{command}` or `namd sample` builds it again"
    if not folder.exists():
        return f"make it: `{command}`"
    tail = " (or `namd prepare` for a real cohort), then the stages after it" \
        if stage.folder == "cohort" else ""
    return f"re-run `{command}{stage.overwrite}`{tail}"
