"""Committing a task's outputs: the COGs and the thumbnail whole, then the item (the commit marker),
which validates and describes what was written; a second commit of the cell keeps or replaces it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import rasterio
from stac_schemas import errors

from gridded.errors import Interrupted
from gridded.io.storage import TEMP_MARK, LocalStorage
from gridded.period import Period
from gridded.pipeline import Pipeline
from gridded.plan import Observation, Task
from gridded.write import COMMITS_STOPPED, commit_outputs

CRS = "EPSG:32755"
X0, Y0 = 500_000.0, 6_000_000.0
SHAPE = (40, 48)
PREFIX = "x3/y7/2024-01--P1M"
ITEM = f"{PREFIX}/tiny_x3_y7_2024-01--p1m.stac-item.json"
ASSET_FILES = {key: f"{PREFIX}/tiny_x3_y7_2024-01--p1m_{key}.tif" for key in ("red", "nir", "count")}
THUMBNAIL = f"{PREFIX}/tiny_x3_y7_2024-01--p1m_thumbnail.png"
RED_ENCODING = (1e-4, -0.1)


def observation(item_id: str, day: int, platform: str = "sentinel-2a") -> Observation:
    return Observation(item_id=item_id, time=datetime(2024, 1, day, 0, 30, tzinfo=UTC), platform=platform,
                       updated="2024-02-01T00:00:00Z", solar_day=f"2024-01-{day:02d}",
                       hrefs=(("red", f"/src/{item_id}/red.tif"), ("nir", f"/src/{item_id}/nir.tif")),
                       self_href=f"/src/{item_id}/{item_id}.json")


TASK = Task(key=(3, 7), crs=CRS, transform=(10.0, 0.0, X0, 0.0, -10.0, Y0), shape_yx=SHAPE,
            period=Period(start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC),
                          label="2024-01--P1M"),
            observations=(observation("S2A_X_20240103", 3), observation("S2A_X_20240113", 13)))
PIPELINE = Pipeline(name="tiny", bands=("red", "nir"), mask=None, encodings=(("red", *RED_ENCODING),))


def arrays() -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """A composite with nodata (0) in the red band's left quarter and in a few scattered pixels."""
    rng = np.random.default_rng(7)
    red = rng.integers(100, 3000, SHAPE).astype(np.uint16)
    red[:, :12] = 0
    nir = rng.integers(1000, 5000, SHAPE).astype(np.uint16)
    nir[rng.random(SHAPE) < 0.05] = 0
    count = rng.integers(0, 6, SHAPE).astype(np.uint16)
    return {"red": red, "nir": nir, "count": count}, {"red": 0, "nir": 0, "count": 0}


class Recording:
    """A Storage that records the writes asked of it, in order, then does them."""

    WRITES = ("put_file", "put_bytes", "create_only", "delete")

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in self.WRITES:
            return attr

        def recorded(target, *args, **kwargs):
            self.calls.append((name, target))
            return attr(target, *args, **kwargs)

        return recorded


def commit(storage, *, fingerprint="f" * 64, replace=False, pipeline=PIPELINE, extra=None, data=None):
    values, nodata = data or arrays()
    return commit_outputs(storage, pipeline=pipeline, task=TASK, arrays=values, nodata=nodata,
                          fingerprint=fingerprint, replace=replace, extra=extra)


@pytest.fixture
def written(tmp_path):
    """(output root, recording storage, the item written, the arrays) of one commit."""
    root = tmp_path / "out"
    storage = Recording(LocalStorage(root))
    values, nodata = arrays()
    assert commit(storage, data=(values, nodata), extra={"gridded:run": 1}) == "done"
    return root, storage, json.loads((root / ITEM).read_text()), values


def test_the_cogs_and_thumbnail_are_committed_first_and_the_item_last(written):
    root, storage, _, _ = written
    assert storage.calls[-1] == ("create_only", ITEM)
    files = storage.calls[:-1]
    assert sorted(files) == sorted([("put_file", name) for name in ASSET_FILES.values()] + [("put_file", THUMBNAIL)])
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert on_disk == sorted([*ASSET_FILES.values(), THUMBNAIL, ITEM])  # and no temporary left
    assert not any(TEMP_MARK in p.name for p in root.parent.rglob("*"))


