"""The FID Inception without torchvision: pytorch-fid's InceptionV3 `blocks` layout and key names,
loaded from a safetensors file that a test-built network with random weights writes."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from namd.models.inception import TORCHVISION_NAMES, FIDInception, _tf_avg_pool, load_inception

# The expected layout, written out from reading the official sources (not from this module):
# pytorch-fid src/pytorch_fid/inception.py (InceptionV3.__init__ puts Conv2d_1a_3x3,
# Conv2d_2a_3x3, Conv2d_2b_3x3, maxpool in blocks.0; Conv2d_3b_1x1, Conv2d_4a_3x3, maxpool in
# blocks.1; Mixed_5b-5d, Mixed_6a-6e in blocks.2; Mixed_7a-7c, avgpool in blocks.3) and
# torchvision torchvision/models/inception.py (the BasicConv2d branches of InceptionA-E, which
# pytorch-fid's FIDInceptionA/C/E_1/E_2 keep; each BasicConv2d holds conv and bn).
BRANCHES = {
    "A": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3", "branch_pool"),
    "B": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "C": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
          "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "D": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
          "branch7x7x3_4"),
    "E": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}
LAYOUT = (("blocks.0.0", None), ("blocks.0.1", None), ("blocks.0.2", None),
          ("blocks.1.0", None), ("blocks.1.1", None),
          ("blocks.2.0", "A"), ("blocks.2.1", "A"), ("blocks.2.2", "A"), ("blocks.2.3", "B"),
          ("blocks.2.4", "C"), ("blocks.2.5", "C"), ("blocks.2.6", "C"), ("blocks.2.7", "C"),
          ("blocks.3.0", "D"), ("blocks.3.1", "E"), ("blocks.3.2", "E"))
BASIC = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
         "bn.num_batches_tracked")
# conv weight shapes from torchvision's constructor arguments (out, in, kh, kw)
SHAPES = {"blocks.0.0.conv.weight": (32, 3, 3, 3), "blocks.1.1.conv.weight": (192, 80, 3, 3),
          "blocks.2.0.branch_pool.conv.weight": (32, 192, 1, 1),
          "blocks.2.2.branch5x5_2.conv.weight": (64, 48, 5, 5),
          "blocks.2.3.branch3x3.conv.weight": (384, 288, 3, 3),
          "blocks.2.4.branch7x7_2.conv.weight": (128, 128, 1, 7),
          "blocks.2.4.branch7x7dbl_2.conv.weight": (128, 128, 7, 1),
          "blocks.2.7.branch7x7_1.conv.weight": (192, 768, 1, 1),
          "blocks.3.0.branch3x3_2.conv.weight": (320, 192, 3, 3),
          "blocks.3.1.branch_pool.conv.weight": (192, 1280, 1, 1),
          "blocks.3.2.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1)}


def _expected_keys() -> list[str]:
    keys = []
    for prefix, kind in LAYOUT:
        for branch in ((None,) if kind is None else BRANCHES[kind]):
            base = prefix if branch is None else f"{prefix}.{branch}"
            keys += [f"{base}.{name}" for name in BASIC]
    return keys


def _random(seed: int = 0) -> FIDInception:
    """Random weights scaled to keep activations alive through 94 layers (He init, random BN)."""
    torch.manual_seed(seed)
    net = FIDInception()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            torch.nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_state_dict_keys_match_pytorch_fid_inception_blocks():
    state = FIDInception().state_dict()
    assert list(state) == _expected_keys()
    assert len(state) == 94 * 6  # 94 BasicConv2d in blocks 0-3
    for key, shape in SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(p.numel() for p in FIDInception().parameters())
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and
    # the 1000-class fc (2,049,000), which InceptionV3's blocks leave out: 21,785,568
    assert params == 27_161_264 - 3_326_696 - 2_049_000
    assert all(m.eps == 1e-3 for m in FIDInception().modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_fid_patches_pool_like_tensorflow():
    """The FID blocks' average pools leave the padding out; Mixed_7c takes the maximum."""
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_tf_avg_pool(ones), ones)  # counting the padding: 4/9 at corners
    net = FIDInception()
    assert net.blocks[3][1].pool == "avg" and net.blocks[3][2].pool == "max"


def test_random_network_round_trips_through_safetensors_with_2048_features(tmp_path):
    net = _random()
    path = tmp_path / "fid_inception.safetensors"
    save_file(net.state_dict(), str(path))
    loaded = load_inception(path)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = torch.rand(2, 3, 40, 40) * 2 - 1  # resized to 299 inside, as pytorch-fid
    with torch.no_grad():
        feats, again = net(x), loaded(x)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert (feats >= 0).all() and float(feats.std()) > 0  # pooled ReLU outputs, not all zero
    torch.testing.assert_close(again, feats)
    with pytest.raises(ValueError, match=r"need \(B, 3, H, W\)"):
        loaded(torch.zeros(1, 1, 40, 40))


def test_the_released_pth_layout_loads_under_its_torchvision_names(tmp_path):
    """pt_inception-2015-12-05's keys are torchvision's module names plus the fc head; old .pth
    files have no num_batches_tracked."""
    state = _random(seed=1).state_dict()
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        head = next(n for n, p in TORCHVISION_NAMES.items() if key.startswith(p + "."))
        renamed[head + key[len(TORCHVISION_NAMES[head]):]] = value
    renamed |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    assert "Mixed_7c.branch_pool.conv.weight" in renamed
    path = tmp_path / "pt_inception.safetensors"
    save_file(renamed, str(path))
    loaded = load_inception(path).state_dict()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key


def test_missing_or_damaged_files_give_one_line_naming_the_field_and_file(tmp_path):
    def one_line(exc_info) -> str:
        text = str(exc_info.value)
        assert "\n" not in text and text.startswith("eval.fid_weights: ")
        return text

    absent = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        load_inception(absent)
    assert str(absent) in one_line(err) and "FID weights" in one_line(err)
    pickled = tmp_path / "pt_inception.pth"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match="unpickled") as err:
        load_inception(pickled)
    one_line(err)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x07" * 40)
    with pytest.raises(ValueError, match="not a readable safetensors") as err:
        load_inception(broken)
    assert str(broken) in one_line(err)
    cut = dict(FIDInception().state_dict())
    cut.pop("blocks.3.2.branch_pool.conv.weight")
    partial = tmp_path / "partial.safetensors"
    save_file(cut, str(partial))
    with pytest.raises(ValueError, match="1 keys missing.*blocks.3.2.branch_pool") as err:
        load_inception(partial)
    one_line(err)
    wrong = dict(FIDInception().state_dict())
    wrong["blocks.0.0.conv.weight"] = torch.zeros(32, 1, 3, 3)
    shaped = tmp_path / "shaped.safetensors"
    save_file(wrong, str(shaped))
    with pytest.raises(ValueError, match=r"blocks.0.0.conv.weight \(32, 1, 3, 3\) != \(32, 3, 3, 3\)") as err:
        load_inception(shaped)
    one_line(err)
