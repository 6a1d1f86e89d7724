"""`gridded plan --png`: the planned cells drawn on a small lon/lat map, coloured by batch."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_bounds
from shapely.geometry import mapping

from .errors import ConfigError
from .plan import Plan

WIDTH_PX = 800


def draw_plan(plan: Plan, path: str) -> None:
    """Write an RGB PNG: each cell filled with its batch's colour and outlined in black."""
    cells = {}
    for batch in plan.batches:
        for task in batch.tasks:
            if task.key not in cells:
                gbox = task.geobox
                cells[task.key] = (batch.id, gbox.extent.to_crs("EPSG:4326", resolution=abs(gbox.resolution.x) * 16).geom)
    if not cells:
        raise ConfigError("--png: the plan has no cells with data; nothing to draw")
    minx = min(g.bounds[0] for _, g in cells.values())
    miny = min(g.bounds[1] for _, g in cells.values())
    maxx = max(g.bounds[2] for _, g in cells.values())
    maxy = max(g.bounds[3] for _, g in cells.values())
    pad = 0.05 * max(maxx - minx, maxy - miny)
    minx, miny, maxx, maxy = minx - pad, miny - pad, maxx + pad, maxy + pad
    height = max(1, round(WIDTH_PX * (maxy - miny) / (maxx - minx)))
    transform = from_bounds(minx, miny, maxx, maxy, WIDTH_PX, height)
    shape = (height, WIDTH_PX)
    fill = rasterize(((mapping(g), b + 1) for b, g in cells.values()), out_shape=shape, transform=transform,
                     dtype="int32")
    edges = rasterize(((mapping(g.boundary), 1) for _, g in cells.values()), out_shape=shape,
                      transform=transform, dtype="uint8", all_touched=True)
    rng = np.random.default_rng(7)
    palette = np.vstack([[255, 255, 255], rng.integers(60, 230, (len(plan.batches), 3))]).astype(np.uint8)
    rgb = palette[fill].transpose(2, 0, 1).copy()
    rgb[:, edges == 1] = 0
    try:
        with rasterio.open(path, "w", driver="PNG", width=WIDTH_PX, height=height, count=3, dtype="uint8") as dst:
            dst.write(rgb)
    except rasterio.errors.RasterioIOError as err:
        raise ConfigError(f"--png {path}: cannot write there ({err}); choose a writable path") from err
