"""The table of methods: every generator whose follow-ups become a row of Table 1, declared once.

A method is its name (one spelling: the suffix of its folders, its row in metrics.json, its
`--method` on the command line, `NAMDPipeline(method=...)`), its label (the row's text in the
table, the figures and the report), the stages it trains (each a folder of RUN made by
`namd train KIND --method NAME`), the model folders it reads (its own or another method's),
the function that writes its sample folder, and whether its follow-ups are random draws.

Everything else derives from this table: the run's stage list (`namd.run.layout`), the plan of
`namd demo` (`namd.cli.graph`), the stage contract (`namd.run.contract`), `namd train`'s
sub-commands, the report's rows and labels, the methods `NAMDPipeline` loads, `namd check`'s
stages and the worker pool's warm modules. Adding a generator is one module (its stages and its
sample function) and one `register(Method(...))`.

Light on purpose (standard library only): the CLI reads it for `--help`; modules are named as
strings and imported only when a stage runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

REFERENCE = "namd"  # the method every other row is compared with
DIFFUSION = "namd.training.diffusion"
SAMPLE_NAMD = "namd.inference.sample_stage:run_sample_stage"
SAMPLER_NAMD = "namd.inference.sampler:FollowUpSampler.from_run"


# What NAMD's stages mean something under (Stage.depends, Stage.ignores): the VAE its crop
# geometry, HU window and every VAE field but the report's; the prior the VAE's latents, the
# noise schedule, its U-Net and its own training (not the text encoder: its null context has
# only the encoder's shape, and a cond stage may start from it with another encoder); the
# conditional model the crop geometry, the text encoder and every diffusion field but the
# prior's training and the latent cache's batch.
VAE_DEPENDS = (("data", "vae"), ("vae.report_knn_k", "vae.report_folds", "vae.report_grid",
                                 "vae.report_tsne_max"))
PRIOR_DEPENDS = (("data", "diffusion.num_train_timesteps", "diffusion.beta_start",
                  "diffusion.beta_end", "diffusion.beta_schedule", "diffusion.prediction_type",
                  "diffusion.unet", "diffusion.prior"), ())
COND_DEPENDS = (("data", "text", "diffusion"), ("diffusion.prior", "diffusion.encode_batch"))
EVALUATOR_DEPENDS = (("data", "evaluator"), ())


def folder(kind: str, method: str) -> str:
    """The run folder of a method's stage: the bare kind for NAMD (RUN/vae, RUN/samples), else
    kind_method (RUN/vae_no_align, RUN/samples_null_context)."""
    return kind if method == REFERENCE else f"{kind}_{method}"


@dataclass(frozen=True)
class Stage:
    """One stage a method trains: `namd train KIND --method NAME` writes RUN/<folder>."""

    kind: str  # the `namd train` sub-command
    folder: str
    needs: tuple[str, ...]  # folders whose files it reads
    module: str  # defines run_stage(config, run, *, method, resume, overwrite[, stage])
    help: str = ""
    # the config fields (dotted prefixes, less `ignores`) its outputs mean something under:
    # a reader refuses a config that differs from the stage's own there (RunDir.agree)
    depends: tuple[str, ...] = ("data",)
    ignores: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # dotted field -> its value here
    # a stage of a kind namd.run.contract does not describe file by file (a compared method's
    # own networks): the model files its method's sampler reads, relative to its folder
    files: tuple[str, ...] = ()
    # "module:function" -> (trainable, frozen, loss, note) of one step on meta tensors, and
    # "module:function" -> its TrainConfig: how `namd check` sizes a stage of its own kind
    # (both set together)
    sizing: str | None = None
    train_config: str | None = None
    # "module.function" that reads its `files` when its method's sampler does not (a stage
    # only the method's next stage reads: McWGAN's classifier, ImageFlowNet's reconstruction)
    reader: str | None = None


@dataclass(frozen=True)
class Method:
    """A generator of follow-ups: one row of Table 1."""

    name: str
    label: str  # the row's text in Table 1, the figures and the report
    trains: tuple[Stage, ...] = ()
    uses: Mapping[str, str] = field(default_factory=dict)  # kind -> folder of each model it reads
    sample: str | Callable[..., Any] = SAMPLE_NAMD  # "module:function" or the function
    # "module:Class.from_run": (run, uses, config, device) -> its trained model, ready to draw
    # follow-ups (FollowUpSampler's protocol); the sample stage and NAMDPipeline load it
    sampler: str = SAMPLER_NAMD
    inferred: str = ""  # what no source says and the project chose (the report flags the row)
    steps: str = "sampling.steps"  # the config field of its sampler's steps (`--steps` sets it)
    stochastic: bool = True  # K random draws; False: one deterministic follow-up
    flags: Mapping[str, bool] = field(default_factory=dict)  # what its stages do differently
    about: str = ""  # what it changes against NAMD, for the report's reading
    loadable: bool = True  # NAMDPipeline (namd predict, namd serve, namd export) loads it
    in_demo: bool = True  # `namd demo` runs it by default (else with --methods)
    # its row of the paper's Table 1 (NLST test set, 450 pairs): lpips, fid, auroc, auprc and
    # their _std over the 20 samples where the paper gives one; empty when the paper has no row
    paper: Mapping[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> str:
        """The folder its sample stage writes."""
        return folder("samples", self.name)

    @property
    def argv(self) -> tuple[str, ...]:
        """What selects it on the command line (nothing for NAMD, the default)."""
        return () if self.name == REFERENCE else ("--method", self.name)

    @property
    def sample_needs(self) -> tuple[str, ...]:
        """The folders its sample stage reads: its conditional model, else what it trains."""
        if "cond" in self.uses:
            return (self.uses["cond"],)
        return tuple(s.folder for s in self.trains[-1:]) or ("cohort",)

    @property
    def sample_module(self) -> str | None:
        """The module of its sample function when named as "module:function" (else None)."""
        return None if callable(self.sample) else self.sample.partition(":")[0]

    def sample_function(self) -> Callable[..., Any]:
        """The function that writes its sample folder:
        f(config, run, method, *, overwrite, device) -> the folder."""
        return self.sample if callable(self.sample) else resolve(self.sample)

    def load_sampler(self, run: Any, config: Any, device: Any = "cpu") -> Any:
        """Its trained model from RUN, ready to draw follow-ups (FollowUpSampler's protocol)."""
        return resolve(self.sampler)(run, dict(self.uses), config, device)

    def stage(self, kind: str) -> Stage:
        """The stage of `kind` it trains, or a one-line error naming what it trains."""
        for s in self.trains:
            if s.kind == kind:
                return s
        own = ", ".join(s.kind for s in self.trains) or "nothing"
        raise ValueError(f"method {self.name} trains no {kind} stage (it trains {own})")


def resolve(ref: str) -> Any:
    """The object a "module:attribute[.attribute]" reference names (imported now)."""
    module, _, path = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (its name must be new); returns it."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already in the table")
    if not method.name.isidentifier():
        raise ValueError(f"method name {method.name!r} must be a Python identifier")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy one)."""
    METHODS.pop(name, None)


def get(name: str) -> Method:
    """The method called `name`, or a one-line error listing the table."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def sampler_steps(config: Any, method: Method) -> int:
    """The steps `method`'s sampler takes under `config` (its Method.steps field)."""
    value: Any = config
    for part in method.steps.split("."):
        value = getattr(value, part)
    return int(value)


