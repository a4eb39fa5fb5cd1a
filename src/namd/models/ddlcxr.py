"""DDL-CXR's networks and loss (Yao et al., NeurIPS 2024; official code Chenliu-svg/DDL-CXR,
Apache-2.0, read and not copied): the record transformer, its U-Net, its noise schedule and its
three-term loss, with their files and the sizing `namd check` reads.

Record encoder (its TSTransformerEncoder, `encode`): the source embeds each time step of a
clinical series (79 discretised features with mask channels) by one linear map; NLST's record
is 13 static fields (namd.cohort.ehr.EHR), so each field is one token (project's choice): a
categorical field's one-hot code plus a missing flag, a continuous one's value standardised by
the training pairs' mean and std (the source's normaliser) plus a missing flag, each through its
own linear map to d_model, scaled by sqrt(d_model) as the source's input projection. Then, as
the source: a CLS token first, fixed sinusoidal positions, dropout, transformer layers with
BatchNorm in place of LayerNorm, GELU, dropout; the CLS token feeds the label head and all
tokens (CLS included) the U-Net's cross-attention.

U-Net: its openaimodel UNetModel as diffusers' UNet2DConditionModel, cross-attention at every
level and in the middle, heads of head_channels channels; input [noisy follow-up, baseline]
latents (8 in, 4 out), as the source's hybrid conditioning concatenates them.

Loss (its DDL_CXR_LDM.p_losses): eps MSE + label_weight x BCE(label head on CLS, target image's
label) + triplet_weight x ramp x mean_b[(1 / (1 + SNR_t)) x mean_chw(relu(e_pos - e_neg +
margin))], e_pos and e_neg the element-wise squared errors under the record's tokens and under
tokens x (1 - blend) + N(0, I) x blend (both U-Net passes trained, as the source); ramp =
completed epochs / epochs (its current_epoch / max_epoch). With ddlcxr.prediction_type = v (the
CPU presets) every error is of v instead of eps. Its label head is not among the optimised
parameters of the source (its configure_optimizers lists the U-Net and the encoder only), so it
stays at its seeded random initialisation here too; unlabelled pairs are left out of its BCE.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn

from namd.cohort.ehr import CONTINUOUS, EHR, EHR_FIELDS
from namd.config import NamdConfig, TrainConfig
from namd.config.ddlcxr import DDLCXRConfig, DDLCXRUNetConfig, RecordEncoderConfig
from namd.models.structured import ehr_features, feature_names
from namd.run.provenance import atomic_write_bytes, atomic_write_json
from namd.run.readers import load_safetensors, read_json, reading

RECORD_FILE = "record_encoder.safetensors"
RECORD_SPEC = "record_encoder.json"
UNIT_SCALES = {name: (0.0, 1.0) for name in CONTINUOUS}  # raw values; standardised in the module


# -- the record transformer -----------------------------------------------------------------------
def field_widths() -> list[int]:
    """Width of each field's block in namd.models.structured's feature vector, EHR_FIELDS order."""
    names = feature_names()
    return [sum(1 for n in names if n.split(":")[0].split("=")[0] == field) for field in EHR_FIELDS]


def fit_standardiser(ehrs: Sequence[EHR]) -> dict[str, tuple[float, float]]:
    """(mean, std) of each continuous field over the records that have it (0 / 1 when fewer
    than two do, or the spread is 0): the source standardises its inputs by training statistics."""
    out = {}
    for name in CONTINUOUS:
        values = torch.tensor([float(getattr(e, name)) for e in ehrs if getattr(e, name) is not None],
                              dtype=torch.float64)
        std = float(values.std()) if len(values) > 1 else 0.0
        out[name] = (float(values.mean()) if len(values) else 0.0, std if std > 0 else 1.0)
    return out


def sinusoid(length: int, dim: int) -> Tensor:
    """Fixed sinusoidal positions (length, dim) (Vaswani et al. 2017; the source's fixed encoding)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


class BatchNormEncoderLayer(nn.Module):
    """A post-norm transformer encoder layer with BatchNorm over the feature channels in place
    of LayerNorm (the source's TransformerBatchNormEncoderLayer), GELU feed-forward."""

    def __init__(self, cfg: RecordEncoderConfig):
        super().__init__()
        d = cfg.d_model
        self.attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, cfg.feedforward), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.feedforward, d))
        self.norm1, self.norm2 = nn.BatchNorm1d(d), nn.BatchNorm1d(d)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, d) -> (B, n, d)."""
        x = self.norm1((x + self.drop1(self.attn(x, x, x, need_weights=False)[0])).transpose(1, 2)).transpose(1, 2)
        return self.norm2((x + self.drop2(self.ff(x))).transpose(1, 2)).transpose(1, 2)


class RecordEncoder(nn.Module):
    """EHR records -> (CLS (B, d), tokens (B, 1 + 13, d)); see the module docstring."""

    def __init__(self, cfg: RecordEncoderConfig, standardiser: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        self.cfg, self.dim = cfg, cfg.d_model
        self.widths = field_widths()
        self.fields = nn.ModuleList(nn.Linear(w, cfg.d_model) for w in self.widths)
        self.cls = nn.Parameter(torch.randn(1, 1, cfg.d_model))
        self.register_buffer("positions", sinusoid(len(EHR_FIELDS) + 1, cfg.d_model), persistent=False)
        self.drop_in, self.drop_out = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(BatchNormEncoderLayer(cfg) for _ in range(cfg.layers))
        names = feature_names()
        self.value_columns = [names.index(n) for n in CONTINUOUS]
        stats = standardiser or {n: (0.0, 1.0) for n in CONTINUOUS}
        self.register_buffer("centre", torch.tensor([stats[n][0] for n in CONTINUOUS]))
        self.register_buffer("spread", torch.tensor([stats[n][1] for n in CONTINUOUS]))

    @property
    def n_tokens(self) -> int:
        """Tokens the U-Net attends to: CLS and one per field."""
        return len(EHR_FIELDS) + 1

    def standardiser(self) -> dict[str, tuple[float, float]]:
        """The (mean, std) each continuous field is standardised with."""
        return {n: (float(c), float(s)) for n, c, s in zip(CONTINUOUS, self.centre, self.spread, strict=True)}

    def features(self, ehrs: Sequence[EHR]) -> Tensor:
        """(B, F) one-hot codes, standardised values and missing flags (missing value -> 0)."""
        x = ehr_features(ehrs, UNIT_SCALES).to(self.centre.device)
        cols = torch.tensor(self.value_columns, device=x.device)
        missing = x[:, cols + 1] > 0
        values = torch.where(missing, 0.0, (x[:, cols] - self.centre) / self.spread)
        return x.index_copy(1, cols, values)

    def forward(self, ehrs: Sequence[EHR]) -> tuple[Tensor, Tensor]:
        """(CLS (B, d), all tokens (B, 14, d)) for the records."""
        blocks = self.features(ehrs).split(self.widths, dim=1)
        tokens = torch.stack([proj(b) for proj, b in zip(self.fields, blocks, strict=True)], 1)
        x = torch.cat([self.cls.expand(len(ehrs), -1, -1), tokens * math.sqrt(self.dim)], 1)
        x = self.drop_in(x + self.positions)
        for layer in self.layers:
            x = layer(x)
        x = self.drop_out(F.gelu(x))
        return x[:, 0], x


def save_record_encoder(encoder: RecordEncoder, out: Path) -> None:
    """record_encoder.safetensors (weights, BatchNorm statistics, the standardiser) and
    record_encoder.json (its config and standardiser), atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write_bytes(Path(out) / RECORD_FILE, save(state))
    atomic_write_json(Path(out) / RECORD_SPEC, {"record": encoder.cfg.model_dump(mode="json"),
                                                "fields": list(EHR_FIELDS),
                                                "standardiser": encoder.standardiser()})


