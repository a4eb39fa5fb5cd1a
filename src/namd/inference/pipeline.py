"""The load-once model: VAE, conditional U-Net, scheduler, context encoder and evaluator of one
method of the table (namd.config.methods), read once and then called for any number of patients.

    from namd import NAMDPipeline, EHR
    pipe = NAMDPipeline.from_run("runs/demo")            # or .from_pretrained("models/namd")
    samples = pipe(baselines_hu, ehrs, k=20)              # (N, K, H, W) HU
    predictions = pipe.predict(baselines_hu, ehrs)        # one namd.inference.patient.Prediction each
    pipe.save_pretrained("models/namd")                   # what inference needs, with sha256s

Sampling is `namd sample`'s: one conditioning per patient, all N x K latents in batches of
sampling.max_batch, sample k of patient i seeded by (sampling.seed, key_i, k), where key_i is
the patient's id or, without one, a digest of its crop. Every number goes through the typed
config. A saved model folder lists the sha256 of every file and is refused when one differs.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from namd import __version__
from namd.clinical.readout import read_patient
from namd.cohort.brock import brock_probability
from namd.cohort.ehr import EHR, report_sentence
from namd.config import (
    NamdConfig,
    SamplingConfig,
    TextConfig,
    load_config,
    methods,
    save_config,
    validated_update,
)
from namd.config.diffusion import check_sampling_steps
from namd.inference.prediction import Prediction, baseline_hu, crop_digest
from namd.inference.sampler import FollowUpSampler, load_context_encoder
from namd.models.calibration import CALIBRATION_FILE, load_calibration
from namd.models.context_factory import ENCODER_FILE, PROMPTS_FILE
from namd.models.device import resolve_device
from namd.models.evaluator import MODULE, MalignancyViT, load_evaluator
from namd.models.evaluator import predict as evaluate
from namd.models.schedules import SCHEDULER_DIR, load_scheduler_config
from namd.models.unet import MODEL_DIR as UNET_DIR
from namd.models.unet import load_unet
from namd.models.vae import MODEL_DIR as VAE_DIR
from namd.models.vae import SCALE_FILE, load_autoencoder
from namd.run.contract import CONFIG_FILE, DIFFUSERS_WEIGHTS, RunFileError, command_for
from namd.run.layout import RunDir
from namd.run.provenance import RUN_INFO, atomic_dir, atomic_write_json, file_sha256
from namd.run.readers import read_json, read_yaml

INDEX_FILE = "model_index.json"
LM_FILE = "language_model.json"  # in context_encoder/: the frozen LM by name and weight sha256s
COMPONENTS = ("vae", "unet", "scheduler", "context_encoder", "evaluator")
GENERATED = (INDEX_FILE, CONFIG_FILE, f"evaluator/{RUN_INFO}", f"context_encoder/{LM_FILE}")
SEED_RULE = ("sample k of a patient: seed = sha256(f'{sampling.seed}:{key}:{k}')[:8] (little "
             "endian, 63 bits); key = the patient's id, else 'crop-sha256:' + the first 32 hex "
             "digits of the sha256 of its float32 HU crop")


def method_stages(run: RunDir, name: str) -> dict[str, str]:
    """The model folders of method `name` (namd.config.methods), each checked finished: else a
    one-line error naming the folder and the command that makes it."""
    if name not in methods.loadable():
        raise ValueError(f"method must be one of {', '.join(methods.loadable())}, got {name!r}")
    dirs = dict(methods.get(name).uses)
    for folder in (dirs["vae"], dirs["cond"], "evaluator"):
        if not run.is_done(folder):
            raise FileNotFoundError(f"{run.stage(folder)} not found or not finished: the {name} "
                                    f"model needs it (make it with `{command_for(run.path, folder)}`)")
    return dirs


def _evaluator_weights(best: Path) -> Path:
    """The evaluator's best weights: the EMA copy when the stage kept one."""
    ema = best / f"ema_{MODULE}.safetensors"
    return ema if ema.is_file() else best / f"{MODULE}.safetensors"


def own_files(method: str) -> tuple[str, ...]:
    """The model files a compared method's own conditional stage declares (Stage.files);
    () for NAMD's layout (U-Net, scheduler, context encoder), which save_pretrained exports."""
    spec = methods.get(method)
    stage = next((s for s in spec.trains if s.folder == spec.uses.get("cond")), None)
    return tuple(p for p in (stage.files if stage else ()) if p != RUN_INFO)


