"""Worker processes give the same crops as in-process extraction; errors come back intact."""

import numpy as np
import pytest

from namd.cohort.ingest.crop import CropGeometry, Position
from namd.cohort.ingest.errors import ErrorLog, IngestError
from namd.cohort.ingest.parallel import CropRequest, VolumeSettings, extract_all

SETTINGS = VolumeSettings(CropGeometry(16, 1.0))


@pytest.fixture
def requests(tmp_path, build):
    reqs = []
    for n in range(3):
        path = build.write_image(tmp_path / f"v{n}.mha", build.ball((4, 24, 24), (2, 12, 12 - n), 3))
        reqs += [CropRequest(f"v{n}-a", str(path), Position(12 * 0.7, 12 * 0.7, 4.0), file="m.csv", line=n + 2),
                 CropRequest(f"v{n}-b", str(path), Position(0.0, 0.0, 99.0), file="m.csv", line=n + 10)]
    return reqs


def test_workers_match_in_process(requests):
    errors0, errors2 = ErrorLog("skip"), ErrorLog("skip")
    serial = extract_all(requests, SETTINGS, 0, errors0)
    pooled = extract_all(requests, SETTINGS, 2, errors2)
    assert sorted(serial) == sorted(pooled) == ["v0-a", "v1-a", "v2-a"]
    for key in serial:
        np.testing.assert_array_equal(serial[key].crop, pooled[key].crop)
    # Errors from worker processes keep file, line, field and category.
    got = sorted((s.line, s.field, s.category) for s in errors2.skipped)
    assert got == [(10, "z", "coordinate outside volume"), (11, "z", "coordinate outside volume"),
                   (12, "z", "coordinate outside volume")]
    assert all(s.file == "m.csv" and "v" in s.reason for s in errors2.skipped)


def test_stop_policy_raises_from_pool(requests):
    with pytest.raises(IngestError, match=r"m\.csv line 1\d, field z: coordinate"):
        extract_all(requests, SETTINGS, 2, ErrorLog("stop"))


def test_unreadable_volume_fails_each_of_its_requests(tmp_path):
    bad = tmp_path / "bad.mha"
    bad.write_text("not an image")
    reqs = [CropRequest(f"k{i}", str(bad), Position(0, 0, 0), file="m.csv", line=i) for i in (2, 3)]
    errors = ErrorLog("skip")
    assert extract_all(reqs, SETTINGS, 0, errors) == {}
    assert [s.line for s in errors.skipped] == [2, 3]
    assert all("bad.mha: cannot read image" in s.reason for s in errors.skipped)
