"""One hierarchy of errors a user can act on; the CLI prints them as one line.

Every error knows whether running the same thing again can succeed: `retryable` errors are
transient (throttling, a 5xx answer, a timeout, an unreachable endpoint, a killed worker) and
exit 1, so a workflow engine retries them; the others are bad input or configuration (a typo, a
missing object, a refused credential, a corrupt file) and exit 2, which no retry can fix.
"""

from __future__ import annotations

BAD_INPUT_EXIT = 2  # retrying cannot help: the rendered workflows retry everything but this
TRANSIENT_EXIT = 1  # retrying can help


class GriddedError(Exception):
    """Base of every error gridded reports to a user as one line."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def exit_code(self) -> int:
        return TRANSIENT_EXIT if self.retryable else BAD_INPUT_EXIT

    def __reduce__(self):  # keeps `retryable` across processes (Dask, multiprocessing)
        return _rebuild, (type(self), str(self), self.retryable)


def _rebuild(cls, message: str, retryable: bool) -> GriddedError:
    return cls(message, retryable=retryable)


class ConfigError(GriddedError, ValueError):
    """Bad input or configuration: retrying cannot help (exit 2)."""


class SourceError(GriddedError, OSError):
    """A STAC source or one of its assets cannot be read: transient (retryable, exit 1) or refused,
    missing or corrupt (exit 2), as the cause says."""


class OutputError(GriddedError, OSError):
    """The output location cannot be written: transient (retryable) or refused (exit 2)."""


class ArtifactError(GriddedError, ValueError):
    """The cells artifact is missing, tampered with or of another format (exit 2)."""


class ClusterError(GriddedError, OSError):
    """The Dask scheduler cannot be reached: maybe transient (exit 1, retryable)."""

    retryable = True


class SchedulerLost(ClusterError):
    """The Dask scheduler went away mid-run: what finished is committed, a rerun resumes (exit 1).
    `cluster` is what the run did until then (ClusterRun.summary), for the run report."""

    def __init__(self, message: str, *, retryable: bool | None = None, cluster: dict | None = None):
        super().__init__(message, retryable=retryable)
        self.cluster = cluster


class Interrupted(GriddedError):
    """Stopped by SIGTERM or Ctrl-C: what finished is kept; a rerun resumes (exit 143, retryable)."""

    retryable = True
    # leave at once after the message: Dask threads of this process may still be mid-read
    hard_exit = False

    @property
    def exit_code(self) -> int:
        return 143


class CellError(GriddedError):
    """One cell failed; the others go on (exit 1 at the end, retryable)."""

    retryable = True
