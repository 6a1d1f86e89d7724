"""`gridded demo`: a synthetic Sentinel-2 L2A-like catalog (no network) run through the whole pipeline."""

from __future__ import annotations

import time

import click

from ..errors import ConfigError
from .logs import command_line
from .options import build_selection, check_output, say
from .progress import Progress, plan_summary, summary_table


@click.command()
@click.option("--dir", "directory", default="gridded-demo", show_default=True,
              help="Where to write the demo catalog and outputs.")
@click.option("--workers", type=int, default=2, show_default=True, help="Local worker processes.")
@click.option("--overwrite", is_flag=True, help="Recompute outputs that are up to date.")
@click.pass_context
def demo(ctx, directory, workers, overwrite):
    """Write a synthetic Sentinel-2 L2A-like catalog (no network) and run the whole pipeline on it."""
    from pathlib import Path

    from ..demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME, write_demo_catalog
    from ..plan import plan_for
    from ..run import exit_code_for, run_plan

    started = time.monotonic()
    root = Path(directory)
    try:
        check_output(str(root), flag="--dir")
        source = write_demo_catalog(root / "catalog")
    except OSError as err:  # a folder that cannot be written: the user's to choose another
        raise ConfigError(f"--dir {directory}: cannot write the demo there ({err.strerror or err}); "
                          f"choose a writable folder, e.g. --dir ~/gridded-demo") from err
    output = str(root / "output")
    say(f"demo catalog: {source}")
    selection = build_selection(source=str(source), extent=DEMO_EXTENT, time_=DEMO_TIME, as_of=None,
                                pipeline="s2-monthly-median", grid=str(DEMO_GRID), statistic=None, period=None,
                                bands=None, mask=None, collection=None, tiles_per_worker=2)
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    progress = Progress(len(plan_.tasks), quiet=ctx.obj["quiet"])
    results = run_plan(plan_, output, workers=workers, overwrite=overwrite, on_result=progress.update,
                       command=command_line())
    click.echo(summary_table(results, time.monotonic() - started, output))
    click.echo(f"catalog: {Path(output) / 'catalog.json'}")
    click.echo(f"items:   {sum(r.status in ('done', 'skipped') for r in results)} "
               f"(one per cell and month; one COG per band plus count)")
    ctx.exit(exit_code_for(results))