def sampling_of(config: Any, method: Method) -> Any:
    """config.sampling as `method` samples: its own steps (every sampler reads cfg.steps), and
    one follow-up per nodule for a deterministic method (K copies of one image would score as
    K samples with no spread)."""
    update: dict[str, int] = {"steps": sampler_steps(config, method)}
    if not method.stochastic:
        update["k"] = 1
    return config.sampling.model_copy(update=update)


def loadable() -> tuple[str, ...]:
    """The methods NAMDPipeline.from_run loads (namd predict, namd serve): a VAE and a
    conditional model its sampler reads (a pixel-space method or one with an autoencoder of its
    own is sampled by `namd sample` only)."""
    return tuple(m.name for m in METHODS.values()
                 if m.loadable and {"vae", "cond"} <= set(m.uses))


def exportable() -> tuple[str, ...]:
    """The loadable methods `namd export` writes as a model folder: NAMD's layout (U-Net,
    scheduler, context encoder), not a compared method's networks of its own."""
    own = {m.name for m in METHODS.values() for s in m.trains if s.files}
    return tuple(n for n in loadable() if n not in own)


def kinds() -> dict[str, str]:
    """`namd train` kind -> the help text of its first stage in the table; a kind only compared
    methods train (their own autoencoders) names each method's."""
    out: dict[str, str] = {}
    first: dict[str, Method] = {}
    for m in METHODS.values():
        for s in m.trains:
            if s.kind not in out:
                out[s.kind], first[s.kind] = s.help, m
            elif not first[s.kind].in_demo and s.help not in out[s.kind]:
                out[s.kind] += f"; --method {m.name}: {s.help}"
    return out