def test_the_item_validates_against_the_stac_schemas(written):
    _, _, item, _ = written
    assert errors(item) == []
    assert item["id"] == "tiny_x3_y7_2024-01--p1m" and item["collection"] == "tiny"
    props = item["properties"]
    assert props["datetime"].startswith("2024-01-01T00:00:00")
    assert props["end_datetime"].startswith("2024-01-31T23:59:59")
    assert props["proj:epsg"] == 32755 and props["proj:shape"] == list(SHAPE)
    assert props["proj:transform"] == [10.0, 0.0, X0, 0.0, -10.0, Y0]
    assert props["proj:bbox"] == [X0, Y0 - 10 * SHAPE[0], X0 + 10 * SHAPE[1], Y0]
    assert props["gridded:inputs"] == ["S2A_X_20240103", "S2A_X_20240113"]
    assert props["gridded:fingerprint"] == "f" * 64 and props["gridded:run"] == 1
    assert props["platform"] == "sentinel-2a" and props["gsd"] == 10.0
    derived = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert derived == ["file:///src/S2A_X_20240103/S2A_X_20240103.json", "file:///src/S2A_X_20240113/S2A_X_20240113.json"]
    # the validator is not a rubber stamp: a wrong type for a core field is reported
    broken = json.loads(json.dumps(item))
    broken["properties"]["proj:epsg"] = "32755"
    assert errors(broken)


def test_asset_hrefs_are_the_urls_of_files_that_exist(written):
    root, storage, item, _ = written
    assert set(item["assets"]) == {"red", "nir", "count", "thumbnail"}
    for key, name in {**ASSET_FILES, "thumbnail": THUMBNAIL}.items():
        href = item["assets"][key]["href"]
        assert href == storage.url(name) == f"file://{root}/{name}"
        assert Path(urlparse(href).path).is_file()
    self_link = next(link for link in item["links"] if link["rel"] == "self")
    assert self_link["href"] == f"file://{root}/{ITEM}"


def test_raster_statistics_are_those_of_the_written_arrays(written):
    root, _, item, values = written
    for key, name in ASSET_FILES.items():
        with rasterio.open(root / name) as src:
            stored = src.read(1)
            assert src.nodata == 0 and src.crs.to_epsg() == 32755
            assert tuple(src.transform)[:6] == (10.0, 0.0, X0, 0.0, -10.0, Y0)
        np.testing.assert_array_equal(stored, values[key])
        valid = stored[stored != 0].astype(np.float64)
        (band,) = item["assets"][key]["raster:bands"]
        assert band["data_type"] == "uint16" and band["nodata"] == 0
        stats = band["statistics"]
        assert stats["valid_percent"] == pytest.approx(100.0 * valid.size / stored.size, abs=1e-4)
        assert stats["minimum"] == valid.min() and stats["maximum"] == valid.max()
        assert stats["mean"] == pytest.approx(valid.mean()) and stats["stddev"] == pytest.approx(valid.std())
    assert item["assets"]["red"]["raster:bands"][0]["statistics"]["valid_percent"] == pytest.approx(75.0)


def test_scale_and_offset_only_where_the_encoding_is_not_identity(written):
    root, _, item, _ = written
    red = item["assets"]["red"]["raster:bands"][0]
    assert (red["scale"], red["offset"]) == RED_ENCODING
    for key in ("nir", "count"):
        band = item["assets"][key]["raster:bands"][0]
        assert "scale" not in band and "offset" not in band, key
    expected = {"red": RED_ENCODING, "nir": (1.0, 0.0), "count": (1.0, 0.0)}
    for key, name in ASSET_FILES.items():
        with rasterio.open(root / name) as src:  # GDAL's own band scale/offset, which QGIS applies
            assert (src.scales[0], src.offsets[0]) == pytest.approx(expected[key]), key
    assert item["assets"]["red"]["eo:bands"] == [{"name": "red"}]
    assert "eo:bands" not in item["assets"]["count"]


