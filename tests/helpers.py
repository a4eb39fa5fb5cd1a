"""Helpers shared by several test modules (importable as `helpers`: pyproject's pytest
`pythonpath` puts tests/ on sys.path; test folders are not packages)."""

# -- a finished tiny run, shared by tests/test_predict.py, test_deidentify.py, test_model.py ----
import numpy as np

SIZE = 16
# Every network at its smallest; one training step per stage (about 2 s in all on a CPU).
TINY = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "text.encoder=structured",
        "text.structured.dim=8", "text.structured.hidden=8", "vae.block_out_channels=[8,8,8]",
        "vae.norm_num_groups=4", "diffusion.unet.block_out_channels=[8,16]",
        "diffusion.unet.norm_num_groups=4", "diffusion.unet.attention_head_dim=2",
        "diffusion.unet.layers_per_block=1", "diffusion.prior.max_steps=1",
        "diffusion.prior.batch_size=4", "diffusion.cond.max_steps=1", "diffusion.cond.batch_size=4",
        "evaluator.width=16", "evaluator.depth=1", "evaluator.heads=2", "evaluator.mlp_dim=16",
        "evaluator.select_min_malignant=0", "evaluator.train.max_steps=1",
        "evaluator.train.batch_size=8", "sampling.k=2", "sampling.steps=2",
        "vae.pretrained=null", "diffusion.unet.pretrained=null"]  # 16-pixel crops: from scratch


def flip_bit(path, offset: int = -1, mask: int = 0x01) -> None:
    """Flip one bit of a file (near its end: tensor data, so the file still parses)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def disc(radius: float, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Lung (-800 HU) with a solid disc at the centre, in HU."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return (np.where(xx ** 2 + yy ** 2 <= radius ** 2, 40.0, -800.0)
            + rng.normal(0, 10, (size, size))).astype(np.float32)


def write_tiny_cohort(folder) -> None:
    """Eight pairs of 16 x 16 crops at 1 mm (4 train, 2 val, 2 test): a disc whose follow-up
    grows when the pair is malignant (odd pairs)."""
    from namd.cohort.ehr import EHR
    from namd.cohort.store import CohortWriter

    rng = np.random.default_rng(0)
    writer = CohortWriter(folder, crop_size=SIZE, pixel_spacing_mm=1.0, source="test")
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        label = i % 2
        ehr = EHR(SCT_LONG_DIA=4.0 + i, SCT_PERP_DIA=3.0, age=60.0, gender=1)
        for t in (0, 1):
            writer.add(disc(2 + label * (1 + t), rng), patient_id=f"p{i}", nodule_id="n",
                       kind=("baseline", "followup")[t], split=split, label=label, ehr=ehr,
                       pair_id=f"pair{i}", timepoint=t)
    writer.close()


def build_tiny_run(path):
    """A finished run (cohort, untrained VAE, prior, cond, evaluator) with 16 x 16 crops at 1 mm."""
    import torch

    from namd.cli.main import main
    from namd.config import load_config, save_config
    from namd.models.vae import build_vae, save_trained_vae
    from namd.run.layout import RunDir

    run = RunDir(path)
    write_tiny_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=TINY)
    save_config(config, run.path / "config.yaml")
    torch.manual_seed(0)
    save_trained_vae(build_vae(config.vae), run.stage("vae"), scale_factor=0.7)
    run.mark_done("vae", config, 0)
    for stage in ("prior", "cond", "evaluator"):
        assert main(["train", stage, "--run", str(run.path)]) == 0
    return run


# `namd demo` at its smallest: it checks that the stages fit together, not how well they learn
SMALL = ["--set", "synth.pairs=60", "--set", "synth.unpaired=30", "--set", "synth.seed=1",
         "--set", "synth.split_fractions=[0.5,0.25,0.25]",
         "--set", "vae.train.max_steps=2", "--set", "diffusion.prior.max_steps=2",
         "--set", "diffusion.cond.max_steps=2", "--set", "evaluator.train.max_steps=2",
         "--set", "sampling.k=2", "--set", "sampling.steps=2", "--set", "eval.bootstrap=20",
         "--set", "vae.report_tsne_max=40"]


def save_tiny_clip(folder, hidden: int = 16):
    """An SD1.5-shaped pipeline folder with only a tiny CLIP text encoder (1 layer) and its
    tokenizer, for the empty-prompt null context of stage 1, built locally."""
    import json
    from pathlib import Path

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{c}</w>": i + 2 for i, c in enumerate("abcdefgh")}}
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"),
                  model_max_length=77).save_pretrained(folder / "tokenizer")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(folder / "text_encoder", safe_serialization=True)
    return folder


class RegressionData:
    """y = 3 sum(x) - 1 on n random 4-vectors, as a trainer BatchSource."""

    def __init__(self, n: int, seed: int = 0):
        import torch

        rng = np.random.default_rng(seed)
        self.x = torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32)
        self.y = self.x.sum(1, keepdim=True) * 3 - 1

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: np.ndarray) -> dict:
        return {"x": self.x[indices], "y": self.y[indices]}


class RegressionTask:
    """A trainer TrainTask: a linear model on RegressionData, its loss a plain mean over the
    batch; `noise` adds input noise drawn from the step's generator, `dropout` a dropout layer
    (torch's global RNG) in front."""

    def __init__(self, noise: float = 0.0, dropout: float = 0.0):
        import torch

        torch.manual_seed(0)
        linear = torch.nn.Linear(4, 1)
        self.net = torch.nn.Sequential(torch.nn.Dropout(dropout), linear) if dropout else linear
        self.noise = noise

    def trainable(self):
        return {"net": self.net}

    def frozen(self):
        return {}

    def loss(self, batch, generator, train):
        import torch

        x = batch["x"]
        if train and self.noise:
            x = x + torch.randn(x.shape, generator=generator) * self.noise
        mse = (self.net(x) - batch["y"]).pow(2).mean()
        return mse, {"mse": float(mse.detach())}
