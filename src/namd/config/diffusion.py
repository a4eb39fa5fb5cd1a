"""The two-stage latent diffusion model and its sampler (paper 3.3.2, Appendix B and D)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import FOUNDATION, Section, TrainConfig


class UNetConfig(Section):
    """UNet2DConditionModel size (tiny defaults; paper preset = SD1.5, 320 channels).

    The block layout follows SD1.5 for any number of levels: cross-attention at every level but
    the deepest, a cross-attention middle block. The input and cross-attention widths are not
    set here: they come from the VAE's latent channels and the context encoder's D.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    attention_head_dim: int = Field(
        8, ge=1, description="diffusers' SD1.5 naming: the number of heads (SD1.5: eight)")
    norm_num_groups: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    pretrained: str | None = Field(
        FOUNDATION, description="the weights the prior fine-tunes: 'namd:foundation' (CPU presets: "
        "the U-Net prior shipped with namd, docs/foundation.md), a local SD1.5 U-Net (paper preset: "
        "a diffusers folder, or its parent with unet/, or one .safetensors file with diffusers or "
        "original LDM key names), or null (from scratch)")
    min_transferred: float = Field(
        0.5, ge=0, le=1, description="smallest share of parameters that must carry over when "
                                     "loading weights into a different layout (else an error)")


class DiffusionConfig(Section):
    """Noise schedule shared by training and sampling, and the two training stages.

    The paper says 'linear' from 8.5e-4 to 1.2e-2; its CompVis-lineage code takes linspace over
    sqrt(beta) and squares, which diffusers calls 'scaled_linear'. We follow the code.
    """

    num_train_timesteps: int = Field(1000, ge=2)
    beta_start: float = Field(8.5e-4, gt=0)
    beta_end: float = Field(1.2e-2, gt=0)
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction", description="what the U-Net predicts: v (CPU presets, beyond the paper) or "
        "the noise (paper preset, Equations 9-10). At CPU budgets the epsilon model's small "
        "errors at high noise become large x0 errors, and samples drifted into blobs far from "
        "their baseline (benchmarks/results/follow_baseline.md)")
    unet: UNetConfig = UNetConfig()
    # CPU-sized defaults: a few hundred steps need a larger learning rate than the paper's
    # (prior 1e-4 with 4,000 warm-up steps over 104,000; cond 2e-5 over 60 epochs), which the
    # paper preset sets. The prior fine-tunes the shipped foundation's U-Net prior
    # (unet.pretrained) in 100 cosine steps (from scratch it took 300 at lr 1e-3)
    # (benchmarks/results/demo_foundation.md).
    prior: TrainConfig = TrainConfig(lr=5e-4, batch_size=32, max_steps=100, schedule="cosine")
    # cond: 200 cosine steps since the foundation (issue 28); 300 constant steps cost 0.13x of the
    # demo's time and did not bring back the nodules' density (benchmarks/results/demo_foundation.md).
    # lr 2e-3 since its fourth pass: the model at 1e-3 was still learning at step 200 (validation
    # 0.342 -> 0.326); known-future density energy 89.0 -> 75.1, diameter 1.27 -> 1.11, growth
    # gap kept; 4e-3 lost the growth gap (benchmarks/results/cond_lr.md). From scratch 1e-3 had
    # beaten 5e-4 (benchmarks/results/follow_baseline.md).
    cond: TrainConfig = TrainConfig(lr=2e-3, batch_size=8, max_steps=200, schedule="cosine")  # paper: batch 8
    condition_dropout: float = Field(
        0.0, ge=0, lt=1, description="share of training pairs whose context C is replaced by the "
                                     "null context, for classifier-free guidance; 0 = paper")
    cond_draws: int = Field(
        8, ge=1, description="(rotation, timestep, noise) draws per training pair of the cond stage, "
                             "with one context-encoder pass per pair (CPU presets: 8, beyond the "
                             "paper); 1 = paper preset")
    prompt_steps: int | None = Field(
        50, ge=0, description="cond stages: the optimizer steps in which the soft prompts train "
        "with the U-Net; from then on they are frozen and each record's C is computed once and "
        "reused, so the frozen language model no longer runs forward and backward at every step "
        "(CPU presets: 50 of 200, beyond the paper: the same validation loss, ratio and "
        "known-future energies as 200, the cond stage in 0.735x the time, "
        "benchmarks/results/prompt_steps.md); "
        "None = every step (paper preset). The structured encoder's MLP trains at every step")
    snr_gamma: float | None = Field(
        None, gt=0, description="min-SNR loss weighting of both stages (Hang et al. 2023), e.g. 5; "
                                "None = the paper's unweighted Equations 9-10")
    null_context: Literal["zeros", "empty_prompt"] = Field(
        "zeros", description="the null context C of stage 1 and of condition dropout: zeros of the "
        "context encoder's shape (CPU presets), or 'empty_prompt' (paper preset, the authors' code): "
        "stage 1 conditions on the CLIP text encoder's embedding of the empty prompt from the local "
        "SD1.5 folder (diffusion.clip_text, 77 x 768, which keeps SD1.5's cross-attention weights) "
        "and stage 2's null context is the language model's output for the empty prompt")
    clip_text: str | None = Field(
        None, description="local SD1.5 folder (with text_encoder/ and tokenizer/) or a CLIP text model "
                          "folder; needed by null_context = 'empty_prompt'; None = the SD1.5 folder "
                          "holding diffusion.unet.pretrained (its unet/ folder or weights file)")
    pooled_context: bool = Field(
        False, description="stage 2 only: also add an attention-pooled C to the timestep embedding "
        "(diffusers' addition_embed_type 'text'), so the record can shift every block globally, as "
        "a class embedding does; False = the paper (C enters through cross-attention only). The "
        "new layers start at zero output, so stage 2 begins as the prior")
    encode_batch: int = Field(
        16, ge=1, description="crops per VAE call when building the latent cache: on one CPU thread "
        "the tiny VAE encodes 2.7-2.8 ms per crop at 8-16 crops and 4.7 ms at 64, whose activations "
        "leave the cache (benchmarks/results/encode_batch.md); raise it on a GPU")


