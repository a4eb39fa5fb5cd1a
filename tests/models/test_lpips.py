"""L_LPIPS without torchvision: the VGG layout under lpips' own state-dict names, loaded from a
safetensors file that a test-built narrow network of the same layout writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from namd.models.alignment import PerceptualLoss
from namd.models.lpips import VGG16_WIDTHS, LPIPSNet, load_lpips, widths_of

NARROW = ((4, 4), (6, 6), (8, 8, 8), (8, 8, 8), (8, 8, 8))


def _lpips_style_state(net: LPIPSNet) -> dict[str, torch.Tensor]:
    """What `lpips.LPIPS(...).state_dict()` holds: every head a second time under lins.N."""
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for i in range(5):
        state[f"lins.{i}.model.1.weight"] = state[f"lin{i}.model.1.weight"].clone()
    return state


def _random(widths=NARROW, seed: int = 0) -> LPIPSNet:
    torch.manual_seed(seed)
    net = LPIPSNet(widths)
    for i in range(5):  # lpips' heads are non-negative weights
        getattr(net, f"lin{i}").model[1].weight.data.abs_()
    return net.eval()


def test_full_size_layout_has_lpips_vgg_names_and_shapes():
    state = LPIPSNet().state_dict()
    # torchvision VGG-16 features cut at relu1_2 .. relu5_3 (indices 0-29), as lpips does
    assert state["net.slice1.0.weight"].shape == (64, 3, 3, 3)
    assert state["net.slice2.5.weight"].shape == (128, 64, 3, 3)
    assert state["net.slice3.14.weight"].shape == (256, 256, 3, 3)
    assert state["net.slice5.28.weight"].shape == (512, 512, 3, 3)
    assert state["lin4.model.1.weight"].shape == (1, 512, 1, 1)
    assert torch.allclose(state["scaling_layer.shift"].flatten(), torch.tensor([-0.030, -0.088, -0.188]))
    convs = sum(v.numel() for k, v in state.items() if k.startswith("net."))
    assert convs == 14_714_688  # VGG-16's convolutional part
    assert widths_of(state) == VGG16_WIDTHS


def test_saved_narrow_network_loads_and_gives_the_same_distances(tmp_path):
    net = _random()
    path = tmp_path / "lpips_vgg.safetensors"
    save_file(_lpips_style_state(net), str(path))
    loaded = load_lpips(path)
    assert widths_of(loaded.state_dict()) == NARROW
    assert not any(p.requires_grad for p in loaded.parameters())
    x, y = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x, y), net(x, y))
    assert torch.all(loaded(x, x) == 0) and torch.all(loaded(x, y) > 0)
    # symmetric, and larger for a larger change
    torch.testing.assert_close(loaded(x, y), loaded(y, x))
    near = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1)
    assert float(loaded(x, near).mean()) < float(loaded(x, y).mean())


def test_perceptual_loss_replicates_one_channel_and_passes_gradients(tmp_path):
    path = tmp_path / "lpips.safetensors"
    save_file(_random(seed=1).state_dict(), str(path))
    loss_fn = PerceptualLoss(path)
    recon = torch.zeros(2, 1, 16, 16, requires_grad=True)
    loss = loss_fn(torch.rand(2, 1, 16, 16) * 2 - 1, recon)
    loss.backward()
    assert loss.ndim == 0 and float(loss.detach()) > 0
    assert recon.grad is not None and float(recon.grad.abs().sum()) > 0


def test_bad_weight_files_are_refused_with_the_field_named(tmp_path):
    state = _lpips_style_state(_random())
    state["lins.0.model.1.weight"] = state["lins.0.model.1.weight"] + 1
    disagree = tmp_path / "disagree.safetensors"
    save_file(state, str(disagree))
    with pytest.raises(ValueError, match="lins.0.model.1.weight differs"):
        load_lpips(disagree)
    shape = _random().state_dict()
    shape["lin2.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    wrong = tmp_path / "wrong.safetensors"
    save_file(shape, str(wrong))
    with pytest.raises(ValueError, match="does not fit the LPIPS VGG layout"):
        load_lpips(wrong)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_lpips(broken)
