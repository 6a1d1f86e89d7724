"""The provider fixtures are what they claim: vendored JSON byte for byte as sourced, local files
with each asset's published grid and format, small, holding exactly the arrays reported, readable
as a static catalog and from a real STAC API (tests/providers.py)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from providers import (
    DATA,
    ES_24MUV_2025,
    ES_32TMT_0305_V0214,
    ES_32TMT_0305_V0500,
    ES_C1_24MUV_2025,
    ES_LANDSAT_LC08,
    ES_SEARCH_PAGE,
    ITEMS,
    PC_32TMT_0705_V0212,
    PC_53NKG_2025_V0511,
    PC_LANDSAT_LC08,
    USGS_LANDSAT_LC08,
    default_window,
    load_collection,
    load_item,
    load_json,
    materialize,
    serve_stac_api,
    window_lonlat,
    write_static_catalog,
    written,
)
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import Polygon, box, shape

MAX_FILE_BYTES = 400_000  # a 10980 x 10980 header with one 512 x 512 window of data

# (item, {asset: (dtype, nodata, bands)}): written down here, not read from the item, so the
# provider conventions for items without raster:bands (PC Sentinel-2, USGS Landsat) are checked too
CASES = [
    (ES_32TMT_0305_V0214, {"red": ("uint16", 0, 1), "nir": ("uint16", 0, 1), "scl": ("uint8", 0, 1),
                           "visual": ("uint8", 0, 3), "coastal": ("uint16", 0, 1)}),
    (ES_C1_24MUV_2025, {"red": ("uint16", 0, 1), "scl": ("uint8", 0, 1), "visual": ("uint8", 0, 3)}),
    (ES_24MUV_2025, {"blue": ("uint16", 0, 1), "cloud": ("uint8", 0, 1)}),
    (PC_32TMT_0705_V0212, {"B04": ("uint16", 0, 1), "B08": ("uint16", 0, 1), "SCL": ("uint8", 0, 1),
                           "visual": ("uint8", 0, 3)}),
    (PC_53NKG_2025_V0511, {"B02": ("uint16", 0, 1), "SCL": ("uint8", 0, 1)}),
    (ES_LANDSAT_LC08, {"red": ("uint16", 0, 1), "nir08": ("uint16", 0, 1), "qa_pixel": ("uint16", 1, 1)}),
    (PC_LANDSAT_LC08, {"red": ("uint16", 0, 1), "qa_pixel": ("uint16", 1, 1)}),
    (USGS_LANDSAT_LC08, {"red": ("uint16", 0, 1), "qa_pixel": ("uint16", 1, 1)}),
]


def published_grid(item: dict, key: str) -> tuple[str, Affine, tuple[int, int]]:
    """The asset's grid as the provider wrote it, read here independently of providers.asset_grid."""
    asset, props = item["assets"][key], item["properties"]
    where = asset if "proj:transform" in asset else props  # Landsat: item properties only
    return f"EPSG:{props['proj:epsg']}", Affine(*where["proj:transform"][:6]), tuple(where["proj:shape"])


def test_vendored_files_are_the_sourced_bytes():
    text = (DATA / "SOURCES.md").read_text()
    listed = dict(re.findall(r"^### `([^`]+)`\n(?:- .*\n)*?- \d+ bytes, sha256 `([0-9a-f]{64})`", text, re.M))
    on_disk = {p.name for p in DATA.glob("*.json")}
    assert set(listed) == on_disk
    for name, sha in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == sha, name
    assert sum((DATA / n).stat().st_size for n in on_disk) < 1_000_000


def test_every_item_loads_as_published():
    for name in ITEMS:
        item = load_item(name)
        assert item["type"] == "Feature" and item["id"] in name.replace("earthsearch-v1_", "")
    with pytest.raises(ValueError, match="FeatureCollection"):
        load_item(ES_SEARCH_PAGE)


