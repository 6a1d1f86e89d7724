"""Plan -> Argo manifests: a Workflow, WorkflowTemplate or CronWorkflow built from hera's models, as YAML.

The workflow runs the same CLI steps as `gridded run`, in containers: `tiles generate` writes the
cells artifact to S3 and prints the batch ids; `tiles process` runs once per id (`withParam`);
`catalog` rebuilds the output catalog; an exit handler reports the outcome. Nothing here reads
files or the environment: the caller passes every value, so a render is a pure function.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import yaml
from hera.workflows import models as m

from ..errors import ConfigError
from ..io.s3 import REQUESTER_PAYS_ENV, UNSIGNED_ENV
from .options import INDEX_SECRET_KEY, WorkflowOptions, check_index_dsn, dns_name, label_value

# The selection flags of `tiles generate`, in the order the CLI lists them (and parameters render).
SELECTION_FLAGS = ("source", "extent", "time", "as_of", "pipeline", "grid", "statistic", "period", "bands",
                   "mask", "band_index", "rank", "collection", "query", "filter", "sign", "tiles_per_worker")
PARAMETER_HELP = {
    "source": "STAC catalog, collection or API to read (s3:// or https:// so pods can reach it)",
    "extent": "lon/lat bbox minx,miny,maxx,maxy or WKT",
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

CELLS_PATH = "/tmp/cells.pickle"
# `gridded` exits 2 on bad input or configuration: the same pod would fail the same way again.
RETRY_EXPRESSION = "asInt(lastRetry.exitCode) != 2"
BACKOFF_DURATION_S = 30
BACKOFF_FACTOR = 2
BACKOFF_CAP_S = 600
TTL_AFTER_SUCCESS_S = 24 * 3600
TTL_AFTER_FAILURE_S = 7 * 24 * 3600
# A cron run missed by less than this still starts: workflow.scheduledTime, not the start time,
# picks the period, so a late start computes the same composites.
CRON_STARTING_DEADLINE_S = 24 * 3600
REPORT_DEADLINE_S = 300
REPORT_RESOURCES = {"cpu": "100m", "memory": "64Mi"}
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")  # keys (and env names) in options.s3_secret
YAML_FIRST = ("name", "apiVersion", "kind", "metadata", "spec", "image", "command", "args")


def render(selection: dict[str, str | None], options: WorkflowOptions) -> str:
    """Selection flags + options -> YAML of one Workflow, WorkflowTemplate or CronWorkflow."""
    if options.output is None:
        raise ConfigError("no output: pass --output s3://BUCKET/PREFIX (pods cannot share a local disk)")
    values = _selection_values(selection, scheduled=options.schedule is not None)
    names = [k for k in SELECTION_FLAGS if k in values]
    parameters = {**{k: values[k] for k in names}, "output": options.output}
    if options.aws_endpoint_url:
        parameters["aws_endpoint_url"] = options.aws_endpoint_url
    generate_args = ["tiles", "generate", *_flags(names)]
    if options.schedule is not None:
        generate_args += ["--as-of", "{{workflow.scheduledTime}}"]
    generate_args += ["--cells", CELLS_PATH]
    bucket, key = options.cells_key()
    cells_out = m.Artifact(name="cells", path=CELLS_PATH, archive=m.ArchiveStrategy(none=m.NoneStrategy()),
                           s3=_s3_location(options, bucket, key))
    process_args = ["tiles", "process", "--cells", CELLS_PATH, "--batch", "{{inputs.parameters.batch}}",
                    "--output", "{{workflow.parameters.output}}"]
    if options.on_bad_source != "fail":
        process_args += ["--on-bad-source", options.on_bad_source]
    templates = [
        _main_template(options.style),
        _container_template("generate", generate_args, options, outputs=m.Outputs(artifacts=[cells_out])),
        _container_template("process", process_args, options, inputs=m.Inputs(
            parameters=[m.Parameter(name="batch")],
            artifacts=[m.Artifact(name="cells", path=CELLS_PATH)])),
        _container_template("catalog", ["catalog", "--output", "{{workflow.parameters.output}}"], options),
        *_exit_templates(options),
    ]
    recipe = PurePosixPath(values.get("pipeline") or "custom")
    pipeline = label_value(recipe.stem if recipe.suffix in (".yaml", ".yml") else recipe.name)
    labels = _labels(options, component="composites", pipeline=pipeline)
    spec = _workflow_spec(templates, parameters, options, labels)
    return _manifest(spec, options, labels, name=options.name or dns_name(f"gridded-{pipeline}"))


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
    return render(portable_selection(flags), options)


def portable_selection(flags: Mapping[str, object]) -> dict[str, str | None]:
    """The selection as pod arguments: checked here, extent files inlined as WKT, no local files."""
    from pathlib import Path

    from ..extent import BBOX_TEXT, parse_extent
    from ..selection import select

    flags = {k: flags.get(k) for k in (*SELECTION_FLAGS, "index", "allow_root")}
    for listed, separator in (("collection", ","), ("query", ","), ("band_index", ";")):
        value = flags[listed]  # repeatable flags travel as one parameter
        if value is not None and not isinstance(value, str):
            flags[listed] = separator.join(str(v) for v in value) or None
    flags["tiles_per_worker"] = flags["tiles_per_worker"] or 4
    flags["allow_root"] = flags["allow_root"] or ()
    if flags.get("source") is None:
        raise ConfigError("no --source: a workflow reads an s3:// or https:// catalog; pass --source")
    checked = {k: v for k, v in flags.items() if k not in ("source", "allow_root", "band_index")}
    checked["indices"] = [p for p in (flags["band_index"] or "").split(";") if p.strip()] or None
    # a schedule fills the time in: check the rest with a stand-in
    select(flags["source"], allow_roots=flags["allow_root"], **{**checked, "time": checked["time"] or "last:P1M"})
    for flag in ("grid", "pipeline"):
        value = flags.get(flag)
        if value and Path(str(value)).suffix in (".yaml", ".yml"):
            raise ConfigError(f"--{flag} {value}: a local file does not reach the pods; use a built-in name")
    extent = str(flags["extent"])
    if not BBOX_TEXT.fullmatch(extent.strip()):
        extent = parse_extent(extent).geom.wkt
    if flags.pop("allow_root"):
        raise ConfigError("--allow-root: pods have no local folders to allow; use s3:// or https:// assets")
    if flags.pop("index"):
        raise ConfigError("--index: a workflow plans from --source (an s3:// or https:// catalog); "
                          "pass --source instead")
    if "://" not in str(flags["source"]):
        raise ConfigError(f"--source {flags['source']}: a local path does not reach the pods; use s3:// or https://")
    flags.update(extent=extent, tiles_per_worker=str(flags["tiles_per_worker"]))
    return {k: None if v is None else str(v) for k, v in flags.items()}


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
        extra_env.append(_secret_env("GRIDDED_INDEX_DSN", options.index_secret, INDEX_SECRET_KEY))
    templates = [_container_template("ingest", args, options, extra_env=extra_env), *_exit_templates(options)]
    labels = _labels(options, component="ingest", pipeline=None)
    spec = _workflow_spec(templates, parameters, options, labels, entrypoint="ingest")
    return _manifest(spec, options, labels, name=options.name or "gridded-ingest")


# --- validation ---------------------------------------------------------------------------------

def _selection_values(selection: dict[str, str | None], *, scheduled: bool) -> dict[str, str]:
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
    for required in ("source", "extent", "time"):
        if required not in values:
            raise ConfigError(f"no --{required.replace('_', '-')}: the workflow needs it")
    tiles = values.get("tiles_per_worker")
    if tiles is not None and not (tiles.isdigit() and int(tiles) >= 1):
        raise ConfigError(f"--tiles-per-worker {tiles}: must be a whole number, at least 1")
    return values


# --- building hera models -----------------------------------------------------------------------

def _flags(names: list[str]) -> list[str]:
    """`--flag {{workflow.parameters.flag}}` for each name: the values stay editable at submit time."""
    return [arg for name in names for arg in (f"--{name.replace('_', '-')}", f"{{{{workflow.parameters.{name}}}}}")]


def _main_template(style: str) -> m.Template:
    """generate -> process (one per batch id) -> catalog, as steps or as a DAG."""
    if style == "steps":
        def step(name: str, **kw) -> m.ParallelSteps:
            return m.ParallelSteps([m.WorkflowStep(name=name, template=name, **kw)])

        return m.Template(name="main", steps=[
            step("generate"),
            step("process", **_fan_out("steps")),
            step("catalog"),
        ])
    return m.Template(name="main", dag=m.DAGTemplate(tasks=[
        m.DAGTask(name="generate", template="generate"),
        m.DAGTask(name="process", template="process", depends="generate", **_fan_out("tasks")),
        m.DAGTask(name="catalog", template="catalog", depends="process"),
    ]))


def _fan_out(scope: str) -> dict:
    """One process pod per batch id from the generator's stdout: ids only, never the cell lists."""
    return {
        "with_param": f"{{{{{scope}.generate.outputs.result}}}}",
        "arguments": m.Arguments(
            parameters=[m.Parameter(name="batch", value="{{item}}")],
            artifacts=[m.Artifact(name="cells", from_=f"{{{{{scope}.generate.outputs.artifacts.cells}}}}")],
        ),
    }


