"""`gridded run`: plan the cells, then compute every batch on this machine."""

from __future__ import annotations

import json
import time

import click

from ..errors import ConfigError
from .logs import command_line
from .options import build_selection, check_output, check_scheduler, on_bad_source_option, say, selection_options
from .plan import plan_rows
from .progress import Progress, plan_summary, summary_table


@click.command()
@selection_options
@click.option("--output", required=True, help="Output root: a local directory or s3://bucket/prefix.")
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--overwrite", is_flag=True, help="Recompute cells whose outputs are up to date.")
@click.option("--dry-run", is_flag=True, help="Plan and print what would run; write nothing.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
@on_bad_source_option
@click.pass_context
def run(ctx, /, output, workers, overwrite, dry_run, scheduler, on_bad_source, **kwargs):
    """Plan the cells, then compute every batch on this machine."""
    from ..plan import plan_for
    from ..run import exit_code_for, run_plan

    started = time.monotonic()
    selection = build_selection(**kwargs)
    if workers < 1:
        raise ConfigError(f"--workers {workers}: must be at least 1")
    check_scheduler(scheduler)
    if not dry_run:
        check_output(output)
    plan = plan_for(selection)
    say(plan_summary(plan))
    if dry_run:
        click.echo(json.dumps(plan_rows(plan), indent=1))
        return
    if not plan.tasks:
        say("nothing to do: no source item meets the extent and time; check --extent, --time and --collection")
        return
    progress = Progress(len(plan.tasks), quiet=ctx.obj["quiet"])
    results = run_plan(plan, output, workers=workers, overwrite=overwrite, on_bad_source=on_bad_source,
                       scheduler=scheduler, on_result=progress.update, command=command_line())
    click.echo(summary_table(results, time.monotonic() - started, output))
    ctx.exit(exit_code_for(results))