class SamplingConfig(Section):
    """K virtual follow-ups per nodule (paper: K = 20, DDIM 50 steps, eta = 0, guidance 1; the
    paper preset sets them). The CPU presets take DDIM 5 steps: against DDIM 50 with the same
    seeds on the demo's 130 test nodules, per-nodule mean-probability correlation 0.9991, AUROC
    +0.005, image MAE to the real follow-up -2.7%, spread over K 46 vs 51 HU
    (benchmarks/results/sampler_steps.md; beyond the paper; DDIM 10 before issue 28, which
    needed half the sample stage's time for it). DPM-Solver++ was further from DDIM 50 than DDIM
    at every step count.
    v-prediction makes the sampling path nearly straight, so few steps suffice.

    DDIM timesteps: the paper preset follows the CompVis sampler of the authors' code, uniform
    'leading' spacing shifted by one (range(0, T, T // steps) + 1: 981, 961, ..., 1 at 50 steps);
    the CPU presets take 'trailing' spacing (999, 799, 599, 399, 199 at 5 steps; Lin et al.,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024, Table 2), because
    'leading' at 5 steps starts at t = 801, where alpha_bar is 0.037 rather than the 0.005 of
    pure noise: the first step reads the noise as signal and the nodules came out 87 HU fainter
    than the real follow-ups (benchmarks/results/nodule_density.md); trailing brought NAMD's
    known-future density energy from 123 to 90 HU at the same cost (runs/A against runs/cur in
    benchmarks/results/demo_foundation_pass2.md, issue 28). alpha_prev of the last step =
    alphas_cumprod[0] in both.
    """

    k: int = Field(20, ge=1)
    steps: int = Field(5, ge=1, description="sampler steps (CPU presets: DDIM 5; paper preset: 50)")
    eta: float = Field(0.0, ge=0, description="DDIM stochasticity; 0 = deterministic (paper)")
    scheduler: Literal["ddim", "dpmsolver++"] = "ddim"
    solver_order: int = Field(2, ge=1, le=3, description="DPM-Solver++ order")
    timestep_spacing: Literal["leading", "trailing", "linspace"] = Field(
        "trailing", description="DDIM only (DPM-Solver++ uses diffusers' 'linspace'): 'trailing' "
        "(CPU presets: the first step at t = T - 1) or 'leading' (paper preset, the authors' code)")
    steps_offset: int = Field(0, ge=0, description="DDIM only (paper preset: 1, with 'leading')")
    guidance_scale: float = Field(1.0, ge=0, description="1 = no guidance (paper)")
    drop_context: bool = Field(
        False, description="sample the trained model with C = its null context: a model trained "
        "with condition dropout is then its own null-context counterpart (beside the separately "
        "trained cond_null_context); False = the record's C (paper)")
    max_batch: int = Field(256, ge=1, description="latents per U-Net call (memory budget)")
    aux_batch: int = Field(16, ge=1, description="crops per VAE encode/decode call and records per "
                                                 "context-encoder call (small is fastest on a CPU; "
                                                 "raise it on a GPU)")
    seed: int = 23
    split: Literal["train", "val", "test"] = "test"
    grids: int = Field(6, ge=0, description="nodules drawn as PNG grids")


