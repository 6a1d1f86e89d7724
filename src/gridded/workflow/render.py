"""Plan -> Argo manifests: a Workflow, WorkflowTemplate or CronWorkflow built from hera's models, as YAML.

The workflow runs the same CLI steps as `gridded run`, in containers: `tiles generate` writes the
cells artifact straight to S3 and prints how many batches it holds; `tiles process` runs once per
batch id, reading only its own batch (see fanout.py: `withSequence`, or child workflows for large
plans); `catalog` writes the output catalog once, at the end; an exit handler reports the outcome.
Nothing here reads files or the network, bar a local `--extent` file inlined as WKT: the caller
passes every value, so a render is a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from ..errors import ConfigError
from .fanout import fan_out_templates
from .options import INDEX_DSN_ENV, INDEX_SECRET_KEY, WorkflowOptions, check_index_dsn, dns_name, label_value
from .templates import (
    RETRY_EXPRESSION,
    container_template,
    exit_templates,
    labels,
    manifest,
    secret_env,
    workflow_spec,
)

__all__ = ["RETRY_EXPRESSION", "SELECTION_FLAGS", "render", "render_ingest", "render_workflow"]

# The selection flags of `tiles generate`, in the order the CLI lists them (and parameters render).
SELECTION_FLAGS = ("source", "extent", "time", "as_of", "pipeline", "grid", "statistic", "period", "bands",
                   "mask", "band_index", "rank", "collection", "query", "filter", "sign", "tiles_per_worker")
PARAMETER_HELP = {
    "source": "STAC catalog, collection or API to read (s3:// or https:// so pods can reach it)",
    "extent": "lon/lat bbox minx,miny,maxx,maxy, WKT, or an s3:// or https:// GeoJSON or WKT file",
    "time": "ISO interval START/END, or last:PERIOD relative to as_of",
    "as_of": "reference time for time last:PERIOD",
    "pipeline": "built-in recipe name",
    "grid": "built-in grid name",
    "statistic": "median, geomedian or geomad",
    "period": "ISO 8601 period of each composite",
    "bands": "comma-separated band names",
    "mask": "clear-observation rule",
    "band_index": "indices computed per observation, ';'-separated (ndvi or NAME=EXPRESSION)",
    "rank": "what statistic best ranks by (a band or index; -NAME for the least)",
    "collection": "only items of these collection ids (comma-separated)",
    "query": "STAC API search terms, comma-separated (e.g. eo:cloud_cover<80)",
    "filter": "CQL2 filter of the STAC API search (text or JSON)",
    "sign": "sign asset hrefs when read (planetary-computer)",
    "tiles_per_worker": "cells per batch (one pod each)",
    "output": "s3:// root of the COGs, items and catalog",
    "aws_endpoint_url": "S3 endpoint for boto3 and GDAL (MinIO, Ceph); not a secret",
    "index": "PostgreSQL DSN of the STAC index (no password: use a Secret for that)",
    "bbox": "only items meeting this lon/lat bbox",
    "datetime": "only items in this ISO interval",
}
# Each pod's arguments hold the extent, and the workflow object holds it twice (etcd: ~1.5 MB per
# object; Linux: 128 KiB per argument): a larger one goes to S3 and travels as its URL.
MAX_INLINE_EXTENT_BYTES = 8 * 1024
STAND_IN_EXTENT = "0,0,1,1"  # checks the other flags when the extent is a URL the pods will read
STAND_IN_INDEX = "postgresql://gridded@index/stac"  # the same when the DSN stays in its Secret


def render(selection: dict[str, str | None], options: WorkflowOptions) -> str:
    """Selection flags + options -> YAML of one Workflow, WorkflowTemplate or CronWorkflow.

    With options.index_secret the plan comes from the PostgreSQL index whose DSN that Secret holds
    (key `dsn`), and the selection has no source."""
    if options.output is None:
        raise ConfigError("no output: pass --output s3://BUCKET/PREFIX (pods cannot share a local disk)")
    values = _selection_values(selection, scheduled=options.schedule is not None,
                               from_index=options.index_secret is not None)
    names = [k for k in SELECTION_FLAGS if k in values]
    parameters = {**{k: values[k] for k in names}, "output": options.output}
    if options.aws_endpoint_url:
        parameters["aws_endpoint_url"] = options.aws_endpoint_url
    generate_args = ["tiles", "generate", *_flags(names)]
    if options.schedule is not None:
        generate_args += ["--as-of", "{{workflow.scheduledTime}}"]
    generate_args += ["--cells", options.cells_uri()]
    index_env = []
    if options.index_secret:  # `tiles generate` with no --source reads the DSN from this variable
        index_env.append(secret_env(INDEX_DSN_ENV, options.index_secret, INDEX_SECRET_KEY))
    recipe = PurePosixPath(values.get("pipeline") or "custom")
    pipeline = label_value(recipe.stem if recipe.suffix in (".yaml", ".yml") else recipe.name)
    object_labels = labels(options, component="composites", pipeline=pipeline)
    main, process, chunks, child = fan_out_templates(options, object_labels)
    templates = [
        main,
        container_template("generate", generate_args, options, extra_env=index_env),
        process,
        container_template("catalog", ["catalog", "--output", "{{workflow.parameters.output}}"], options),
        chunks,
        child,
        *exit_templates(options),
    ]
    spec = workflow_spec(templates, parameters, options, object_labels, help_for=PARAMETER_HELP)
    return manifest(spec, options, object_labels, name=options.name or dns_name(f"gridded-{pipeline}"))


def render_workflow(flags: Mapping[str, object], options: WorkflowOptions) -> str:
    """The YAML of a run as Argo Workflows: the selection's flags (source, extent, time, ... as
    `gridded tiles generate` takes them; None for a flag not given) checked as a run would check
    them, plus where and how the pods run.

    >>> from gridded.workflow.options import WorkflowOptions
    >>> yaml_text = render_workflow({"source": "s3://stac/catalog.json", "extent": "146.9,-36.1,147.1,-35.9",
    ...                              "time": "2024-01", "grid": "utm55s-10m", "bands": "red,nir"},
    ...                             WorkflowOptions(image="ghcr.io/org/gridded:0.1.0", output="s3://out/x"))
    >>> yaml_text.splitlines()[:2]
    ['apiVersion: argoproj.io/v1alpha1', 'kind: Workflow']
    """
    if flags.get("time") is None and options.schedule is None:
        raise ConfigError("no --time: give START/END, or --schedule CRON to process the last complete period")
    return render(portable_selection(flags, index_secret=options.index_secret), options)


def portable_selection(flags: Mapping[str, object], *, index_secret: str | None = None) -> dict[str, str | None]:
    """The selection as pod arguments, checked here: a bbox, small WKT or an extent URL; no local
    files; the index only through its Secret (an `--index` DSN given as well is checked, never kept)."""
    from pathlib import Path

    from ..selection import select

    flags = {k: flags.get(k) for k in (*SELECTION_FLAGS, "index", "allow_root")}
    for listed, separator in (("collection", ","), ("query", ","), ("band_index", ";")):
        value = flags[listed]  # repeatable flags travel as one parameter
        if value is not None and not isinstance(value, str):
            flags[listed] = separator.join(str(v) for v in value) or None
    flags["tiles_per_worker"] = flags["tiles_per_worker"] or 4
    index = _checked_index(flags.pop("index"), index_secret, flags)
    if flags.pop("allow_root"):
        raise ConfigError("--allow-root: pods have no local folders to allow; use s3:// or https:// assets")
    extent, extent_to_check = _portable_extent(flags["extent"])
    checked = {k: v for k, v in flags.items() if k not in ("source", "band_index", "extent")}
    checked["indices"] = [p for p in (flags["band_index"] or "").split(";") if p.strip()] or None
    # a schedule fills the time in: check the rest with a stand-in
    select(flags["source"], index=index, extent=extent_to_check, **{**checked, "time": checked["time"] or "last:P1M"})
    for flag in ("grid", "pipeline"):
        value = flags.get(flag)
        if value and Path(str(value)).suffix in (".yaml", ".yml"):
            raise ConfigError(f"--{flag} {value}: a local file does not reach the pods; use a built-in name")
    if flags["source"] is not None and "://" not in str(flags["source"]):
        raise ConfigError(f"--source {flags['source']}: a local path does not reach the pods; use s3:// or https://")
    flags.update(extent=extent, tiles_per_worker=str(flags["tiles_per_worker"]))
    return {k: None if v is None else str(v) for k, v in flags.items()}


def _checked_index(index: str | None, index_secret: str | None, flags: dict) -> str | None:
    """The DSN select() checks the selection with (a stand-in when it stays in the Secret), or None."""
    if index is not None and index_secret is None:
        raise ConfigError(f"--index: the pods read the DSN from a Secret, never from the manifest; create one "
                          f"(kubectl create secret generic NAME --from-literal={INDEX_SECRET_KEY}=DSN) and pass "
                          f"--index-secret NAME")
    if index_secret is None:
        if flags.get("source") is None:
            raise ConfigError("no --source: a workflow reads an s3:// or https:// catalog; pass --source, or "
                              "--index-secret NAME to plan from a PostgreSQL index")
        return None
    if flags.get("source") is not None:
        raise ConfigError("--source with --index-secret: plan from one; drop --source to plan from the index")
    if flags.get("query") or flags.get("filter"):
        raise ConfigError("--query/--filter with an index: they need a STAC API --source; the index plans by "
                          "--collection, place and time")
    if index is not None:
        check_index_dsn(index, inline=False)
    return STAND_IN_INDEX


def _portable_extent(value: object) -> tuple[str | None, object]:
    """(the extent as the pods get it, what to check it as): a bbox as given, a URL as given (the
    generate pod reads it), anything else parsed here and inlined as WKT, if it is small."""
    from ..extent import BBOX_TEXT, check_extent_url, is_extent_url, parse_extent

    if value is None:
        return None, None
    text = str(value).strip()
    if is_extent_url(text):
        check_extent_url(text)
        return text, STAND_IN_EXTENT
    if BBOX_TEXT.fullmatch(text):
        return text, text
    geometry = parse_extent(text)
    wkt = geometry.geom.wkt
    if len(wkt.encode()) > MAX_INLINE_EXTENT_BYTES:
        shown = text if len(text) <= 200 else "(WKT)"
        raise ConfigError(f"--extent {shown}: {len(wkt.encode()) / 1024:.0f} KiB as WKT, over the "
                          f"{MAX_INLINE_EXTENT_BYTES // 1024} KiB a workflow may carry inline; upload it and pass "
                          f"--extent s3://BUCKET/extent.geojson (the generate pod reads it)")
    return wkt, geometry


def render_ingest(source: str, index: str | None, options: WorkflowOptions, collection: str | None = None,
                  bbox: str | None = None, datetime: str | None = None) -> str:
    """YAML of a workflow running `gridded stac ingest SOURCE` into a PostgreSQL index.

    The DSN comes inline (`index`, which must hold no password) or from options.index_secret.
    """
    if index and options.index_secret:
        raise ConfigError("--index and --index-secret: give the DSN one way; a Secret if it holds a password")
    if not index and not options.index_secret:
        raise ConfigError("no index: pass --index postgresql://USER@HOST/DB or --index-secret NAME "
                          f"(a Secret whose key '{INDEX_SECRET_KEY}' holds the DSN)")
    if index:
        check_index_dsn(index)
    parameters = {k: v for k, v in (("source", source), ("index", index), ("collection", collection),
                                    ("bbox", bbox), ("datetime", datetime)) if v}
    if options.aws_endpoint_url:
        parameters["aws_endpoint_url"] = options.aws_endpoint_url
    names = [k for k in ("index", "collection", "bbox", "datetime") if k in parameters]
    args = ["stac", "ingest", "{{workflow.parameters.source}}", *_flags(names)]
    extra_env = []
    if options.index_secret:
        # the CLI reads --index from GRIDDED_INDEX_DSN, so the DSN is in neither the manifest nor argv
        extra_env.append(secret_env(INDEX_DSN_ENV, options.index_secret, INDEX_SECRET_KEY))
    templates = [container_template("ingest", args, options, extra_env=extra_env), *exit_templates(options)]
    object_labels = labels(options, component="ingest", pipeline=None)
    spec = workflow_spec(templates, parameters, options, object_labels, entrypoint="ingest", help_for=PARAMETER_HELP)
    return manifest(spec, options, object_labels, name=options.name or "gridded-ingest")


def _selection_values(selection: dict[str, str | None], *, scheduled: bool, from_index: bool) -> dict[str, str]:
    unknown = sorted(set(selection) - set(SELECTION_FLAGS))
    if unknown:
        raise ConfigError(f"unknown selection flags {', '.join(unknown)}; known: {', '.join(SELECTION_FLAGS)}")
    values = {k: str(v) for k, v in selection.items() if v is not None}
    if scheduled:
        time_ = values.get("time")
        if time_ is not None and not time_.startswith("last:"):
            raise ConfigError(f"--time {time_} with --schedule: each run would redo the same dates; "
                              f"use --time last:{values.get('period', 'P1M')}")
        if "as_of" in values:
            raise ConfigError("--as-of with --schedule: a run's scheduled time is its reference; drop --as-of")
        values["time"] = time_ or f"last:{values.get('period', 'P1M')}"
    if from_index and "source" in values:
        raise ConfigError("--source with --index-secret: plan from one; drop --source to plan from the index")
    for required in ("extent", "time") if from_index else ("source", "extent", "time"):
        if required not in values:
            raise ConfigError(f"no --{required.replace('_', '-')}: the workflow needs it")
    tiles = values.get("tiles_per_worker")
    if tiles is not None and not (tiles.isdigit() and int(tiles) >= 1):
        raise ConfigError(f"--tiles-per-worker {tiles}: must be a whole number, at least 1")
    extent = values.get("extent", "")
    if len(extent.encode()) > MAX_INLINE_EXTENT_BYTES:
        raise ConfigError(f"--extent: {len(extent.encode()) / 1024:.0f} KiB inline, over the "
                          f"{MAX_INLINE_EXTENT_BYTES // 1024} KiB a workflow may carry; upload it and pass "
                          f"--extent s3://BUCKET/extent.geojson")
    return values


def _flags(names: list[str]) -> list[str]:
    """`--flag {{workflow.parameters.flag}}` for each name: the values stay editable at submit time."""
    return [arg for name in names for arg in (f"--{name.replace('_', '-')}", f"{{{{workflow.parameters.{name}}}}}")]