def load_record_encoder(stage_dir: Path, device: str | torch.device = "cpu") -> RecordEncoder:
    """The trained record encoder of a cond_ddlcxr folder, in eval mode (RunFileError naming a
    missing or damaged file)."""
    spec_path, weights = Path(stage_dir) / RECORD_SPEC, Path(stage_dir) / RECORD_FILE
    spec = read_json(spec_path, keys=("record", "fields"))
    state = load_safetensors(weights)
    with reading(spec_path):  # the weights passed their sha256: a mismatch is the spec's
        if list(spec["fields"]) != list(EHR_FIELDS):
            raise ValueError(f"fields {spec['fields']} are not namd's {list(EHR_FIELDS)}")
        encoder = RecordEncoder(RecordEncoderConfig.model_validate(spec["record"]))
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # shapes or names that do not fit
            raise ValueError(f"its record config does not fit {RECORD_FILE} ({exc})") from None
    return encoder.to(device).eval().requires_grad_(False)


# -- the U-Net and the schedule -------------------------------------------------------------------
def build_unet(cfg: DDLCXRUNetConfig, *, latent_channels: int, context_dim: int, sample_size: int,
               seed: int | None = None) -> UNet2DConditionModel:
    """The U-Net: [noisy, baseline] latents in (2C), noise out (C), cross-attention everywhere."""
    levels = len(cfg.block_out_channels)
    kwargs: dict[str, Any] = dict(
        sample_size=sample_size, in_channels=2 * latent_channels, out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels,
        mid_block_type="UNetMidBlock2DCrossAttn", block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        # diffusers' attention_head_dim is the number of heads (its SD1.5 naming)
        attention_head_dim=tuple(c // cfg.head_channels for c in cfg.block_out_channels),
        cross_attention_dim=context_dim, dropout=cfg.dropout)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return UNet2DConditionModel(**kwargs)


def label_head(cfg: RecordEncoderConfig, seed: int) -> nn.Linear:
    """The label head on the CLS token (one logit: malignancy), seeded (never trained)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(cfg.d_model, 1).requires_grad_(False)


def training_scheduler(cfg: DDLCXRConfig) -> DDPMScheduler:
    """Its DDPM forward process: T steps, betas beta_start..beta_end, epsilon (or v) prediction."""
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)


def triplet_timestep_weight(alphas_cumprod: Tensor) -> Tensor:
    """1 / (1 + SNR_t), SNR_t = abar_t / (1 - abar_t): the source's triplet_loss_weight."""
    a = alphas_cumprod.double()
    return (1.0 / (1.0 + a / (1.0 - a))).float()


def ramp(epoch: int, epochs: int) -> float:
    """The triplet term's ramp: completed epochs / all epochs (0 in the first epoch)."""
    return epoch / max(epochs, 1)


def three_term_loss(eps_pos: Tensor, eps_neg: Tensor, target: Tensor, logits: Tensor, labels: Tensor,
                    t_weight: Tensor, ramp_value: float, cfg: DDLCXRConfig) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and its terms: `eps_pos` / `eps_neg` the U-Net's
    outputs under the record and the negative record, `target` what it learns to predict (the
    noise, or v), `t_weight` (B,) = 1 / (1 + SNR_t) of each item's timestep, `labels` (B,) with
    NaN for an unknown label (left out of the BCE)."""
    pos = (eps_pos.float() - target.float()).pow(2)
    neg = (eps_neg.float() - target.float()).pow(2)
    hinge = F.relu(pos - neg + cfg.margin).flatten(1).mean(1)
    triplet = (hinge * t_weight.to(hinge)).mean()
    known = torch.isfinite(labels)
    bce = (F.binary_cross_entropy_with_logits(logits[known].float(), labels[known].float())
           if known.any() else logits.sum() * 0.0)
    mse = pos.mean()
    loss = mse + cfg.label_weight * bce + cfg.triplet_weight * ramp_value * triplet
    return loss, {"mse": float(mse.detach()), "neg_mse": float(neg.mean().detach()),
                  "label_bce": float(bce.detach()), "triplet": float(triplet.detach()),
                  "ramp": float(ramp_value)}


def predict_both(unet: nn.Module, noisy: Tensor, t: Tensor, baseline: Tensor, tokens: Tensor,
                 negative: Tensor) -> tuple[Tensor, Tensor]:
    """eps under the record's tokens and under the negative tokens, in one U-Net call (GroupNorm
    is per item, so this is two calls' result)."""
    inp = torch.cat([noisy, baseline], 1)
    out = unet(torch.cat([inp, inp]), torch.cat([t, t]),
               encoder_hidden_states=torch.cat([tokens, negative])).sample
    return out.chunk(2)


# -- sizing (`namd check`) ------------------------------------------------------------------------
def stage_train_config(config: NamdConfig) -> TrainConfig:
    """The cond_ddlcxr stage's training settings (its batch size sizes the step)."""
    return config.ddlcxr.train


def sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one cond_ddlcxr training step on meta tensors: the
    U-Net, the record encoder, both U-Net passes of the three-term loss."""
    from namd.models.vae import latent_shape

    cfg = config.ddlcxr
    c, h, w = latent_shape(cfg.vae, config.data.crop_size)
    with torch.device("meta"):
        unet = build_unet(cfg.unet, latent_channels=c, context_dim=cfg.record.d_model, sample_size=h).train()
        encoder = RecordEncoder(cfg.record).train()
        head = nn.Linear(cfg.record.d_model, 1).requires_grad_(False)
    records = [EHR(SCT_LONG_DIA=5.0 + i % 20, age=60.0, gender=1 + i % 2) for i in range(batch)]

    def loss() -> Tensor:
        z = torch.randn(batch, c, h, w, device="meta")
        t = torch.zeros(batch, dtype=torch.long, device="meta")
        cls, tokens = encoder(records)
        pos, neg = predict_both(unet, z, t, z, tokens, 0.5 * tokens + 0.5 * torch.randn_like(tokens))
        labels = torch.ones(batch, device="meta")
        return ((pos - z).pow(2).mean() + F.binary_cross_entropy_with_logits(head(cls)[:, 0], labels)
                + F.relu((pos - z).pow(2) - (neg - z).pow(2) + cfg.margin).mean())

    return [unet, encoder], [head], loss, f"record transformer {cfg.record.d_model} wide, two U-Net passes"


def vae_train_config(config: NamdConfig) -> TrainConfig:
    """The vae_ddlcxr stage's training settings."""
    return config.ddlcxr.vae.train


def vae_sizing_parts(config: NamdConfig, batch: int):
    """(trainable, frozen, loss, note) of one vae_ddlcxr step on meta tensors: the VAE, its label
    head, LPIPS when on; the adaptive weight's two extra gradients are transient, not counted."""
    from namd.models.alignment import kl_loss, reconstruction_loss
    from namd.models.probe import LinearProbe
    from namd.models.vae import build_vae, latent_shape

    cfg, size = config.ddlcxr.vae, config.data.crop_size
    with torch.device("meta"):
        vae = build_vae(cfg).train()
        probe = LinearProbe(latent_shape(cfg, size))
        frozen: list[nn.Module] = []
        if cfg.lambda_lpips > 0:
            from namd.models.lpips import LPIPSNet

            frozen.append(LPIPSNet().eval().requires_grad_(False))

    def loss() -> Tensor:
        x = torch.randn(batch, cfg.in_channels, size, size, device="meta")
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        total = reconstruction_loss(x, recon) + cfg.lambda_kl * kl_loss(posterior.mean, posterior.logvar)
        for net in frozen:
            total = total + cfg.lambda_lpips * net(recon.expand(-1, 3, -1, -1), x.expand(-1, 3, -1, -1)).mean()
        return total + F.binary_cross_entropy_with_logits(probe(z), torch.ones(batch, device="meta"))

    return [vae, probe], frozen, loss, "label-supervised VAE from scratch (adaptive label weight)"
