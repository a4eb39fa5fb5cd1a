"""What each control of the page does: thin functions from widget values to widget updates over
a `Session`. Every handler catches every error and shows it as one line in the page (never a
stack trace; an unexpected error also goes to the server's log), so the server keeps serving.
"""

# No `from __future__ import annotations`: gradio reads `gr.SelectData` / `gr.Progress` from
# the handlers' real annotations and defaults.
import time
from typing import Any

import gradio as gr
import numpy as np

from namd.serve.form import ehr_from_form, form_from_ehr, sentence_of
from namd.serve.readout import error_html, numbers_html, provenance_html, status_html
from namd.serve.result import Baseline, Result
from namd.serve.session import Session, page_line
from namd.serve.views import (
    GALLERY_COLUMNS,
    THUMB_PX,
    crop_image,
    png_array,
    probability_strip,
    shown_index,
    stored_voxel,
    variance_image,
)

NODULE, SCAN = "a test nodule of the run", "an uploaded scan"


def _error(exc: BaseException) -> str:
    """The page's one-line message for an exception."""
    return error_html(page_line(exc))


def _keep(n: int) -> list[Any]:
    """n 'no change' updates."""
    return [gr.update() for _ in range(n)]


def _centre_text(world: np.ndarray, voxel: np.ndarray, k: int, n: int) -> str:
    """The centre as both coordinate systems, for the line under the slice."""
    w = ", ".join(f"{v:.1f}" for v in world)
    v = ", ".join(f"{c:.1f}" for c in voxel)
    return f"centre: world ({w}) mm (LPS) = voxel ({v}) in the file's order; slice {k} of 0-{n - 1}"


