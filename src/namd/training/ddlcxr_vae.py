"""`namd train vae --method ddlcxr`: DDL-CXR's label-supervised VAE (Yao et al. 2024), RUN/vae_ddlcxr.

Its VAE is a KL autoencoder with a label head on the sampled latent (a linear map of the
flattened z, BCE on the image's label: here the crop's malignancy, unlabelled crops left out)
whose weight is adaptive (the source's calculate_adaptive_label_weight: the gradient norms of
the reconstruction and of the label loss at the encoder's last convolution; vae.pred_weight =
adaptive in namd.training.vae), trained from scratch as the paper did. That is NAMD's VAE stage
without L_align, so this module only derives the config and hands over to
namd.training.vae.run_stage: the folder then holds NAMD's VAE files (autoencoder/,
latent_scale.json, probe.safetensors = the label head, report.json, ...), read by the same
readers, the latent cache and the run contract.

The derived config: `vae` = ddlcxr.vae whole (so the stage depends on `data` and `ddlcxr` only:
run_info.json records it), and nothing pretrained (require_pretrained off, no foundation U-Net
either, whose fit to the cohort NAMD's stages check and this one does not need).

Dropped against the source, at both sizes (project's choice, docs/compared-methods.md): its
patch discriminator, which its config starts at step 10,000 (disc_start) — later than either
preset's training ends. Its LPIPS term is the paper preset's (vae.lambda_lpips 1 with local
weights) and off at CPU size (no VGG on two cores), as NAMD's own VAE.
"""

from __future__ import annotations

from pathlib import Path

from namd.config import NamdConfig, validated_update
from namd.run.layout import RunDir

METHOD = "ddlcxr"


def vae_config(config: NamdConfig) -> NamdConfig:
    """The run's config as the DDL-CXR VAE trains under it: vae = ddlcxr.vae, from scratch, its
    LPIPS weights the run's vae.lpips_weights unless ddlcxr.vae.lpips_weights names others."""
    vae = config.ddlcxr.vae.model_dump(mode="json")
    vae["lpips_weights"] = vae["lpips_weights"] or config.vae.lpips_weights
    return validated_update(config, {"vae": vae, "require_pretrained": False,
                                     "diffusion.unet.pretrained": None})


def run_stage(config: NamdConfig, run: RunDir, *, method: str = METHOD, resume: bool = False,
              overwrite: bool = False) -> Path:
    """Train (or resume, or skip when finished) RUN/vae_ddlcxr; returns the folder."""
    from namd.training import vae

    return vae.run_stage(vae_config(config), run, method=method, resume=resume, overwrite=overwrite)
