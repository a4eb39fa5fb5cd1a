"""Parameters and GPU memory of one training step per stage, from a config alone (`namd check`).

Every network is built by the package's own factories under torch.device("meta"): parameters
have shapes but no storage, so the paper's 860M U-Net and 4B language model are sized in seconds
on any machine. One training step of a stage needs

    total = weights + gradients + AdamW states + max(activations, optimiser temporaries)

weights      trainable parameters in float32, 4 B (mixed precision keeps float32 masters); the
             cond stage's frozen language model at text.dtype (float32 4 B, bfloat16 2 B, NF4
             0.5 B per Linear weight + a float32 absmax per block of 64, embeddings and norms
             in bfloat16 as bitsandbytes leaves them); the VAE stage's frozen LPIPS, float32.
gradients    4 B per trainable parameter. AdamW: exp_avg and exp_avg_sq, 8 B per trainable one.
activations  the bytes autograd keeps for the backward pass: torch.autograd.graph's
             saved_tensors_hooks see each tensor saved during one forward pass of the stage's
             loss on meta tensors at its batch size; each storage counts once, parameters and
             buffers not at all. Meta attention takes PyTorch's math path, which keeps the
             probabilities a fused kernel does not (paper sizes: +5% of the U-Net's activations,
             +1% of the language model's, run with eager attention as transformers' SDPA mask
             needs values). Mixed precision is emulated (`_Autocast`): torch.autocast does
             nothing to meta tensors.
opt. temp    AdamW's step(): on CUDA (foreach, torch's default there) a float32 copy of the
             trainable parameters; on a CPU (a tensor at a time) two copies of the largest.

Backward frees activations as it fills gradients and the temporaries live only in step(), hence
the max: an upper bound of the peak, compared with peaks of real steps by
benchmarks/paper_size.py (benchmarks/results/paper_size.md).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from namd.config import NamdConfig, methods
from namd.sizing.language_model import (
    LanguageModelSpec,
    frozen_lm_bytes,
    language_model_spec,
    probe_records,
)

HEADROOM = 2e9  # CUDA context, cuBLAS workspace and allocator slack kept out of the GPU's memory
CLIP_CONTEXT = (77, 768)  # SD1.5's CLIP ViT-L/14 text encoder: tokens x width of the empty prompt
# autocast's cast policy (torch.amp op lists) for the functions the models here call: the same
# low-precision list on both devices; CUDA runs norms, softmax and reductions in float32, the
# CPU only the losses (checked against torch.autocast on this CPU)
LOW_PRECISION = {"conv1d", "conv2d", "conv3d", "conv_transpose2d", "linear", "matmul", "__matmul__",
                 "mm", "bmm", "baddbmm", "addmm", "scaled_dot_product_attention"}
FLOAT32 = {"cpu": {"binary_cross_entropy_with_logits", "mse_loss", "l1_loss"},
           "cuda": {"group_norm", "layer_norm", "softmax", "log_softmax", "binary_cross_entropy_with_logits",
                    "mse_loss", "l1_loss", "exp", "pow", "__pow__", "rsqrt", "sum", "norm", "cumsum"}}


@dataclass(frozen=True)
class StageEstimate:
    """Parameter counts and memory (bytes) of one training step of one stage."""

    stage: str
    batch: int
    params: int
    trainable: int
    weights: int
    grads: int
    adam: int
    activations: int
    step_temp: int
    precision: str = "no"
    note: str = ""

    @property
    def total(self) -> int:
        """Peak bytes: weights + gradients + AdamW + max(activations, step temporaries)."""
        return self.weights + self.grads + self.adam + max(self.activations, self.step_temp)

    def fits(self, gpu_gb: float) -> bool:
        """Whether the step fits a GPU of `gpu_gb` GB (10^9 bytes) with HEADROOM left free."""
        return self.total + HEADROOM <= gpu_gb * 1e9


class _Autocast(TorchFunctionMode):
    """autocast's cast policy on `device` for meta tensors, where torch.autocast does nothing:
    float32 inputs of LOW_PRECISION functions are cast to `dtype`, inputs of FLOAT32[device] ones
    to float32, above autograd, so the cast copies the backward pass keeps (the weights' among
    them) are counted as autocast's are; other functions follow the usual type promotion."""

    def __init__(self, dtype: torch.dtype, device: str):
        super().__init__()
        self.dtype, self.float32 = dtype, FLOAT32["cuda" if device == "cuda" else "cpu"]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = self.dtype if name in LOW_PRECISION else torch.float32 if name in self.float32 else None
        if target is not None:
            def cast(x: Any) -> Any:
                return x.to(target) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != target else x
            args = tuple(cast(a) for a in args)
            kwargs = {k: cast(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> int:
    """An identity of the storage behind `t` (views share it), meta tensors included."""
    storage = t.untyped_storage()
    return getattr(storage, "_cdata", None) or id(storage)


def saved_tensor_bytes(loss_fn: Callable[[], torch.Tensor], modules: Iterable[nn.Module]) -> int:
    """Bytes autograd saves for backward while `loss_fn` runs: each storage once, the
    parameters and buffers of `modules` left out (they are counted as weights)."""
    own = {_storage_key(t) for m in modules for t in [*m.parameters(), *m.buffers()]}
    seen: dict[int, Any] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in own and key not in seen:
            seen[key] = t.untyped_storage()  # held, so no address is reused meanwhile
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn()
    return sum(s.nbytes() for s in seen.values())


def prior_context_shape(config: NamdConfig, encoder_shape: tuple[int, int]) -> tuple[int, int]:
    """(tokens, width) of stage 1's null context: CLIP's empty prompt (77 x 768, or the local
    CLIP config's) when diffusion.null_context is 'empty_prompt', else the encoder's (m, D)."""
    from namd.config.preflight import clip_folder
    from namd.models.token_text import component

    if config.diffusion.null_context != "empty_prompt":
        return encoder_shape
    root = clip_folder(config)
    folder = None if root is None else component(root, "text_encoder")
    if folder is not None and (folder / "config.json").is_file():
        from transformers import AutoConfig

        clip = AutoConfig.from_pretrained(folder, local_files_only=True)
        return int(clip.max_position_embeddings), int(clip.hidden_size)
    return CLIP_CONTEXT


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device="meta")


def _vae_parts(config: NamdConfig, batch: int):
    """VAE stage: the VAE (+ the probe that L_pred trains), the frozen LPIPS when L_LPIPS is on,
    and Equation 6 but L_align, whose saved tensors are O(B^2) numbers."""
    import torch.nn.functional as F

    from namd.models.alignment import kl_loss, reconstruction_loss
    from namd.models.probe import LinearProbe
    from namd.models.vae import build_vae, latent_shape

    cfg, size = config.vae, config.data.crop_size
    with torch.device("meta"):
        vae = build_vae(cfg).train()
        probe = LinearProbe(latent_shape(cfg, size)) if cfg.align and cfg.lambda_pred > 0 else None
        lpips = None
        if cfg.lambda_lpips > 0:
            from namd.models.lpips import LPIPSNet

            lpips = LPIPSNet().eval().requires_grad_(False)

    def loss() -> torch.Tensor:
        x = _randn(batch, cfg.in_channels, size, size)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        total = reconstruction_loss(x, recon) + cfg.lambda_kl * kl_loss(posterior.mean, posterior.logvar)
        if lpips is not None:
            total = total + cfg.lambda_lpips * lpips(recon.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)).mean()
        if probe is not None:
            total = total + F.binary_cross_entropy_with_logits(probe(z), _randn(batch))
        return total

    return [m for m in (vae, probe) if m is not None], [m for m in (lpips,) if m is not None], loss, ""


