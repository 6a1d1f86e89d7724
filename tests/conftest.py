"""Shared fixtures: a real synthetic Sentinel-2-like catalog of COGs written with rasterio."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME, write_demo_catalog


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    """catalog.json of the demo source catalog (written once per session; treat as read-only)."""
    return write_demo_catalog(tmp_path_factory.mktemp("demo-source") / "catalog")


@pytest.fixture
def demo_args(demo_catalog) -> list[str]:
    """The selection flags of a demo run (add --output ...)."""
    return [
        "--source", str(demo_catalog), "--extent", DEMO_EXTENT, "--time", DEMO_TIME,
        "--grid", str(DEMO_GRID), "--bands", "blue,green,red,nir", "--tiles-per-worker", "2",
    ]


@pytest.fixture
def catalog_copy(demo_catalog, tmp_path) -> Path:
    """A private copy of the demo catalog that a test may damage."""
    dest = tmp_path / "catalog"
    shutil.copytree(demo_catalog.parent, dest)
    return dest / "catalog.json"
