"""`namd serve` from start to stop: load the model once, start the page, say where it is served,
serve until Ctrl-C or SIGTERM, then delete the session's private folder (uploads, downloads,
gradio's cache)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from namd.run.errors import one_line
from namd.serve.readout import NOTICE, is_loopback
from namd.serve.session import CohortNodules, Session
from namd.serve.upload import Limits


def load_session(run: str | None, model: str | None, method: str, device: str | None,
                 max_upload_mb: float) -> Session:
    """The pipeline (from a run or a model folder), the run's test nodules, the upload limits."""
    from namd.inference.pipeline import NAMDPipeline
    from namd.run.layout import RunDir

    nodules = None
    if run:
        pipe = NAMDPipeline.from_run(run, method, device)
        try:
            nodules = CohortNodules(RunDir(run).require("cohort", "namd serve"))
        except ValueError as exc:  # e.g. no test pairs: the page still takes uploads
            print(f"namd serve: note: {' '.join(str(exc).split())}; serving uploads only",
                  file=sys.stderr)
    else:
        pipe = NAMDPipeline.from_pretrained(model, device)
    return Session(pipe, Limits.from_mb(max_upload_mb), nodules)


def where_line(host: str, port: int) -> str:
    """What the server says about where it listens."""
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    if is_loopback(host):
        return (f"namd serve: {url} (bound to {host}: reachable from this machine only; "
                "--host 0.0.0.0 to serve the network)")
    return (f"namd serve: {url} (bound to {host}: anyone who can reach this machine on port "
            f"{port} can use the page and upload scans)")


def _import_gradio() -> None:
    """Import gradio, or a one-line UsageError naming the extra to install."""
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        from namd.run.errors import UsageError

        raise UsageError(f"gradio cannot be imported ({exc}); install the serve extra: "
                         "pip install 'namd[serve]'") from None


def _stop_on_sigterm() -> threading.Event:
    """An event set by SIGTERM (and Ctrl-C), so the server stops and cleans up either way."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def serve(run: str | None, model: str | None, method: str = "namd", device: str | None = None,
          host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 2048.0) -> int:
    """Serve the page until stopped; 0 when stopped by Ctrl-C or SIGTERM."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up requests
    session = load_session(run, model, method, device, max_upload_mb)
    try:
        from namd.serve.app import build_page, launch, prepare_environment

        prepare_environment(Path(session.root))  # before gradio is imported
        _import_gradio()
        demo = build_page(session, host)
        stop = _stop_on_sigterm()
        try:
            launch(demo, session, host, port)
        except OSError as exc:
            why = ("the port is in use" if "empty port" in str(exc)
                   else one_line(exc, 160))
            raise OSError(f"cannot serve on {host}:{port}: {why}; choose another --port") from None
        print(where_line(host, port), flush=True)
        print(f"namd serve: {NOTICE} Ctrl-C to stop.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
        print("namd serve: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        session.close()