class Page:
    """The handlers of one page, over one session."""

    def __init__(self, session: Session):
        self.session = session

    def on_source(self, source: str) -> tuple[Any, Any]:
        """Show the test-nodule picker or the scan upload."""
        return gr.update(visible=source == NODULE), gr.update(visible=source == SCAN)

    def on_nodule(self, pair_id: str | None) -> list[Any]:
        """A test nodule chosen: its record into the form, its crop as the preview."""
        try:
            base = self.session.nodule_baseline(pair_id)
            label = {0: "benign", 1: "malignant"}.get(base.label, "unknown")
            info = f"cohort label: {label}; the real one-year follow-up is known"
            values = form_from_ehr(base.ehr)
            return [*values, info, self.preview(base), sentence_of(values), status_html("")]
        except Exception as exc:
            return [*_keep(13), "", None, gr.update(), _error(exc)]

    def preview(self, base: Baseline) -> np.ndarray:
        """The crop the model will read, as shown."""
        return crop_image(base.crop, self.session.window)

    def on_upload(self, path: str | None) -> list[Any]:
        """A scan uploaded: open it, show its middle slice, reset the centre."""
        hidden = gr.update(visible=False)
        if not path:
            return [None, "", hidden, None, "", "", "", "", None, status_html("")]
        try:
            token, scan = self.session.add_scan(path)
            vol = scan.volume
            mid = vol.size[2] // 2
            image, _ = self.session.slice(token, mid)
            spacing = " x ".join(f"{s:.3g}" for s in vol.spacing)
            info = (f"{vol.size[0]} x {vol.size[1]} x {vol.size[2]} voxels at {spacing} mm; "
                    "click the nodule's centre, or type it")
            slider = gr.update(minimum=0, maximum=max(vol.size[2] - 1, 1), value=mid, step=1,
                               visible=True, interactive=vol.size[2] > 1)
            return [token, info, slider, image, "", "", "", "", None, status_html("scan loaded")]
        except Exception as exc:
            return [None, "", hidden, None, "", "", "", "", None, _error(exc)]

    def _centre(self, cx: Any, cy: Any, cz: Any, space: str, token: str | None) -> np.ndarray | None:
        """The typed centre as a world point, or None while a coordinate is empty."""
        if any(v is None or not str(v).strip() for v in (cx, cy, cz)):
            return None
        return self.session.centre_world(token, (cx, cy, cz), space)

    def on_slice(self, token: str | None, k: Any, cx: Any, cy: Any, cz: Any, space: str) -> list[Any]:
        """Another slice: draw it, with the centre when it lies on it."""
        if not token or k is None:
            return [gr.update(), gr.update()]
        try:
            world = self._centre(cx, cy, cz, space, token)
            return [self.session.slice(token, int(k), world)[0], gr.update()]
        except Exception as exc:
            return [gr.update(), _error(exc)]

    def _show_centre(self, token: str, world: np.ndarray, cx: Any, cy: Any, cz: Any,
                     space: str) -> tuple[int, np.ndarray, str, np.ndarray]:
        """Slice, slice image, centre line and crop preview of a centre."""
        vol = self.session.scans.get(token).volume
        k = int(round(shown_index(vol, world)[2]))
        base = self.session.scan_baseline(token, (cx, cy, cz), space)  # errors outside the volume
        image = self.session.slice(token, k, world)[0]
        text = _centre_text(world, stored_voxel(vol, world), k, vol.size[2])
        flags = f"; {', '.join(base.source['flags'])}: part of the crop lies outside the slice" \
            if base.source["flags"] else ""
        return k, image, text + flags, self.preview(base)

    def on_click(self, token: str | None, k: Any, evt: gr.SelectData) -> list[Any]:
        """A click on the slice: that point is the centre (world coordinates)."""
        try:
            x, y = evt.index
            world, _ = self.session.click(token, int(k), float(x), float(y))
            cx, cy, cz = (f"{v:.2f}" for v in world)
            _, image, text, preview = self._show_centre(token, np.array([float(cx), float(cy), float(cz)]),
                                                        cx, cy, cz, "world")
            return [cx, cy, cz, "world", image, text, preview, status_html("centre set")]
        except Exception as exc:
            return [*_keep(7), _error(exc)]

    def on_centre(self, token: str | None, cx: Any, cy: Any, cz: Any, space: str) -> list[Any]:
        """A typed centre: go to its slice, mark it, preview its crop."""
        try:
            world = self._centre(cx, cy, cz, space, token)
            if world is None:
                return [*_keep(4), status_html("")]
            k, image, text, preview = self._show_centre(token, world, cx, cy, cz, space)
            return [k, image, text, preview, status_html("centre set")]
        except Exception as exc:
            return [*_keep(2), "", None, _error(exc)]

    def on_record(self, *fields: Any) -> list[Any]:
        """The form changed: the report sentence the model will read, or what is wrong."""
        try:
            return [sentence_of(fields), status_html("")]
        except Exception as exc:
            return [f"error: {page_line(exc)}", _error(exc)]

    def _baseline(self, source: str, pair_id: str | None, token: str | None,
                  centre: tuple[Any, Any, Any], space: str) -> Baseline:
        """The baseline of the chosen source."""
        if source == NODULE:
            return self.session.nodule_baseline(pair_id)
        return self.session.scan_baseline(token, centre, space)

    def results(self, result: Result, seconds: float) -> list[Any]:
        """The outputs of a prediction, in the order of app.RESULTS, and the status line."""
        pred, window = result.prediction, self.session.window
        samples = np.asarray(pred.samples)
        real = result.baseline.followup
        gallery = [(crop_image(s, window), f"{i + 1}: {p:.4f}")
                   for i, (s, p) in enumerate(zip(samples, pred.p_followup, strict=True))]
        rows = -(-len(gallery) // GALLERY_COLUMNS)
        return [crop_image(result.baseline.crop, window),
                None if real is None else crop_image(real, window),
                crop_image(samples.mean(0), window), variance_image(samples.var(0)),
                gr.update(value=gallery, height=rows * THUMB_PX + 16),
                numbers_html(result), png_array(probability_strip(pred.p_followup, pred.p_baseline)),
                provenance_html(result), str(result.bundle), self.preview(result.baseline),
                status_html(f"{pred.k} virtual follow-ups, {pred.steps} steps, in {seconds:.1f} s")]

    def on_predict(self, source: str, pair_id: str | None, token: str | None, cx: Any, cy: Any,
                   cz: Any, space: str, k: Any, steps: Any, seed: Any, *fields: Any,
                   progress=gr.Progress()) -> list[Any]:  # noqa: B008 (gradio's progress hook)
        """Predict: the follow-ups, their mean and variance, the numbers and the zip."""
        start = time.perf_counter()
        try:
            progress(0.0, desc="reading the record and the crop")
            ehr = ehr_from_form(fields)
            base = self._baseline(source, pair_id, token, (cx, cy, cz), space)
            result = self.session.predict(base, ehr, k, steps, seed,
                                          lambda f, text: progress(f, desc=text))
            return self.results(result, time.perf_counter() - start)
        except Exception as exc:
            return [None, None, None, None, [], "", None, "", None, gr.update(), _error(exc)]
