"""`gridded status`: where an output stands (also while a run or a workflow writes to it)."""

from __future__ import annotations

import time

import click


@click.command()
@click.option("--output", required=True, help="The output root of a run (a directory or s3://bucket/prefix).")
@click.option("--watch", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Repeat every SECONDS until interrupted.")
def status(output, watch):
    """Write OUT/status.geojson (one feature per cell and period with its state) and print a summary."""
    from ..io.storage import open_storage
    from ..status import STATUS_NAME, summary, write_status

    storage = open_storage(output)
    while True:
        current = write_status(storage)
        click.echo(f"{summary(current)}  ({storage.url(STATUS_NAME)})")
        if watch is None:
            return
        time.sleep(watch)

