"""The `gridded` command line: each command parses, calls one library function, reports.

One module per command; heavy imports (dask, rasterio, numba) happen inside the commands so
`gridded --help` is instant.
"""

from __future__ import annotations

import atexit
import os
import sys

import click

from ..errors import GriddedError, Interrupted
from .catalog import catalog
from .demo import demo
from .logs import configure_logging
from .plan import plan
from .quicklook import quicklook
from .run import run
from .stac import stac
from .status import status
from .tiles import tiles
from .workflow import workflow


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
        except KeyboardInterrupt:  # a command with no handler of its own (`run` has one: it keeps what finished)
            if ctx.obj and ctx.obj.get("debug"):
                raise
            stop = Interrupted(f"interrupted (Ctrl-C) in `{ctx.invoked_subcommand or ctx.info_name}`; rerun it")
            click.echo(f"gridded: error: {stop}", err=True)
            ctx.exit(stop.exit_code)
        except MemoryError:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            import resource

            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            click.echo(f"gridded: error: out of memory in `{ctx.invoked_subcommand or ctx.info_name}` at about "
                       f"{peak_mb:,} MB resident; give it more memory, or ask for less at once (a smaller "
                       f"--extent or --time, fewer --bands, a coarser --period)", err=True)
            ctx.exit(1)


@click.group(cls=GriddedGroup)
@click.version_option(package_name="gridded")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx, verbose, quiet, debug):
    """Analysis-ready composites from STAC imagery, tile by tile, as COGs with STAC metadata."""
    configure_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet, "debug": debug}


for command in (run, plan, status, quicklook, tiles, catalog, demo, stac, workflow):
    cli.add_command(command)


GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "-vv", "-vvv", "--verbose", "--debug"})


def global_flags_first(args: list[str]) -> list[str]:
    """-q, -v and --debug are the group's, but users put them after the command too
    (`gridded run ... -v`): moved in front, where click takes them. Values are never flags of
    that spelling; nothing after `--` is touched."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main() -> None:
    """The `gridded` command. Once a command has finished (its outputs committed, its exit
    handlers run, stdout and stderr flushed) the process leaves at once: tearing the interpreter
    down object by object after a run (a worker's buffers, GDAL's and numba's state) takes longer
    than many a tile."""
    try:
        cli(args=global_flags_first(sys.argv[1:]), prog_name="gridded")
        code: str | int | None = 0
    except SystemExit as exit_:
        code = exit_.code
    if code is not None and not isinstance(code, int):
        click.echo(code, err=True)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