@pytest.mark.parametrize(("name", "formats"), CASES, ids=[c[0].split("_", 1)[0] + ":" + c[0][-30:] for c in CASES])
def test_materialized_assets_have_the_published_grid_and_hold_the_arrays(name, formats, tmp_path):
    original = load_item(name)
    item = materialize(original, tmp_path, list(formats), rng=np.random.default_rng(7))
    for key, (dtype, nodata, count) in formats.items():
        crs, transform, shape_yx = published_grid(original, key)
        record = written(item, key)
        assert Path(item["assets"][key]["href"]) == record.path and record.path.is_relative_to(tmp_path)
        with rasterio.open(record.path) as src:
            assert (src.height, src.width) == shape_yx
            assert src.transform == transform and src.crs == rasterio.crs.CRS.from_string(crs)
            assert src.dtypes == (dtype,) * count and src.nodata == nodata
            assert src.block_shapes[0] == (256, 256) and src.compression.name == "deflate"
            rows, cols = record.window
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            back = src.read(window=window)
            assert np.array_equal(back, record.array.reshape(back.shape))
            far = src.read(window=Window(src.width - 300, src.height - 300, 300, 300))
            assert (far == nodata).all()  # blocks never written read as nodata
        assert record.path.stat().st_size < MAX_FILE_BYTES
        assert (record.array == nodata).any() and (record.array != nodata).mean() > 0.9  # the swath-edge corner
    # nothing else changed: put the published hrefs back and the item is the published one
    for key in formats:
        item["assets"][key]["href"] = original["assets"][key]["href"]
    assert item == original
    assert json.dumps(item) == json.dumps(original)  # key order kept too


def test_values_are_plausible_per_kind(tmp_path):
    s2 = materialize(load_item(ES_32TMT_0305_V0500), tmp_path, ["red", "scl"], rng=np.random.default_rng(1))
    red, scl = written(s2, "red").array, written(s2, "scl").array
    assert red[red != 0].min() >= 1 and red.max() <= 10000
    assert set(np.unique(scl)) == {0, 3, 4, 5, 6, 8, 9, 10}  # clear 4-6, unclear 3 and 8-10, nodata
    landsat = materialize(load_item(PC_LANDSAT_LC08), tmp_path, ["nir08", "qa_pixel"], rng=np.random.default_rng(1))
    nir, qa = written(landsat, "nir08").array, written(landsat, "qa_pixel").array
    assert nir[nir != 0].min() >= 7000 and nir.max() <= 30000
    clear = (qa & (1 << 6)) != 0
    cloud = (qa & ((1 << 3) | (1 << 1))) != 0  # cloud or dilated cloud
    assert clear.any() and cloud.any() and not (clear & cloud).any()  # bit 6 means neither is set
    assert (qa == 1).any() and ((nir == 0) == (qa == 1)).all()  # fill (bit 0) where the bands are nodata


def test_assets_of_one_item_cover_the_same_ground(tmp_path):
    item = materialize(load_item(ES_32TMT_0305_V0214), tmp_path, ["scl", "red", "coastal"])
    bounds = {}
    for key in ("red", "scl", "coastal"):
        record = written(item, key)
        rows, cols = record.window
        x0, y0 = record.transform @ (cols.start, rows.start)
        x1, y1 = record.transform @ (cols.stop, rows.stop)
        bounds[key] = box(x0, y1, x1, y0)
    assert written(item, "red").array.shape == (512, 512)  # the finest listed asset sets the window
    assert written(item, "scl").array.shape == (256, 256)
    assert bounds["red"].equals(bounds["scl"])
    assert bounds["coastal"].contains(bounds["red"])  # 60 m does not divide 5,120 m: rounded outward
    assert bounds["coastal"].area < bounds["red"].area * 1.05