def _container_template(name: str, args: list[str], options: WorkflowOptions, *, inputs: m.Inputs | None = None,
                        outputs: m.Outputs | None = None, extra_env: list[m.EnvVar] = ()) -> m.Template:
    env = [m.EnvVar(name="GRIDDED_IMAGE", value=options.image), *_s3_env(options), *extra_env]
    container = m.Container(image=options.image, command=["gridded"], args=args,
                            env=sorted(env, key=lambda e: e.name),
                            resources=_resources(cpu=options.cpu, memory=options.memory))
    return m.Template(name=name, inputs=inputs, outputs=outputs, container=container,
                      retry_strategy=_retry_strategy(options, options.deadline_s),
                      active_deadline_seconds=m.IntOrString(options.deadline_s))


def _exit_templates(options: WorkflowOptions) -> list[m.Template]:
    """The onExit handler: one small reporting container for Succeeded, another for Failed or Error."""
    handler = m.Template(name="exit-handler", steps=[m.ParallelSteps([
        m.WorkflowStep(name="succeeded", template="report-succeeded", when="{{workflow.status}} == Succeeded"),
        m.WorkflowStep(name="failed", template="report-failed", when="{{workflow.status}} != Succeeded"),
    ])])
    # env, not string templating, carries workflow.failures: it is JSON with quotes and newlines
    env = [m.EnvVar(name="WORKFLOW_NAME", value="{{workflow.name}}"),
           m.EnvVar(name="WORKFLOW_STATUS", value="{{workflow.status}}")]
    succeeded = "import os; print('gridded: workflow {WORKFLOW_NAME} Succeeded'.format(**os.environ))"
    failed = ("import os; print('gridded: workflow {WORKFLOW_NAME} {WORKFLOW_STATUS}; "
              "failed steps: {WORKFLOW_FAILURES}'.format(**os.environ))")
    reports = []
    for name, code, more in (("report-succeeded", succeeded, []),
                             ("report-failed", failed, [m.EnvVar(name="WORKFLOW_FAILURES",
                                                                 value="{{workflow.failures}}")])):
        container = m.Container(image=options.image, command=["python", "-c"], args=[code],
                                env=sorted([*env, *more], key=lambda e: e.name),
                                resources=_resources(**REPORT_RESOURCES))
        reports.append(m.Template(name=name, container=container,
                                  retry_strategy=_retry_strategy(options, REPORT_DEADLINE_S),
                                  active_deadline_seconds=m.IntOrString(REPORT_DEADLINE_S)))
    return [handler, *reports]


