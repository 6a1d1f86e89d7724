"""The command line's shared flags and checks: what to compute (the selection flags, handed to
`gridded.selection.select`), how to reach sources, and where to write."""

from __future__ import annotations

import os
import re

import click

from ..compute.statistics import STATISTICS
from ..errors import ConfigError


def say(text: str) -> None:
    """A progress or context message on stderr, unless -q."""
    ctx = click.get_current_context(silent=True)
    if not (ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet")):
        click.echo(text, err=True)


def _set_unsigned(ctx, param, value):
    if value:  # in the environment, so worker processes and GDAL see it too
        os.environ["AWS_NO_SIGN_REQUEST"] = "YES"
    return value


def _set_requester_pays(ctx, param, value):
    if value:
        os.environ["AWS_REQUEST_PAYER"] = "requester"
    return value


source_access_options = [
    click.option("--unsigned", is_flag=True, expose_value=False, callback=_set_unsigned,
                 help="Read s3:// sources without signing (public buckets); also AWS_NO_SIGN_REQUEST=YES."),
    click.option("--requester-pays", is_flag=True, expose_value=False, callback=_set_requester_pays,
                 help="Read requester-pays s3:// sources (you pay for the reads)."),
]


def make_selection_options(*, time_required: bool):
    """The flags that choose what to compute: shared by run, plan, tiles generate, workflow render."""
    options = [
        click.option("--source", default=None,
                     help="A STAC API (https://...), a static catalog or collection, a saved search (FeatureCollection "
                          "or ndjson) or one item: a path, file://, s3:// or https://."),
        click.option("--index", default=None, help="Plan from an index instead: sqlite:///file.db or postgresql://..."),
        click.option("--extent", required=True, help="lon/lat bbox minx,miny,maxx,maxy, a GeoJSON file, or WKT."),
        click.option("--time", "time_", required=time_required,
                     help="ISO interval START/END (dates inclusive), or last:P1M relative to --as-of."),
        click.option("--as-of", default=None, help="Reference time for --time last:PERIOD (default: now, UTC)."),
        click.option("--pipeline", default=None, help="Built-in recipe name or YAML file; flags override it."),
        click.option("--grid", default=None,
                     help="Built-in grid name (e.g. utm55s-10m, auto: the UTM zone of the extent, conus-albers-30m) "
                          "or YAML file."),
        click.option("--statistic", default=None,
                     help=f"{', '.join(STATISTICS)} or a percentile pNN; several at once as median,p10,p90,mean "
                          f"(one read). Default: median."),
        click.option("--band-index", "band_index", multiple=True, metavar="NAME[=EXPR]",
                     help="An index computed per observation and reduced like a band: built-in "
                          "(ndvi, ndwi, nbr, ndmi, evi, savi) or NAME=EXPRESSION over band names (repeatable, "
                          "or several separated by ';'). Without --bands: reads the bands it names and writes "
                          "the index alone."),
        click.option("--rank", default=None,
                     help="What --statistic best ranks by: a band or index (ndvi); -NAME for the least."),
        click.option("--period", default=None, help="ISO 8601 period: P1M (default), P3M, P1Y, P10D."),
        click.option("--bands", default=None,
                     help="Comma-separated band names (asset keys, eo:bands or common names)."),
        click.option("--mask", default=None,
                     help="s2, landsat, none, ASSET:CLASSES (scl:0,1,3,8,9,10) or ASSET:bits:BITS. Default: inferred."),
        click.option("--collection", multiple=True, help="Only items of this collection (repeatable, or a,b)."),
        click.option("--query", multiple=True,
                     help="STAC API search term, e.g. eo:cloud_cover<80 (repeatable; STAC API sources only)."),
        click.option("--filter", "filter_", default=None,
                     help="CQL2 filter of a STAC API search, as text (eo:cloud_cover < 80) or JSON."),
        click.option("--tiles-per-worker", type=int, default=4, show_default=True, help="Cells per batch."),
        click.option("--sign", type=click.Choice(["planetary-computer"]), default=None,
                     help="Sign asset hrefs when they are read (Planetary Computer SAS tokens; "
                          "pip install 'gridded[planetary-computer]')."),
        click.option("--allow-root", "allow_root", multiple=True, type=click.Path(file_okay=False),
                     help="A local folder asset files may be read from besides the catalog's own (repeatable)."),
        *source_access_options,
    ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


selection_options = make_selection_options(time_required=True)


def build_selection(*, source, extent, time_, as_of, pipeline, grid, statistic, period, bands, mask,
                    collection, tiles_per_worker, index=None, allow_root=(), query=(), filter_=None,
                    band_index=(), rank=None, sign=None):
    """The selection flags -> a Selection (their values normalised by `select`)."""
    from ..selection import select

    return select(source, extent=extent, time=time_, index=index, as_of=as_of, pipeline=pipeline, grid=grid,
                  statistic=statistic, period=period, bands=bands, mask=mask, collection=collection,
                  query=query, filter=filter_, tiles_per_worker=tiles_per_worker, allow_roots=allow_root,
                  indices=[part for value in band_index for part in value.split(";") if part.strip()] or None,
                  rank=rank, sign=sign)


on_bad_source_option = click.option(
    "--on-bad-source", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
    help="A source that cannot be read (after retries) fails its cells, or is left out of them "
         "(the items and the run report name it; a later run retries it).")


SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls|ws|wss)://[^\s:/]+:\d{1,5}$")


def check_scheduler(address: str | None) -> None:
    if address is not None and not SCHEDULER_ADDRESS.match(address):
        raise ConfigError(f"--scheduler {address}: not a Dask scheduler address; use e.g. tcp://scheduler:8786")


def check_output(uri: str, flag: str = "--output") -> None:
    """Refuse an unwritable output before any planning; creates nothing."""
    from ..io.storage import open_storage

    try:
        open_storage(uri).check_writable()
    except ConfigError as err:
        if flag == "--output":
            raise
        raise ConfigError(str(err).replace("--output", flag, 1)) from err


def check_file_target(uri: str, flag: str) -> None:
    """A single file to write (--cells, --png): its folder must be writable and it must not be a directory."""
    from pathlib import Path

    from ..io.storage import storage_for_file

    if "://" not in uri and Path(uri).is_dir():
        raise ConfigError(f"{flag} {uri}: is a directory; give a file path such as {Path(uri) / 'cells.pickle'}")
    store, _ = storage_for_file(uri)
    try:
        store.check_writable()
    except ConfigError as err:
        raise ConfigError(str(err).replace("--output", flag, 1)) from err


def write_local_file(uri: str, body: bytes, *, flag: str) -> None:
    """A file the user asked for (a map, GeoJSON), written whole: a path or s3:// URI."""
    from ..io.storage import storage_for_file

    store, name = storage_for_file(uri)
    store.put_bytes(name, body)
