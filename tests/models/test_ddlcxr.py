"""DDL-CXR's networks and losses (namd.models.ddlcxr) and its VAE's adaptive label weight
(namd.models.probe.adaptive_weight, vae.pred_weight = adaptive in namd.training.vae)."""

from __future__ import annotations

import math

import pytest
import torch

from namd.cohort.ehr import EHR, EHR_FIELDS
from namd.config import VAEConfig, load_config
from namd.config.ddlcxr import DDLCXRConfig, DDLCXRUNetConfig, RecordEncoderConfig
from namd.models.ddlcxr import (
    RecordEncoder,
    build_unet,
    fit_standardiser,
    load_record_encoder,
    ramp,
    save_record_encoder,
    sizing_parts,
    three_term_loss,
    training_scheduler,
    triplet_timestep_weight,
    vae_sizing_parts,
)
from namd.models.probe import ADAPTIVE_EPS, ADAPTIVE_MAX, LinearProbe, adaptive_weight
from namd.models.vae import build_vae
from namd.training.vae import VAETask, joint_probe

SMALL = RecordEncoderConfig(d_model=16, heads=2, feedforward=16)
RECORDS = [EHR(SCT_LONG_DIA=5.0, SCT_PERP_DIA=4.0, age=60.0, gender=1, SCT_PRE_ATT=1),
           EHR(SCT_LONG_DIA=15.0, age=70.0, gender=2, SCT_MARGINS=1), EHR()]


# -- the record encoder ---------------------------------------------------------------------------
def test_record_encoder_one_token_per_field_and_cls():
    enc = RecordEncoder(SMALL, fit_standardiser(RECORDS)).eval()
    cls, tokens = enc(RECORDS)
    assert cls.shape == (3, 16) and tokens.shape == (3, 1 + len(EHR_FIELDS), 16)
    assert torch.equal(cls, tokens[:, 0]) and torch.isfinite(tokens).all()
    assert enc.n_tokens == 14 and not torch.allclose(tokens[0], tokens[1])


def test_standardiser_uses_the_records_that_have_the_field():
    stats = fit_standardiser(RECORDS)
    assert stats["SCT_LONG_DIA"] == pytest.approx((10.0, math.sqrt(50.0)))
    assert stats["SCT_PERP_DIA"] == (4.0, 1.0)  # one value: centred only
    enc = RecordEncoder(SMALL, stats)
    x = enc.features(RECORDS)
    col = enc.value_columns[0]
    assert x[0, col].item() == pytest.approx(-5.0 / math.sqrt(50.0))
    assert x[2, col].item() == 0.0 and x[2, col + 1].item() == 1.0  # missing: 0 and its flag


def test_record_encoder_round_trip(tmp_path):
    enc = RecordEncoder(SMALL, fit_standardiser(RECORDS))
    enc.train()
    enc(RECORDS)  # moves the BatchNorm statistics, which travel with the weights
    enc.eval()
    save_record_encoder(enc, tmp_path)
    back = load_record_encoder(tmp_path)
    with torch.no_grad():  # (MultiheadAttention takes its fused path without gradients)
        assert torch.allclose(back(RECORDS)[1], enc(RECORDS)[1], atol=1e-5)
    assert back.standardiser() == enc.standardiser()


# -- the U-Net and the schedule -------------------------------------------------------------------
def test_unet_attends_at_every_level_with_16_channel_heads():
    unet = build_unet(DDLCXRUNetConfig(block_out_channels=(32, 64), norm_num_groups=8),
                      latent_channels=4, context_dim=16, sample_size=8, seed=0)
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert all(hasattr(b, "attentions") for b in (*unet.down_blocks, *unet.up_blocks))
    heads = [b.attentions[0].transformer_blocks[0].attn1.heads for b in unet.down_blocks]
    assert heads == [2, 4]
    again = build_unet(DDLCXRUNetConfig(block_out_channels=(32, 64), norm_num_groups=8),
                       latent_channels=4, context_dim=16, sample_size=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), again.parameters(), strict=True))


def test_schedule_is_compvis_linear_0_0015_to_0_0195():
    sched = training_scheduler(DDLCXRConfig(prediction_type="epsilon"))
    betas = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(sched.betas.double(), betas, atol=1e-7)
    assert sched.config.prediction_type == "epsilon" and sched.config.num_train_timesteps == 1000


# -- the three-term loss --------------------------------------------------------------------------
def _loss(pos, neg, target, ramp_value=1.0, t_weight=None, logits=None, labels=None, **cfg):
    n = pos.shape[0]
    return three_term_loss(pos, neg, target, torch.zeros(n) if logits is None else logits,
                           torch.full((n,), float("nan")) if labels is None else labels,
                           torch.ones(n) if t_weight is None else t_weight, ramp_value,
                           DDLCXRConfig(**cfg))


def test_triplet_is_the_margin_when_both_records_predict_alike():
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randn(4, 4, 2, 2, generator=g), torch.randn(4, 4, 2, 2, generator=g)
    weight = torch.tensor([1.0, 0.5, 0.25, 0.0])
    _, terms = _loss(pred, pred, target, t_weight=weight)
    assert terms["triplet"] == pytest.approx(0.2 * weight.mean().item())


def test_triplet_vanishes_once_the_negative_is_a_margin_worse():
    target = torch.zeros(2, 4, 2, 2)
    _, terms = _loss(target + 0.1, target + 1.0, target)  # errors 0.01 against 1.0
    assert terms["triplet"] == 0.0
    _, terms = _loss(target + 0.5, target + 0.6, target)  # 0.25 - 0.36 + 0.2 = 0.09 per element
    assert terms["triplet"] == pytest.approx(0.09)