def _retry_strategy(options: WorkflowOptions, deadline_s: int) -> m.RetryStrategy:
    """Retry anything but exit 2, with exponential backoff; give up once every attempt could have run."""
    max_duration_s = (options.retries + 1) * deadline_s + options.retries * BACKOFF_CAP_S
    return m.RetryStrategy(
        limit=m.IntOrString(options.retries),
        retry_policy="Always",
        expression=RETRY_EXPRESSION,
        backoff=m.Backoff(duration=f"{BACKOFF_DURATION_S}s", factor=m.IntOrString(BACKOFF_FACTOR),
                          cap=f"{BACKOFF_CAP_S}s", max_duration=f"{max_duration_s}s"),
    )


def _resources(*, cpu: str, memory: str) -> m.ResourceRequirements:
    amounts = {"cpu": m.Quantity(cpu), "memory": m.Quantity(memory)}
    return m.ResourceRequirements(requests=amounts, limits=dict(amounts))


def _s3_env(options: WorkflowOptions) -> list[m.EnvVar]:
    """What `--unsigned`/`--requester-pays` set in a local run, the endpoint, and the credentials by reference."""
    env = []
    if options.unsigned:
        env.append(m.EnvVar(name=UNSIGNED_ENV, value="YES"))
    if options.requester_pays:
        env.append(m.EnvVar(name=REQUESTER_PAYS_ENV, value="requester"))
    if options.aws_endpoint_url:
        env.append(m.EnvVar(name="AWS_ENDPOINT_URL", value="{{workflow.parameters.aws_endpoint_url}}"))
    if options.s3_secret:
        env += [_secret_env(key, options.s3_secret, key) for key in S3_SECRET_KEYS]
    return env