def test_an_explicit_window_and_values(tmp_path):
    window = (slice(1000, 1100), slice(3000, 3130))  # not block-aligned: part of a block holds data
    values = {"red": np.arange(100 * 130, dtype=np.uint16).reshape(100, 130) + 1,
              "qa_pixel": np.full((100, 130), 21824, np.uint16)}
    item = materialize(load_item(ES_LANDSAT_LC08), tmp_path, ["red", "qa_pixel"], window, values=values)
    for key, value in values.items():
        assert written(item, key).window == window and np.array_equal(written(item, key).array, value)
        with rasterio.open(written(item, key).path) as src:
            block = src.read(1, window=Window(2816, 768, 512, 512))  # the blocks around the window
            inside = block[1000 - 768:1100 - 768, 3000 - 2816:3130 - 2816]
            assert np.array_equal(inside, value)
            outside = np.ones(block.shape, bool)
            outside[1000 - 768:1100 - 768, 3000 - 2816:3130 - 2816] = False
            assert (block[outside] == src.nodata).all()  # qa_pixel: 1 (fill), not 0
    with pytest.raises(ValueError, match="values of shape"):
        materialize(load_item(ES_LANDSAT_LC08), tmp_path, ["red"], window, values={"red": np.ones((5, 5))})
    with pytest.raises(ValueError, match="outside"):
        materialize(load_item(ES_LANDSAT_LC08), tmp_path, ["red"], (slice(0, 10), slice(7700, 7720)))
    with pytest.raises(ValueError, match="asset thumbnail: type 'image/jpeg' is not a raster"):
        materialize(load_item(ES_LANDSAT_LC08), tmp_path, ["thumbnail"])  # item-level proj:* would fit it
    with pytest.raises(ValueError, match="asset rendered_preview: type 'image/png'"):
        materialize(load_item(PC_32TMT_0705_V0212), tmp_path, ["rendered_preview"])
    with pytest.raises(ValueError, match="asset preview: no proj:code/epsg, proj:shape and proj:transform"):
        materialize(load_item(PC_32TMT_0705_V0212), tmp_path, ["preview"])  # a GeoTIFF without proj:*


@pytest.mark.parametrize("name", ITEMS)
def test_default_window_lies_in_the_footprint_near_its_top_left(name):
    item = load_item(name)
    key = next(k for k in ("red", "B04") if k in item["assets"])
    crs, transform, _ = published_grid(item, key)
    rows, cols = default_window(item, key)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (512, 512)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    corners = [transform @ (c, r) for r, c in ((rows.start, cols.start), (rows.start, cols.stop),
                                                (rows.stop, cols.stop), (rows.stop, cols.start))]
    window_ll = Polygon([to_lonlat.transform(x, y) for x, y in corners])
    footprint = shape(item["geometry"])
    assert footprint.contains(window_ll)
    # near the top-left: the footprint's top-left-most vertex (in the grid) is within a few km
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xs, ys = zip(*(to_crs.transform(*p) for p in footprint.exterior.coords))
    px = [~transform @ (x, y) for x, y in zip(xs, ys)]
    top_left = min(px, key=lambda cr: cr[0] + cr[1])
    assert cols.start + rows.start <= top_left[0] + top_left[1] + 2 * 256 + 2 * 1000 / transform.a + 512
    # window_lonlat bounds the same window
    minx, miny, maxx, maxy = window_lonlat(item, key, (rows, cols))
    assert box(minx, miny, maxx, maxy).contains(window_ll)
    assert np.allclose((minx, miny, maxx, maxy), window_ll.bounds, atol=1e-3)


def test_static_catalog_round_trips_through_pystac(tmp_path):
    chosen = {ES_32TMT_0305_V0214: ["red", "nir", "scl"], ES_32TMT_0305_V0500: ["red", "nir", "scl"],
              PC_32TMT_0705_V0212: ["B04", "B08", "SCL", "visual"], ES_C1_24MUV_2025: ["red", "scl"],
              ES_LANDSAT_LC08: ["red", "qa_pixel"]}
    items = {load_item(n)["id"]: materialize(load_item(n), tmp_path / "catalog" / "data", assets)
             for n, assets in chosen.items()}
    collections = [load_collection("earthsearch", c) for c in ("sentinel-2-l2a", "sentinel-2-c1-l2a", "landsat-c2-l2")]
    catalog_path = write_static_catalog(list(items.values()), tmp_path / "catalog", collections)
    assert catalog_path == tmp_path / "catalog" / "catalog.json"

    # on disk: each item file is the dict given but for its navigation links
    files = sorted((tmp_path / "catalog").glob("*/*/*.json"))
    assert len(files) == len(items)
    for path in files:
        raw = json.loads(path.read_text())
        given = items[raw["id"]]
        assert {k: v for k, v in raw.items() if k != "links"} == {k: v for k, v in given.items() if k != "links"}
        kept = [link for link in given["links"] if link["rel"] not in ("self", "root", "parent", "collection")]
        assert raw["links"][:len(kept)] == kept
        assert {link["rel"] for link in raw["links"][len(kept):]} == {"root", "parent", "collection"}

    with pytest.warns(UserWarning, match="not migrated"):  # pystac, on the storage v1 fields of ES c1 and Landsat
        got = {it.id: it for it in pystac.Catalog.from_file(str(catalog_path)).get_items(recursive=True)}
    assert set(got) == set(items)
    for item_id, item in got.items():
        given = items[item_id]
        props = dict(given["properties"])
        # pystac migrates on read: projection v1 -> v2 turns proj:epsg into proj:code (every item),
        # storage v1 -> v2 adds storage:schemes (ES c1 and Landsat); everything else is as published
        assert item.properties.pop("proj:code") == f"EPSG:{props.pop('proj:epsg')}"
        item.properties.pop("storage:schemes", None)
        assert item.properties == props
        assert item.get_collection().id == given["collection"]  # a local link, not the provider's
        for key, asset in given["assets"].items():
            href = item.assets[key].href
            if key in chosen[next(n for n in chosen if load_item(n)["id"] == item_id)]:
                assert Path(href).is_absolute() and Path(href) == written(given, key).path
            else:
                assert href == asset["href"]  # still the provider's URL


