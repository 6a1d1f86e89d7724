"""Landsat Collection 2: the QA_PIXEL bit rule, through the ls-monthly-median recipe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pystac
import rasterio
from click.testing import CliRunner
from expected import catalog_items, expected_composite, output_items
from pyproj import Transformer
from rasterio.transform import from_origin

from gridded.cli import cli

CRS = "EPSG:32655"
ORIGIN = (500_010.0, 6_000_030.0)  # on the 30 m grid of the tiles below
SHAPE = (70, 90)
EXCLUDED_BITS = (0, 1, 2, 3, 4)  # fill, dilated cloud, cirrus, cloud, shadow


def write_landsat_catalog(root):
    rng = np.random.default_rng(5)
    collection = pystac.Collection(id="landsat-c2l2-sr", description="test", license="CC0-1.0",
                                   extent=pystac.Extent(pystac.SpatialExtent([[0, 0, 0, 0]]),
                                                        pystac.TemporalExtent([[None, None]])))
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    x0, y0 = ORIGIN
    x1, y1 = x0 + SHAPE[1] * 30, y0 - SHAPE[0] * 30
    ring = [list(to_ll.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    lons, lats = zip(*ring)
    for i in range(7):
        when = datetime(2023, 6, 2, 23, 50, tzinfo=UTC) + timedelta(days=4 * i)
        item = pystac.Item(id=f"LC09_L2SP_091085_{when:%Y%m%d}_02_T1", datetime=when,
                           geometry={"type": "Polygon", "coordinates": [ring]},
                           bbox=[min(lons), min(lats), max(lons), max(lats)],
                           properties={"platform": "landsat-9" if i % 2 else "landsat-8"})
        folder = root / item.id
        folder.mkdir(parents=True)
        qa = np.full(SHAPE, 1 << 6, np.uint16)  # clear bit
        for bit in EXCLUDED_BITS:
            qa[rng.random(SHAPE) < 0.06] |= np.uint16(1 << bit)
        qa[rng.random(SHAPE) < 0.1] |= np.uint16(1 << 7)  # water: still clear
        qa[rng.random(SHAPE) < 0.05] |= np.uint16(1 << 9)  # medium cloud confidence bits: not excluded
        for key in ("red", "nir08", "qa_pixel"):
            data = qa if key == "qa_pixel" else rng.integers(7000, 30000, SHAPE).astype(np.uint16)
            if key != "qa_pixel":
                data[:, : 3 * i] = 0  # nodata along a swath edge that moves
            path = folder / f"{key}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=SHAPE[1], height=SHAPE[0], count=1,
                               dtype="uint16", crs=CRS, transform=from_origin(x0, y0, 30, 30),
                               nodata=None if key == "qa_pixel" else 0, tiled=True) as dst:
                dst.write(data, 1)
            item.add_asset(key, pystac.Asset(href=str(path), media_type=pystac.MediaType.GEOTIFF))
        collection.add_item(item)
    collection.normalize_hrefs(str(root))
    collection.make_all_asset_hrefs_relative()
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "collection.json"


def test_landsat_monthly_median_with_qa_pixel_bits(tmp_path):
    source = write_landsat_catalog(tmp_path / "ls")
    grid = tmp_path / "grid.yaml"
    grid.write_text("crs: EPSG:32655\nresolution: 30\ntile_size: [1920, 1200]\n")
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    lon0, lat0 = to_ll.transform(ORIGIN[0] + 300, ORIGIN[1] - 1500)
    lon1, lat1 = to_ll.transform(ORIGIN[0] + 2400, ORIGIN[1] - 300)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "run", "--source", str(source), "--extent", f"{lon0},{lat0},{lon1},{lat1}", "--time", "2023-06",
        "--grid", str(grid), "--pipeline", "ls-monthly-median", "--bands", "red,nir08", "--output", str(out)])
    assert result.exit_code == 0, result.output
    items = catalog_items(source)

    def clear(qa):
        return (qa.astype(np.uint32) & sum(1 << b for b in EXCLUDED_BITS)) == 0

    written = output_items(out)
    assert len(written) >= 2
    for name, item in written.items():
        props = item["properties"]
        start = datetime.fromisoformat(props["start_datetime"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(props["end_datetime"].replace("Z", "+00:00"))
        with rasterio.open(next(out.rglob(name.replace(".stac-item.json", "_red.tif")))) as src:
            got, transform, shape = src.read(1), src.transform, src.shape
        medians, count, n_obs = expected_composite(items, ["red", "nir08"], transform, shape, start, end,
                                                   mask_asset="qa_pixel", clear_fn=clear)
        assert n_obs == 7
        np.testing.assert_array_equal(got, medians["red"], err_msg=name)
        with rasterio.open(next(out.rglob(name.replace(".stac-item.json", "_count.tif")))) as src:
            np.testing.assert_array_equal(src.read(1), count)
        assert 0 < count.max() <= 7