def _unet_loss(unet: nn.Module, batch: int, latent: tuple[int, ...], context: Callable[[], torch.Tensor],
               baseline: bool) -> Callable[[], torch.Tensor]:
    """|| eps - eps_theta ||^2 of a batch (Equations 9-10) through namd.models.schedules.model_output."""
    from namd.models.schedules import model_output

    def loss() -> torch.Tensor:
        z, t = _randn(batch, *latent), torch.zeros(batch, dtype=torch.long, device="meta")
        base = _randn(batch, *latent) if baseline else None
        return (model_output(unet, z, t, context(), baseline=base) - z).pow(2).mean()

    return loss


def _encoder_shape(config: NamdConfig, lm: LanguageModelSpec | None) -> tuple[int, int]:
    """(m, D) of the context encoder, from configs alone."""
    if config.text.encoder == "structured":
        from namd.models.structured import context_dim

        return config.text.n_prompt_sets, context_dim(config.text)
    return config.text.n_prompt_sets, int((lm or language_model_spec(config.text)).config.hidden_size)


def _prior_parts(config: NamdConfig, batch: int, lm: LanguageModelSpec | None):
    """Prior stage: the U-Net at stage 1's context width, on the null context (Equation 9)."""
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape

    c, h, w = latent_shape(config.vae, config.data.crop_size)
    tokens, width = prior_context_shape(config, _encoder_shape(config, lm))
    with torch.device("meta"):
        unet = build_unet(config.diffusion.unet, in_channels=c, out_channels=c,
                          cross_attention_dim=width, sample_size=h).train()
    null = _randn(1, tokens, width)
    loss = _unet_loss(unet, batch, (c, h, w), lambda: null.expand(batch, -1, -1), False)
    return [unet], [], loss, f"context {tokens} x {width} ({config.diffusion.null_context})"


