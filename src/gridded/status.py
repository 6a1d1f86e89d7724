"""Where a run stands, as GeoJSON that QGIS opens: one feature per cell and period with its state
(to-do, done, changed, failed, no-data), batch, observation count and, once done, its item.

A run writes its plan beside its outputs (`plan.geojson`), so the state of an output can be told
at any time, by anyone, from the output alone: the planned features, the committed items and the
last run report. Nothing is asked of the workers, which is what lets `gridded status` follow an
Argo workflow writing to the same output."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from .errors import GriddedError
from .grid import cell_outline_lonlat
from .io.storage import Storage, get_many, put_if_changed
from .items import item_name
from .plan import Plan

PLAN_NAME = "plan.geojson"
STATUS_NAME = "status.geojson"
STATES = ("to-do", "done", "changed", "failed", "no-data")
STATUS_EVERY_S = 5.0


def plan_features(plan: Plan, states: dict[tuple[tuple[int, int], str], str] | None = None,
                  output: Storage | None = None) -> dict:
    """The plan as a FeatureCollection: a feature per cell and period (state to-do unless `states`
    says otherwise), plus one per cell of the extent without any observation (no-data)."""
    features = []
    for batch in plan.batches:
        for task in batch.tasks:
            outline, _ = cell_outline_lonlat(task.geobox)
            name = item_name(plan.pipeline, task)
            state = (states or {}).get((task.key, task.period.label), "to-do")
            properties = {"cell": f"x{task.key[0]} y{task.key[1]}", "x": task.key[0], "y": task.key[1],
                          "period": task.period.label, "state": state, "batch": batch.id,
                          "observations": len(task.observations), "item": name}
            if output is not None and state == "done":
                properties["item_href"] = output.url(name)
            features.append({"type": "Feature", "geometry": outline, "properties": properties})
    for key in plan.empty_cells:
        outline, _ = cell_outline_lonlat(plan.grid.geobox(key))
        features.append({"type": "Feature", "geometry": outline, "properties": {
            "cell": f"x{key[0]} y{key[1]}", "x": key[0], "y": key[1], "period": None, "state": "no-data",
            "batch": None, "observations": 0, "item": None}})
    return {"type": "FeatureCollection", "name": plan.pipeline.name, "features": features}


def plan_states(plan: Plan, storage: Storage) -> dict[tuple[tuple[int, int], str], str]:
    """Per (cell, period): done or changed as the output's items say (fingerprints compared),
    failed where the last run report says a task still to do failed, else to-do."""
    from .run import REPORT_NAME

    states: dict[tuple[tuple[int, int], str], str] = dict(plan.status(storage.uri))
    failed = _failed_in_report(storage.get_if_exists(REPORT_NAME))
    for (key, period), state in states.items():
        if state == "to-do" and (key[0], key[1], period) in failed:
            states[(key, period)] = "failed"
    return states


def write_plan(storage: Storage, plan: Plan) -> None:
    """plan.geojson at the output root: what `output_status` compares the output with."""
    put_if_changed(storage, PLAN_NAME, json.dumps(plan_features(plan)).encode())


def output_status(storage: Storage) -> dict:
    """The output's plan with each feature's state as the output now says: done where its item
    is committed, failed where the last run report says so, to-do elsewhere."""
    return _output_status(storage)[0]


def _output_status(storage: Storage) -> tuple[dict, bytes | None]:
    """(output_status, status.geojson as it is): the plan, the report, the listing and the status
    read at once (on S3 each is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    from .run import REPORT_NAME

    with ThreadPoolExecutor(max_workers=1) as pool:
        listing = pool.submit(storage.list, ".stac-item.json")
        try:
            plan_body, report_body, old_status = get_many(storage, [PLAN_NAME, REPORT_NAME, STATUS_NAME])
            if plan_body is None:
                raise GriddedError(f"{storage.uri}/{PLAN_NAME}: not found")
        except GriddedError as err:
            raise GriddedError(f"{storage.uri}: no {PLAN_NAME}: give the output of a run (gridded run or a "
                               f"workflow writes it)", retryable=err.retryable) from err
        committed = set(listing.result())
    planned = json.loads(plan_body)
    failed = _failed_in_report(report_body)
    for feature in planned["features"]:
        props = feature["properties"]
        if props["state"] == "no-data":
            continue
        if props["item"] in committed:
            props["state"], props["item_href"] = "done", storage.url(props["item"])
        elif (props["x"], props["y"], props["period"]) in failed:
            props["state"] = "failed"
        else:
            props["state"] = "to-do"
    return planned, old_status


def _failed_in_report(body: bytes | None) -> set[tuple[int, int, str]]:
    try:
        report = json.loads(body) if body is not None else {}
    except ValueError:
        return set()
    return {(t["key"][0], t["key"][1], t["period"]) for t in report.get("tasks", []) if t.get("status") == "failed"}


def summary(status: dict) -> str:
    """One line: how many cell-periods are in each state."""
    counts = {state: 0 for state in STATES}
    for feature in status["features"]:
        counts[feature["properties"]["state"]] += 1
    return "  ".join(f"{state} {n}" for state, n in counts.items() if n or state in ("to-do", "done"))


def write_status(storage: Storage) -> dict:
    """status.geojson at the output root, written whole (a reader never sees half of it)."""
    status, old = _output_status(storage)
    put_if_changed(storage, STATUS_NAME, json.dumps(status).encode(), existing=old)
    return status


class StatusWriter:
    """Keeps status.geojson current while a run goes on: every few seconds, and once at the end
    when the run stops on an exception (a run that ends writes it after its report)."""

    def __init__(self, storage: Storage, every_s: float = STATUS_EVERY_S,
                 on_status: Callable[[dict], None] | None = None):
        self.storage, self.every_s, self.on_status = storage, every_s, on_status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gridded-status", daemon=True)

    def __enter__(self) -> StatusWriter:
        self._thread.start()
        return self

    def __exit__(self, kind, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if kind is not None:
            self._write()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._write()

    def _write(self) -> None:
        try:
            status = write_status(self.storage)
        except GriddedError:  # a status not written now is written at the next tick
            return
        if self.on_status:
            self.on_status(status)
