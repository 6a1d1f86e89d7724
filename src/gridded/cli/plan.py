"""`gridded plan`: what would run, and where: cells, periods, observations, batches, states."""

from __future__ import annotations

import json

import click

from .options import build_selection, check_file_target, say, selection_options, write_local_file
from .progress import plan_summary


def plan_rows(plan) -> list[dict]:
    """One row per task, in batch order: its batch, cell, period and observation count."""
    return [
        {"batch": b.id, "cell": list(t.key), "period": t.period.label, "observations": len(t.observations)}
        for b in plan.batches for t in b.tasks
    ]


def _print_rows(rows, as_json: bool) -> None:
    """The tasks as a table, or as one JSON list, a task a line (written as the rows come: a
    continent's 10^5 tasks would take seconds through json's indenting encoder, which is Python)."""
    if as_json:
        out = click.get_text_stream("stdout")
        first = True
        for r in rows:
            out.write(("[\n " if first else ",\n ") + json.dumps(r))
            first = False
        out.write("[]\n" if first else "\n]\n")
        return
    click.echo(f"{'batch':>5}  {'cell':<14} {'period':<14} {'obs':>4}  state")
    for r in rows:
        cell = f"x{r['cell'][0]} y{r['cell'][1]}"
        click.echo(f"{r['batch']:>5}  {cell:<14} {r['period']:<14} {r['observations']:>4}  {r.get('state', '')}")


@click.command()
@selection_options
@click.option("--output", default=None, help="Show which tasks are done, to do, changed or failed in this output.")
@click.option("--png", default=None, type=click.Path(dir_okay=False),
              help="Draw the plan on a map: cells by state, extent, scene footprints.")
@click.option("--geojson", default=None, type=click.Path(dir_okay=False),
              help="Write the cells x periods as GeoJSON (state, batch, observations, item) for QGIS.")
@click.option("--json", "as_json", is_flag=True, help="Print the tasks as JSON instead of a table.")
def plan(output, png, geojson, as_json, **kwargs):
    """Show what would run, and where: cells, periods, observations, batches."""
    from ..plan import plan_for, plan_stream

    selection = build_selection(**kwargs)
    for target, flag in ((png, "--png"), (geojson, "--geojson")):
        if target:
            check_file_target(target, flag)
    if not (output or png or geojson):  # rows as they are planned: no observation made, any size
        with plan_stream(selection, workers=None) as stream:  # blocks planned on every CPU
            _print_rows(stream.rows(), as_json)
            say(plan_summary(stream))
        return
    plan_ = plan_for(selection)
    say(plan_summary(plan_))
    rows = plan_rows(plan_)
    by_task = {(tuple(r["cell"]), r["period"]): r for r in rows}
    states, storage = None, None
    if output:
        from ..io.storage import open_storage
        from ..status import plan_states

        storage = open_storage(output)
        states = plan_states(plan_, storage)
        for (key, period), state in states.items():
            by_task[(key, period)]["state"] = state
    _print_rows(rows, as_json)
    if png or geojson:
        from ..status import plan_features

        features = plan_features(plan_, states, storage)
        if geojson:
            write_local_file(geojson, json.dumps(features).encode(), flag="--geojson")
            say(f"cells written to {geojson}")
        if png:
            from ..maps import draw_plan

            draw_plan(plan_, png, features)
            say(f"map written to {png}")