def run_files(run: RunDir, dirs: dict[str, str], method: str = methods.REFERENCE) -> dict[str, Path]:
    """Model-folder path -> run file, for every file inference reads (copied by save_pretrained)."""
    vae, cond, ev = run.stage(dirs["vae"]), run.stage(dirs["cond"]), run.stage("evaluator")
    best = ev / "checkpoints" / "best"
    files = {"vae/config.json": vae / VAE_DIR / "config.json",
             f"vae/{DIFFUSERS_WEIGHTS}": vae / VAE_DIR / DIFFUSERS_WEIGHTS,
             f"vae/{SCALE_FILE}": vae / SCALE_FILE}
    own = own_files(method)
    if own:  # a compared method's own networks, as its stage declares them
        files.update({f"model/{p}": cond / p for p in own})
    else:
        files.update({"unet/config.json": cond / UNET_DIR / "config.json",
                      f"unet/{DIFFUSERS_WEIGHTS}": cond / UNET_DIR / DIFFUSERS_WEIGHTS,
                      "scheduler/scheduler_config.json": cond / SCHEDULER_DIR / "scheduler_config.json",
                      f"context_encoder/{ENCODER_FILE}": cond / ENCODER_FILE,
                      f"context_encoder/{PROMPTS_FILE}": cond / PROMPTS_FILE})
    files["evaluator/checkpoints/best/state.json"] = best / "state.json"
    weights = _evaluator_weights(best)
    files[f"evaluator/checkpoints/best/{weights.name}"] = weights
    if (ev / CALIBRATION_FILE).is_file():
        files[f"evaluator/{CALIBRATION_FILE}"] = ev / CALIBRATION_FILE
    return files


def language_model_ref(text: TextConfig) -> dict[str, Any]:
    """The frozen language model by name and the sha256 of its weight files (never copied)."""
    if text.encoder != "llm":
        return {"encoder": text.encoder, "model": None, "sha256": {}}
    from namd.models.text import resolve_model_dir

    folder = resolve_model_dir(text.model)
    weights = sorted(folder.glob("*.safetensors"))
    return {"encoder": "llm", "model": text.model,
            "sha256": {p.name: file_sha256(p) for p in weights}}


def check_language_model(path: Path) -> None:
    """Refuse a model whose language model's weights differ from those it was exported with."""
    ref = read_json(path)
    if not ref.get("model"):
        return
    from namd.models.text import resolve_model_dir

    folder = resolve_model_dir(ref["model"])
    for name, expected in ref.get("sha256", {}).items():
        if file_sha256(folder / name) != expected:
            raise ValueError(f"{folder / name}: sha256 differs from the language model this model "
                             f"was exported with ({path}); install that model")


def load_vae_folder(folder: Path, device: torch.device) -> tuple[torch.nn.Module, float]:
    """The frozen VAE of a model folder's vae/ (diffusers layout) and its latent scale factor."""
    return load_autoencoder(folder, folder, device)


def verify_folder(folder: Path) -> dict[str, Any]:
    """model_index.json of a model folder, after checking every component and every file's sha256."""
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise FileNotFoundError(f"{folder}: not a namd model folder (no {INDEX_FILE}); make one "
                                "with `namd export RUN OUT`")
    index = read_json(index_path, keys=("components", "files"))
    for name in COMPONENTS:
        if not (folder / name).is_dir():
            raise RunFileError(folder / name, f"missing: the model has no {name} component",
                               "export the model again (namd export RUN OUT)")
    for rel, expected in index["files"].items():
        actual = file_sha256(folder / rel)
        if actual != expected:
            raise RunFileError(folder / rel, f"sha256 {actual[:16]}... differs from {INDEX_FILE} "
                               f"({expected[:16]}...): changed or damaged",
                               "export the model again (namd export RUN OUT)")
    check_language_model(folder / "context_encoder" / LM_FILE)
    return index