def _cond_parts(config: NamdConfig, batch: int, lm: LanguageModelSpec | None, lm_device: str = "meta"):
    """Cond stage: the U-Net with 2C inputs at D and the encoder's trainable parameters; the
    frozen language model (on `lm_device`); C of `batch` records, repeated over cond_draws."""
    from transformers import AutoModel

    from namd.models.context import StandardizedContext
    from namd.models.structured import StructuredEncoder
    from namd.models.text import LLMContextEncoder
    from namd.models.unet import build_unet
    from namd.models.vae import latent_shape

    cfg = config.text
    frozen: list[nn.Module] = []
    if cfg.encoder == "structured":
        with torch.device("meta"):
            encoder: nn.Module = StructuredEncoder(cfg)
        note = "structured EHR encoder (all trainable)"
    else:
        spec = lm or language_model_spec(cfg)
        with torch.device(lm_device):
            model = AutoModel.from_config(copy.deepcopy(spec.config), attn_implementation="eager")
        frozen = [model.to(torch.float32 if cfg.dtype == "float32" else torch.bfloat16).requires_grad_(False).eval()]
        encoder = LLMContextEncoder(frozen[0], spec.tokenizer, cfg, spec.decoder)
        note = f"frozen LM at {cfg.dtype} ({spec.source})"
    encoder = StandardizedContext(encoder).to(lm_device) if cfg.standardize else encoder
    c, h, w = latent_shape(config.vae, config.data.crop_size)
    with torch.device("meta"):
        unet = build_unet(config.diffusion.unet, in_channels=2 * c, out_channels=c,
                          cross_attention_dim=encoder.dim, sample_size=h,
                          pooled_context=config.diffusion.pooled_context).train()
    draws, records = config.diffusion.cond_draws, probe_records(batch)
    loss = _unet_loss(unet, batch * draws, (c, h, w),
                      lambda: encoder(records).to("meta").repeat_interleave(draws, 0), True)
    prompts = nn.ParameterList(encoder.trainable_parameters())
    return [unet, prompts], frozen, loss, note


def _evaluator_parts(config: NamdConfig, batch: int):
    """Evaluator stage: the ViT, dropout on, and its BCE."""
    import torch.nn.functional as F

    from namd.models.evaluator import build_evaluator

    size = config.data.crop_size
    with torch.device("meta"):
        model = build_evaluator(config.evaluator, size).train()

    def loss() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(model(_randn(batch, 1, size, size)), _randn(batch))

    return [model], [], loss, ""


