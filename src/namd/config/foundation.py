"""How `namd foundation` builds the CPU presets' stand-in for SD1.5's weights (issue 28).

Only the builder reads this section; a run fine-tunes whatever `vae.pretrained` and
`diffusion.unet.pretrained` name. The networks, crop geometry and noise schedule are the run
config's own (the foundation must fit the runs that start from it), so only the data and the
training budget live here.
"""

from __future__ import annotations

from pydantic import Field

from namd.config.base import Section, TrainConfig


class FoundationConfig(Section):
    """The foundation's crops and training: a plain VAE, then an unconditional U-Net prior."""

    crops: int = Field(4000, ge=20, description=(
        "crops of the synthetic generator's unpaired stream, drawn with the foundation's own "
        "seed (namd.models.foundation.FOUNDATION_SEED), 95% to train and 5% to validate"))
    vae: TrainConfig = TrainConfig(lr=5e-4, batch_size=16, max_steps=2400, schedule="cosine",
                                   ema_decay=None)
    prior: TrainConfig = TrainConfig(lr=1e-3, batch_size=32, max_steps=1200, schedule="cosine")
