"""Crops: centred on the nodule, fixed physical spacing, the right slice, air padding + flag."""

import numpy as np
import pytest

from namd.cohort.ingest.crop import AIR_HU, PADDED, CropGeometry, Position, extract_crop, locate
from namd.cohort.ingest.errors import IngestError
from namd.cohort.ingest.volume import open_volume

GEOM = CropGeometry(32, 1.0)


def _crop(vol, pos, geometry=GEOM):
    k, centre = locate(vol, pos)
    return (k, *extract_crop(vol, k, centre, geometry))


def _ball_series(tmp_path, build, **kw):
    # Ball of radius 4 voxels (2.8 mm) centred at voxel (x 24, y 24, z 5); spacing 0.7 mm.
    build.write_series(tmp_path, build.ball((10, 48, 48), (5, 24, 24), 4), (0.7, 0.7, 2.0),
                       (-10.0, -20.0, 0.0), **kw)
    return open_volume(tmp_path)


def test_world_and_voxel_positions_give_the_same_centred_crop(tmp_path, build):
    vol = _ball_series(tmp_path, build)
    world = Position(-10 + 24 * 0.7, -20 + 24 * 0.7, 10.4)  # z 10.4 -> nearest slice 5
    k, crop, flags = _crop(vol, world)
    assert k == 5 and flags == [] and crop.shape == (32, 32) and crop.dtype == np.float32
    # The ball (40 HU) sits at the crop centre (between pixels 15 and 16 for an even size).
    bright = np.argwhere(crop > -200)
    np.testing.assert_allclose(bright.mean(axis=0), [15.5, 15.5], atol=0.3)
    # At 1 mm per pixel a 2.8 mm radius ball spans about 5-6 pixels, not 8 (its voxel width).
    assert 4 <= np.ptp(bright[:, 1]) + 1 <= 7
    k2, crop2, _ = _crop(vol, Position(24, 24, 5, space="voxel"))
    np.testing.assert_allclose(crop2, crop, atol=1e-3)
    k3, crop3, _ = _crop(vol, Position(24, 24, None, space="voxel", instance=6))  # instance = k + 1
    assert k3 == 5
    np.testing.assert_allclose(crop3, crop, atol=1e-3)


def test_given_slice_wins_and_is_checked_against_z(tmp_path, build):
    vol = _ball_series(tmp_path, build)
    _, centre_crop, _ = _crop(vol, Position(6.8, -3.2, 10.0))
    k, crop, _ = _crop(vol, Position(6.8, -3.2, 10.0, instance=8))  # z says 5, slice says 7
    assert k == 7
    assert 0 < (crop > 0).sum() < (centre_crop > 0).sum()  # a smaller disc of the ball
    with pytest.raises(IngestError, match="mm from the given slice"):
        locate(vol, Position(6.8, -3.2, 0.0, instance=10))  # 18 mm apart > 10 mm


def test_outside_the_volume_is_an_error(tmp_path, build):
    vol = _ball_series(tmp_path, build)
    with pytest.raises(IngestError, match="outside the volume along z") as err:
        locate(vol, Position(0.0, 0.0, 50.0))
    assert err.value.category == "coordinate outside volume"
    with pytest.raises(IngestError, match="outside the volume in-plane"):
        locate(vol, Position(100.0, 0.0, 4.0))
    with pytest.raises(IngestError, match="InstanceNumber 42"):
        locate(vol, Position(0.0, 0.0, None, instance=42))
    with pytest.raises(IngestError, match="no slice"):
        locate(vol, Position(0.0, 0.0, None))


def test_edge_crop_padded_with_air_and_flagged(tmp_path, build):
    vol = _ball_series(tmp_path, build)
    k, crop, flags = _crop(vol, Position(1, 1, 5, space="voxel"))
    assert flags == [PADDED]
    # The slice starts at x = -10.35 mm; crop column i lies at x = -9.3 - 15.5 + i mm.
    assert np.all(crop[:, :14] == AIR_HU) and np.all(crop[:14, :] == AIR_HU)
    assert np.all(crop[15:, 15:] >= -800.0)  # inside the synthetic scan: no padding there


def test_downsampling_is_antialiased(tmp_path, build):
    stripes = np.where(np.indices((2, 64, 64))[2] % 2 == 0, 500.0, -500.0).astype(np.float32)
    build.write_series(tmp_path, stripes, (0.5, 0.5, 2.0), (0.0, 0.0, 0.0))
    vol = open_volume(tmp_path)
    _, crop, _ = _crop(vol, Position(16.0, 16.0, 0.0), CropGeometry(16, 1.5))
    assert np.abs(crop).max() < 200  # 1-pixel stripes blur to near their mean, no aliasing


def test_real_tumour_crop(real_series):
    # Pascal-VOC box of slice 1-15 (InstanceNumber 15): x 108-226, y 253-330 -> centre pixel.
    vol = open_volume(real_series)
    k, crop, flags = _crop(vol, Position(167.0, 291.5, None, space="voxel", instance=15),
                           CropGeometry(64, 0.7))
    assert k == 1 and flags == []
    centre = crop[24:40, 24:40]
    assert -150 < centre.mean() < 150  # soft tissue (adenocarcinoma), not lung or air
    assert crop.min() < -800  # lung parenchyma within the 45 mm field of view