class NAMDPipeline:
    """One method's networks, loaded once: draws virtual follow-ups and scores them."""

    def __init__(self, sampler: FollowUpSampler, evaluator: MalignancyViT, window: tuple[float, float],
                 config: NamdConfig, method: str, files: dict[str, Path], hashes: dict[str, str],
                 evaluator_info: dict[str, Any], calibration: Any = None, run: RunDir | None = None):
        self.sampler, self.evaluator, self.eval_window = sampler, evaluator, window
        self.config, self.method, self.calibration, self.run = config, method, calibration, run
        self.files, self.hashes, self.evaluator_info = files, hashes, evaluator_info

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: str | Path | RunDir, method: str = "namd",
                 device: str | torch.device | None = None,
                 config: NamdConfig | None = None) -> NAMDPipeline:
        """Load a finished run's `method` (any of the table: NAMD, its ablations, the compared
        generators); `config` defaults to the run's config.yaml (its sampling section gives the
        defaults of k, steps, seed; a compared method takes its steps from its own section)."""
        run = run if isinstance(run, RunDir) else RunDir(run)
        dirs = method_stages(run, method)
        dev = resolve_device(device)
        if config is None:
            saved = run.saved_config()
            if saved is None:
                raise FileNotFoundError(f"{run.path}/config.yaml not found: is {run.path} a trained run?")
            config = load_config(base=saved)
        files = run_files(run, dirs, method)
        hashes = {rel: file_sha256(src) for rel, src in files.items()}
        sampler = methods.get(method).load_sampler(run, config, dev)
        run.agree(config, "evaluator")
        model, window, info = load_evaluator(run.stage("evaluator"))
        return cls(sampler, model.to(dev), window, config, method, files, hashes, info,
                   load_calibration(run.stage("evaluator")), run)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None) -> NAMDPipeline:
        """Load a folder written by save_pretrained / `namd export`, every file's sha256 checked."""
        folder = Path(folder)
        index = verify_folder(folder)
        dev = resolve_device(device)
        config = load_config(base=read_yaml(folder / CONFIG_FILE))
        vae, scale = load_vae_folder(folder / "vae", dev)
        encoder, null = load_context_encoder(folder / "context_encoder", dev)
        sampler = FollowUpSampler(load_unet(folder, dev), vae, scale, encoder, null,
                                  load_scheduler_config(folder), tuple(config.data.window_hu), dev)
        sampler.condition_dropout = float(index.get("condition_dropout") or 0.0)
        model, window, info = load_evaluator(folder / "evaluator")
        kept = [rel for rel in index["files"] if rel not in GENERATED]
        return cls(sampler, model.to(dev), window, config, index.get("method", index.get("variant", methods.REFERENCE)),
                   {rel: folder / rel for rel in kept}, {rel: index["files"][rel] for rel in kept},
                   info, load_calibration(folder / "evaluator"))

    @property
    def model_hash(self) -> str:
        """sha256 over the weight files' sha256s: the same for a run and its exported folder."""
        lines = [f"{rel}:{self.hashes[rel]}" for rel in sorted(self.hashes) if rel.endswith(".safetensors")]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def text_config(self) -> TextConfig:
        """The context encoder's text config, as the cond stage saved it (a compared method
        with its own files: the run's text config)."""
        if f"context_encoder/{ENCODER_FILE}" not in self.files:
            return self.config.text
        spec = read_json(self.files[f"context_encoder/{ENCODER_FILE}"], keys=("text",))
        return TextConfig.model_validate(spec["text"])

    # -- sampling ---------------------------------------------------------------------------
    def sampling_config(self, k: int | None = None, steps: int | None = None,
                        seed: int | None = None) -> SamplingConfig:
        """config.sampling with k, steps, seed (None = keep; a compared method's sampler keeps
        its own steps) validated like any config value, its steps inside the noise schedule
        (before any model work)."""
        if steps is None:  # the method's own sampler steps (Method.steps)
            steps = methods.sampler_steps(self.config, methods.get(self.method))
        changes = {f"sampling.{name}": v for name, v in (("k", k), ("steps", steps), ("seed", seed))
                   if v is not None}
        config = validated_update(self.config, changes) if changes else self.config
        check_sampling_steps(config.sampling, config.diffusion.num_train_timesteps)
        return config.sampling

    def seed_keys(self, crops: np.ndarray, keys: Sequence[str | None] | None) -> list[str]:
        """Each patient's seed key: its id, else 'crop-sha256:<32 hex>' of its crop."""
        keys = list(keys) if keys is not None else [None] * len(crops)
        if len(keys) != len(crops):
            raise ValueError(f"keys: {len(keys)} given for {len(crops)} baselines")
        return [key if key else f"crop-sha256:{crop_digest(c)[:32]}" for key, c in zip(keys, crops, strict=True)]

    def _sample(self, crops: np.ndarray, ehrs: Sequence[EHR], keys: list[str],
                cfg: SamplingConfig) -> np.ndarray:
        """(N, K, H, W) HU, batched as `namd sample` batches."""
        if len(ehrs) != len(crops):
            raise ValueError(f"ehrs: {len(ehrs)} records given for {len(crops)} baselines")
        for key, ehr in zip(keys, ehrs, strict=True):
            ehr.check(key)
        cond = self.sampler.conditioning(keys, crops, list(ehrs), cfg.aux_batch)
        latents = self.sampler.generate(cond, cfg, show_progress=False)
        n, k = latents.shape[:2]
        flat = latents.reshape(n * k, *latents.shape[2:])
        parts = [self.sampler.decode(flat[s:s + cfg.aux_batch], cfg.aux_batch)
                 for s in range(0, n * k, cfg.aux_batch)]
        return np.concatenate(parts).reshape(n, k, *parts[0].shape[1:])

    def _crops(self, baselines: Any, units: str = "HU") -> np.ndarray:
        """(N, H, W) float32 HU from crops or (path, centre[, space]) tuples, each checked."""
        crops = []
        for i, item in enumerate(baselines):
            if isinstance(item, tuple):
                from namd.inference.scan import crop_nodule

                path, centre, *space = item
                item = crop_nodule(path, centre, space=space[0] if space else "world",
                                   config=self.config)
                crops.append(baseline_hu(item, self.config, f"baseline {i}"))
            else:
                crops.append(baseline_hu(item, self.config, f"baseline {i}", units))
        if not crops:
            raise ValueError("baselines: no crop given")
        return np.stack(crops)

    def __call__(self, baselines_hu: Any, ehrs: Sequence[EHR], k: int | None = None,
                 num_inference_steps: int | None = None, seed: int | None = None,
                 keys: Sequence[str | None] | None = None) -> np.ndarray:
        """K virtual one-year follow-ups per baseline: (N, K, H, W) float32 HU, every value
        finite (else a one-line error naming the weights that made them)."""
        from namd.inference.finite import check_samples

        cfg = self.sampling_config(k, num_inference_steps, seed)
        crops = self._crops(baselines_hu)
        samples = self._sample(crops, list(ehrs), self.seed_keys(crops, keys), cfg)
        return check_samples(samples, self.files, self.run)

    # -- scoring ----------------------------------------------------------------------------
    def probabilities(self, hu: np.ndarray) -> np.ndarray:
        """The evaluator's malignancy probability of each (M, H, W) HU crop, calibrated when
        the run fitted a calibration."""
        p, _ = evaluate(self.evaluator, hu, self.eval_window)
        return np.asarray(self.calibration.apply(p)) if self.calibration is not None else p

    def provenance(self, cfg: SamplingConfig, seed_from: str) -> dict[str, Any]:
        """What produced a prediction (no path, no patient id)."""
        return {"model_sha256": self.model_hash, "method": self.method, "namd_version": __version__,
                "seed": cfg.seed, "seed_from": seed_from, "seed_rule": SEED_RULE, "k": cfg.k,
                "steps": cfg.steps, "scheduler": cfg.scheduler, "eta": cfg.eta,
                **({"sampler": self.sampler.info()} if hasattr(self.sampler, "info") else {}),
                "guidance_scale": cfg.guidance_scale,
                "probability": "calibrated" if self.calibration is not None else "raw"}

    def predict(self, baselines: Any, ehrs: Sequence[EHR], k: int | None = None,
                num_inference_steps: int | None = None, seed: int | None = None,
                keys: Sequence[str | None] | None = None, units: str = "HU",
                readout: bool = True, new_nodule: bool = False) -> list[Prediction]:
        """One Prediction per patient: the evaluator on its baseline and on its K follow-ups
        (each sample's probability calibrated before the mean over K) and, with `readout`, the
        radiologist's readout of them (namd.clinical.readout, config.readout; `new_nodule`:
        the baseline's category by the new-nodule rules); a sample or probability that is not
        finite is a one-line error naming the weights, never "p = nan"."""
        from namd.inference.finite import check_probabilities, check_samples

        cfg = self.sampling_config(k, num_inference_steps, seed)
        crops, ehrs = self._crops(baselines, units), list(ehrs)
        ids = list(keys) if keys is not None else [None] * len(crops)
        seed_keys = self.seed_keys(crops, ids)
        samples = check_samples(self._sample(crops, ehrs, seed_keys, cfg), self.files, self.run)
        n, kk, h, w = samples.shape
        p_base = check_probabilities(self.probabilities(crops), self.files, self.run)
        p_follow = check_probabilities(self.probabilities(samples.reshape(n * kk, h, w)),
                                       self.files, self.run).reshape(n, kk)
        out = []
        for i, ehr in enumerate(ehrs):
            brock = brock_probability(ehr)
            seed_from = "id" if ids[i] else "crop"
            out.append(Prediction(
                report_sentence=report_sentence(ehr), p_baseline=float(p_base[i]),
                p_followup=[float(p) for p in p_follow[i]], p_followup_mean=float(p_follow[i].mean()),
                p_followup_std=float(p_follow[i].std()), brock=None if np.isnan(brock) else float(brock),
                k=kk, steps=cfg.steps, sampling=cfg.model_dump(mode="json"), seed_from=seed_from,
                baseline_sha256=crop_digest(crops[i]), samples=samples[i],
                provenance=self.provenance(cfg, seed_from),
                readout=read_patient(crops[i], samples[i], ehr, self.config.data.pixel_spacing_mm,
                                     self.config.readout, seed_keys[i], new_nodule) if readout else {}))
        return out

    # -- saving -----------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the model folder (atomically): the loaded files, byte for byte and checked
        against the sha256s taken at load, config.yaml, the model card and model_index.json.
        Without `overwrite` a folder that another writer published meanwhile is never replaced:
        this call then fails with a one-line FileExistsError (atomic_dir's final rename)."""
        from namd.inference.finite import check_weights
        from namd.inference.model_card import write_model_card

        if self.method not in methods.exportable():
            raise ValueError(f"save_pretrained exports NAMD's layout (methods "
                             f"{', '.join(methods.exportable())}); {self.method} has networks of "
                             "its own: load it with NAMDPipeline.from_run")
        folder = Path(folder)
        check_weights({"unet/": self.sampler.unet, "vae/": self.sampler.vae,
                       "evaluator/": self.evaluator, "context_encoder/": self.sampler.encoder},
                      self.files, self.run)
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            for rel, src in self.files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp / rel)
                if file_sha256(tmp / rel) != self.hashes[rel]:
                    raise RunFileError(src, "changed since the pipeline loaded it", "load it again")
            info = {"stage": "evaluator", "complete": True, "config": self.evaluator_info["config"],
                    "image_size": self.evaluator_info["image_size"]}
            atomic_write_json(tmp / "evaluator" / RUN_INFO, info)
            atomic_write_json(tmp / "context_encoder" / LM_FILE, language_model_ref(self.text_config))
            save_config(self.config, tmp / CONFIG_FILE)
            if self.run is not None:
                write_model_card(tmp, self.run, dict(methods.get(self.method).uses), self.card_facts())
            files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*"))
                     if p.is_file()}
            atomic_write_json(tmp / INDEX_FILE, {
                "_class_name": "NAMDPipeline", "namd_version": __version__, "method": self.method,
                "components": {name: name for name in COMPONENTS}, "model_sha256": self.model_hash,
                "condition_dropout": self.sampler.condition_dropout, "files": files})
        return folder

    def card_facts(self) -> dict[str, Any]:
        """What the model card states about this model besides the run's own records."""
        cfg = self.config.sampling
        return {"method": self.method, "model_sha256": self.model_hash, "namd_version": __version__,
                "sampling": f"{cfg.scheduler}, {cfg.steps} steps, K = {cfg.k}, eta = {cfg.eta}",
                "probability": "calibrated" if self.calibration is not None else "raw",
                "text": self.text_config.encoder}