def _secret_env(name: str, secret: str, key: str) -> m.EnvVar:
    return m.EnvVar(name=name, value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(name=secret, key=key)))


def _s3_location(options: WorkflowOptions, bucket: str, key: str) -> m.S3Artifact:
    """A complete location, so the cells artifact needs no cluster-wide artifact repository."""
    endpoint = urlsplit(options.aws_endpoint_url) if options.aws_endpoint_url else None
    secret = options.s3_secret
    return m.S3Artifact(
        bucket=bucket, key=key,
        endpoint=endpoint.netloc if endpoint else "s3.amazonaws.com",
        insecure=True if endpoint and endpoint.scheme == "http" else None,
        access_key_secret=m.SecretKeySelector(name=secret, key=S3_SECRET_KEYS[0]) if secret else None,
        secret_key_secret=m.SecretKeySelector(name=secret, key=S3_SECRET_KEYS[1]) if secret else None,
        use_sdk_creds=None if secret else True,  # IRSA / instance profile
    )


def _labels(options: WorkflowOptions, *, component: str, pipeline: str | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "gridded",
        "app.kubernetes.io/component": component,
        "gridded/version": label_value(options.version),
    }
    if pipeline:
        labels["gridded/pipeline"] = pipeline
    if options.owner:
        labels["gridded/owner"] = options.owner
    return dict(sorted(labels.items()))


def _workflow_spec(templates: list[m.Template], parameters: dict[str, str], options: WorkflowOptions,
                   labels: dict[str, str], *, entrypoint: str = "main") -> m.WorkflowSpec:
    return m.WorkflowSpec(
        entrypoint=entrypoint,
        on_exit="exit-handler",
        arguments=m.Arguments(parameters=[
            m.Parameter(name=k, value=v, description=PARAMETER_HELP.get(k)) for k, v in parameters.items()
        ]),
        templates=templates,
        parallelism=options.parallelism,
        service_account_name=options.service_account,
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
        ttl_strategy=m.TTLStrategy(seconds_after_success=TTL_AFTER_SUCCESS_S,
                                   seconds_after_failure=TTL_AFTER_FAILURE_S),
        pod_metadata=m.Metadata(labels=labels),
        # a WorkflowTemplate passes these labels on to the workflows submitted from it
        workflow_metadata=m.WorkflowMetadata(labels=labels) if options.kind == "template" else None,
    )


def _manifest(spec: m.WorkflowSpec, options: WorkflowOptions, labels: dict[str, str], *, name: str) -> str:
    api = "argoproj.io/v1alpha1"
    if options.schedule is not None:
        resource = m.CronWorkflow(
            api_version=api, kind="CronWorkflow",
            metadata=m.ObjectMeta(name=name, namespace=options.namespace, labels=labels),
            spec=m.CronWorkflowSpec(
                schedules=[options.schedule], timezone=options.timezone, concurrency_policy="Forbid",
                starting_deadline_seconds=CRON_STARTING_DEADLINE_S,
                workflow_metadata=m.ObjectMeta(labels=labels), workflow_spec=spec,
            ),
        )
    elif options.kind == "template":
        resource = m.WorkflowTemplate(api_version=api, kind="WorkflowTemplate", spec=spec,
                                      metadata=m.ObjectMeta(name=name, namespace=options.namespace, labels=labels))
    else:
        resource = m.Workflow(api_version=api, kind="Workflow", spec=spec, metadata=m.ObjectMeta(
            generate_name=f"{name}-", namespace=options.namespace, labels=labels))
    return _to_yaml(resource.model_dump(by_alias=True, exclude_none=True, mode="json"))


def _to_yaml(manifest: dict) -> str:
    """Stable, readable YAML: `name` and a few keys first, then scalars, lists and mappings by key."""
    def rank(kv: tuple) -> tuple:
        key, value = kv
        if key in YAML_FIRST:
            return 0, YAML_FIRST.index(key), key
        if key == "templates":  # long: after the parameters a user reads first
            return 5, 0, key
        return 1 + (isinstance(value, list)) + 2 * isinstance(value, dict), 0, key

    def order(value):
        if isinstance(value, dict):
            return {k: order(v) for k, v in sorted(value.items(), key=rank)}
        if isinstance(value, list):
            return [order(v) for v in value]
        return value

    return yaml.safe_dump(order(manifest), sort_keys=False, default_flow_style=False, width=120)
