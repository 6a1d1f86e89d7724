"""Real provider STAC items (Earth Search v1, Planetary Computer, USGS; metadata verbatim, see
data/providers/SOURCES.md) with local pixels: each chosen asset becomes a sparse tiled GeoTIFF of
the asset's published size, CRS, transform, dtype and nodata, holding data in one small window only.

    item = materialize(load_item(ES_32TMT_0305_V0214), tmp_path / "data", ["red", "nir", "scl"])
    red = written(item, "red")  # the array written, its window, nodata, ...
    extent = window_lonlat(item, "red", red.window)
    catalog = write_static_catalog([item], tmp_path)  # under tmp_path, so no --allow-root is needed

Only the `href` of a materialized asset changes; ids, properties, the other assets (still pointing
at the providers) and links stay as published, `file:size`/`file:checksum` included.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box, shape

DATA = Path(__file__).parent / "data" / "providers"

Window2D = tuple[slice, slice]  # (rows, cols) in an asset's own pixel grid

# The vendored files, by what a test wants from them (file names without .json).
ES_32TMT_0305_V0214 = "earthsearch-v1_sentinel-2-l2a_S2A_32TMT_20200305_0_L2A"  # boa_offset_applied false
ES_32TMT_0305_V0500 = "earthsearch-v1_sentinel-2-l2a_S2A_32TMT_20200305_1_L2A"  # its reprocessing, true
ES_32TMT_0705_V0214 = "earthsearch-v1_sentinel-2-l2a_S2B_32TMT_20200705_0_L2A"
ES_32TMT_0705_V0500 = "earthsearch-v1_sentinel-2-l2a_S2B_32TMT_20200705_1_L2A"
ES_24MUV_2025 = "earthsearch-v1_sentinel-2-l2a_S2B_24MUV_20250731_0_L2A"  # 38 assets, eo:bands names B04...
ES_C1_24MUV_2025 = "earthsearch-v1_sentinel-2-c1-l2a_S2B_T24MUV_20250731T130245_L2A"  # same scene, c1
PC_32TMT_0705_V0212 = "planetarycomputer_sentinel-2-l2a_S2B_MSIL2A_20200705T101559_R065_T32TMT_20200825T083452"
PC_53NKG_2025_V0511 = "planetarycomputer_sentinel-2-l2a_S2B_MSIL2A_20250312T014549_R074_T53NKG_20250312T041213"
ES_LANDSAT_LC08 = "earthsearch-v1_landsat-c2-l2_LC08_L2SP_033032_20231008_02_T1"
PC_LANDSAT_LC08 = "planetarycomputer_landsat-c2-l2_LC08_L2SP_202033_20220327_02_T1"
USGS_LANDSAT_LC08 = "usgs-landsatlook_landsat-c2l2-sr_LC08_L2SP_047027_20201204_20210313_02_T1_SR"  # no raster:bands
ES_SEARCH_PAGE = "earthsearch-v1_search_sentinel-2-l2a_bbox9-47-10-48_2020-07-01_05_page1"  # 10 of 16 matched
ITEMS = (ES_32TMT_0305_V0214, ES_32TMT_0305_V0500, ES_32TMT_0705_V0214, ES_32TMT_0705_V0500, ES_24MUV_2025,
         ES_C1_24MUV_2025, PC_32TMT_0705_V0212, PC_53NKG_2025_V0511, ES_LANDSAT_LC08, PC_LANDSAT_LC08,
         USGS_LANDSAT_LC08)
COLLECTIONS = {  # provider -> collection id -> vendored collection file
    "earthsearch": {"sentinel-2-l2a": "earthsearch-v1_collection_sentinel-2-l2a",
                    "sentinel-2-c1-l2a": "earthsearch-v1_collection_sentinel-2-c1-l2a",
                    "landsat-c2-l2": "earthsearch-v1_collection_landsat-c2-l2"},
    "planetarycomputer": {"sentinel-2-l2a": "planetarycomputer_collection_sentinel-2-l2a",
                          "landsat-c2-l2": "planetarycomputer_collection_landsat-c2-l2"},
}

WINDOW_PX = 512  # the default data window, in pixels of the finest listed asset
STEP_PX = 256  # the default window is searched on this lattice (a block multiple)
MARGIN_M = 1000.0  # the default window keeps this far inside the published footprint
BLOCK = 256
RASTER_TYPES = ("image/tiff", "geotiff", "image/jp2")  # ES 2025 `cloud`/`snow` exist as JP2 only
NAV_RELS = frozenset({"self", "root", "parent", "collection"})  # links a catalog or server writes itself

SCL_CLASSES = {4: 0.30, 5: 0.20, 6: 0.10, 3: 0.10, 8: 0.10, 9: 0.10, 10: 0.10}  # clear 4-6, unclear 3, 8-10
QA_PIXEL_CODES = {  # Landsat C2 QA_PIXEL values (USGS tables): bit 6 clear, 3 cloud, 1 dilated, 4 shadow, 2 cirrus
    21824: 0.40,  # clear, every confidence low
    21952: 0.15,  # clear water (bit 7)
    22280: 0.15,  # cloud, high confidence
    21762: 0.10,  # dilated cloud
    23888: 0.10,  # cloud shadow, high confidence
    54596: 0.10,  # cirrus, high confidence
}
LANDSAT_SR = frozenset({"coastal", "blue", "green", "red", "nir08", "swir16", "swir22"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Written:
    """One materialized asset: its file and what holds data in it."""

    path: Path
    window: Window2D  # the data window in the asset's pixel grid; everything else reads as nodata
    array: np.ndarray  # (rows, cols), or (bands, rows, cols) for a multi-band asset (visual)
    dtype: str
    nodata: float | None
    crs: str  # "EPSG:32632"
    transform: Affine
    shape_yx: tuple[int, int]  # the whole file's, = proj:shape


_WRITTEN: dict[Path, Written] = {}  # materialized file -> what was written (read with `written`)


def load_json(name: str) -> dict:
    """A vendored provider file as published (name with or without .json)."""
    return json.loads((DATA / f"{name.removesuffix('.json')}.json").read_text(encoding="utf-8"))


def load_item(name: str) -> dict:
    """A vendored item as published (a fresh dict on each call)."""
    item = load_json(name)
    if item.get("type") != "Feature":
        raise ValueError(f"{name}: a {item.get('type')}, not an item; read it with load_json")
    return item


def load_collection(provider: str, collection_id: str) -> dict:
    """A provider's vendored collection JSON, e.g. ("earthsearch", "sentinel-2-l2a")."""
    return load_json(COLLECTIONS[provider][collection_id])


