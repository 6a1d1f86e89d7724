"""One hierarchy of errors a user can act on; the CLI prints them as one line."""


class GriddedError(Exception):
    """Base of every error gridded reports to a user as one line."""

    exit_code = 2


class ConfigError(GriddedError, ValueError):
    """Bad input or configuration: retrying cannot help (exit 2)."""


class SourceError(GriddedError, OSError):
    """A STAC source or one of its assets cannot be read."""


class OutputError(GriddedError, OSError):
    """The output location cannot be written."""


class ArtifactError(GriddedError, ValueError):
    """The cells artifact is missing, tampered with or of another format."""


class ClusterError(GriddedError, OSError):
    """The Dask scheduler cannot be reached: maybe transient (exit 1, retryable)."""

    exit_code = 1


class Interrupted(GriddedError):
    """Stopped by SIGTERM or Ctrl-C: what finished is kept; a rerun resumes (exit 143, retryable)."""

    exit_code = 143
    # leave at once after the message: Dask threads of this process may still be mid-read
    hard_exit = False


class CellError(GriddedError):
    """One cell failed; the others go on (exit 1 at the end, retryable)."""

    exit_code = 1