def test_without_encodings_no_asset_has_scale_or_offset(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    commit(storage, pipeline=Pipeline(name="tiny", bands=("red", "nir"), mask=None))
    item = json.loads((tmp_path / "out" / ITEM).read_text())
    bands = [a["raster:bands"][0] for key, a in item["assets"].items() if key != "thumbnail"]
    assert len(bands) == 3 and not any({"scale", "offset"} & set(band) for band in bands)
    with rasterio.open(tmp_path / "out" / ASSET_FILES["red"]) as src:
        assert (src.scales, src.offsets) == ((1.0,), (0.0,))


def test_the_thumbnail_is_a_256_px_rgba_png_transparent_at_nodata(written):
    root, _, item, values = written
    assert item["assets"]["thumbnail"]["type"] == "image/png"
    assert item["assets"]["thumbnail"]["roles"] == ["thumbnail"]
    with rasterio.open(root / THUMBNAIL) as src:
        assert src.driver == "PNG" and src.count == 4 and src.dtypes == ("uint8",) * 4
        rgba = src.read()
    ny, nx = SHAPE
    assert rgba.shape[1:] == (round(ny * 256 / nx), 256)  # the longer side 256 px
    # nearest neighbour: thumbnail pixel i shows source pixel floor((i + 0.5) * n / 256)
    rows = np.minimum(((np.arange(rgba.shape[1]) + 0.5) * nx / 256).astype(int), ny - 1)
    cols = np.minimum(((np.arange(rgba.shape[2]) + 0.5) * nx / 256).astype(int), nx - 1)
    red_small = values["red"][np.ix_(rows, cols)]  # red, nir: no true colour, so red in grey
    np.testing.assert_array_equal(rgba[3], np.where(red_small == 0, 0, 255))
    assert (rgba[3][:, :60] == 0).all() and (rgba[3][:, 70:] == 255).all()  # the left quarter is nodata
    np.testing.assert_array_equal(rgba[0], rgba[1])
    np.testing.assert_array_equal(rgba[0], rgba[2])
    assert (rgba[:3, rgba[3] == 0] == 0).all()
    shown = rgba[0][rgba[3] == 255]
    assert shown.min() == 0 and shown.max() == 255  # stretched


def test_a_second_commit_for_the_same_inputs_keeps_the_first_item(written):
    root, storage, first, _ = written
    storage.calls.clear()
    assert commit(storage, extra={"gridded:run": 2}) == "done"
    assert storage.calls[-1] == ("create_only", ITEM)  # refused: someone committed first
    kept = json.loads((root / ITEM).read_text())
    assert kept == first and kept["properties"]["gridded:run"] == 1


def test_a_second_commit_for_other_inputs_replaces_the_item(written):
    root, storage, _, _ = written
    storage.calls.clear()
    commit(storage, fingerprint="e" * 64, extra={"gridded:run": 2})
    assert storage.calls[-2:] == [("create_only", ITEM), ("put_bytes", ITEM)]
    item = json.loads((root / ITEM).read_text())
    assert item["properties"]["gridded:fingerprint"] == "e" * 64 and item["properties"]["gridded:run"] == 2
    assert errors(item) == []


def test_replace_overwrites_the_item_without_trying_a_create(written):
    root, storage, _, _ = written
    storage.calls.clear()
    commit(storage, replace=True, extra={"gridded:run": 3})
    assert storage.calls[-1] == ("put_bytes", ITEM)
    assert ("create_only", ITEM) not in storage.calls
    assert json.loads((root / ITEM).read_text())["properties"]["gridded:run"] == 3


def test_a_stopping_run_commits_no_more_items(tmp_path):
    storage = Recording(LocalStorage(tmp_path / "out"))
    COMMITS_STOPPED.set()
    try:
        with pytest.raises(Interrupted):
            commit(storage)
    finally:
        COMMITS_STOPPED.clear()
    assert not (tmp_path / "out" / ITEM).exists()
    assert {name for _, name in storage.calls} == {*ASSET_FILES.values(), THUMBNAIL}


def test_thumbnails_written_on_many_threads_warn_of_nothing(tmp_path, monkeypatch):
    """A worker writes thumbnails on several threads at once: none of them lets rasterio's
    'no georeference' warning for the in-memory picture through (each thread's
    `catch_warnings` once restored the filters another was relying on: a few in a thousand)."""
    import sys
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import rasterio

    from gridded.thumbnail import write_png

    rgba = np.random.default_rng(1).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    shown: list[str] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *_, **__: shown.append(str(message)))
    warnings.simplefilter("always")  # (pytest restores the filters after the test)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave every few bytecodes, as a busy worker's may
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: write_png(tmp_path / f"{i % 50}-{i}.png", rgba), range(2500)))
    finally:
        sys.setswitchinterval(switch)
    assert [m for m in shown if "georeference" in m or "geotransform" in m] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "49-2499.png") as src:
            assert (src.read() == rgba).all()


@pytest.mark.parametrize("dtype, nodata", [("uint16", 0), ("float32", float("nan"))])
def test_a_cog_made_in_memory_is_the_file_gdal_writes_itself(tmp_path, monkeypatch, dtype, nodata):
    from odc.geo.geobox import GeoBox

    import gridded.io.cog as cog

    rng = np.random.default_rng(7)
    array = rng.integers(1, 3000, (600, 700)).astype(dtype)
    array[:100] = nodata
    geobox = GeoBox((600, 700), TASK.geobox.affine, CRS)
    cog.write_cog(tmp_path / "memory.tif", array, geobox, nodata, encoding=RED_ENCODING, description="Red")
    monkeypatch.setattr(cog, "IN_MEMORY_BYTES", 0)  # written by GDAL to its file
    cog.write_cog(tmp_path / "file.tif", array, geobox, nodata, encoding=RED_ENCODING, description="Red")
    assert (tmp_path / "memory.tif").read_bytes() == (tmp_path / "file.tif").read_bytes()
    cog.check_cog(tmp_path / "memory.tif")
    with rasterio.open(tmp_path / "memory.tif") as src:
        np.testing.assert_array_equal(src.read(1), array)
        assert (src.scales, src.offsets, src.descriptions) == ((RED_ENCODING[0],), (RED_ENCODING[1],), ("Red",))
        assert src.overviews(1) == [2, 4]