def asset_grid(item: dict, key: str) -> tuple[str, Affine, tuple[int, int]]:
    """(crs, transform, shape_yx) of an asset from its `proj:*` fields, else the item's (Landsat
    keeps them in the item properties only); `proj:code` or `proj:epsg`."""
    asset, props = item["assets"][key], item["properties"]
    media = asset.get("type", "image/tiff")
    if not any(kind in media for kind in RASTER_TYPES):  # item-level proj:* reach a Landsat JPEG thumbnail too
        raise ValueError(f"item {item['id']} asset {key}: type {media!r} is not a raster gridded reads; "
                         f"materialize a GeoTIFF or JPEG 2000 asset")

    def field(name):
        return asset.get(name, props.get(name))

    code, epsg = field("proj:code"), field("proj:epsg")
    crs = code if code else f"EPSG:{epsg}" if epsg else None
    shape_yx, transform = field("proj:shape"), field("proj:transform")
    if not (crs and shape_yx and transform):
        raise ValueError(f"item {item['id']} asset {key}: no proj:code/epsg, proj:shape and proj:transform on "
                         f"the asset or the item; materialize a raster asset")
    t = Affine(*transform[:6])
    if t.b or t.d or t.a <= 0 or t.e >= 0:
        raise ValueError(f"item {item['id']} asset {key}: proj:transform {transform} is not north-up")
    return crs, t, (int(shape_yx[0]), int(shape_yx[1]))


