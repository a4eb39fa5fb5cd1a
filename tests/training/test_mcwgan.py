"""The McWGAN row: the GAN's one-backward gradient separation and n_critic, SSIM against
scikit-image, the loss falls and a handful of pairs is learnt, the classifier stage's training
split, the deterministic batch-independent sampler, the stages end to end on a tiny run with
their one-line refusals, and the paper preset's sizing on meta tensors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import SIZE, flip_bit, write_tiny_cohort

from namd.cohort.store import Cohort
from namd.config import SamplingConfig, TrainConfig, load_config, methods, save_config
from namd.config.mcwgan import McWGANClassifierConfig, McWGANConfig
from namd.inference.mcwgan_sampler import McWGANSampler
from namd.inference.sampler import PixelConditioning
from namd.models.mcwgan import (
    build_classifier,
    build_critic,
    build_predictor,
    classifier_sizing_parts,
    classifier_train_config,
    gan_losses,
    sizing_parts,
    ssim,
    stage_train_config,
)
from namd.run.contract import RunFileError
from namd.run.layout import RunDir
from namd.training import mcwgan, mcwgan_classifier
from namd.training.mcwgan import McWGANTask
from namd.training.trainer import Trainer

CFG = McWGANConfig(predictor_widths=(8, 16), critic_widths=(8, 16),
                   classifier=McWGANClassifierConfig(widths=(8, 16), blocks=1))


def _nets(cfg: McWGANConfig = CFG, seed: int = 0):
    torch.manual_seed(seed)
    return build_predictor(cfg), build_critic(cfg), build_classifier(cfg.classifier).eval().requires_grad_(False)


def _disc(radius: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(N, 1, size, size) discs in [-1, 1] units (lung -1-ish, nodule bright)."""
    yy, xx = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2,
                            indexing="ij")
    inside = (xx ** 2 + yy ** 2)[None] <= radius[:, None, None] ** 2
    return torch.where(inside, 0.6, -0.7)[:, None].float()


class Pairs:
    """In-memory pairs: each follow-up's disc 2 pixels wider than its baseline's."""

    def __init__(self, n: int):
        radius = torch.linspace(2.0, 4.5, n)
        self.base, self.follow = _disc(radius), _disc(radius + 2.0)

    def __len__(self):
        return len(self.base)

    def batch(self, idx):
        return {"base": self.base[idx], "follow": self.follow[idx]}


