"""gridded: analysis-ready composites from STAC imagery, tile by tile.

The Python API mirrors the command line: `select` what to compute, `plan` it, `run` it here (or
`render_workflow` for Argo), or get the same pixels in memory with `composite`. Names are loaded
when first used, so `import gridded` stays cheap (no numba, rasterio or dask until needed).
"""

from __future__ import annotations

import importlib
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("gridded")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

# public name -> (module, attribute)
_API = {
    "select": ("selection", "select"),
    "plan": ("plan", "plan_for"),
    "run": ("run", "run_plan"),
    "process_batch": ("process", "process_batch"),
    "write_catalog": ("catalog", "write_catalog"),
    "ingest": ("index", "ingest"),
    "open_index": ("index", "open_index"),
    "render_workflow": ("workflow.render", "render_workflow"),
    "composite": ("dataset", "composite"),
    "Selection": ("selection", "Selection"),
    "Plan": ("plan", "Plan"),
    "Batch": ("plan", "Batch"),
    "Task": ("plan", "Task"),
    "Observation": ("plan", "Observation"),
    "Grid": ("grid", "Grid"),
    "Pipeline": ("pipeline", "Pipeline"),
    "MaskRule": ("masks", "MaskRule"),
    "Period": ("period", "Period"),
    "TimeRange": ("period", "TimeRange"),
    "CellResult": ("process", "CellResult"),
    "WorkflowOptions": ("workflow.options", "WorkflowOptions"),
    "GriddedError": ("errors", "GriddedError"),
    "ConfigError": ("errors", "ConfigError"),
    "SourceError": ("errors", "SourceError"),
    "OutputError": ("errors", "OutputError"),
    "ArtifactError": ("errors", "ArtifactError"),
    "ClusterError": ("errors", "ClusterError"),
    "CellError": ("errors", "CellError"),
    "Interrupted": ("errors", "Interrupted"),
}
__all__ = ["__version__", "select", "plan", "run", "process_batch", "write_catalog", "ingest", "open_index",
          "render_workflow", "composite", "Selection", "Plan", "Batch", "Task", "Observation", "Grid",
          "Pipeline", "MaskRule", "Period", "TimeRange", "CellResult", "WorkflowOptions", "GriddedError",
          "ConfigError", "SourceError", "OutputError", "ArtifactError", "ClusterError", "CellError",
          "Interrupted"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'gridded' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`gridded.plan` and `gridded.run` are API functions and also modules (the stages of the flow).
    Importing a submodule binds it as an attribute of its package: that binding is skipped for the
    API's names, so `gridded.plan(...)` stays the function after `gridded.plan` the module is
    imported (`from gridded.plan import Task` still reaches the module)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from .catalog import write_catalog
    from .dataset import composite
    from .errors import (
        ArtifactError,
        CellError,
        ClusterError,
        ConfigError,
        GriddedError,
        Interrupted,
        OutputError,
        SourceError,
    )
    from .grid import Grid
    from .index import ingest, open_index
    from .masks import MaskRule
    from .period import Period, TimeRange
    from .pipeline import Pipeline
    from .plan import Batch, Observation, Plan, Task
    from .plan import plan_for as plan
    from .process import CellResult, process_batch
    from .run import run_plan as run
    from .selection import Selection, select
    from .workflow.options import WorkflowOptions
    from .workflow.render import render_workflow
