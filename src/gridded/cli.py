"""The `gridded` command line: each command parses, calls one library function, reports.

Heavy imports (dask, rasterio, numba) happen inside the commands so `gridded --help` is instant.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import time

import click

from .cli_options import (
    build_selection,
    check_file_target,
    check_output,
    check_scheduler,
    say,
    selection_options,
    source_access_options,
)
from .cli_workflow import workflow
from .errors import ConfigError, GriddedError

MAX_STDOUT_BYTES = 200 * 1024  # Argo keeps only the last 256 KiB of a step's output


class GriddedGroup(click.Group):
    """Prints a GriddedError as one line (`gridded: error: ...`) and exits with its code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GriddedError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"gridded: error: {err}", err=True)
            if getattr(err, "hard_exit", False):
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(err.exit_code)
            ctx.exit(err.exit_code)


@click.group(cls=GriddedGroup)
@click.version_option(package_name="gridded")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, verbose, quiet, debug):
    """Analysis-ready composites from STAC imagery, tile by tile, as COGs with STAC metadata."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    for chatty in ("botocore", "boto3", "s3transfer"):
        logging.getLogger(chatty).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    # dask reads this when first imported (here and in spawned workers): keep its INFO chatter off
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning" if verbose < 2 else "debug")
    for noisy in ("distributed", "rasterio", "numba", "asyncio", "tornado"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if verbose < 2 else level)
    # its connection retries are ours to report, once, as the error they end in
    logging.getLogger("urllib3").setLevel(logging.ERROR if verbose < 2 else level)
    ctx.obj = {"quiet": quiet, "debug": debug}


SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "GRIDDED_INDEX_DSN")
DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


class RedactSecrets(logging.Filter):
    """Debug logs of boto3 and friends may echo a key id or a DSN: replace every secret the
    environment holds (and DSN passwords) before a record is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [os.environ[k] for k in SECRET_ENV if len(os.environ.get(k, "")) >= 4]
        message = record.getMessage()
        redacted = DSN_PASSWORD.sub(r"\1***@", message)
        for secret in secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def plan_summary(plan) -> str:
    tasks = plan.tasks
    cells = {t.key for t in tasks}
    obs = sum(len(t.observations) for t in tasks)
    return (
        f"pipeline {plan.pipeline.name}: {plan.pipeline.statistic} of {','.join(plan.pipeline.bands)} "
        f"per {plan.pipeline.period}, mask {plan.pipeline.mask.spec() if plan.pipeline.mask else 'none'}\n"
        f"grid {plan.grid.name} ({plan.grid.crs}, {plan.grid.resolution:g} m, tiles "
        f"{plan.grid.tile_shape_px[1]}x{plan.grid.tile_shape_px[0]} px)\n"
        f"{plan.n_items} source items; {plan.n_cells_in_extent} cells meet the extent, {len(cells)} with data, "
        f"{len(plan.empty_cells)} without\n"
        f"{len(tasks)} tasks ({obs} observations) in {len(plan.batches)} batches"
    )


@cli.command()
@selection_options
@click.option("--output", required=True, help="Output root: a local directory or s3://bucket/prefix.")
@click.option("--workers", type=int, default=1, show_default=True, help="Local worker processes.")
@click.option("--overwrite", is_flag=True, help="Recompute cells whose outputs are up to date.")
@click.option("--dry-run", is_flag=True, help="Plan and print what would run; write nothing.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:8786).")
@click.pass_context
def run(ctx, output, workers, overwrite, dry_run, scheduler, **kwargs):
    """Plan the cells, then compute every batch on this machine."""
    from .run import plan_for, run_plan, summary_table

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
        click.echo(json.dumps(_plan_rows(plan), indent=1))
        return
    if not plan.tasks:
        say("nothing to do: no source item meets the extent and time; check --extent, --time and --collection")
        return
    results = run_plan(plan, output, workers=workers, overwrite=overwrite, quiet=ctx.obj["quiet"],
                       scheduler=scheduler)
    click.echo(summary_table(results, time.monotonic() - started, output))
    if any(r.status == "failed" for r in results):
        ctx.exit(1)


