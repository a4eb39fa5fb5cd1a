"""`namd serve`: one patient's possible futures in the browser (a local Gradio page).

The page is a thin layer over `namd.inference.pipeline.NAMDPipeline`, loaded once. Everything it does that
can be tested without a browser lives in plain modules that do not import gradio:

    form.py      the 13 EHR fields as form inputs (codes with their meanings, ranges) <-> EHR
    upload.py    an uploaded scan, read safely (suffix, size and file-count limits, zip slip)
    views.py     slice view, click -> voxel / world mapping, crops and variance maps as images
    session.py   what one server holds: the pipeline, the run's test nodules, uploaded scans;
                 a prediction as `NAMDPipeline.predict` makes it; errors as one line
    readout.py   the numbers and the provenance as the page shows them
    bundle.py    the download: one zip (samples .npy, PNGs, prediction.json), no file name or id
    server.py    start, say where it listens, serve until stopped, clean up

Two modules use gradio: app.py (the Blocks page and its launch; gradio is imported inside its
functions, after server.py has turned analytics off) and handlers.py (what each control does).
"""
