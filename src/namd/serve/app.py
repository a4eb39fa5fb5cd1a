"""The page of `namd serve` (Gradio Blocks) and its launch.

Nothing leaves the machine: gradio's analytics and version check are off (set before gradio
is imported), there is no share link, the theme uses the system's fonts (no Google Fonts),
the footer links, the run history (which can upload to a Hugging Face bucket), the monitoring
page and the MCP server are off, and every asset comes from gradio's own package, served by
this server. The browser test (tests/serve/test_browser.py) checks that every request the page
makes goes to 127.0.0.1. Uploads and gradio's file cache live in the session's private
temporary folder, deleted when the server stops.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from namd.cohort.ehr import EHR, EHR_FIELDS, FAMILY, report_sentence
from namd.serve.form import MISSING, field_specs
from namd.serve.readout import NOTICE, is_loopback
from namd.serve.session import Session
from namd.serve.views import GALLERY_COLUMNS

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
CSS = """
#namd-notice {background: #fff4e5; border: 1px solid #f0a94b; border-radius: 6px;
              padding: 6px 10px; font-weight: 600;}
.namd-error {color: #b42318; font-weight: 600;}
.namd-table {border-collapse: collapse; width: 100%; font-size: 0.92em;}
.namd-table th {text-align: left; font-weight: 500; padding: 2px 8px 2px 0; width: 55%;}
.namd-table td {font-family: var(--font-mono); padding: 2px 0;}
.namd-table td span[data-value] {white-space: nowrap;}
.namd-table td span[data-namd=model_sha256] {white-space: normal; word-break: break-all;}
.namd-note {font-size: 0.85em; opacity: 0.8;}
"""
LAYOUT = (("SCT_PRE_ATT", "SCT_EPI_LOC"), ("SCT_MARGINS", "gender", "diagemph"),
          ("SCT_LONG_DIA", "SCT_PERP_DIA", "age"), FAMILY)
# Scrolling over the slice view steps through the slices (the slider follows).
WHEEL_JS = """
<script>
document.addEventListener('wheel', (event) => {
  if (!event.target.closest('#namd-slice')) return;
  const range = document.querySelector('#namd-slice-index input[type=range]');
  if (!range || range.disabled) return;
  event.preventDefault();
  const next = Math.min(+range.max, Math.max(+range.min, +range.value + Math.sign(event.deltaY)));
  if (next === +range.value) return;
  range.value = next;
  range.dispatchEvent(new Event('input', {bubbles: true}));
}, {passive: false});
</script>
"""


def prepare_environment(root: Path) -> None:
    """Settings gradio reads at import: analytics and telemetry off, its file cache (uploads
    included) inside the session's private folder unless GRADIO_TEMP_DIR says otherwise."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("GRADIO_TEMP_DIR", str(root / "gradio"))


def theme() -> Any:
    """gradio's default theme with system fonts only (nothing fetched for fonts)."""
    import gradio as gr

    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def header(session: Session, host: str) -> str:
    """The page's opening lines: what it is, the notice, the model, where it is served."""
    pipe = session.pipe
    where = (f"served on {host} only: nothing leaves this machine" if is_loopback(host)
             else f"served on {host}; no analytics, no share link, no fonts or scripts from the internet")
    return (f"# namd: one patient's possible futures\n"
            f"Virtual one-year follow-up CT crops of a lung nodule and the malignancy estimate "
            f"they support. Model: **{pipe.method}**, sha256 `{pipe.model_hash[:16]}…`, loaded "
            f"once; {where}.")


def ehr_inputs() -> list[Any]:
    """The 13 EHR inputs (EHR_FIELDS order): dropdowns of the official codes with their
    meanings, numbers with their ranges; the nodule's fields first, then the patient's."""
    import gradio as gr

    specs = {spec.name: spec for spec in field_specs()}
    made: dict[str, Any] = {}
    gr.Markdown("Codes are NLST's; *missing* = not recorded.")
    for row in LAYOUT:
        with gr.Row(equal_height=True):
            for name in row:
                spec = specs[name]
                elem = f"namd-ehr-{name}"
                if spec.coded:
                    made[name] = gr.Dropdown(choices=list(spec.choices), value=MISSING,
                                             label=spec.label, elem_id=elem, min_width=110)
                else:
                    made[name] = gr.Textbox(value="", label=spec.label, info=spec.info,
                                            placeholder=MISSING, elem_id=elem, min_width=110,
                                            max_lines=1)
    return [made[name] for name in EHR_FIELDS]


IMAGE = {"type": "numpy", "format": "png", "interactive": False, "buttons": ["fullscreen"]}
RESULTS = ("baseline", "real", "mean", "variance", "gallery", "numbers", "strip", "provenance",
           "download", "preview", "message")  # the outputs of Predict, in handlers.Page.results order


def _baseline_controls(session: Session, ui: dict[str, Any]) -> None:
    """Where the baseline comes from: a test nodule, or an uploaded scan and its centre."""
    import gradio as gr

    from namd.serve.handlers import NODULE, SCAN

    sources = [NODULE, SCAN] if session.nodules is not None else [SCAN]
    ui["source"] = gr.Radio(sources, value=sources[0], label="baseline from", elem_id="namd-source")
    with gr.Group(visible=sources[0] == NODULE) as ui["nodule_box"]:
        ui["nodule"] = gr.Dropdown(choices=session.nodules.choices() if session.nodules else [],
                                   value=None, label="test nodule (pair id, label)",
                                   elem_id="namd-nodule")
        ui["nodule_info"] = gr.Markdown(elem_id="namd-nodule-info")
    with gr.Group(visible=sources[0] == SCAN) as ui["scan_box"]:
        ui["upload"] = gr.File(label="scan: a zipped DICOM folder (.zip), NIfTI (.nii, .nii.gz), "
                               "MHA (.mha) or NRRD (.nrrd)", type="filepath", elem_id="namd-upload")
        ui["scan_info"] = gr.Markdown(elem_id="namd-scan-info")
        ui["slider"] = gr.Slider(0, 1, value=0, step=1, label="slice (scroll over the image)",
                                 visible=False, elem_id="namd-slice-index")
        ui["slice"] = gr.Image(label="axial slice: click the nodule's centre", elem_id="namd-slice",
                               **IMAGE)
        with gr.Row():
            for a in "xyz":
                ui[f"c{a}"] = gr.Textbox(label=f"centre {a}", elem_id=f"namd-c{a}", min_width=90,
                                         max_lines=1)
            ui["space"] = gr.Radio(["world", "voxel"], value="world", elem_id="namd-space",
                                   label="world = LPS mm; voxel = column, row, slice in the "
                                         "file's order")
        ui["centre_info"] = gr.Markdown(elem_id="namd-centre-info")
    ui["preview"] = gr.Image(label="the crop the model reads", elem_id="namd-preview", height=200,
                             **IMAGE)


def _record_controls(session: Session, ui: dict[str, Any]) -> None:
    """The 13 EHR fields, the sentence the model reads, k / steps / seed and the button."""
    import gradio as gr

    with gr.Accordion("health record: the 13 EHR fields", open=True):
        ui["fields"] = ehr_inputs()
    ui["sentence"] = gr.Textbox(report_sentence(EHR()), lines=3, interactive=False,
                                label="the report sentence the model reads", elem_id="namd-sentence")
    with gr.Row():
        ui["k"] = gr.Number(session.default_k, precision=0, label="k (follow-ups)",
                            info=f"paper: {session.default_k}", elem_id="namd-k")
        ui["steps"] = gr.Number(session.default_steps, precision=0, label="steps",
                                info=f"paper: DDIM {session.default_steps}", elem_id="namd-steps")
        ui["seed"] = gr.Number(session.default_seed, precision=0, label="seed",
                               info="the model's sampling.seed", elem_id="namd-seed")
    ui["go"] = gr.Button("Predict", variant="primary", elem_id="namd-predict")
    ui["message"] = gr.HTML(elem_id="namd-message")


def _result_controls(ui: dict[str, Any]) -> None:
    """What Predict shows: the crops, the K follow-ups, the numbers, the provenance, the zip."""
    import gradio as gr

    with gr.Row():
        for name, label in (("baseline", "baseline"), ("real", "real follow-up"),
                            ("mean", "mean of the K follow-ups"),
                            ("variance", "pixel-wise variance (0 to max)")):
            ui[name] = gr.Image(label=label, elem_id=f"namd-{name}", **IMAGE)
    ui["gallery"] = gr.Gallery(label="the K virtual one-year follow-ups", columns=GALLERY_COLUMNS,
                               format="png", elem_id="namd-gallery", object_fit="contain",
                               buttons=["fullscreen"])
    ui["numbers"] = gr.HTML(elem_id="namd-numbers")
    ui["strip"] = gr.Image(label="the K probabilities", elem_id="namd-strip", **IMAGE)
    ui["provenance"] = gr.HTML(elem_id="namd-provenance")
    ui["download"] = gr.File(label="everything as one zip", interactive=False, elem_id="namd-download")


def _wire(page: Any, ui: dict[str, Any]) -> None:
    """Connect every control to its handler (namd.serve.handlers.Page)."""
    import gradio as gr

    u, fields = ui, ui["fields"]
    centre = [u["cx"], u["cy"], u["cz"]]
    u["source"].change(page.on_source, u["source"], [u["nodule_box"], u["scan_box"]])
    u["nodule"].change(page.on_nodule, u["nodule"],
                       [*fields, u["nodule_info"], u["preview"], u["sentence"], u["message"]])
    u["upload"].change(page.on_upload, u["upload"],
                       [u["token"], u["scan_info"], u["slider"], u["slice"], *centre,
                        u["centre_info"], u["preview"], u["message"]])
    u["slider"].change(page.on_slice, [u["token"], u["slider"], *centre, u["space"]],
                       [u["slice"], u["message"]], trigger_mode="always_last", show_progress="hidden")
    u["slice"].select(page.on_click, [u["token"], u["slider"]],
                      [*centre, u["space"], u["slice"], u["centre_info"], u["preview"], u["message"]])
    gr.on([c.submit for c in centre] + [c.blur for c in centre] + [u["space"].input], page.on_centre,
          [u["token"], *centre, u["space"]],
          [u["slider"], u["slice"], u["centre_info"], u["preview"], u["message"]],
          trigger_mode="always_last")
    gr.on([f.input for f in fields], page.on_record, fields, [u["sentence"], u["message"]],
          trigger_mode="always_last", show_progress="hidden")
    u["go"].click(page.on_predict, [u["source"], u["nodule"], u["token"], *centre, u["space"],
                                    u["k"], u["steps"], u["seed"], *fields],
                  [u[name] for name in RESULTS], concurrency_limit=1)


def build_page(session: Session, host: str = "127.0.0.1") -> Any:
    """The Blocks page: baseline and record on the left, results on the right, all wired."""
    import gradio as gr

    from namd.serve.handlers import Page

    ui: dict[str, Any] = {}
    with gr.Blocks(title="namd serve", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(header(session, host))
        gr.HTML(f'<div id="namd-notice">{NOTICE}</div>')
        ui["token"] = gr.State(None)  # the uploaded scan's key in the session's ScanStore
        with gr.Row():
            with gr.Column(scale=5):
                _baseline_controls(session, ui)
                _record_controls(session, ui)
            with gr.Column(scale=7):
                _result_controls(ui)
        _wire(Page(session), ui)
    return demo


def launch(demo: Any, session: Session, host: str, port: int) -> Any:
    """Start the server without blocking; no share link, nothing fetched from outside."""
    return demo.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                       prevent_thread_lock=True, quiet=True, show_error=False, footer_links=[],
                       run_history=False, enable_monitoring=False, mcp_server=False,
                       ssr_mode=False, pwa=False, max_file_size=session.limits.max_upload_bytes,
                       allowed_paths=[str(session.root)], theme=theme(), css=CSS, head=WHEEL_JS)
