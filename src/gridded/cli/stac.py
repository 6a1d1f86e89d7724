"""`gridded stac`: the STAC item index (ingest catalogs, APIs and ndjson; search it)."""

from __future__ import annotations

import json
import time
from datetime import UTC

import click

from .options import say, source_access_options


@click.group()
def stac():
    """The STAC item index: ingest catalogs, APIs and ndjson; search it."""


def index_option(func):
    return click.option("--index", envvar="GRIDDED_INDEX_DSN", default=None,
                        help="sqlite:///file.db (default sqlite:///gridded-index.db) or postgresql://...; "
                             "also $GRIDDED_INDEX_DSN.")(func)


@stac.command("ingest")
@click.argument("source")
@index_option
@click.option("--collection", multiple=True, help="Only items of this collection (repeatable, or a,b).")
@click.option("--bbox", default=None, help="Only items meeting minx,miny,maxx,maxy (STAC API sources).")
@click.option("--datetime", "datetime_", default=None, help="Only items in START/END (STAC API sources).")
@click.option("--page-size", type=click.IntRange(1, 10000), default=500, show_default=True,
              help="Items per page of a STAC API search.")
@source_access_options[0]
@source_access_options[1]
def stac_ingest(source, index, collection, bbox, datetime_, page_size):
    """Upsert every item of a static catalog, STAC API or ndjson file into the index."""
    from ..index import ingest, open_index

    started = time.monotonic()
    db = open_index(index)
    try:
        counts = ingest(source, db, collection=collection, bbox=bbox, datetime_=datetime_, progress=say,
                        page_size=page_size)
        total = db.count()
    finally:
        db.close()
    click.echo(f"{'added':<10} {counts.added:>8}\n{'replaced':<10} {counts.replaced:>8}\n"
               f"{'unchanged':<10} {counts.unchanged:>8}\n{'skipped':<10} {counts.skipped:>8}\n"
               f"{'in index':<10} {total:>8}\n"
               f"ingested {source} into {db.dsn.split('@')[-1]} in {time.monotonic() - started:.1f} s")


@stac.command("search")
@index_option
@click.option("--bbox", default=None, help="minx,miny,maxx,maxy in degrees (default: everywhere).")
@click.option("--datetime", "datetime_", default=None, help="START/END (default: all time).")
@click.option("--collection", multiple=True, help="Only these collections (repeatable, or a,b).")
@click.option("--json", "as_json", is_flag=True, help="Print the items as newline-delimited JSON.")
def stac_search(index, bbox, datetime_, collection, as_json):
    """Show what the index holds for a place and a time: a count and a table."""
    from datetime import datetime

    from ..extent import parse_extent
    from ..index import open_index
    from ..period import parse_time

    box = parse_extent(bbox).boundingbox if bbox else (-180.0, -90.0, 180.0, 90.0)
    when = parse_time(datetime_) if datetime_ else None
    db = open_index(index)
    try:
        items = db.search(bbox=box, start=when.start if when else datetime(1, 1, 1, tzinfo=UTC),
                          end=when.end if when else datetime(9999, 12, 31, tzinfo=UTC), collections=_names(collection))
    finally:
        db.close()
    if as_json:
        for item in items:
            click.echo(json.dumps(item.to_dict(transform_hrefs=False), separators=(",", ":")))
        return
    click.echo(f"{len(items)} items")
    for item in items[:1000]:
        when = item.properties.get("datetime") or item.properties.get("start_datetime") or ""
        click.echo(f"{item.collection_id or '':<24} {item.id:<48} {when}")


def _names(collection) -> tuple[str, ...]:
    from ..source import names_of

    return names_of(collection)
