"""`gridded tiles`: the two halves of a run for a workflow engine (generate the batches, process one)."""

from __future__ import annotations

import json
import time

import click

from ..errors import ConfigError
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

MAX_STDOUT_BYTES = 200 * 1024  # Argo keeps only the last 256 KiB of a step's output


@click.group()
def tiles():
    """The two halves of a run, for a workflow engine: generate the batches, process one."""


@tiles.command("generate")
@selection_options
@click.option("--cells", required=True, help="Where to write the cells artifact (path or s3://).")
def tiles_generate(cells, **kwargs):
    """Plan and write the cells artifact; print the JSON list of batch ids on stdout."""
    from ..artifact import write_artifact
    from ..plan import plan_for

    selection = build_selection(**kwargs)
    check_file_target(cells, "--cells")
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    ids = json.dumps([b.id for b in plan_.batches], separators=(",", ":"))
    if len(ids) > MAX_STDOUT_BYTES:
        raise ConfigError(
            f"{len(plan_.batches)} batches make a {len(ids) // 1024} KiB id list, over the {MAX_STDOUT_BYTES // 1024} KiB "
            f"a workflow step may print; raise --tiles-per-worker"
        )
    write_artifact(plan_, cells)
    say(f"wrote {cells}: {len(plan_.batches)} batches")
    click.echo(ids)


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
    """Process one batch of the cells artifact into the output."""
    from ..artifact import read_batch
    from ..catalog import write_catalog
    from ..errors import Interrupted
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
    try:
        with interruptible(tally, len(batch.tasks), in_process=True):
            results = process_batch(batch, pipeline, output, overwrite=overwrite, on_bad_source=on_bad_source,
                                    scheduler=scheduler, access=access, on_result=tally.add)
    except Interrupted:  # the catalog lists what is committed, whatever stopped the pod
        write_catalog(storage, collection_id=pipeline.name, license=pipeline.license)
        raise
    storage.sweep()
    write_catalog(storage, collection_id=pipeline.name, license=pipeline.license)
    click.echo(summary_table(results, time.monotonic() - started, output))
    ctx.exit(exit_code_for(results))