def asset_format(item: dict, key: str) -> tuple[str, float | None, int]:
    """(dtype, nodata, band count) from `raster:bands`, else the provider's convention: uint16 nodata 0
    for bands, uint8 nodata 0 for SCL and visual (3 bands), Landsat qa_pixel uint16 nodata 1."""
    asset = item["assets"][key]
    bands = asset.get("raster:bands") or []
    count = max(len(bands), len(asset.get("eo:bands") or []), 1)
    if bands:
        return bands[0].get("data_type", "uint16"), bands[0].get("nodata"), count
    lowered = key.lower()
    if lowered == "qa_pixel":
        return "uint16", 1, 1
    if lowered == "scl" or lowered in ("visual", "preview") or "visual" in asset.get("roles", []):
        return "uint8", 0, count
    return "uint16", 0, count


def default_window(item: dict, key: str) -> Window2D:
    """A WINDOW_PX square in `key`'s grid, the top-left-most (on a STEP_PX lattice) lying MARGIN_M
    inside the item's footprint."""
    crs, t, (height, width) = asset_grid(item, key)
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    inner = shapely.transform(shape(item["geometry"]), to_crs.transform, interleaved=False).buffer(-MARGIN_M)
    candidates = sorted(((r, c) for r in range(0, height - WINDOW_PX + 1, STEP_PX)
                         for c in range(0, width - WINDOW_PX + 1, STEP_PX)), key=lambda rc: (sum(rc), rc[0]))
    for row, col in candidates:
        x0, y0 = t @ (col, row)
        x1, y1 = t @ (col + WINDOW_PX, row + WINDOW_PX)
        if inner.contains(box(x0, y1, x1, y0)):
            return slice(row, row + WINDOW_PX), slice(col, col + WINDOW_PX)
    raise ValueError(f"item {item['id']} asset {key}: no {WINDOW_PX}-pixel window fits in the footprint; "
                     f"pass window=")


def window_bounds(item: dict, key: str, window: Window2D) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of a pixel window of `key`, in the asset's CRS."""
    _, t, _ = asset_grid(item, key)
    rows, cols = window
    x0, y0 = t @ (cols.start, rows.start)
    x1, y1 = t @ (cols.stop, rows.stop)
    return x0, y1, x1, y0


def window_lonlat(item: dict, key: str, window: Window2D | None = None) -> tuple[float, float, float, float]:
    """The lon/lat bbox of a pixel window of `key` (default: its default window), edges densified:
    it holds the whole window, and slivers beside it since the window is a UTM rectangle."""
    crs, _, _ = asset_grid(item, key)
    bounds = window_bounds(item, key, window or default_window(item, key))
    return transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)


def same_ground(item: dict, key: str, bounds: tuple[float, float, float, float]) -> Window2D:
    """The window of `key`'s grid covering `bounds` (same CRS), rounded outward to whole pixels:
    exact wherever the pixel size divides the bounds (10 and 20 m on a 5,120 m box; not 60 m)."""
    _, t, (height, width) = asset_grid(item, key)
    inv = ~t
    c0, r0 = inv @ (bounds[0], bounds[3])
    c1, r1 = inv @ (bounds[2], bounds[1])
    eps = 1e-6
    rows = slice(max(0, int(np.floor(r0 + eps))), min(height, int(np.ceil(r1 - eps))))
    cols = slice(max(0, int(np.floor(c0 + eps))), min(width, int(np.ceil(c1 - eps))))
    return rows, cols


