"""gridded: analysis-ready composites from STAC imagery, tile by tile."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gridded")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"
