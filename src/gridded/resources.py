"""Where the built-in grids and pipelines live: in the wheel, or beside src/ in a checkout."""

from __future__ import annotations

from pathlib import Path


def data_dir(kind: str) -> Path:
    """`grids` or `pipelines`: the packaged copy if installed from a wheel, else the repo's folder."""
    packaged = Path(__file__).parent / "_data" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / kind
