"""The nodule-aligned VAE (paper 3.2, Equation 6, Appendix B)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from namd.config.base import FOUNDATION, Section, TrainConfig


class VAEConfig(Section):
    """Network size, loss weights and training of the nodule-aligned KL autoencoder."""

    # network (tiny defaults; the paper preset is the SD1.5 VAE: 128,256,512,512, 2 blocks)
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    in_channels: int = Field(1, description="1, or 3 replicated channels for SD1.5 weights")
    norm_num_groups: int = Field(8, ge=1)
    pretrained: str | None = Field(
        FOUNDATION, description="the weights it fine-tunes: 'namd:foundation' (CPU presets: the VAE "
        "shipped with namd, docs/foundation.md), a local SD1.5 VAE (paper preset: a diffusers folder "
        "or a .safetensors file, diffusers or original layout; pickle .ckpt files are refused), or "
        "null (from scratch)")
    # losses (Equation 6); defaults follow the authors' code where the paper is silent
    lambda_kl: float = Field(1e-6, ge=0)
    lambda_lpips: float = Field(
        0.0, ge=0, description="weight of L_LPIPS (the authors' reconstruction loss: 1, the paper "
        "preset). Above 0 it needs vae.lpips_weights, else the VAE stage refuses to start; "
        "vae.lambda_lpips=0 is the explicit opt-out (CPU presets: 0, no VGG on two cores)")
    lambda_grad: float = Field(0.0, ge=0, description="weight of an L1 on image gradients added to "
                               "L_rec (beyond the paper; 0 = the paper's Equation 6)")
    lpips_weights: str | None = Field(None, description="local LPIPS VGG weights: a .safetensors of "
                                      "lpips.LPIPS(net='vgg').state_dict() (docs/paper-preset.md, 'LPIPS weights')")
    lpips_net: Literal["vgg"] = Field("vgg", description="LPIPS backbone layout (VGG-16, as the "
                                      "authors' LDM loss; built without torchvision)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout in the VAE's residual blocks "
                           "(authors' code: 0.2, the paper preset; CPU presets 0)")
    output: Literal["identity", "tanh"] = Field(
        "identity", description="the decoder's output activation (authors' code: tanh, the paper "
                                "preset; CPU presets: none, as diffusers' AutoencoderKL)")
    lambda_align: float = Field(1.0, ge=0)
    lambda_pred: float = Field(
        0.05, ge=0, description="weight of L_pred; the paper preset keeps the authors' 0.2. At CPU sizes "
        "(from scratch, no LPIPS in L_rec) 0.2 cost 2.2-2.6 dB of reconstruction and bought little: "
        "benchmarks/results/vae.md (beyond the paper)")
    align: bool = Field(True, description="False = the paper's 'w/o L_align' ablation (no L_align, no L_pred)")
    pred_weight: Literal["fixed", "adaptive"] = Field(
        "fixed", description="how L_pred is weighted: lambda_pred (NAMD), or DDL-CXR's adaptive "
        "weight lambda_pred x ||grad L_rec|| / (||grad L_pred|| + 1e-4) at the encoder's last "
        "convolution, clamped to [0, 1e4] (its calculate_adaptive_label_weight); 'adaptive' trains "
        "the probe with the VAE even without L_align (DDL-CXR's label-supervised VAE)")
    features: Literal["standardised", "raw"] = Field(
        "standardised", description="the five SCT_* features as Equations 2-4 see them: raw codes and "
        "millimetres ('raw', the authors' code and the paper preset) or standardised by the training "
        "split's mean and std (CPU presets). Standardised with sigma_f = 4 the target P is nearly "
        "uniform (row entropy 2.65 against 2.71 uniform at batch 16), but every sharper target "
        "measured (raw, or standardised with sigma_f 1.7 or 1) cost the tiny VAE 5 dB of "
        "reconstruction (25.0 -> 19.9-20.3 dB) for a k-NN diameter R^2 of 0.87-0.91 against 0.87 "
        "(benchmarks/results/align_target.md); the report gives P's row entropy")
    sigma_f: float = Field(4.0, gt=0)
    sigma_z: float = Field(1.0, gt=0)
    temperature: float = Field(0.5, gt=0)
    projection: Literal["mean", "flatten"] = "mean"
    pred_balance: Literal["balanced", "pos_weight", "none"] = Field(
        "balanced", description="L_pred class imbalance (training-split counts): balanced class weights "
                                "n / (2 n_c) (mean weight 1), BCE pos_weight n_neg / n_pos, or none")
    select_on: Literal["loss", "loss_without_pred"] = Field(
        "loss_without_pred", description="validation value that picks the checkpoint: the whole "
        "Equation 6 ('loss', the paper preset), or without lambda_pred L_pred, whose validation "
        "value is a noisy, overfitting probe on a few labelled crops and at CPU sizes picked "
        "checkpoints with worse reconstructions (beyond the paper)")
    # the stage's report (namd vae report)
    report_knn_k: int = Field(5, ge=1, description="neighbours of the k-NN diameter regression")
    report_folds: int = Field(5, ge=2, description="cross-validation folds of the k-NN regression")
    report_grid: int = Field(8, ge=1, description="crops shown next to their reconstructions")
    report_tsne_max: int = Field(2000, ge=10, description="at most this many crops in the t-SNE")
    # the stage's own training defaults (CPU-sized; the paper preset sets Appendix B's values)
    # tiny: fine-tunes the shipped foundation (vae.pretrained), as the paper fine-tunes SD1.5:
    # 200 cosine steps (a constant lr cost the VAE copy's nodule density: benchmarks/results/
    # demo_foundation.md; at 150 the demo's k-NN R^2 of the diameter was 0.793, at 200 0.809:
    # benchmarks/results/demo_foundation_pass2.md). From scratch (vae.pretrained=null)
    # it needs 700: at 300 the VAE lost the thin vessels (PSNR 21.7 dB) and its reconstructions of
    # a baseline were nearer another nodule's follow-up than their own for 55% of the validation
    # pairs (benchmarks/results/follow_baseline.md)
    train: TrainConfig = TrainConfig(lr=5e-4, batch_size=16, max_steps=200, schedule="cosine")
