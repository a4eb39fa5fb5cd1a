"""The errors a namd command ends with in one line, and the one function that puts an error on
one line. Below every layer that raises them: the CLI prints them, `namd serve` shows them in its
page, and the pipeline's stages raise StageFailed.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


class StageFailed(RuntimeError):
    """A stage of `namd demo` failed; the message names the stage and its one-line error."""


# ValueError covers RunFileError, ConfigError, EHRError, CohortError and IngestError; OSError
# covers FileNotFoundError, FileExistsError and PermissionError.
EXPECTED = (UsageError, ValueError, OSError, KeyError, StageFailed)


def one_line(error: BaseException | object, limit: int | None = None) -> str:
    """An error (or any text) on one line: whitespace runs collapsed (library messages often
    span several lines), an exception without text named by its type, and with `limit` cut to
    that many characters, the last one an ellipsis."""
    flat = " ".join(str(error).split())
    if not flat and isinstance(error, BaseException):
        flat = type(error).__name__
    return flat if limit is None or len(flat) <= limit else flat[:limit - 1] + "…"
