"""`gridded quicklook`: a period of an output in one picture."""

from __future__ import annotations

import click

from .options import check_file_target


@click.command()
@click.option("--output", required=True, help="The output root of a run (a directory or s3://bucket/prefix).")
@click.option("--period", default=None, help="The period label, e.g. 2024-01--P1M (default: the latest).")
@click.option("--png", required=True, type=click.Path(dir_okay=False), help="Where to write the picture.")
def quicklook(output, period, png):
    """Mosaic a period's thumbnails for the whole output into one PNG, with a scale bar."""
    from ..io.storage import open_storage
    from ..maps import quicklook as draw

    check_file_target(png, "--png")
    n = draw(open_storage(output), png, period=period)
    click.echo(f"{png}: {n} cells")
