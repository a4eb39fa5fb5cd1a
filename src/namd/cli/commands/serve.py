"""`namd serve (--run RUN | --model FOLDER) [--host 127.0.0.1] [--port 7860]`: a local web page
to look at one patient's possible futures.

Pick a test nodule of the run (with --run) or upload a scan (a zipped DICOM folder, NIfTI or
MHA) and click the nodule's centre; edit the 13 EHR fields; press Predict to see the baseline
crop, the K virtual one-year follow-ups, their mean and variance, the real follow-up when
known, the malignancy estimate (baseline, mean +- std over K, each follow-up), the Brock score
and the model's provenance; download everything as one zip. The model is loaded once.

The server binds to 127.0.0.1 (this machine only) unless --host says otherwise, and nothing
leaves the machine: no analytics, no share link, no fonts or scripts from the internet.
Research use, not a medical device. Needs the serve extra: pip install 'namd[serve]'.
"""

from __future__ import annotations

import argparse
import importlib.util

from namd.cli.commands.predict import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add `namd serve`."""
    p = sub.add_parser("serve", help="look at one patient's possible futures in the browser",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, "a trained run (its test nodules can be picked)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 = every "
                        "network interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=2048.0,
                   help="largest upload in MB (a zip may unpack to twice that; default 2048)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the model once, start the page and serve until interrupted (Ctrl-C)."""
    from namd.run.errors import UsageError

    if importlib.util.find_spec("gradio") is None:
        raise UsageError("gradio is not installed; install the serve extra: pip install 'namd[serve]'")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    from namd.serve.server import serve

    return serve(run=args.run, model=args.model, method=args.method, device=args.device,
                 host=args.host, port=args.port, max_upload_mb=args.max_upload_mb)
