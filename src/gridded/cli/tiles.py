"""`gridded tiles`: the two halves of a run for a workflow engine (generate the batches, process one)."""

from __future__ import annotations

import os
import time

import click

from .options import (
    build_selection,
    check_file_target,
    check_output,
    check_scheduler,
    on_bad_source_option,
    say,
    selection_options,
    source_access_options,
)
from .progress import Progress, plan_summary, summary_table


@click.group()
def tiles():
    """The two halves of a run, for a workflow engine: generate the batches, process one."""


@tiles.command("generate")
@selection_options
@click.option("--cells", required=True, help="Where to write the cells artifact (path or s3://).")
def tiles_generate(cells, **kwargs):
    """Plan and write the cells artifact; print the number of batches on stdout (their ids are 0..N-1).

    With neither --source nor --index, the index DSN is read from $GRIDDED_INDEX_DSN (how a rendered
    workflow passes it from a Kubernetes Secret)."""
    from ..artifact import write_artifact
    from ..plan import plan_stream
    from ..workflow.options import INDEX_DSN_ENV

    if kwargs.get("source") is None and kwargs.get("index") is None:
        kwargs["index"] = os.environ.get(INDEX_DSN_ENV) or None
    selection = build_selection(**kwargs)
    check_file_target(cells, "--cells")
    # planned as written, batch by batch: the plan is never whole in memory; its totals are known after
    with plan_stream(selection, workers=None) as stream:  # blocks planned on every CPU
        count = write_artifact(stream, cells)
        say(plan_summary(stream))
    say(f"wrote {cells}: {count} batches")
    click.echo(count)


@tiles.command("process")
@click.option("--cells", required=True, help="The cells artifact written by `tiles generate` (path or s3://).")
@source_access_options[0]
@source_access_options[1]
@click.option("--batch", "batch_id", required=True, type=int, help="The batch id to process.")
@click.option("--output", required=True, help="Output root: a local directory or s3://bucket/prefix.")
@click.option("--overwrite", is_flag=True, help="Recompute cells whose outputs are up to date.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler.")
@on_bad_source_option
@click.pass_context
def tiles_process(ctx, cells, batch_id, output, overwrite, scheduler, on_bad_source):
    """Process one batch of the cells artifact into the output: its COGs and items, not the catalog
    (`gridded catalog --output URI` writes that, once all batches are done)."""
    from ..artifact import read_batch
    from ..io.storage import open_storage
    from ..process import process_batch
    from ..run import Tally, exit_code_for, interruptible

    started = time.monotonic()
    check_scheduler(scheduler)
    check_output(output)
    _, pipeline, _, batch, access = read_batch(cells, batch_id)
    storage = open_storage(output)
    progress = Progress(len(batch.tasks), quiet=ctx.obj["quiet"])
    tally = Tally(progress.update)
    # only this batch's COGs and items: the workflow's last step (`gridded catalog`) lists them all once
    with interruptible(tally, len(batch.tasks), in_process=True):
        results = process_batch(batch, pipeline, output, overwrite=overwrite, on_bad_source=on_bad_source,
                                scheduler=scheduler, access=access, on_result=tally.add)
    storage.sweep()
    click.echo(summary_table(results, time.monotonic() - started, output))
    ctx.exit(exit_code_for(results))