def steps_fit(cfg: SamplingConfig, steps: int, num_train_timesteps: int) -> bool:
    """Whether `steps` sampler steps stay inside a schedule of `num_train_timesteps` (T).

    The rule is diffusers' own timestep arithmetic (0.42), so no sampler indexes past the
    schedule (an IndexError deep in the loop otherwise, or t = -1 read silently as the last
    timestep): DDIM 'leading' takes t = i * (T // steps) + steps_offset for i < steps, which
    must stay <= T - 1 (with the default offset 1: steps <= T - 1); DDIM 'linspace' rounds
    steps points of linspace(0, T - 1), distinct for steps <= T; DDIM 'trailing' takes
    round(arange(T, 0, -T / steps)) - 1, whose float steps sometimes give one timestep more,
    -1 (e.g. 499 of 1,000), so it is computed as diffusers computes it; DPM-Solver++ rounds
    steps + 1 points of linspace(0, T - 1), distinct only for steps <= T - 1.
    """
    T = num_train_timesteps
    if steps < 1 or steps > T:
        return False
    if cfg.scheduler == "dpmsolver++":
        return steps <= T - 1
    if cfg.timestep_spacing == "leading":
        return (steps - 1) * (T // steps) + cfg.steps_offset <= T - 1
    if cfg.timestep_spacing == "trailing":
        import numpy as np

        t = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
        return len(t) == steps and int(t.min()) >= 0
    return True


def max_sampling_steps(cfg: SamplingConfig, num_train_timesteps: int) -> int:
    """The most sampler steps `cfg`'s scheduler and spacing allow over T training timesteps."""
    return next((s for s in range(num_train_timesteps, 0, -1)
                 if steps_fit(cfg, s, num_train_timesteps)), 0)


def check_sampling_steps(cfg: SamplingConfig, num_train_timesteps: int) -> None:
    """Refuse sampler steps outside the schedule in one line saying the allowed range; called
    where a config is about to sample (predict, sample, the API, serve), before any model work."""
    if steps_fit(cfg, cfg.steps, num_train_timesteps):
        return
    top = max_sampling_steps(cfg, num_train_timesteps)
    how = ("dpmsolver++" if cfg.scheduler == "dpmsolver++"
           else f"ddim with {cfg.timestep_spacing!r} spacing" + (
               f" and steps_offset {cfg.steps_offset}" if cfg.timestep_spacing == "leading" else ""))
    what, gaps = (("exceeds", "") if cfg.steps > top else
                  ("does not fit", ", though not every count below that"))
    allowed = f"1 to {top} steps{gaps}" if top else "no step count (lower sampling.steps_offset)"
    raise ValueError(f"sampling.steps = {cfg.steps} {what} the schedule: {how} over "
                     f"{num_train_timesteps} training timesteps allows {allowed}")
