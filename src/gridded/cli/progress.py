"""What a long command shows on stderr while it works (tasks done / total, rate, ETA) and the tables
it ends with: the plan's summary and the run's summary."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..process import CellResult


def plan_summary(plan) -> str:
    """What a plan will compute: recipe, grid, items, cells, tasks and batches (of a Plan, or of a
    PlanStream once iterated)."""
    if hasattr(plan, "n_cells_with_data"):
        n_tasks, n_cells, obs, n_batches = plan.n_tasks, plan.n_cells_with_data, plan.n_observations, plan.n_batches
    else:
        tasks = plan.tasks
        n_tasks, n_cells, n_batches = len(tasks), len({t.key for t in tasks}), len(plan.batches)
        obs = sum(len(t.observations) for t in tasks)
    mask = plan.pipeline.mask
    mask_text = "none" if mask is None else (mask if isinstance(mask, str) else mask.spec())
    if mask_text == "infer":
        mask_text = "per item, from its assets"
    return (
        f"pipeline {plan.pipeline.name}: {plan.pipeline.statistic} of {','.join(plan.pipeline.layers)} "
        f"per {plan.pipeline.period}, mask {mask_text}\n"
        f"grid {plan.grid.name} ({plan.grid.crs}, {plan.grid.resolution:g} m, tiles "
        f"{plan.grid.tile_shape_px[1]}x{plan.grid.tile_shape_px[0]} px)\n"
        f"{plan.n_items} source items; {plan.n_cells_in_extent} cells meet the extent, {n_cells} with data, "
        f"{len(plan.empty_cells)} without\n"
        f"{n_tasks} tasks ({obs} observations) in {n_batches} batches"
        + "".join(f"\n{line}" for line in [*largest_task_line(plan), *bands_read(plan)])
    )


def largest_task_line(plan) -> list[str]:
    """The memory the largest task needs at its peak, estimated from the plan (gridded.sizing)."""
    from ..sizing import describe_bytes, largest_task

    shape, need = largest_task(plan)
    if shape is None:
        return []
    (x, y), (ny, nx) = shape.key, shape.shape_yx
    return [f"largest task needs ~{describe_bytes(need)} of memory (cell x{x} y{y} {shape.period}: {nx}x{ny} px, "
            f"{shape.layers} observations, {len(plan.pipeline.bands)} bands)"]


def bands_read(plan) -> list[str]:
    """One line per band and way it is read: the asset, its data type and what its values mean."""
    lines = []
    order = plan.pipeline.bands.index
    for band, key, data_type, scale, offset, n in sorted(plan.bands_read, key=lambda r: order(r[0])):
        target = plan.pipeline.encoding(band)
        meaning = "" if (scale, offset) == (1.0, 0.0) else f", value x {scale:g} {offset:+g}"
        converted = "" if (scale, offset) == target else f" (converted to x {target[0]:g} {target[1]:+g})"
        lines.append(f"band {band}: asset {key} ({data_type or 'type from the file'}{meaning}){converted}, "
                     f"{n} items")
    return lines


class Progress:
    """Tasks done / total, rate and ETA on stderr: one rewritten line on a terminal, else a line per 5%.

    The rate counts only tasks computed (done or failed) since the first of them: skipped tasks
    cost a lookup, not a computation, and would make a resumed run's ETA far too short."""

    def __init__(self, total: int, stream=sys.stderr, quiet: bool = False):
        self.total, self.stream, self.quiet = total, stream, quiet
        self.done = 0
        self.results: list[CellResult] = []
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.started = time.monotonic()
        self.computing_since = self.started  # after the skipped tasks that came before any computed one
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_step = -1
        self._width = 0

    def update(self, result: CellResult) -> None:
        self.results.append(result)
        self.done += 1
        self.counts[result.status] = self.counts.get(result.status, 0) + 1
        computed = self.counts["done"] + self.counts["failed"]
        if result.status == "skipped" and not computed:
            self.computing_since = time.monotonic()
        if self.quiet:
            return
        elapsed = time.monotonic() - self.computing_since
        rate = computed / elapsed if computed and elapsed > 0 else 0.0
        eta = f"ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 else "ETA -"
        line = (f"tasks {self.done}/{self.total}  done {self.counts['done']} skipped {self.counts['skipped']} "
                f"failed {self.counts['failed']}  {rate:.2f}/s  {eta}")
        step = int(20 * self.done / max(self.total, 1))
        if self.tty:  # padded to the last line's width: a shorter line leaves no characters behind
            self.stream.write("\r" + line.ljust(self._width) + ("\n" if self.done == self.total else ""))
            self._width = len(line)
        elif step != self._last_step or self.done == self.total:
            self.stream.write(line + "\n")
        self._last_step = step
        self.stream.flush()


def summary_table(results: list[CellResult], elapsed_s: float, output: str) -> str:
    """The end-of-run table: counts per status, then each failed task with its reason."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    cells = {s: len({r.key for r in results if r.status == s}) for s in counts}
    lines = [f"{'status':<8} {'tasks':>6} {'cells':>6}"]
    lines += [f"{s:<8} {counts[s]:>6} {cells[s]:>6}" for s in counts]
    lines.append(f"{'total':<8} {len(results):>6} {len({r.key for r in results}):>6}")
    rate = len(results) / elapsed_s if elapsed_s > 0 else 0.0
    lines.append(f"elapsed {elapsed_s:.1f} s ({rate:.2f} tasks/s); outputs in {output}")
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED x{r.key[0]} y{r.key[1]} {r.period}: {r.reason}")
    return "\n".join(lines)