# -- the one backward -----------------------------------------------------------------------------
def test_each_network_gets_the_gradient_of_its_own_objective_only():
    predictor, critic, classifier = _nets()
    with torch.no_grad():  # a predictor that is not the copy, so its gradients are not trivial
        predictor.out.weight.normal_(0, 0.1)
    data = Pairs(4)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    c_loss, p_loss, _ = gan_losses(predictor, critic, classifier, data.base, data.follow, gen(), CFG)
    (c_loss + p_loss).backward()
    c_params, p_params = list(critic.parameters()), list(predictor.parameters())
    joint_c, joint_p = [p.grad.clone() for p in c_params], [p.grad.clone() for p in p_params]
    c_loss, p_loss, _ = gan_losses(predictor, critic, classifier, data.base, data.follow, gen(), CFG)
    own_c = torch.autograd.grad(c_loss, c_params, retain_graph=True)
    own_p = torch.autograd.grad(p_loss, p_params, retain_graph=True)
    for joint, own in ((joint_c, own_c), (joint_p, own_p)):
        for a, b in zip(joint, own, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the critic's loss never reaches the predictor, the predictor's never the critic
    assert all(g is None for g in torch.autograd.grad(c_loss, p_params, retain_graph=True, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(p_loss, c_params, retain_graph=True, allow_unused=True))
    # without the detaching, the adversarial term would have reached the critic
    fake = predictor(data.base)
    leak = torch.autograd.grad(-critic(data.base, fake).mean(), c_params)
    assert max(g.abs().max() for g in leak) > 0


def test_a_critic_only_step_leaves_the_predictor_without_gradient():
    predictor, critic, classifier = _nets()
    data = Pairs(4)
    cfg = CFG.model_copy(update={"n_critic": 3})
    task = McWGANTask(predictor, critic, classifier, cfg)
    updates = []
    for step in range(6):
        task.at_step(step)
        updates.append(task.update_predictor)
    assert updates == [False, False, True, False, False, True]
    task.at_step(0)
    loss, terms = task.loss(data.batch(np.arange(4)), torch.Generator().manual_seed(0), True)
    loss.backward()
    assert all(p.grad is None for p in predictor.parameters())
    assert all(p.grad is not None for p in critic.parameters()) and "l1" not in terms


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 24, 24, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), data_range=2.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert abs(float(ours[i]) - ref) < 1e-4
    torch.testing.assert_close(ssim(x, x), torch.ones(2))


# -- training -------------------------------------------------------------------------------------
def _fit(tmp_path, data, steps, lr=3e-3):
    predictor, critic, classifier = _nets()
    cfg = CFG.model_copy(update={"train": TrainConfig(lr=lr, betas=(0.5, 0.9), batch_size=4, max_steps=steps,
                                                      grad_clip=None, rotation_augment=False,
                                                      val_every=10_000, checkpoint_every=10_000)})
    task = McWGANTask(predictor, critic, classifier, cfg)
    Trainer(cfg.train, tmp_path).fit(task, data, None)
    rows = [r for r in __import__("csv").DictReader((tmp_path / "log.csv").open()) if r["phase"] == "train"]
    return task, rows


def test_the_loss_falls_and_a_handful_of_pairs_is_learnt(tmp_path):
    data = Pairs(4)
    task, rows = _fit(tmp_path, data, 120)
    l1 = [float(r["l1"]) for r in rows]
    assert np.mean(l1[-10:]) < 0.5 * np.mean(l1[:10])
    assert {"wasserstein", "gp", "ssim", "perceptual", "adversarial"} <= set(rows[0])
    with torch.no_grad():
        pred = task.predictor.eval()(data.base)
    err = (pred - data.follow).abs().mean()
    copy = (data.base - data.follow).abs().mean()
    assert err < 0.35 * copy  # much nearer the real follow-ups than the baseline copy


# -- the stages on a tiny run ---------------------------------------------------------------------
OVERRIDES = ["data.crop_size=16", "data.pixel_spacing_mm=1.0", "vae.pretrained=null",
             "diffusion.unet.pretrained=null", "mcwgan.predictor_widths=[8,16]", "mcwgan.critic_widths=[8,16]",
             "mcwgan.classifier.widths=[8,16]", "mcwgan.classifier.train.max_steps=2",
             "mcwgan.classifier.train.batch_size=4", "mcwgan.train.max_steps=2", "mcwgan.train.batch_size=4",
             "mcwgan.train.val_every=1", "sampling.k=3"]
DIRS = {"cond": "cond_mcwgan"}


@pytest.fixture(scope="module")
def mcwgan_run(tmp_path_factory):
    """A tiny run with both McWGAN stages trained (two steps each)."""
    run = RunDir(tmp_path_factory.mktemp("mcwgan") / "run")
    write_tiny_cohort(run.stage("cohort"))
    config = load_config("tiny", overrides=OVERRIDES)
    save_config(config, run.path / "config.yaml")
    with pytest.raises(RunFileError, match="classifier_mcwgan"):  # nothing to train against yet
        run.stage("classifier_mcwgan").mkdir(parents=True)
        mcwgan.run_stage(config, run)
    mcwgan_classifier.run_stage(config, run)
    mcwgan.run_stage(config, run)
    return run, config


def test_the_classifier_trains_on_the_training_split_only(mcwgan_run):
    run, _ = mcwgan_run
    out = run.stage("classifier_mcwgan")
    info = json.loads((out / "run_info.json").read_text())
    cohort = Cohort(run.stage("cohort"))
    train = cohort.crops("train")
    assert info["complete"] and info["n_train"]["splits"] == ["train"]
    assert info["n_train"]["crops"] == int(train["label"].notna().sum()) < int(cohort.manifest["label"].notna().sum())
    for name in ("classifier.json", "classifier.safetensors"):
        assert (out / name).is_file()


def test_stage_writes_its_files_and_the_sampler_is_deterministic(mcwgan_run):
    run, config = mcwgan_run
    out = run.stage("cond_mcwgan")
    for name in methods.MCWGAN_FILES:
        assert (out / name).is_file(), name
    info = json.loads((out / "run_info.json").read_text())
    assert info["steps"] == 2 and info["classifier_dir"] == "classifier_mcwgan" and info["best_step"] >= 1
    sampler = methods.get("mcwgan").load_sampler(run, config)
    assert isinstance(sampler, McWGANSampler) and sampler.info()["sampler"] == "deterministic predictor"
    cohort = Cohort(run.stage("cohort"))
    pairs = cohort.pairs()
    cond = sampler.conditioning(pairs["pair_id"].tolist(), cohort.images(pairs["baseline_index"]), [])
    one = sampler.generate(cond, SamplingConfig(k=3, seed=1, max_batch=1), show_progress=False)
    many = sampler.generate(cond, SamplingConfig(k=3, seed=99, max_batch=64), show_progress=False)
    assert one.shape == (8, 3, 1, SIZE, SIZE)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)  # no seed, no batch in it
    torch.testing.assert_close(many[:, 1:], many[:, :1].expand(-1, 2, -1, -1, -1), rtol=0, atol=1e-6)
    alone = sampler.generate(PixelConditioning(cond.keys[2:3], cond.baseline[2:3]), SamplingConfig(k=1),
                             show_progress=False)
    torch.testing.assert_close(alone[0, 0], many[2, 0], rtol=0, atol=1e-6)
    crops = sampler.decode(many[:, 0])
    assert crops.shape == (8, SIZE, SIZE) and crops.dtype == np.float32
    assert crops.min() >= -1000.0 and crops.max() <= 400.0
    with pytest.raises(FileExistsError, match="already trained"):
        mcwgan.run_stage(config, run)