def _own_stage(stage: str) -> methods.Stage | None:
    """The table's stage of folder `stage` when it sizes itself (a compared method's own
    networks, Stage.sizing), else None."""
    found = methods.owner(stage)
    return found[1] if found is not None and found[1] is not None and found[1].sizing else None


def _train_config(config: NamdConfig, stage: str) -> Any:
    own = _own_stage(stage)
    if own is not None:
        return methods.resolve(own.train_config)(config)
    return {"vae": config.vae.train, "prior": config.diffusion.prior, "cond": config.diffusion.cond,
            "evaluator": config.evaluator.train}[stage]


def train_kinds() -> tuple[str, ...]:
    """Every kind of stage NAMD and its ablations train (vae, prior, cond), each stage of a
    compared method that sizes its own networks (by folder: cond_flux, classifier_mcwgan,
    ...), and the evaluator."""
    table = methods.METHODS.values()
    namd = dict.fromkeys(s.kind for m in table if m.in_demo for s in m.trains)
    own = tuple(s.folder for m in table for s in m.trains if s.sizing)
    return (*namd, *own, "evaluator")


def stage_batch(config: NamdConfig, stage: str) -> int:
    """The stage's (micro-)batch size: under gradient accumulation one micro-batch is alive."""
    return _train_config(config, stage).batch_size


def _parts(config: NamdConfig, stage: str, batch: int, lm: LanguageModelSpec | None, device: str):
    """(trainable modules, frozen modules, note, activation bytes) of a stage; the cond
    stage's language model is built on the CPU when its mask code cannot run on meta (BERT)."""
    builders = {"vae": lambda: _vae_parts(config, batch), "prior": lambda: _prior_parts(config, batch, lm),
                "cond": lambda: _cond_parts(config, batch, lm), "evaluator": lambda: _evaluator_parts(config, batch)}
    own = _own_stage(stage)
    if own is not None:
        builders[stage] = lambda: methods.resolve(own.sizing)(config, batch)
    if stage not in builders:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(train_kinds())}")
    precision = _train_config(config, stage).mixed_precision
    mode = (_Autocast(torch.bfloat16 if precision == "bf16" else torch.float16, device)
            if precision != "no" else contextlib.nullcontext())
    trainable, frozen, loss, note = builders[stage]()
    try:
        with mode:
            return trainable, frozen, note, saved_tensor_bytes(loss, [*trainable, *frozen])
    except RuntimeError as exc:  # "Tensor.item() cannot be called on meta tensors"
        if stage != "cond" or "meta" not in str(exc):
            raise
    trainable, frozen, loss, note = _cond_parts(config, batch, lm, lm_device="cpu")
    with mode:
        return trainable, frozen, note, saved_tensor_bytes(loss, [*trainable, *frozen])


def _frozen_bytes(module: nn.Module) -> int:
    """Bytes of a frozen module's weights at their own dtype (float32 unless built otherwise)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def estimate_stage(config: NamdConfig, stage: str, batch: int | None = None, device: str = "cuda",
                   lm: LanguageModelSpec | None = None) -> StageEstimate:
    """The StageEstimate of one stage ('vae', 'prior', 'cond', 'evaluator') at `batch` (default:
    the config's), for a step on `device` ('cuda' or 'cpu': AdamW's temporaries differ); `lm`
    is the language model's shape when already known (language_model_spec)."""
    batch = batch or stage_batch(config, stage)
    trainable, frozen, note, activations = _parts(config, stage, batch, lm, device)
    train = {id(p): p for m in trainable for p in m.parameters() if p.requires_grad}
    n_train = sum(p.numel() for p in train.values())
    n_frozen = sum(p.numel() for m in frozen for p in m.parameters())
    frozen_bytes = sum(frozen_lm_bytes(m, config.text.dtype) if stage == "cond"
                       else _frozen_bytes(m) for m in frozen)
    largest = max((p.numel() for p in train.values()), default=0)
    return StageEstimate(
        stage=stage, batch=batch, params=n_train + n_frozen, trainable=n_train,
        weights=4 * n_train + frozen_bytes, grads=4 * n_train, adam=8 * n_train,
        activations=activations, step_temp=4 * (n_train if device == "cuda" else 2 * largest),
        precision=_train_config(config, stage).mixed_precision, note=note)


