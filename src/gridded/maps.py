"""Pictures for people: the plan on a lon/lat map (extent, scene footprints, cells by state with
their keys, a legend, a graticule and a title), and a quicklook mosaic of a period's thumbnails
with a scale bar. matplotlib draws them (without a display)."""

from __future__ import annotations

import io
import json
import math
import warnings
from typing import cast

import numpy as np
from shapely.geometry import Polygon, shape

from .errors import ConfigError
from .io.storage import Storage
from .plan import Plan

STATE_COLOURS = {"to-do": "#9ecae1", "done": "#31a354", "changed": "#fd8d3c", "failed": "#de2d26",
                 "no-data": "#d9d9d9"}
MAX_LABELLED_CELLS = 400  # more cells than this and the keys are left off (they would overlap)
FIGURE_IN = (10, 8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files, never a window
    import matplotlib.pyplot as plt

    return plt


def draw_plan(plan: Plan, path: str, status: dict | None = None) -> None:
    """A PNG map of the plan (see plan_figure)."""
    _save(plan_figure(plan, status), path, flag="--png")


def plan_figure(plan: Plan, status: dict | None = None):
    """The plan on a lon/lat map: each cell filled by its state (the worst of its periods),
    labelled with its key, the extent outlined, the scenes' footprints drawn, with a legend, a
    graticule and a title naming the grid, the periods and the counts. `status` is the plan's
    features with states (gridded.status); without it, all is to-do. A matplotlib Figure."""
    from .status import plan_features

    status = status or plan_features(plan)
    cells: dict[tuple[int, int], tuple[dict, str]] = {}
    rank = {s: i for i, s in enumerate(("done", "no-data", "to-do", "changed", "failed"))}
    for feature in status["features"]:
        props = feature["properties"]
        key = (props["x"], props["y"])
        if key not in cells or rank[props["state"]] > rank[cells[key][1]]:
            cells[key] = (feature["geometry"], props["state"])
    if not cells:
        raise ConfigError("--png: the plan has no cells; nothing to draw")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_IN)
    for geometry in plan.footprints:
        _outline(axes, geometry, colour="#7f7f7f", width=0.5, style=":")
    for (x, y), (geometry, state) in cells.items():
        polygon = _cell_polygon(geometry)
        xs, ys = polygon.exterior.xy
        axes.fill(xs, ys, facecolor=STATE_COLOURS[state], edgecolor="black", linewidth=0.6, alpha=0.85)
        if len(cells) <= MAX_LABELLED_CELLS:
            cx, cy = polygon.centroid.coords[0]
            axes.text(cx, cy, f"x{x}\ny{y}", ha="center", va="center", fontsize=7)
    if plan.extent is not None:
        _outline(axes, plan.extent.geom, colour="black", width=1.8, style="--")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=STATE_COLOURS[s], edgecolor="black", label=s)
               for s in STATE_COLOURS if any(state == s for _, state in cells.values())]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label="extent"))
    if plan.footprints:
        handles.append(plt.Line2D([], [], color="#7f7f7f", linestyle=":", label="scene footprints"))
    axes.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    axes.set_xlabel("longitude (degrees east)")
    axes.set_ylabel("latitude (degrees north)")
    axes.grid(True, linestyle="-", linewidth=0.3, color="#bbbbbb")  # the graticule
    axes.set_aspect(1 / max(math.cos(math.radians(_middle_latitude(cells))), 0.05))
    periods = sorted({f["properties"]["period"] for f in status["features"] if f["properties"]["period"]})
    span = periods[0] if len(periods) == 1 else f"{periods[0]} .. {periods[-1]}" if periods else "no period"
    counts = {s: sum(1 for f in status["features"] if f["properties"]["state"] == s) for s in STATE_COLOURS}
    axes.set_title(f"{plan.pipeline.name} on grid {plan.grid.name}, {span}\n"
                   f"{len(cells)} cells; tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
                   fontsize=10)
    return figure


def _cell_polygon(geometry: dict) -> Polygon:
    return cast(Polygon, shape(geometry))  # a cell's outline (GeoJSON) is a polygon


