"""Errors shared by the `namd` command and the pipeline that runs its stages.

Kept in a module of their own, below both: the command catches StageFailed, and the pipeline,
which calls the command's stage functions, raises it; neither imports the other for it.
"""

from __future__ import annotations


class StageFailed(RuntimeError):
    """One or more stages failed; the message names each with its one-line error."""