def estimate_stages(config: NamdConfig, batches: dict[str, int] | None = None, device: str = "cuda",
                    stages: Sequence[str] | None = None) -> list[StageEstimate]:
    """StageEstimates of `stages` (default: every kind of stage the table of methods trains,
    namd.config.methods, and the evaluator), each at batches[stage] or its configured batch size."""
    batches = batches or {}
    stages = stages if stages is not None else train_kinds()
    lm = language_model_spec(config.text) if "cond" in stages and config.text.encoder == "llm" else None
    return [estimate_stage(config, s, batches.get(s), device, lm) for s in stages]


def advice(row: StageEstimate, gpu_gb: float) -> str:
    """What would make a stage that does not fit fit: an 8-bit AdamW (bitsandbytes' AdamW8bit:
    2 B of optimiser state per trainable parameter instead of 8), or LoRA (the weights frozen in
    bfloat16; gradients and AdamW states, 16 B, only for adapters of about 1% of them), with the
    activations left to bring down (gradient checkpointing, a smaller batch)."""
    eight_bit = row.total - row.adam + row.adam // 4
    lora = row.weights // 2 + 16 * max(1, row.trainable // 100)
    room = gpu_gb * 1e9 - HEADROOM - lora
    return (f"{row.stage}: does not fit {gpu_gb:g} GB as a full fine-tune; with an 8-bit AdamW it "
            f"would need {eight_bit / 1e9:.1f} GB (fits: {'yes' if eight_bit + HEADROOM <= gpu_gb * 1e9 else 'no'}); "
            f"LoRA on ~1% of the weights (the rest frozen in bfloat16) needs {lora / 1e9:.1f} GB "
            f"before activations, which must then stay under {max(room, 0) / 1e9:.1f} GB (here "
            f"{row.activations / 1e9:.1f} GB: gradient checkpointing or a smaller batch)")


def format_table(rows: Sequence[StageEstimate], gpu_gb: float = 48.0, title: str = "") -> str:
    """The table `namd check` prints: a row per stage (GB = 10^9 bytes) with its verdict."""
    def count(n: int) -> str:
        return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"

    w = max([10, *(len(r.stage) for r in rows)])  # the stage column fits its longest name
    head = (f"{'stage':<{w}} {'batch':>5} {'params':>8} {'trainable':>9} {'weights':>7} {'grads':>6} "
            f"{'AdamW':>6} {'activ.':>7} {'opt.tmp':>7} {'total':>6}  fits {gpu_gb:g} GB")
    lines = [title, head] if title else [head]
    for r in rows:
        gb = [f"{v / 1e9:.2f}" if v >= 1e8 or not v else f"{v / 1e9:.3f}"
              for v in (r.weights, r.grads, r.adam, r.activations, r.step_temp, r.total)]
        lines.append(f"{r.stage:<{w}} {r.batch:>5} {count(r.params):>8} {count(r.trainable):>9} {gb[0]:>7} "
                     f"{gb[1]:>6} {gb[2]:>6} {gb[3]:>7} {gb[4]:>7} {gb[5]:>6}  {'yes' if r.fits(gpu_gb) else 'no'}")
    lines.append(f"GB = 10^9 bytes; total = weights + grads + AdamW + max(activations, optimiser "
                 f"temporaries); fits = total + {HEADROOM / 1e9:g} GB headroom <= {gpu_gb:g} GB.")
    lines += [f"{r.stage}: {r.note}" for r in rows if r.note]
    lines += [advice(r, gpu_gb) for r in rows if not r.fits(gpu_gb)]
    lines += [f"{r.stage}: mixed precision {r.precision} (autocast's cast policy emulated on meta)"
              for r in rows if r.precision != "no"]
    return "\n".join(lines)
