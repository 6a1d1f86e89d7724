"""`gridded plan`: what would run, and where: cells, periods, observations, batches, states."""

from __future__ import annotations

import json

import click

from .options import build_selection, check_file_target, say, selection_options
from .progress import plan_summary


def plan_rows(plan) -> list[dict]:
    """One row per task, in batch order: its batch, cell, period and observation count."""
    return [
        {"batch": b.id, "cell": list(t.key), "period": t.period.label, "observations": len(t.observations)}
        for b in plan.batches for t in b.tasks
    ]


@click.command()
@selection_options
@click.option("--output", default=None, help="Show which tasks are done, to do or changed in this output.")
@click.option("--png", default=None, type=click.Path(dir_okay=False), help="Draw the cells on a map image.")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON instead of a table.")
def plan(output, png, as_json, **kwargs):
    """Show what would run, and where: cells, periods, observations, batches."""
    from ..plan import plan_for

    selection = build_selection(**kwargs)
    if png:
        check_file_target(png, "--png")
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    rows = plan_rows(plan_)
    by_task = {(tuple(r["cell"]), r["period"]): r for r in rows}
    if output:
        for (key, period), state in plan_.status(output).items():
            by_task[(key, period)]["state"] = state
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        click.echo(f"{'batch':>5}  {'cell':<14} {'period':<14} {'obs':>4}  state")
        for r in rows:
            cell = f"x{r['cell'][0]} y{r['cell'][1]}"
            click.echo(f"{r['batch']:>5}  {cell:<14} {r['period']:<14} {r['observations']:>4}  {r.get('state', '')}")
    if png:
        from ..plan_map import draw_plan

        draw_plan(plan_, png)
        say(f"map written to {png}")