def _plan_rows(plan) -> list[dict]:
    return [
        {"batch": b.id, "cell": list(t.key), "period": t.period.label, "observations": len(t.observations)}
        for b in plan.batches for t in b.tasks
    ]


@cli.command()
@selection_options
@click.option("--output", default=None, help="Show which tasks are done, to do or changed in this output.")
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Draw the cells on a map image.")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON instead of a table.")
def plan(output, png, as_json, **kwargs):
    """Show what would run, and where: cells, periods, observations, batches."""
    from .run import plan_for

    selection = build_selection(**kwargs)
    if png:
        check_file_target(png, "--png")
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    rows = _plan_rows(plan_)
    if output:
        from .process import is_current
        from .storage import open_storage
        from .write import item_name

        storage = open_storage(output)
        by_task = {(tuple(r["cell"]), r["period"]): r for r in rows}
        for t in plan_.tasks:
            name = item_name(plan_.pipeline, t)
            state = "to-do"
            if storage.exists(name):
                state = "done" if is_current(storage, name, t.fingerprint(plan_.pipeline)) else "changed"
            by_task[(t.key, t.period.label)]["state"] = state
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        click.echo(f"{'batch':>5}  {'cell':<14} {'period':<14} {'obs':>4}  state")
        for r in rows:
            cell = f"x{r['cell'][0]} y{r['cell'][1]}"
            click.echo(f"{r['batch']:>5}  {cell:<14} {r['period']:<14} {r['observations']:>4}  {r.get('state', '')}")
    if png:
        from .plan_map import draw_plan

        draw_plan(plan_, png)
        say(f"map written to {png}")


@cli.group()
def tiles():
    """The two halves of a run, for a workflow engine: generate the batches, process one."""


@tiles.command("generate")
@selection_options
@click.option("--cells", required=True, help="Where to write the cells artifact (path or s3://).")
def tiles_generate(cells, **kwargs):
    """Plan and write the cells artifact; print the JSON list of batch ids on stdout."""
    from .artifact import write_artifact
    from .run import plan_for

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
@click.pass_context
def tiles_process(ctx, cells, batch_id, output, overwrite, scheduler):
    """Process one batch of the cells artifact into the output."""
    from .artifact import read_batch
    from .catalog import write_catalog
    from .process import process_batch
    from .run import Progress, interruptible, summary_table
    from .storage import open_storage

    started = time.monotonic()
    check_scheduler(scheduler)
    check_output(output)
    _, pipeline, _, batch = read_batch(cells, batch_id)
    storage = open_storage(output)
    progress = Progress(len(batch.tasks), quiet=ctx.obj["quiet"])
    with interruptible(progress, len(batch.tasks), in_process=True):
        results = process_batch(batch, pipeline, output, overwrite=overwrite, scheduler=scheduler,
                                on_result=progress.update)
    storage.sweep()
    write_catalog(storage, collection_id=pipeline.name)
    click.echo(summary_table(results, time.monotonic() - started, output))
    if any(r.status == "failed" for r in results):
        ctx.exit(1)


@cli.command()
@click.option("--output", required=True, help="The output root whose catalog.json to rebuild.")
@click.option("--collection-id", default=None, help="Collection id (default: the items' collection).")
def catalog(output, collection_id):
    """Rebuild catalog.json and collection.json at an output root from its items."""
    from .catalog import write_catalog
    from .storage import open_storage

    storage = open_storage(output)
    if not storage.list(".stac-item.json"):
        raise ConfigError(f"--output {output}: no STAC items there; give the output root of a run")
    n = write_catalog(storage, collection_id=collection_id)
    click.echo(f"catalog of {n} items written to {output}")