def owner(stage_folder: str) -> tuple[Method, Stage | None] | None:
    """The method that writes `stage_folder` (its Stage, or None for its sample folder)."""
    for m in METHODS.values():
        if stage_folder == m.samples:
            return m, None
        for s in m.trains:
            if s.folder == stage_folder:
                return m, s
    return None


def depends_of(stage_folder: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(depends, ignores) of a trained stage folder: a method's stage, or the evaluator."""
    if stage_folder == "evaluator":
        return EVALUATOR_DEPENDS
    found = owner(stage_folder)
    if found is None or found[1] is None:
        return None
    return found[1].depends, found[1].ignores


def stage_config(config: Any, stage: Stage) -> Any:
    """The run's config as `stage` trains under it: with the stage's own values (the no-align
    VAE's vae.align = false) set and validated; the run's config itself when it sets none."""
    if not stage.config:
        return config
    from namd.config import validated_update

    return validated_update(config, stage.config)


def _namd_chain(name: str, label: str, about: str = "",
                vae_config: Mapping[str, Any] | None = None,
                paper: Mapping[str, float] | None = None) -> Method:
    """NAMD or an ablation that trains its own VAE -> prior -> conditional U-Net."""
    vae, prior, cond = (folder(k, name) for k in ("vae", "prior", "cond"))
    trains = (Stage("vae", vae, ("cohort",), "namd.training.vae",
                    "the nodule-aligned VAE (paper 3.2)", *VAE_DEPENDS, config=vae_config or {}),
              Stage("prior", prior, (vae,), DIFFUSION, "the unconditional U-Net prior (Equation 9)",
                    *PRIOR_DEPENDS),
              Stage("cond", cond, (prior,), DIFFUSION,
                    "the conditional U-Net with LLM context (Equation 10)", *COND_DEPENDS))
    return Method(name, label, trains, {"vae": vae, "prior": prior, "cond": cond}, about=about,
                  paper=paper or {})


register(_namd_chain("namd", "NAMD (generated follow-up)", paper={
    "lpips": 0.220, "lpips_std": 0.001, "fid": 83.060, "fid_std": 0.699,
    "auroc": 0.805, "auroc_std": 0.018, "auprc": 0.346, "auprc_std": 0.028}))
register(_namd_chain("no_align", "NAMD without L_align / L_pred",
                     "Without L_align (the paper's ablation)", {"vae.align": False}, paper={
                         "lpips": 0.205, "lpips_std": 0.002, "fid": 101.301, "fid_std": 1.108,
                         "auroc": 0.765, "auroc_std": 0.017, "auprc": 0.305, "auprc_std": 0.031}))
register(Method(
    "null_context", "NAMD with null context (image only)",
    (Stage("cond", "cond_null_context", ("prior",), DIFFUSION,
           "the conditional U-Net with LLM context (Equation 10)", *COND_DEPENDS),),
    {"vae": "vae", "prior": "prior", "cond": "cond_null_context"},
    flags={"null_context": True}, about="With image-only conditioning (null context)"))


# -- the compared generators of the paper's Table 1 (section 4.1.3; docs/compared-methods.md) ---
# Each reads the run's cohort and VAE latents like NAMD and writes the same sample files.
FLUX_FILES = ("transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "text_encoder.json", "run_info.json")
DDLCXR_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json", "record_encoder.json",
                "record_encoder.safetensors", "run_info.json")

register(Method(
    "sd15", "SD1.5, fine-tuned",
    (Stage("cond", "cond_sd15", ("vae_no_align",), DIFFUSION,
           "SD1.5 fine-tuned: its U-Net with the baseline latent concatenated and text "
           "cross-attention on the report sentence", ("data", "text", "diffusion", "sd15"),
           ("diffusion.prior", "diffusion.encode_batch"), sizing="namd.sizing.sd15:sd15_parts",
           train_config="namd.sizing.sd15:stage_train_config"),),
    {"vae": "vae_no_align", "cond": "cond_sd15"}, flags={"sd15": True}, in_demo=False,
    about="SD1.5 fine-tuned from pretrained weights (its VAE without L_align, text through "
          "the frozen text encoder's token states)",
    inferred="the paper gives no wiring: baseline latent concatenated (8 channels) and the "
             "report sentence by cross-attention, as NAMD's own",
    paper={"lpips": 0.207, "lpips_std": 0.003, "fid": 97.550, "fid_std": 1.140,
           "auroc": 0.701, "auroc_std": 0.031, "auprc": 0.245, "auprc_std": 0.032}))
register(Method(
    "flux", "Flux (rectified flow), fine-tuned",
    (Stage("cond", "cond_flux", ("vae_no_align",), "namd.training.flux",
           "Flux: a rectified-flow transformer with the baseline latent in a widened input "
           "embedding and the report sentence through its text path",
           ("data", "text", "flux"), ("flux.sampling_steps", "flux.shift"), files=FLUX_FILES,
           sizing="namd.models.flux:sizing_parts",
           train_config="namd.models.flux:stage_train_config"),),
    {"vae": "vae_no_align", "cond": "cond_flux"},
    sample=SAMPLE_NAMD, sampler="namd.inference.flux_sampler:FluxSampler.from_run",
    steps="flux.sampling_steps",
    in_demo=False, about="Flux's rectified-flow transformer fine-tuned (Euler sampling)",
    inferred="the paper does not say which Flux, how it was fine-tuned or how the baseline "
             "enters: a widened input embedding, as diffusers' Flux Control training",
    paper={"lpips": 0.248, "lpips_std": 0.002, "fid": 95.843, "fid_std": 1.162,
           "auroc": 0.668, "auroc_std": 0.030, "auprc": 0.227, "auprc_std": 0.034}))
register(Method(
    "ddlcxr", "DDL-CXR",
    (Stage("vae", "vae_ddlcxr", ("cohort",), "namd.training.ddlcxr_vae",
           "DDL-CXR's label-supervised VAE, from scratch", ("data", "ddlcxr.vae"),
           tuple(f"ddlcxr.{f}" for f in VAE_DEPENDS[1]), sizing="namd.models.ddlcxr:vae_sizing_parts",
           train_config="namd.models.ddlcxr:vae_train_config"),
     Stage("cond", "cond_ddlcxr", ("vae_ddlcxr",), "namd.training.ddlcxr",
           "DDL-CXR's U-Net with the baseline latent concatenated and a record transformer "
           "through cross-attention", ("data", "ddlcxr"),
           ("ddlcxr.sampling_steps", "ddlcxr.sampling_eta",
            *(f"ddlcxr.{f}" for f in VAE_DEPENDS[1])), files=DDLCXR_FILES,
           sizing="namd.models.ddlcxr:sizing_parts",
           train_config="namd.models.ddlcxr:stage_train_config")),
    {"vae": "vae_ddlcxr", "cond": "cond_ddlcxr"},
    sampler="namd.inference.ddlcxr_sampler:DDLCXRSampler.from_run", steps="ddlcxr.sampling_steps",
    in_demo=False,
    about="DDL-CXR trained from scratch: its label-supervised VAE, a record transformer and "
          "a three-term loss; DDIM with eta 1",
    inferred="NLST's 13 static fields as one token each, in place of its clinical time series",
    paper={"lpips": 0.235, "lpips_std": 0.004, "fid": 122.410, "fid_std": 2.409,
           "auroc": 0.701, "auroc_std": 0.026, "auprc": 0.237, "auprc_std": 0.030}))

# -- part 2: the methods that predict progression itself (docs/compared-methods.md) ------------
# Image only (no record), each in its own space: McWGAN and ImageFlowNet in pixels, CorrFlowNet
# in the latent space of its own correlational autoencoder; deterministic rows draw one sample.
MCWGAN_FILES = ("predictor.json", "predictor.safetensors", "run_info.json")
MCWGAN_CLASSIFIER_FILES = ("classifier.json", "classifier.safetensors", "run_info.json")
CORRFLOWNET_AE_FILES = ("autoencoder.json", "autoencoder.safetensors", "run_info.json")
CORRFLOWNET_FILES = ("flow.json", "flow.safetensors", "run_info.json")
IMAGEFLOWNET_FILES = ("model.json", "model.safetensors", "run_info.json")

register(Method(
    "mcwgan", "McWGAN (GP-WGAN)",
    (Stage("classifier", "classifier_mcwgan", ("cohort",), "namd.training.mcwgan_classifier",
           "McWGAN's nodule classifier (training split only): the feature space of its "
           "perceptual loss", ("data", "mcwgan.classifier"), files=MCWGAN_CLASSIFIER_FILES,
           sizing="namd.models.mcwgan:classifier_sizing_parts",
           train_config="namd.models.mcwgan:classifier_train_config",
           reader="namd.training.mcwgan.read_classifier"),
     Stage("cond", "cond_mcwgan", ("classifier_mcwgan",), "namd.training.mcwgan",
           "McWGAN: a baseline-to-follow-up predictor against a WGAN-GP critic, with L1, SSIM "
           "and the classifier's perceptual distance", ("data", "mcwgan"), files=MCWGAN_FILES,
           sizing="namd.models.mcwgan:sizing_parts",
           train_config="namd.models.mcwgan:stage_train_config")),
    {"cond": "cond_mcwgan"},
    sampler="namd.inference.mcwgan_sampler:McWGANSampler.from_run", stochastic=False,
    in_demo=False, about="McWGAN: a deterministic image-to-image predictor trained against a "
                         "WGAN-GP critic (image only)",
    inferred="no public code: the predictor and critic follow its paper's appendices at their "
             "depth; the perceptual classifier is trained on namd's training split",
    paper={"lpips": 0.364, "fid": 80.443, "auroc": 0.763, "auprc": 0.307}))
register(Method(
    "corrflownet_ode", "CorrFlowNet-style (ODE)",
    (Stage("autoencoder", "autoencoder_corrflownet", ("cohort",), "namd.training.corrflownet_ae",
           "CorrFlowNet's correlational autoencoder: baseline and follow-up latents whose "
           "correlation is rewarded, with a malignancy head", ("data", "corrflownet.autoencoder"),
           files=CORRFLOWNET_AE_FILES, sizing="namd.models.corrflownet:ae_sizing_parts",
           train_config="namd.models.corrflownet:ae_train_config"),
     Stage("cond", "cond_corrflownet", ("autoencoder_corrflownet",), "namd.training.corrflownet",
           "CorrFlowNet's rectified flow from the baseline latent to the follow-up latent",
           ("data", "corrflownet"), ("corrflownet.sampling_steps", "corrflownet.sde_scale"),
           files=CORRFLOWNET_FILES, sizing="namd.models.corrflownet:sizing_parts",
           train_config="namd.models.corrflownet:stage_train_config")),
    {"autoencoder": "autoencoder_corrflownet", "cond": "cond_corrflownet"},
    sampler="namd.inference.corrflownet_sampler:CorrFlowNetSampler.ode",
    steps="corrflownet.sampling_steps", stochastic=False, in_demo=False,
    about="CorrFlowNet-style: a rectified flow from the baseline's latent to the follow-up's, "
          "integrated as an ODE (one deterministic follow-up)",
    inferred="only the abstract is public: the most plausible reading of it (its autoencoder, "
             "losses and flow are the project's)",
    paper={"lpips": 0.202, "fid": 91.695, "auroc": 0.779, "auprc": 0.318}))
register(Method(
    "corrflownet_sde", "CorrFlowNet-style (SDE)", (),
    {"autoencoder": "autoencoder_corrflownet", "cond": "cond_corrflownet"},
    sampler="namd.inference.corrflownet_sampler:CorrFlowNetSampler.sde",
    steps="corrflownet.sampling_steps", in_demo=False,
    about="CorrFlowNet-style: the same flow with a diffusion term (K random follow-ups)",
    inferred="only the abstract is public: the same flow as the ODE row, sampled with a "
             "diffusion term of the project's choosing",
    paper={"lpips": 0.202, "lpips_std": 0.001, "fid": 88.560, "fid_std": 0.231,
           "auroc": 0.776, "auroc_std": 0.004, "auprc": 0.321, "auprc_std": 0.011}))
register(Method(
    "imageflownet", "ImageFlowNet (SDE)",
    (Stage("autoencoder", "autoencoder_imageflownet", ("cohort",),
           "namd.training.imageflownet_ae",
           "ImageFlowNet's U-Net trained first to reconstruct", ("data", "imageflownet.unet",
                                                                   "imageflownet.recon"),
           files=IMAGEFLOWNET_FILES, reader="namd.training.imageflownet.load_unet",
           sizing="namd.models.imageflownet:recon_sizing_parts",
           train_config="namd.models.imageflownet:recon_train_config"),
     Stage("cond", "cond_imageflownet", ("autoencoder_imageflownet",),
           "namd.training.imageflownet",
           "ImageFlowNet: SDEs on the U-Net's skip connections and bottleneck, baseline to "
           "follow-up", ("data", "imageflownet"), ("imageflownet.sampling_steps",),
           files=IMAGEFLOWNET_FILES, sizing="namd.models.imageflownet:sizing_parts",
           train_config="namd.models.imageflownet:stage_train_config")),
    {"cond": "cond_imageflownet"},
    sampler="namd.inference.imageflownet_sampler:ImageFlowNetSampler.from_run",
    steps="imageflownet.sampling_steps", in_demo=False,
    about="ImageFlowNet: a U-Net whose skip connections and bottleneck evolve by learned SDEs "
          "over the interval (pixel space, image only)",
    inferred="built from its paper (the code's licence forbids copying): batched, at CPU size a "
             "small U-Net",
    paper={"lpips": 0.362, "lpips_std": 0.001, "fid": 217.706, "fid_std": 1.051,
           "auroc": 0.782, "auroc_std": 0.014, "auprc": 0.339, "auprc_std": 0.022}))
