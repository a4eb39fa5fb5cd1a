"""The download: one zip with everything a prediction made, and nothing that names the patient.

    prediction.json     the numbers (Prediction.as_json: probabilities, Brock, the readout,
                        provenance with model sha256, seed, k, steps), the EHR values, how the
                        crop was made
    readout.txt         the radiologist's readout in words (Lung-RADS, growth, doubling time)
    baseline.npy        (H, W) float32 HU; samples.npy (K, H, W); mean.npy; variance.npy (HU^2);
                        real_followup.npy for a test nodule
    png/                the same as the page shows them (lung window, enlarged), the strip of
                        the K probabilities, and grid.png (namd sample's grid)
    README.txt          what the files are; research use, not a medical device

Entry names are fixed and every entry carries the same date (1980-01-01), so the zip holds no
upload file name, no path, no patient or pair id and no time of day. It is written atomically.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from namd.run.provenance import atomic_write_bytes
from namd.serve.readout import NOTICE, readout_text
from namd.serve.views import crop_image, png_bytes, probability_strip, variance_image

if TYPE_CHECKING:
    from namd.serve.result import Result

EPOCH = (1980, 1, 1, 0, 0, 0)
README = """namd serve: one prediction

{notice}

prediction.json    probabilities (evaluator on the baseline crop and on each of the K virtual
                   follow-ups, {probability}), the Brock score, the EHR values the model read,
                   the readout (Lung-RADS category, growth, doubling time over the K
                   follow-ups), and the provenance: model sha256, seed, k, steps, scheduler
readout.txt        the readout in words, with its notice
baseline.npy       the baseline crop, float32 HU, {size} x {size} pixels at {spacing} mm
samples.npy        the K = {k} virtual one-year follow-ups, float32 HU, shape (K, H, W)
mean.npy           their pixel-wise mean (HU); variance.npy: their pixel-wise variance (HU^2)
{real}png/               the images as the page shows them (lung window {lo:g} to {hi:g} HU,
                   enlarged with nearest-neighbour pixels); grid.png: all of them on one sheet
"""


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def prediction_record(result: Result) -> dict[str, Any]:
    """prediction.json: the prediction's numbers, the record and the crop's making."""
    return {**result.prediction.as_json(), "ehr": result.ehr.as_dict(),
            "baseline": result.baseline.source, "p_real_followup": result.p_real_followup,
            "window_hu": list(result.window), "notice": NOTICE}


def grid_png(result: Result) -> bytes:
    """namd sample's grid (baseline, real follow-up, mean, variance, the K samples) as PNG."""
    from namd.inference.sample_stage import save_grid

    pred = result.prediction
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.png"
        save_grid(path, result.baseline.crop, result.baseline.followup, pred.samples,
                  result.window, f"{pred.k} virtual follow-ups, p = {pred.p_followup_mean:.2f}")
        return path.read_bytes()


def bundle_files(result: Result) -> dict[str, bytes]:
    """Entry name -> content of the zip."""
    pred, base, window = result.prediction, result.baseline, result.window
    samples = np.asarray(pred.samples, np.float32)
    mean, variance = samples.mean(0), samples.var(0)
    files = {"prediction.json": (json.dumps(prediction_record(result), indent=2) + "\n").encode(),
             "baseline.npy": npy_bytes(base.crop), "samples.npy": npy_bytes(samples),
             "mean.npy": npy_bytes(mean), "variance.npy": npy_bytes(variance),
             "png/baseline.png": png_bytes(crop_image(base.crop, window)),
             "png/mean.png": png_bytes(crop_image(mean, window)),
             "png/variance.png": png_bytes(variance_image(variance)),
             "png/probabilities.png": probability_strip(pred.p_followup, pred.p_baseline),
             "png/grid.png": grid_png(result),
             "readout.txt": readout_text(pred.readout).encode()}
    for i, sample in enumerate(samples, 1):
        files[f"png/followup_{i:03d}.png"] = png_bytes(crop_image(sample, window))
    if base.followup is not None:
        files["real_followup.npy"] = npy_bytes(base.followup)
        files["png/real_followup.png"] = png_bytes(crop_image(base.followup, window))
    real = "real_followup.npy  the nodule's real one-year follow-up, float32 HU\n" \
        if base.followup is not None else ""
    files["README.txt"] = README.format(
        notice=NOTICE, probability=pred.provenance.get("probability", "raw"), size=base.crop.shape[0],
        spacing=f"{result.spacing_mm:g}", k=pred.k, real=real, lo=window[0],
        hi=window[1]).encode()
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A deflated zip of the entries, each dated EPOCH, in name order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[name])
    return buf.getvalue()


def write_bundle(path: Path, result: Result) -> Path:
    """Write the zip of a result atomically; returns its path."""
    atomic_write_bytes(Path(path), zip_bytes(bundle_files(result)))
    return Path(path)