def expected_ids(items: list[dict], bbox, start: str, end: str, collection: str) -> list[str]:
    """What a correct /search returns, from the item JSON with shapely and datetime only."""
    def instant(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return [it["id"] for it in items if it["collection"] == collection and shape(it["geometry"]).intersects(box(*bbox))
            and instant(start) <= instant(it["properties"]["datetime"]) <= instant(end)]


def test_stac_api_searches_by_bbox_datetime_collection_with_paging(tmp_path):
    import pystac_client

    page = load_json(ES_SEARCH_PAGE)["features"]  # 10 ES items, 2020-07-03 and 05, four tiles
    served = [materialize(load_item(ES_32TMT_0305_V0214), tmp_path / "data", ["red", "scl"]),
              load_item(ES_32TMT_0305_V0500), *page, load_item(ES_24MUV_2025), load_item(ES_C1_24MUV_2025),
              load_item(ES_LANDSAT_LC08)]
    collections = [load_collection("earthsearch", c) for c in ("sentinel-2-l2a", "sentinel-2-c1-l2a", "landsat-c2-l2")]
    bbox, start, end = [8.0, 47.0, 9.0, 47.5], "2020-03-01T00:00:00Z", "2020-07-04T23:59:59Z"
    want = expected_ids(served, bbox, start, end, "sentinel-2-l2a")
    assert set(want) == {"S2A_32TMT_20200305_0_L2A", "S2A_32TMT_20200305_1_L2A", "S2A_32TMT_20200703_0_L2A",
                         "S2A_32TMT_20200703_1_L2A"}  # the 07-05 items are out of time, 24MUV out of the box
    with serve_stac_api(served, collections, tmp_path) as url:
        client = pystac_client.Client.open(url)
        search = client.search(collections=["sentinel-2-l2a"], bbox=bbox, datetime=f"{start}/{end}", limit=3)
        pages = [[it.id for it in p.items] for p in search.pages()]
        assert [len(p) for p in pages] == [3, 1]  # two pages: limit is below the 4 matches
        assert sorted(i for p in pages for i in p) == sorted(want)
        got = {it.id: it for it in search.items()}
        local = got["S2A_32TMT_20200305_0_L2A"]
        assert Path(local.assets["red"].href) == written(served[0], "red").path  # hrefs served as given
        assert local.assets["blue"].href == served[0]["assets"]["blue"]["href"]
        assert local.get_self_href() == f"{url}/collections/sentinel-2-l2a/items/S2A_32TMT_20200305_0_L2A"
        props = dict(served[0]["properties"])
        assert local.properties.pop("proj:code") == f"EPSG:{props.pop('proj:epsg')}"  # pystac's migration
        assert datetime.fromisoformat(local.properties.pop("datetime").replace("Z", "+00:00")) == \
            datetime.fromisoformat(props.pop("datetime").replace("Z", "+00:00"))  # rustac writes milliseconds
        assert local.properties == props
        # the other collections are there, and a search finds them
        assert {c.id for c in client.get_collections()} == {"sentinel-2-l2a", "sentinel-2-c1-l2a", "landsat-c2-l2"}
        landsat = client.search(collections=["landsat-c2-l2"], bbox=[-106, 40, -104, 42], limit=10)
        assert [it.id for it in landsat.items()] == ["LC08_L2SP_033032_20231008_02_T1"]