def test_missing_or_damaged_files_are_refused_in_one_line(mcwgan_run, tmp_path):
    run, config = mcwgan_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.path, copy.path)
    spec = copy.stage("cond_mcwgan") / "predictor.json"
    spec.write_text(json.dumps({"predictor": {"widths": "wide"}, "crop_size": 16, "window_hu": [0, 1]}))
    with pytest.raises(RunFileError, match="predictor.json") as err:
        McWGANSampler.from_run(copy, DIRS, config)
    assert "\n" not in str(err.value)
    shutil.copy(run.stage("cond_mcwgan") / "predictor.json", spec)
    flip_bit(copy.stage("cond_mcwgan") / "predictor.safetensors")
    with pytest.raises(RunFileError, match="predictor.safetensors"):
        McWGANSampler.from_run(copy, DIRS, config)
    (copy.stage("cond_mcwgan") / "run_info.json").unlink()
    with pytest.raises(RunFileError, match="run_info.json"):
        McWGANSampler.from_run(copy, DIRS, config)
    (copy.stage("classifier_mcwgan") / "classifier.safetensors").unlink()
    with pytest.raises(RunFileError, match="classifier.safetensors"):
        mcwgan.run_stage(config, copy, overwrite=True)


def test_paper_preset_loads_and_sizes_on_meta_tensors():
    config = load_config("paper")
    cfg = config.mcwgan
    assert cfg.classifier.widths == (64, 128, 256, 512) and cfg.classifier.blocks == 2
    assert cfg.classifier.stem_stride == 1
    assert cfg.gp_weight == 10.0 and cfg.n_critic == 5
    trainable, frozen, loss, note = sizing_parts(config, 2)
    assert len(trainable) == 2 and len(frozen) == 1 and "gradient penalty" in note
    value = loss()
    assert value.device.type == "meta" and value.shape == ()
    assert stage_train_config(config) is cfg.train
    resnet = sum(p.numel() for p in frozen[0].parameters())
    assert 11_000_000 < resnet < 11_300_000  # ResNet-18's ~11.2M on one channel, one logit
    trainable, frozen, loss, _ = classifier_sizing_parts(config, 2)
    assert len(trainable) == 1 and not frozen and loss().device.type == "meta"
    assert classifier_train_config(config) is cfg.classifier.train