def _middle_latitude(cells) -> float:
    lats = [y for geometry, _ in cells.values() for _, y in _cell_polygon(geometry).exterior.coords]
    return (min(lats) + max(lats)) / 2


def _outline(axes, geometry, *, colour: str, width: float, style: str) -> None:
    polygons = getattr(geometry, "geoms", [geometry])
    for polygon in polygons:
        if hasattr(polygon, "exterior"):
            xs, ys = polygon.exterior.xy
            axes.plot(xs, ys, color=colour, linewidth=width, linestyle=style)


def _save(figure, path: str, *, flag: str) -> None:
    plt = _pyplot()
    try:
        figure.savefig(path, dpi=100, bbox_inches="tight")
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write there ({err.strerror or err}); choose a writable path") from err
    finally:
        plt.close(figure)


def quicklook(storage: Storage, path: str, *, period: str | None = None) -> int:
    """One picture of a period for the whole output (see quicklook_figure), as a PNG; returns the
    number of thumbnails used."""
    figure, n = quicklook_figure(storage, period=period)
    _save(figure, path, flag="--png")
    return n


def quicklook_figure(storage: Storage, *, period: str | None = None):
    """(Figure, thumbnails used): every item's thumbnail of a period placed on the grid (in the
    grid's CRS), with a scale bar and the period in the title; the latest period by default."""
    import rasterio

    items = [json.loads(storage.get_bytes(name)) for name in storage.list(".stac-item.json")]
    periods = sorted({it["properties"].get("gridded:period") for it in items})
    if not items:
        raise ConfigError(f"--output {storage.uri}: no STAC items there; give the output root of a run")
    period = period or periods[-1]
    chosen = [it for it in items if it["properties"].get("gridded:period") == period and "thumbnail" in it["assets"]]
    if not chosen:
        raise ConfigError(f"--period {period}: no item of that period has a thumbnail; periods: {', '.join(periods)}")
    crs = {it["properties"].get("proj:code") for it in chosen}
    if len(crs) > 1:
        raise ConfigError(f"--period {period}: items in several CRSs ({', '.join(sorted(map(str, crs)))}); "
                          f"a quicklook needs one grid")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGURE_IN)
    bounds = []
    for item in chosen:
        left, bottom, right, top = item["properties"]["proj:bbox"]
        with warnings.catch_warnings():  # a PNG has no georeference: proj:bbox places it
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(io.BytesIO(_read(storage, item["assets"]["thumbnail"]["href"]))) as src:
                rgba = np.moveaxis(src.read(), 0, -1)
        axes.imshow(rgba, extent=(left, right, bottom, top), interpolation="nearest")
        bounds.append((left, bottom, right, top))
    left, bottom = min(b[0] for b in bounds), min(b[1] for b in bounds)
    right, top = max(b[2] for b in bounds), max(b[3] for b in bounds)
    axes.set_xlim(left, right)
    axes.set_ylim(bottom, top)
    _scale_bar(axes, left, bottom, right, top)
    axes.set_title(f"{chosen[0].get('collection', '')} {period}: {len(chosen)} cells ({crs.pop()})", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    return figure, len(chosen)


def _read(storage: Storage, href: str) -> bytes:
    root = storage.url("").rstrip("/")
    if href.startswith(root + "/"):
        return storage.get_bytes(href[len(root) + 1:])
    raise ConfigError(f"{href}: a thumbnail outside the output {storage.uri}; run `gridded catalog` there first")


def _scale_bar(axes, left: float, bottom: float, right: float, top: float) -> None:
    """A bar of a round length (1, 2 or 5 x 10^n map units) about a fifth of the picture wide."""
    target = (right - left) / 5
    exponent = math.floor(math.log10(target))
    length = max(s * 10 ** exponent for s in (1, 2, 5) if s * 10 ** exponent <= target)
    x0, y0 = left + (right - left) * 0.05, bottom + (top - bottom) * 0.05
    axes.plot([x0, x0 + length], [y0, y0], color="black", linewidth=3)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    axes.text(x0 + length / 2, y0 + (top - bottom) * 0.015, label, ha="center", va="bottom", fontsize=9,
              bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
