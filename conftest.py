"""Fixtures shared by the tests and the docstring examples: the demo source catalog (synthetic
Sentinel-2 L2A-like COGs written with rasterio), and the names the examples use."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridded.demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME, write_demo_catalog


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    """catalog.json of the demo source catalog (written once per session; treat as read-only)."""
    return write_demo_catalog(tmp_path_factory.mktemp("demo-source") / "catalog")


@pytest.fixture(autouse=True)
def _docstring_example_names(request, doctest_namespace):
    """The docstring examples run on the demo catalog, each in a folder of its own (`tmp`)."""
    if isinstance(request.node, pytest.DoctestItem):
        doctest_namespace.update(
            demo_catalog=str(request.getfixturevalue("demo_catalog")), DEMO_EXTENT=DEMO_EXTENT,
            DEMO_GRID=DEMO_GRID, DEMO_TIME=DEMO_TIME, tmp=request.getfixturevalue("tmp_path"))
