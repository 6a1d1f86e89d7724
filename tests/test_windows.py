"""io/rasters.py: reads into a caller's array, and the pool of open sources a batch shares."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from scenes import scene, task_for

from gridded.io import rasters
from gridded.io.rasters import SourcePool, pooled_sources, read_window


def test_read_window_reads_into_out_only_when_the_dtype_matches(tmp_path):
    rng = np.random.default_rng(1)
    hrefs = dict(scene(tmp_path, "a", rng))
    geobox = task_for([], col=0, row=0).geobox
    out = np.empty(geobox.shape, dtype=np.uint16)
    got, nodata = read_window(hrefs["red"], geobox, fill=0, what="red", out=out)
    assert got is out and nodata == 0
    other = np.empty(geobox.shape, dtype=np.float32)
    got, _ = read_window(hrefs["red"], geobox, fill=0, what="red", out=other)
    assert got is not other and got.dtype == np.uint16
    np.testing.assert_array_equal(got, out)



class FakeDataset:
    def __init__(self, name):
        self.name, self.closed = name, False

    def close(self):
        self.closed = True


def test_pool_gives_back_what_it_took_and_closes_the_least_recently_used():
    pool = SourcePool(size=2)
    a1, a2, b = FakeDataset("a"), FakeDataset("a"), FakeDataset("b")
    pool.give("a", a1)
    pool.give("a", a2)
    assert pool.take("a") is a2 and pool.take("a") is a1 and pool.take("a") is None
    pool.give("a", a1)
    pool.give("b", b)
    pool.give("a", a2)  # a third idle dataset: the least recently given back path loses its oldest
    assert b.closed and not a1.closed and not a2.closed
    assert pool.take("b") is None
    pool.close()
    assert a1.closed and a2.closed


def test_batch_reads_reuse_open_sources_and_a_failed_read_closes_its_dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    hrefs = dict(scene(tmp_path, "a", rng))
    geobox = task_for([], col=0, row=0).geobox
    opened = []
    real_open = rasterio.open

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    with pooled_sources() as pool:
        first, _ = read_window(hrefs["red"], geobox, fill=0, what="red")
        again, _ = read_window(hrefs["red"], geobox, fill=0, what="red")
        assert opened == [hrefs["red"]]  # the second read took the open dataset
        np.testing.assert_array_equal(first, again)
        with pytest.raises(ZeroDivisionError):
            rasters._read_once(hrefs["red"], "red", lambda src: 1 / 0, remote=False)
        assert pool.take(hrefs["red"]) is None  # the dataset of the failed read was not given back
    read_window(hrefs["red"], geobox, fill=0, what="red")  # outside a batch: opened and closed
    assert len(opened) == 2