def materialize(item: dict, folder: Path, assets: Sequence[str], window: Window2D | None = None,
                rng: np.random.Generator | None = None, values: Mapping[str, np.ndarray] | None = None,
                *, nodata_corner: float = 0.3) -> dict:
    """A copy of `item` whose `assets` point at local sparse GeoTIFFs under folder/<item id>/.

    `window` is in the pixel grid of the finest listed asset (ties: the first listed); each other
    asset gets the window over the same ground (see `same_ground`). Random values are plausible per
    asset kind, and every asset is nodata in the window's top-left triangle (u + v < nodata_corner,
    u and v the fractions across and down the window), like a swath edge. `values` maps asset keys to
    arrays of the asset's window shape, written instead. What was written: `written(item, key)`.
    Memory and disk: about 0.5 MB and 0.3 MB per 512 x 512 uint16 window.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    values = dict(values or {})
    unknown = set(values) - set(assets)
    if unknown:
        raise ValueError(f"values for {sorted(unknown)} but assets={list(assets)}; list them in assets")
    out = copy.deepcopy(item)
    reference = min(assets, key=lambda k: asset_grid(item, k)[1].a)  # min() keeps the first of ties
    window = window or default_window(item, reference)
    _check_window(item, reference, window)
    ground = window_bounds(item, reference, window)
    where = Path(folder).resolve() / item["id"]
    where.mkdir(parents=True, exist_ok=True)
    for key in assets:
        crs, t, shape_yx = asset_grid(item, key)
        dtype, nodata, count = asset_format(item, key)
        own = same_ground(item, key, ground)
        if key in values:
            given = np.asarray(values[key])
            expected = _window_shape(own, count)
            if given.shape != expected:
                raise ValueError(f"item {item['id']} asset {key}: values of shape {given.shape}, window needs "
                                 f"{expected}")
            array = given.astype(dtype)
            if not np.array_equal(array, given):
                raise ValueError(f"item {item['id']} asset {key}: values do not fit {dtype}")
        else:
            array = _random_values(item, key, t, own, ground, dtype, nodata, count, rng, nodata_corner)
        path = where / f"{key}.tif"
        _write_sparse(path, array, own, crs=crs, transform=t, shape_yx=shape_yx, dtype=dtype, nodata=nodata)
        _WRITTEN[path] = Written(path=path, window=own, array=array, dtype=dtype, nodata=nodata, crs=crs,
                                 transform=t, shape_yx=shape_yx)
        out["assets"][key]["href"] = str(path)
    return out


def written(item: dict, key: str) -> Written:
    """What `materialize` wrote for an asset of this item (found by the asset's href)."""
    href = item["assets"][key]["href"]
    parsed = urlparse(href)
    path = Path(parsed.path if parsed.scheme == "file" else href).resolve()
    if path not in _WRITTEN:
        raise KeyError(f"item {item['id']} asset {key}: {href} was not written by materialize")
    return _WRITTEN[path]


def _check_window(item: dict, key: str, window: Window2D) -> None:
    _, _, (height, width) = asset_grid(item, key)
    rows, cols = window
    if not (0 <= rows.start < rows.stop <= height and 0 <= cols.start < cols.stop <= width):
        raise ValueError(f"item {item['id']} asset {key}: window {window} is outside the {height} x {width} grid")


def _window_shape(window: Window2D, count: int) -> tuple[int, ...]:
    rows, cols = window
    yx = (rows.stop - rows.start, cols.stop - cols.start)
    return yx if count == 1 else (count, *yx)


def _random_values(item, key, t, own, ground, dtype, nodata, count, rng, corner) -> np.ndarray:
    yx = _window_shape(own, 1)
    lowered = key.lower()
    landsat = str(item.get("collection", "")).startswith("landsat") or str(
        item["properties"].get("platform", "")).lower().startswith("landsat")
    if lowered == "scl":
        array = _patches(rng, yx, list(SCL_CLASSES), list(SCL_CLASSES.values()))
    elif lowered == "qa_pixel":
        array = _patches(rng, yx, list(QA_PIXEL_CODES), list(QA_PIXEL_CODES.values()))
    elif count > 1 or np.dtype(dtype) == np.uint8:
        array = np.stack([_parcels(rng, yx, 1, 255 if count > 1 else 100) for _ in range(count)])
    elif landsat and lowered in LANDSAT_SR:
        array = _parcels(rng, yx, 7000, 30000)  # DN 7273 is reflectance 0 (scale 2.75e-5, offset -0.2)
    else:
        array = _parcels(rng, yx, 1, 10000)
    array = array.astype(dtype).reshape(_window_shape(own, count))
    # the swath-edge triangle, on pixel centres in ground units so every resolution agrees
    rows, cols = own
    xs = t.c + (np.arange(cols.start, cols.stop) + 0.5) * t.a
    ys = t.f + (np.arange(rows.start, rows.stop) + 0.5) * t.e
    u = (xs - ground[0]) / (ground[2] - ground[0])
    v = (ground[3] - ys) / (ground[3] - ground[1])
    edge = (u[None, :] + v[:, None]) < corner
    if nodata is not None:
        array[..., edge] = nodata
    return array


def _parcels(rng, yx, lo, hi, cell=32) -> np.ndarray:
    """Fields of one level each plus a little noise: plausible, and it compresses to about 6 bits a
    pixel (uniform noise over the whole range would not compress at all)."""
    noise = 1 if hi <= 255 else 8
    levels = rng.integers(lo, hi + 1, (-(-yx[0] // cell), -(-yx[1] // cell)))
    field = np.kron(levels, np.ones((cell, cell), dtype=levels.dtype))[:yx[0], :yx[1]]
    return np.clip(field + rng.integers(-noise, noise + 1, yx), lo, hi)


def _patches(rng, yx, codes, weights, cell=8) -> np.ndarray:
    """Class codes in cell x cell patches (clouds are blobs, not salt and pepper)."""
    p = np.asarray(weights, float)
    coarse = rng.choice(np.asarray(codes), size=(-(-yx[0] // cell), -(-yx[1] // cell)), p=p / p.sum())
    return np.kron(coarse, np.ones((cell, cell), dtype=coarse.dtype))[:yx[0], :yx[1]]


def _write_sparse(path, array, window, *, crs, transform, shape_yx, dtype, nodata) -> None:
    """A full-size tiled GeoTIFF where only `window` is written: SPARSE_OK leaves every other block
    out of the file (it reads back as nodata), so a 10980 x 10980 header costs a few hundred KB."""
    count = 1 if array.ndim == 2 else array.shape[0]
    predictor = 2 if np.dtype(dtype).kind in "iu" else 3
    rows, cols = window
    with rasterio.open(path, "w", driver="GTiff", width=shape_yx[1], height=shape_yx[0], count=count, dtype=dtype,
                       crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                       compress="DEFLATE", predictor=predictor, sparse_ok=True) as dst:
        target = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
        if count == 1:
            dst.write(array, 1, window=target)
        else:
            dst.write(array, window=target)


def _relative(src: Path, dest: Path) -> str:
    """dest as a link href from the file src."""
    return f"./{Path(os.path.relpath(dest, src.parent)).as_posix()}".replace("./../", "../")


def _link(rel: str, src: Path, dest: Path) -> dict:
    media = "application/geo+json" if rel == "item" else "application/json"
    return {"rel": rel, "href": _relative(src, dest), "type": media}


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")


def _absolute_hrefs(item: dict) -> dict:
    out = copy.deepcopy(item)
    for asset in out["assets"].values():
        if not urlparse(asset["href"]).scheme and not Path(asset["href"]).is_absolute():
            asset["href"] = str(Path(asset["href"]).resolve())
    return out


def _minimal_collection(collection_id: str, items: list[dict]) -> dict:
    """A collection for items whose provider collection was not given: extent from the items."""
    bboxes = np.array([it["bbox"][:2] + it["bbox"][-2:] if len(it["bbox"]) == 6 else it["bbox"] for it in items])
    times = sorted(it["properties"]["datetime"] for it in items)
    return {"type": "Collection", "stac_version": "1.0.0", "id": collection_id,
            "description": f"{collection_id} items vendored from a provider (tests/data/providers)",
            "license": "various", "links": [],
            "extent": {"spatial": {"bbox": [[*bboxes[:, :2].min(0).tolist(), *bboxes[:, 2:].max(0).tolist()]]},
                       "temporal": {"interval": [[times[0], times[-1]]]}}}


def write_static_catalog(items: Sequence[dict], folder: Path, collections: Sequence[dict] = ()) -> Path:
    """A self-contained static catalog: folder/catalog.json, one folder per collection id with its
    collection.json (the given collection JSON, else a minimal one) and <item id>/<item id>.json.

    Plain JSON, not pystac, so each item's content is the dict given (key order, integer transforms,
    datetime strings) but for: relative local asset hrefs made absolute; its self/root/parent/collection
    links (pointing at the provider) replaced by relative links to the local files (no self link, as
    a self-contained catalog has none); its other links kept. A collection keeps its non-navigation
    links too (license, cite-as, ...), but loses self/root/parent and `items`, which point at the API.
    Rasters outside `folder` need `--allow-root` in gridded run.
    """
    folder = Path(folder).resolve()
    by_id: dict[str, dict] = {}
    for collection in collections:
        if collection["id"] in by_id:
            raise ValueError(f"two collections with id {collection['id']!r}; one static catalog holds one of each")
        by_id[collection["id"]] = collection
    grouped: dict[str, list[dict]] = {}
    for item in items:
        grouped.setdefault(item.get("collection") or "items", []).append(item)
    catalog_path = folder / "catalog.json"
    catalog: dict[str, Any] = {"type": "Catalog", "stac_version": "1.0.0", "id": "providers",
                               "description": "Real provider items with local pixels (tests/providers.py)",
                               "links": [_link("root", catalog_path, catalog_path)]}
    for collection_id, members in grouped.items():
        col_path = folder / collection_id / "collection.json"
        collection = copy.deepcopy(by_id.get(collection_id) or _minimal_collection(collection_id, members))
        collection["links"] = [link for link in collection.get("links", [])
                               if link.get("rel") not in NAV_RELS | {"items", "child", "item"}]
        collection["links"] += [_link("root", col_path, catalog_path), _link("parent", col_path, catalog_path)]
        for item in members:
            item_path = col_path.parent / item["id"] / f"{item['id']}.json"
            local = _absolute_hrefs(item)
            local["links"] = [link for link in item.get("links", []) if link.get("rel") not in NAV_RELS]
            local["links"] += [_link("root", item_path, catalog_path), _link("parent", item_path, col_path),
                               _link("collection", item_path, col_path)]
            _write_json(item_path, local)
            collection["links"].append(_link("item", col_path, item_path))
        _write_json(col_path, collection)
        catalog["links"].append(_link("child", catalog_path, col_path))
    _write_json(catalog_path, catalog)
    return catalog_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search_answers(url: str) -> bool:
    request = urllib.request.Request(f"{url}/search", data=b'{"limit": 1}', method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def serve_stac_api(items: Sequence[dict], collections: Sequence[dict], tmp_path: Path,
                   *, timeout_s: float = 30.0) -> Iterator[str]:
    """A real STAC API (`rustac serve`, in-memory backend) on a free loopback port holding these
    collections and items; yields its base URL and stops the server on exit.

        @pytest.fixture
        def api(tmp_path):
            with serve_stac_api(items, collections, tmp_path) as url:
                yield url

    rustac 0.2.x serves /, /conformance, /collections, /collections/{id}(/items), /search (GET and POST).
    POST /search (what pystac-client sends) honours collections, ids, bbox, intersects, datetime
    (an instant, a closed or an open-ended ("../", "/..") RFC 3339 interval; a bare date is a 400)
    and limit, and pages with a `next` link (POST, the same body plus `skip`); items come in the
    order loaded. It silently ignores sortby and fields, returns NOTHING for `filter` (CQL2) or
    `query`, and sends no numberMatched/context. GET /search with `collections`, or with `limit` and
    `bbox` together, is a 500 "unsupported value" in rustac 0.2.18.
    Served items differ from the dicts given: their self/root/parent/collection links are dropped
    here because the server appends its own (it keeps the others), and it rewrites datetimes to
    milliseconds ("...41.586000Z" -> "...41.586Z"); collections get the server's navigation links
    and a reformatted extent. Items whose collection is not given get a generated collection
    (--create-collections). Two collections with one id cannot be served together.
    """
    folder = Path(tmp_path) / f"stac-api-{_free_port()}"
    folder.mkdir(parents=True)
    hrefs = []
    for n, collection in enumerate(collections):
        path = folder / f"collection-{n}.json"
        path.write_text(json.dumps(collection), encoding="utf-8")
        hrefs.append(str(path))
    features = [{**item, "links": [link for link in item.get("links", []) if link.get("rel") not in NAV_RELS]}
                for item in items]
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}),
                                       encoding="utf-8")
    hrefs.append(str(folder / "items.json"))
    rustac = shutil.which("rustac") or str(Path(sys.executable).parent / "rustac")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "rustac.log").open("wb")
    server = subprocess.Popen([rustac, "serve", "--addr", f"127.0.0.1:{port}", "--create-collections", *hrefs],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not _search_answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (folder / "rustac.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"rustac serve on {url} did not answer /search: {tail}")
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