def test_loss_is_mse_plus_1_4_bce_plus_ramped_triplet():
    g = torch.Generator().manual_seed(1)
    pos, neg, target = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    logits, labels = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, float("nan"), 0.0])
    weight = torch.tensor([0.9, 0.1, 0.5])
    loss, terms = _loss(pos, neg, target, 0.25, weight, logits, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 2]], labels[[0, 2]])
    hinge = torch.relu((pos - target) ** 2 - (neg - target) ** 2 + 0.2).flatten(1).mean(1)
    expected = ((pos - target) ** 2).mean() + 1.4 * bce + 0.25 * (hinge * weight).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["label_bce"] == pytest.approx(bce.item()) and terms["ramp"] == 0.25
    unramped, _ = _loss(pos, neg, target, 0.0, weight, logits, labels)
    assert unramped.item() == pytest.approx((((pos - target) ** 2).mean() + 1.4 * bce).item(), rel=1e-6)


def test_triplet_weight_is_one_over_one_plus_snr_and_the_ramp_counts_epochs():
    abar = training_scheduler(DDLCXRConfig()).alphas_cumprod
    w = triplet_timestep_weight(abar)
    assert torch.allclose(w, 1 - abar, atol=1e-6)  # 1 / (1 + abar / (1 - abar))
    assert w[0] < 0.01 and w[-1] > 0.99 and bool((w[1:] >= w[:-1]).all())
    assert [ramp(e, 4) for e in range(4)] == [0.0, 0.25, 0.5, 0.75]  # current_epoch / max_epoch


# -- the label-supervised VAE's adaptive weight ---------------------------------------------------
def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_layer():
    layer = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    w = adaptive_weight((layer * a).sum(), (layer * b).sum(), layer)
    assert w.item() == pytest.approx(5.0 / (1.0 + ADAPTIVE_EPS)) and not w.requires_grad
    # in the source's units: nll summed over pixels; the weight returned in mean-per-pixel units
    w = adaptive_weight((layer * a).sum(), (layer * b).sum(), layer, pixels=100)
    assert w.item() == pytest.approx(500.0 / (1.0 + ADAPTIVE_EPS) / 100)
    # a label loss without gradient there: the guard, then the clamp at 1e4 (source units)
    w = adaptive_weight((layer * a).sum(), (layer * 0.0).sum(), layer, pixels=10)
    assert w.item() == pytest.approx(ADAPTIVE_MAX / 10)


def test_vae_task_weights_the_label_loss_at_the_encoders_last_convolution():
    torch.manual_seed(0)
    cfg = VAEConfig(block_out_channels=(8, 8), norm_num_groups=4, pretrained=None, align=False,
                    lambda_pred=1.0, pred_weight="adaptive", pred_balance="none")
    assert joint_probe(cfg) and not joint_probe(cfg.model_copy(update={"pred_weight": "fixed"}))
    vae, probe = build_vae(cfg), LinearProbe((4, 8, 8))
    task = VAETask(vae, probe, cfg, augment=False, class_weights=None)
    assert set(task.trainable()) == {"vae", "probe"}
    batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1, "label": torch.tensor([0.0, 1.0, 1.0, float("nan")]),
             "features": torch.full((4, 5), float("nan"))}
    loss, terms = task.loss(batch, torch.Generator().manual_seed(0), True)
    # the same forward pass again, by hand
    g = torch.Generator().manual_seed(0)
    posterior = vae.encode(batch["image"]).latent_dist
    z = posterior.sample(generator=g)
    rec = (vae.decode(z).sample - batch["image"]).abs().mean()
    from namd.models.alignment import prediction_loss

    pred, _ = prediction_loss(probe(z), batch["label"])
    layer = vae.encoder.conv_out.weight
    g_rec = torch.autograd.grad(rec, layer, retain_graph=True)[0].norm()
    g_pred = torch.autograd.grad(pred, layer, retain_graph=True)[0].norm()
    expected = min(256 * g_rec / (g_pred + 1e-4), 1e4) / 256
    assert terms["pred_weight"] == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(terms["loss_without_pred"] + expected.item() * terms["pred"], rel=1e-4)


# -- sizing -----------------------------------------------------------------------------------------
def test_sizing_parts_build_both_stages_on_meta_at_the_paper_preset():
    config = load_config("paper")
    trainable, frozen, loss, _ = sizing_parts(config, 2)
    assert loss().device.type == "meta"
    n = sum(p.numel() for m in trainable for p in m.parameters())
    assert 250e6 < n < 350e6  # the source's 224-channel U-Net and the record transformer
    trainable, frozen, loss, _ = vae_sizing_parts(config.model_copy(
        update={"ddlcxr": config.ddlcxr.model_copy(update={"vae": config.ddlcxr.vae.model_copy(
            update={"lambda_lpips": 0.0})})}), 1)
    assert loss().device.type == "meta" and not frozen


def test_a_record_spec_that_does_not_fit_the_weights_is_named(tmp_path):
    import json

    from namd.run.contract import RunFileError

    save_record_encoder(RecordEncoder(SMALL, fit_standardiser(RECORDS)), tmp_path)
    spec = tmp_path / "record_encoder.json"
    data = json.loads(spec.read_text())
    data["record"]["d_model"] = 32
    spec.write_text(json.dumps(data))
    with pytest.raises(RunFileError, match="record_encoder.json"):
        load_record_encoder(tmp_path)
