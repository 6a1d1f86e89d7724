"""Independent expectations: medians and counts computed with plain numpy from the source COGs.

Nothing here computes with gridded: it reads the fixture's files with rasterio and json and applies
DESIGN.md's rules directly (S2 SCL classes, nodata, same-day mosaic, numpy.nanmedian, rint).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio

from gridded.demo import ORIGIN_XY, SHAPE_YX  # the fixture's layout, to classify pixels
from gridded.io.storage import TEMP_MARK

S2_EXCLUDED = [0, 1, 3, 8, 9, 10]


def catalog_items(catalog_json: Path) -> list[dict]:
    """Every item JSON under a static catalog, with absolute asset paths."""
    items = []
    for path in sorted(catalog_json.parent.rglob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("type") != "Feature":
            continue
        for asset in doc["assets"].values():
            asset["href"] = str((path.parent / asset["href"]).resolve())
        items.append(doc)
    return items


def _when(item: dict) -> datetime:
    return datetime.fromisoformat(item["properties"]["datetime"].replace("Z", "+00:00"))


def _read_on(href: str, transform, shape_yx, fill) -> np.ndarray:
    """The source pixels under a target grid whose pixels are an integer multiple of the source's."""
    with rasterio.open(href) as src:
        data = src.read(1)
        st = src.transform
    factor = round(st.a / transform.a)  # one source pixel is factor x factor target pixels
    if factor > 1:
        data = np.repeat(np.repeat(data, factor, 0), factor, 1)
    col0 = round((transform.c - st.c) / transform.a)
    row0 = round((st.f - transform.f) / transform.a)
    out = np.full(shape_yx, fill, dtype=data.dtype)
    ny, nx = shape_yx
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + ny, data.shape[0]), min(col0 + nx, data.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = data[r0:r1, c0:c1]
    return out


def expected_composite(items: list[dict], bands: list[str], transform, shape_yx, start: datetime, end: datetime,
                       *, mask_asset="scl", clear_fn=None, nodata=0):
    """(medians per band as uint16 with nodata, count as uint16) for the items in [start, end]."""
    layers = expected_layers(items, bands, transform, shape_yx, start, end, mask_asset=mask_asset, clear_fn=clear_fn,
                             nodata=nodata)
    medians, valid_all = {}, None
    for b in bands:
        stack = np.stack(layers[b]) if layers[b] else np.full((1,) + tuple(shape_yx), np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(stack, axis=0)
        out = np.where(np.isnan(med), nodata, np.rint(np.nan_to_num(med))).astype(np.uint16)
        medians[b] = out
        ok = ~np.isnan(stack)
        valid_all = ok if valid_all is None else valid_all & ok
    count = valid_all.sum(axis=0).astype(np.uint16)
    return medians, count, len(layers[bands[0]])


def expected_layers(items: list[dict], bands: list[str], transform, shape_yx, start: datetime, end: datetime,
                    *, mask_asset="scl", clear_fn=None, nodata=0) -> dict[str, list[np.ndarray]]:
    """Per band, one float layer per same-day group in [start, end]: the clear values (the first
    scene of the day where it is clear, later scenes filling the rest), NaN elsewhere."""
    clear_fn = clear_fn or (lambda m: ~np.isin(m, S2_EXCLUDED))
    chosen = sorted((it for it in items if start <= _when(it) <= end), key=lambda it: (_when(it), it["id"]))
    groups: dict[tuple, list[dict]] = {}
    for it in chosen:
        lon = (it["bbox"][0] + it["bbox"][2]) / 2
        day = (_when(it) + timedelta(hours=lon / 15)).date()
        groups.setdefault((it["properties"].get("platform"), day), []).append(it)
    layers = {b: [] for b in bands}
    for members in groups.values():
        mosaic = {b: np.full(shape_yx, np.nan) for b in bands}
        for it in members:
            mask = _read_on(it["assets"][mask_asset]["href"], transform, shape_yx, 0)
            for b in bands:
                values = _read_on(it["assets"][b]["href"], transform, shape_yx, nodata).astype(float)
                ok = (values != nodata) & clear_fn(mask)
                take = np.isnan(mosaic[b]) & ok
                mosaic[b][take] = values[take]
        for b in bands:
            layers[b].append(mosaic[b])
    return layers


BANDS = ["blue", "green", "red", "nir"]


def output_items(out: Path) -> dict[str, dict]:
    """The committed items under `out` (not a temporary file a killed writer left half-written)."""
    return {p.name: json.loads(p.read_text()) for p in sorted(out.rglob("*.stac-item.json"))
            if TEMP_MARK not in p.name}


def report_counts(out: Path) -> dict:
    return json.loads((out / "run-report.json").read_text())["counts"]


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_pixels(out: Path, catalog: Path, bands: list[str] | None = None) -> dict:
    """Compare every output COG with the independent numpy composite; return coverage stats."""
    items = catalog_items(catalog)
    stats = {"outside": 0, "no_clear": 0, "even": 0, "half": 0, "pixels": 0, "tasks": 0}
    for name, item in output_items(out).items():
        props = item["properties"]
        start, end = _dt(props["start_datetime"]), _dt(props["end_datetime"])
        paths = {k: (out.rglob(Path(a["href"]).name)) for k, a in item["assets"].items()}
        paths = {k: next(v) for k, v in paths.items()}
        with rasterio.open(paths["count"]) as src:
            transform, shape = src.transform, src.shape
            count = src.read(1)
        medians, want_count, _ = expected_composite(items, bands or BANDS, transform, shape, start, end)
        np.testing.assert_array_equal(count, want_count, err_msg=f"{name} count")
        for band in bands or BANDS:
            with rasterio.open(paths[band]) as src:
                got = src.read(1)
            np.testing.assert_array_equal(got, medians[band], err_msg=f"{name} {band}")
        # which of the hard cases this task exercised
        col0 = round((transform.c - ORIGIN_XY[0]) / 10)
        row0 = round((ORIGIN_XY[1] - transform.f) / 10)
        rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
        outside = (rows + row0 < 0) | (rows + row0 >= SHAPE_YX[0]) | (cols + col0 < 0) | (cols + col0 >= SHAPE_YX[1])
        stats["outside"] += int(outside.sum())
        stats["no_clear"] += int(((want_count == 0) & ~outside).sum())
        stats["even"] += int(((want_count % 2 == 0) & (want_count > 0)).sum())
        stats["pixels"] += count.size
        stats["tasks"] += 1
    return stats


def check_pixels_band(out: Path, catalog: Path, band: str) -> int:
    items = catalog_items(catalog)
    n = 0
    for name, item in output_items(out).items():
        props = item["properties"]
        with rasterio.open(next(out.rglob(Path(item["assets"][band]["href"]).name))) as src:
            got, transform, shape = src.read(1), src.transform, src.shape
        medians, _, _ = expected_composite(items, [band], transform, shape, _dt(props["start_datetime"]),
                                           _dt(props["end_datetime"]))
        np.testing.assert_array_equal(got, medians[band], err_msg=name)
        n += 1
    return n


