"""`namd train evaluator`: real train crops only, class weighting, rotation, AUROC selection."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from namd.cohort.ehr import EHR
from namd.cohort.store import Cohort, CohortWriter
from namd.config import TrainConfig, load_config
from namd.evaluation.calibration_metrics import brier
from namd.evaluation.metrics import auroc
from namd.models.calibration import CALIBRATION_FILE, fit_platt, load_calibration
from namd.models.evaluator import build_evaluator, load_evaluator, predict
from namd.run.layout import RunDir
from namd.training import evaluator as stage
from namd.training.trainer import Trainer

SIZE = 32
SPLITS = ("train",) * 6 + ("val",) * 2 + ("test",) * 2


def _crop(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Lung (-850 HU, noise 30) with a solid disk at the centre."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    return np.where(np.hypot(yy, xx) <= radius, 0.0, -850.0) + rng.normal(scale=30, size=(SIZE, SIZE))


def make_cohort(path, n_pairs: int = 80, n_unpaired: int = 20, seed: int = 0) -> Cohort:
    """Malignant nodules are larger and grow; benign ones are small and stable."""
    rng = np.random.default_rng(seed)
    writer = CohortWriter(path, crop_size=SIZE, pixel_spacing_mm=0.7, source="test")
    for i in range(n_pairs):
        label = int(i % 4 == 0)
        split = SPLITS[i % len(SPLITS)]
        radius = rng.uniform(4.5, 6.5) if label else rng.uniform(2.0, 4.0)
        ehr = EHR(SCT_LONG_DIA=2 * radius * 0.7, SCT_PERP_DIA=1.6 * radius * 0.7, age=60.0 + i % 10,
                  gender=1 + i % 2, SCT_MARGINS=1 if label and i % 8 == 0 else 2)
        for kind, grow in (("baseline", 1.0), ("followup", 1.4 if label else 1.0)):
            writer.add(_crop(rng, radius * grow).astype(np.float32), patient_id=f"p{i}", nodule_id="1",
                       kind=kind, split=split, label=label, ehr=ehr, pair_id=f"pair{i}",
                       timepoint=int(kind == "followup"))
    for j in range(n_unpaired):
        label = int(j % 3 == 0)
        writer.add(_crop(rng, rng.uniform(4.5, 6.5) if label else 3.0).astype(np.float32),
                   patient_id=f"u{j}", nodule_id="1", kind="unpaired", split="train",
                   label=label if j % 5 else None, ehr=EHR())
    return Cohort(writer.close())


def fast_config(steps: int = 30):
    """The tiny config made smaller still for tests."""
    config = load_config("tiny")
    config.evaluator = config.evaluator.model_copy(update={
        "width": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "dropout": 0.1,
        "select_min_malignant": 0,  # the 8 malignant val crops select (see the test below)
        "train": TrainConfig(lr=2e-3, batch_size=16, max_steps=steps, val_every=5,
                             checkpoint_every=10, seed=3)})
    return config


def _args(**kw) -> dict:
    return {"resume": False, "overwrite": False, **kw}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("run"))
    make_cohort(run.stage("cohort"))
    out = stage.run_stage(fast_config(), run, **_args())
    return run, out


def test_trains_on_labelled_real_train_crops_only(trained):
    run, out = trained
    info = json.loads((out / "run_info.json").read_text())
    cohort = Cohort(run.stage("cohort"))
    train = stage.labelled_crops(cohort, "train")
    assert set(train["split"]) == {"train"} and train["label"].notna().all()
    assert set(train["kind"]) == {"baseline", "followup", "unpaired"}
    assert info["complete"] and info["n_train"]["crops"] == len(train) == 48 * 2 + 16
    assert info["pos_weight"] == pytest.approx(info["n_train"]["benign"] / info["n_train"]["malignant"])


def test_selects_the_checkpoint_with_the_best_validation_auroc(trained):
    run, out = trained
    rows = [r for r in csv.DictReader((out / "log.csv").open()) if r["phase"] == "val"]
    aurocs = np.array([float(r["auroc"]) for r in rows])
    bce = np.array([float(r["bce_all"]) for r in rows])
    info = json.loads((out / "run_info.json").read_text())
    # the best AUROC; among equal AUROCs, the lowest whole-validation-set BCE
    tied = np.flatnonzero(aurocs == aurocs.max())
    assert info["best_step"] == int(rows[int(tied[np.argmin(bce[tied])])]["step"])
    assert info["val_auroc"] == pytest.approx(aurocs.max())
    assert info["val_auroc"] > 0.9  # large vs small nodules: easy to learn
    model, window, _ = load_evaluator(out)
    cohort = Cohort(run.stage("cohort"))
    val = stage.labelled_crops(cohort, "val")
    probs, _ = predict(model, cohort.images(val["crop_index"]), window)
    assert auroc(val["label"].astype(int).to_numpy(), probs) == pytest.approx(info["val_auroc"])


def test_platt_calibration_is_fitted_on_the_validation_crops(trained):
    run, out = trained
    info = json.loads((out / "run_info.json").read_text())
    assert info["calibration"] == {"method": "platt", "status": "ok", "file": CALIBRATION_FILE}
    cal = load_calibration(out)
    model, window, _ = load_evaluator(out)
    cohort = Cohort(run.stage("cohort"))
    val = stage.labelled_crops(cohort, "val")
    y = val["label"].astype(int).to_numpy()
    probs, _ = predict(model, cohort.images(val["crop_index"]), window)
    again = fit_platt(probs, y)
    assert cal.n == len(val) and cal.n_pos == int(y.sum()) < 30
    assert cal.slope == pytest.approx(again.slope, rel=1e-6)
    assert cal.intercept == pytest.approx(again.intercept, rel=1e-6, abs=1e-9)
    assert "fewer than" in cal.note  # few malignant validation crops: the note says so
    q = cal.apply(probs)
    assert auroc(y, q) == pytest.approx(auroc(y, probs))  # monotonic
    assert brier(y, q) <= brier(y, probs) + 1e-9  # fitted on these very crops


def test_too_few_malignant_validation_crops_keep_the_last_weights(tmp_path):
    run = RunDir(tmp_path)
    make_cohort(run.stage("cohort"))
    config = fast_config(steps=10)
    # also: evaluator.calibration = none stores why there is no calibration (one training only)
    config.evaluator = config.evaluator.model_copy(update={"select_min_malignant": 9,
                                                           "calibration": "none"})
    out = stage.run_stage(config, run, **_args())
    info = json.loads((out / "run_info.json").read_text())
    assert info["calibration"]["status"] == "not fitted: evaluator.calibration = none"
    assert load_calibration(out) is None and (out / CALIBRATION_FILE).is_file()
    assert info["selection"].startswith("last weights: the val split has 8 malignant crops")
    assert info["best_step"] == 10
    best = load_file(str(out / "checkpoints" / "best" / "vit.safetensors"))
    last = load_file(str(out / "checkpoints" / "last" / "vit.safetensors"))
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    assert any(r["phase"] == "val" for r in csv.DictReader((out / "log.csv").open()))  # still logged


def test_refuses_to_overwrite_a_finished_stage(trained):
    run, _ = trained
    with pytest.raises(FileExistsError, match="--overwrite"):
        stage.run_stage(fast_config(), run, **_args())


def test_loss_rotates_and_replays_exactly_from_the_generator():
    torch.manual_seed(0)
    model = build_evaluator(fast_config().evaluator, SIZE)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.uniform(-1, 1, (8, 1, SIZE, SIZE)), dtype=torch.float32)
    batch = {"x": x, "y": torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])}
    task = stage.EvaluatorTask(model, 7.0, True, (-1000.0, 400.0), 16)
    first = task.loss(batch, torch.Generator().manual_seed(1), True)[0]
    again = task.loss(batch, torch.Generator().manual_seed(1), True)[0]
    other = task.loss(batch, torch.Generator().manual_seed(2), True)[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    plain = stage.EvaluatorTask(model, 7.0, False, (-1000.0, 400.0), 16)
    assert not torch.equal(first, plain.loss(batch, torch.Generator().manual_seed(1), True)[0])
    # pos_weight multiplies the malignant term of the BCE
    model.eval()
    with torch.no_grad():
        logits = model(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(logits, batch["y"], pos_weight=torch.tensor(7.0))
    val_loss = plain.loss(batch, torch.Generator().manual_seed(1), False)[0]
    assert float(val_loss.detach()) == pytest.approx(float(expected))


def test_resumed_training_replays_the_same_steps(trained, tmp_path):
    run, _ = trained
    cohort = Cohort(run.stage("cohort"))
    window = (-1000.0, 400.0)
    train = stage.CropSource(cohort, stage.labelled_crops(cohort, "train"), window)
    val = stage.CropSource(cohort, stage.labelled_crops(cohort, "val"), window)
    cfg = fast_config().evaluator

    def fit(out, steps, resume=False):
        torch.manual_seed(0)
        model = build_evaluator(cfg, SIZE)
        tcfg = cfg.train.model_copy(update={"max_steps": steps, "checkpoint_every": 4})
        task = stage.EvaluatorTask(model, 3.0, True, window, 16)
        Trainer(tcfg, out).fit(task, train, val, resume=resume)
        return model

    full = fit(tmp_path / "full", 8)
    fit(tmp_path / "part", 4)
    resumed = fit(tmp_path / "part", 8, resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_trainer_hook_selects_on_a_maximised_metric(tmp_path):
    class Task:
        select_on = ("score", "max")

        def __init__(self):
            self.net, self.calls = torch.nn.Linear(2, 1), 0

        def trainable(self):
            return {"net": self.net}

        def frozen(self):
            return {}

        def loss(self, batch, generator, train):
            loss = (self.net(batch["x"]) - 1).pow(2).mean()  # keeps falling: loss would pick the end
            return loss, {}

        def val_metrics(self, data):
            self.calls += 1
            return {"score": [0.2, 0.9, 0.5, 0.4][self.calls - 1]}

    class Data:
        def __len__(self):
            return 8

        def batch(self, idx):
            return {"x": torch.ones(len(idx), 2)}

    cfg = TrainConfig(lr=0.01, batch_size=4, max_steps=8, val_every=2, checkpoint_every=4)
    result = Trainer(cfg, tmp_path).fit(Task(), Data(), Data())
    assert result.best_step == 4 and result.best_val == pytest.approx(-0.9)
    assert [h["score"] for h in result.history] == [0.2, 0.9, 0.5, 0.4]
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))  # header widened for "score"
    assert [r["score"] for r in rows if r["phase"] == "val"] == ["0.2", "0.9", "0.5", "0.4"]
    assert all(r["score"] == "" for r in rows if r["phase"] == "train") and len(rows) == 12


def test_single_class_validation_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    cohort = make_cohort(run.stage("cohort"), n_pairs=8, n_unpaired=0)
    assert (stage.labelled_crops(cohort, "val")["label"] == 0).all()
    with pytest.raises(ValueError, match="val split: needs both benign and malignant"):
        stage.run_stage(fast_config(), run, **_args())


def test_initial_weights_follow_the_seed_not_the_process(tmp_path):
    """Two trainings in one process, after different draws from the global generator (as in a
    worker of `namd demo` that ran other stages first), give the same weights."""
    runs = [RunDir(tmp_path / name) for name in ("a", "b")]
    weights = []
    for i, run in enumerate(runs):
        make_cohort(run.stage("cohort"))
        torch.manual_seed(100 + i)
        torch.rand(7)
        out = stage.run_stage(fast_config(steps=2), run, **_args())
        weights.append(load_file(str(out / "checkpoints" / "last" / "vit.safetensors")))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_ensemble_with_ema_trains_saves_and_loads(tmp_path):
    """evaluator.members = 2 with an EMA of the weights (the CPU presets' judge, made an ensemble):
    the stage exports the EMA copy of every member, and load_evaluator rebuilds the ensemble."""
    run = RunDir(tmp_path)
    make_cohort(run.stage("cohort"), n_pairs=40, n_unpaired=0)
    config = fast_config(steps=10)
    config.evaluator = config.evaluator.model_copy(update={
        "members": 2, "train": config.evaluator.train.model_copy(update={"ema_decay": 0.9})})
    out = stage.run_stage(config, run, **_args())
    best = load_file(str(out / "checkpoints" / "best" / "ema_vit.safetensors"))
    assert {k.split(".")[1] for k in best if k.startswith("members.")} == {"0", "1"}
    assert not (out / "checkpoints" / "best" / "vit.safetensors").exists()
    model, window, _ = load_evaluator(out)
    assert type(model).__name__ == "EvaluatorEnsemble" and len(model.members) == 2
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, best[name])  # the EMA weights, not the raw ones
    hu = Cohort(run.stage("cohort")).images(np.arange(6))
    probs, feats = predict(model, hu, window, with_features=True)
    assert probs.shape == (6,) and feats.shape == (6, 2 * 32) and np.isfinite(probs).all()
