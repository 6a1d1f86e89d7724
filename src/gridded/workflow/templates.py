"""The pieces every rendered manifest is built of, as hera models: a container template with its
retry strategy, deadline, resources and environment (credentials by Secret reference only), the exit
handler, labels, the workflow spec and its resource (Workflow, WorkflowTemplate or CronWorkflow),
and stable YAML."""

from __future__ import annotations

from collections.abc import Sequence

import yaml
from hera.workflows import models as m

from ..io.s3 import REQUESTER_PAYS_ENV, UNSIGNED_ENV
from .options import WorkflowOptions, label_value

API_VERSION = "argoproj.io/v1alpha1"
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


def container_template(name: str | None, args: list[str], options: WorkflowOptions, *,
                       inputs: m.Inputs | None = None, extra_env: Sequence[m.EnvVar] = ()) -> m.Template:
    """A `gridded ARGS` container with the retry strategy, deadline and resources of every task."""
    env = [m.EnvVar(name="GRIDDED_IMAGE", value=options.image), *s3_env(options), *extra_env]
    container = m.Container(image=options.image, command=["gridded"], args=args,
                            env=sorted(env, key=lambda e: e.name),
                            resources=resources(cpu=options.cpu, memory=options.memory))
    return m.Template(name=name, inputs=inputs, container=container,
                      retry_strategy=retry_strategy(options, options.deadline_s),
                      active_deadline_seconds=m.IntOrString(options.deadline_s))


def exit_templates(options: WorkflowOptions) -> list[m.Template]:
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
                                resources=resources(**REPORT_RESOURCES))
        reports.append(m.Template(name=name, container=container,
                                  retry_strategy=retry_strategy(options, REPORT_DEADLINE_S),
                                  active_deadline_seconds=m.IntOrString(REPORT_DEADLINE_S)))
    return [handler, *reports]


def retry_strategy(options: WorkflowOptions, deadline_s: int) -> m.RetryStrategy:
    """Retry anything but exit 2, with exponential backoff; give up once every attempt could have run."""
    max_duration_s = (options.retries + 1) * deadline_s + options.retries * BACKOFF_CAP_S
    return m.RetryStrategy(
        limit=m.IntOrString(options.retries),
        retry_policy="Always",
        expression=RETRY_EXPRESSION,
        backoff=m.Backoff(duration=f"{BACKOFF_DURATION_S}s", factor=m.IntOrString(BACKOFF_FACTOR),
                          cap=f"{BACKOFF_CAP_S}s", max_duration=f"{max_duration_s}s"),
    )


def resources(*, cpu: str, memory: str) -> m.ResourceRequirements:
    amounts = {"cpu": m.Quantity(cpu), "memory": m.Quantity(memory)}
    return m.ResourceRequirements(requests=amounts, limits=dict(amounts))


def s3_env(options: WorkflowOptions) -> list[m.EnvVar]:
    """What `--unsigned`/`--requester-pays` set in a local run, the endpoint, and the credentials by reference."""
    env = []
    if options.unsigned:
        env.append(m.EnvVar(name=UNSIGNED_ENV, value="YES"))
    if options.requester_pays:
        env.append(m.EnvVar(name=REQUESTER_PAYS_ENV, value="requester"))
    if options.aws_endpoint_url:
        env.append(m.EnvVar(name="AWS_ENDPOINT_URL", value="{{workflow.parameters.aws_endpoint_url}}"))
    if options.s3_secret:
        env += [secret_env(key, options.s3_secret, key) for key in S3_SECRET_KEYS]
    return env


def secret_env(name: str, secret: str, key: str) -> m.EnvVar:
    return m.EnvVar(name=name, value_from=m.EnvVarSource(secret_key_ref=m.SecretKeySelector(name=secret, key=key)))


def labels(options: WorkflowOptions, *, component: str, pipeline: str | None) -> dict[str, str]:
    found = {
        "app.kubernetes.io/name": "gridded",
        "app.kubernetes.io/component": component,
        "gridded/version": label_value(options.version),
    }
    if pipeline:
        found["gridded/pipeline"] = pipeline
    if options.owner:
        found["gridded/owner"] = options.owner
    return dict(sorted(found.items()))


def workflow_spec(templates: list[m.Template], parameters: dict[str, str], options: WorkflowOptions,
                  pod_labels: dict[str, str], *, entrypoint: str = "main",
                  help_for: dict[str, str] | None = None) -> m.WorkflowSpec:
    return m.WorkflowSpec(
        entrypoint=entrypoint,
        on_exit="exit-handler",
        arguments=m.Arguments(parameters=[
            m.Parameter(name=k, value=v, description=(help_for or {}).get(k)) for k, v in parameters.items()
        ]),
        templates=templates,
        parallelism=options.parallelism,
        service_account_name=options.service_account,
        pod_gc=m.PodGC(strategy="OnPodSuccess"),
        ttl_strategy=ttl_strategy(),
        pod_metadata=m.Metadata(labels=pod_labels),
        # a WorkflowTemplate passes these labels on to the workflows submitted from it
        workflow_metadata=m.WorkflowMetadata(labels=pod_labels) if options.kind == "template" else None,
    )


def ttl_strategy() -> m.TTLStrategy:
    return m.TTLStrategy(seconds_after_success=TTL_AFTER_SUCCESS_S, seconds_after_failure=TTL_AFTER_FAILURE_S)


def manifest(spec: m.WorkflowSpec, options: WorkflowOptions, object_labels: dict[str, str], *, name: str) -> str:
    """The YAML of the spec as a CronWorkflow (options.schedule), a WorkflowTemplate or a Workflow."""
    if options.schedule is not None:
        resource = m.CronWorkflow(
            api_version=API_VERSION, kind="CronWorkflow",
            metadata=m.ObjectMeta(name=name, namespace=options.namespace, labels=object_labels),
            spec=m.CronWorkflowSpec(
                schedules=[options.schedule], timezone=options.timezone, concurrency_policy="Forbid",
                starting_deadline_seconds=CRON_STARTING_DEADLINE_S,
                workflow_metadata=m.ObjectMeta(labels=object_labels), workflow_spec=spec,
            ),
        )
    elif options.kind == "template":
        resource = m.WorkflowTemplate(api_version=API_VERSION, kind="WorkflowTemplate", spec=spec,
                                      metadata=m.ObjectMeta(name=name, namespace=options.namespace,
                                                            labels=object_labels))
    else:
        resource = m.Workflow(api_version=API_VERSION, kind="Workflow", spec=spec, metadata=m.ObjectMeta(
            generate_name=f"{name}-", namespace=options.namespace, labels=object_labels))
    return to_yaml(dump(resource))


def dump(model) -> dict:
    """A hera model as the plain mapping Kubernetes takes (camelCase keys, unset fields left out)."""
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def to_yaml(document: dict) -> str:
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

    return yaml.safe_dump(order(document), sort_keys=False, default_flow_style=False, width=120)