@cli.command()
@click.option("--dir", "directory", default="gridded-demo", show_default=True,
              help="Where to write the demo catalog and outputs.")
@click.option("--workers", type=int, default=2, show_default=True, help="Local worker processes.")
@click.option("--overwrite", is_flag=True, help="Recompute outputs that are up to date.")
@click.pass_context
def demo(ctx, directory, workers, overwrite):
    """Write a synthetic Sentinel-2 L2A-like catalog (no network) and run the whole pipeline on it."""
    from pathlib import Path

    from .demo import DEMO_EXTENT, DEMO_GRID, DEMO_TIME, write_demo_catalog
    from .run import plan_for, run_plan, summary_table

    started = time.monotonic()
    root = Path(directory)
    source = write_demo_catalog(root / "catalog")
    output = str(root / "output")
    say(f"demo catalog: {source}")
    selection = build_selection(source=str(source), extent=DEMO_EXTENT, time_=DEMO_TIME, as_of=None,
                                pipeline="s2-monthly-median", grid=str(DEMO_GRID), statistic=None, period=None,
                                bands=None, mask=None, collection=None, tiles_per_worker=2)
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    results = run_plan(plan_, output, workers=workers, overwrite=overwrite, quiet=ctx.obj["quiet"])
    click.echo(summary_table(results, time.monotonic() - started, output))
    click.echo(f"catalog: {Path(output) / 'catalog.json'}")
    click.echo(f"items:   {sum(r.status in ('done', 'skipped') for r in results)} "
               f"(one per cell and month; one COG per band plus count)")
    if any(r.status == "failed" for r in results):
        ctx.exit(1)


@cli.group()
def stac():
    """The STAC item index: ingest catalogs, APIs and ndjson; search it."""


def index_option(func):
    return click.option("--index", envvar="GRIDDED_INDEX_DSN", default=None,
                        help="sqlite:///file.db (default sqlite:///gridded-index.db) or postgresql://...; "
                             "also $GRIDDED_INDEX_DSN.")(func)


@stac.command("ingest")
@click.argument("source")
@index_option
@click.option("--collection", default=None, help="Only items of this collection.")
@click.option("--bbox", default=None, help="Only items meeting minx,miny,maxx,maxy (STAC API sources).")
@click.option("--datetime", "datetime_", default=None, help="Only items in START/END (STAC API sources).")
@click.option("--page-size", type=click.IntRange(1, 10000), default=500, show_default=True,
              help="Items per page of a STAC API search.")
@source_access_options[0]
@source_access_options[1]
def stac_ingest(source, index, collection, bbox, datetime_, page_size):
    """Upsert every item of a static catalog, STAC API or ndjson file into the index."""
    from .index import ingest, open_index

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
@click.option("--collection", default=None, help="Only this collection.")
@click.option("--json", "as_json", is_flag=True, help="Print the items as newline-delimited JSON.")
def stac_search(index, bbox, datetime_, collection, as_json):
    """Show what the index holds for a place and a time: a count and a table."""
    from datetime import datetime, timezone

    from .grid import parse_extent
    from .index import open_index
    from .period import parse_time

    box = parse_extent(bbox).boundingbox if bbox else (-180.0, -90.0, 180.0, 90.0)
    when = parse_time(datetime_) if datetime_ else None
    db = open_index(index)
    try:
        items = db.search(bbox=box, start=when.start if when else datetime(1, 1, 1, tzinfo=timezone.utc),
                          end=when.end if when else datetime(9999, 12, 31, tzinfo=timezone.utc), collection=collection)
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


cli.add_command(workflow)


def main() -> None:
    """The `gridded` command. Once a command has finished (its outputs committed, its exit
    handlers run, stdout and stderr flushed) the process leaves at once: tearing the interpreter
    down object by object after a run (a worker's buffers, GDAL's and numba's state) takes longer
    than many a tile."""
    try:
        cli(prog_name="gridded")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    if code is not None and not isinstance(code, int):
        click.echo(code, err=True)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()
