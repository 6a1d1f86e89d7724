"""`gridded workflow`: the same pipeline as Argo Workflows for Kubernetes (render, submit)."""

from __future__ import annotations

import os

import click

from ..workflow.options import MAX_BATCHES_PER_WORKFLOW
from .options import make_selection_options, on_bad_source_option, say


@click.group()
def workflow():
    """The same pipeline as Argo Workflows for Kubernetes: render YAML, submit it."""


def argo_options(func):
    """Where and how the workflow's pods run."""
    options = [
        click.option("--image", required=True, help="Container image with a tag, e.g. ghcr.io/org/gridded:0.1.0."),
        click.option("--kind", default="workflow", show_default=True, help="workflow or template (WorkflowTemplate)."),
        click.option("--schedule", default=None, help='Cron expression: renders a CronWorkflow, e.g. "0 3 * * *".'),
        click.option("--timezone", default="UTC", show_default=True, help="Time zone of --schedule."),
        click.option("--name", default=None, help="Name (default gridded-<pipeline>)."),
        click.option("--namespace", default=None, help="Kubernetes namespace."),
        click.option("--service-account", default=None, help="Service account of the pods (e.g. for IRSA)."),
        click.option("--parallelism", type=int, default=10, show_default=True, help="Pods at once."),
        click.option("--s3-secret", default=None, help="Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."),
        click.option("--aws-endpoint-url", default=lambda: os.environ.get("AWS_ENDPOINT_URL"),
                     help="S3 endpoint for non-AWS stores (default: $AWS_ENDPOINT_URL)."),
        click.option("--cpu", default="2", show_default=True, help="CPU request and limit per pod."),
        click.option("--memory", default="8Gi", show_default=True, help="Memory request and limit per pod."),
        click.option("--retries", type=int, default=2, show_default=True, help="Retries of a failed pod (not exit 2)."),
        click.option("--deadline", type=int, default=6 * 3600, show_default=True, help="Seconds a pod may run."),
        click.option("--owner", default=lambda: os.environ.get("USER", "gridded"), help="The owner label."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _workflow_options(*, output=None, style="dag", **kwargs):
    from ..io.s3 import requester_pays, unsigned_requested
    from ..workflow.options import WorkflowOptions

    deadline = kwargs.pop("deadline")
    return WorkflowOptions(output=output, style=style, deadline_s=deadline, unsigned=unsigned_requested(),
                           requester_pays=requester_pays(), **kwargs)


@workflow.command("render")
@make_selection_options(time_required=False)
@click.option("--output", required=True, help="s3://bucket/prefix for the products (pods share no disk).")
@click.option("--style", default="dag", show_default=True, help="dag or steps.")
@click.option("--index-secret", default=None,
              help="Plan from a PostgreSQL index: the Secret whose key 'dsn' holds its DSN (--index, if given, "
                   "is only checked; the DSN never enters the manifest).")
@click.option("--max-batches-per-workflow", type=int, default=MAX_BATCHES_PER_WORKFLOW, show_default=True,
              help="Above this many batches the run fans out child workflows of at most this many each.")
@on_bad_source_option
@argo_options
def workflow_render(output, style, index_secret, max_batches_per_workflow, on_bad_source, image, kind, schedule,
                    timezone, name, namespace, service_account, parallelism, s3_secret, aws_endpoint_url, cpu, memory,
                    retries, deadline, owner, **kwargs):
    """Print the Argo Workflow (or CronWorkflow, WorkflowTemplate) YAML of a run."""
    from ..workflow.render import render_workflow

    options = _workflow_options(
        output=output, style=style, on_bad_source=on_bad_source, image=image, kind=kind, schedule=schedule,
        timezone=timezone, name=name, namespace=namespace, service_account=service_account, parallelism=parallelism,
        s3_secret=s3_secret, aws_endpoint_url=aws_endpoint_url, cpu=cpu, memory=memory, retries=retries,
        deadline=deadline, owner=owner, index_secret=index_secret, max_batches_per_workflow=max_batches_per_workflow)
    flags = {{"time_": "time", "filter_": "filter"}.get(k, k): v for k, v in kwargs.items()}
    click.echo(render_workflow(flags, options), nl=False)


@workflow.command("render-ingest")
@click.argument("source")
@click.option("--index", default=None, help="postgresql://USER@HOST/DB (no password: use --index-secret).")
@click.option("--index-secret", default=None, help="Secret whose key 'dsn' holds the index DSN.")
@click.option("--collection", default=None, help="Only this collection (STAC API sources).")
@click.option("--bbox", default=None, help="Only items meeting minx,miny,maxx,maxy (STAC API sources).")
@click.option("--datetime", "datetime_", default=None, help="Only items in START/END (STAC API sources).")
@argo_options
def workflow_render_ingest(source, index, index_secret, collection, bbox, datetime_, image, kind, schedule, timezone,
                           name, namespace, service_account, parallelism, s3_secret, aws_endpoint_url, cpu, memory,
                           retries, deadline, owner):
    """Print the Argo Workflow YAML that ingests a STAC source into a PostgreSQL index."""
    from ..workflow.render import render_ingest

    options = _workflow_options(
        image=image, kind=kind, schedule=schedule, timezone=timezone, name=name, namespace=namespace,
        service_account=service_account, parallelism=parallelism, s3_secret=s3_secret, index_secret=index_secret,
        aws_endpoint_url=aws_endpoint_url, cpu=cpu, memory=memory, retries=retries, deadline=deadline, owner=owner)
    click.echo(render_ingest(source, index, options, collection=collection, bbox=bbox, datetime=datetime_), nl=False)


@workflow.command("submit")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--namespace", default=None, help="Namespace (default: the manifest's, else the context's).")
@click.option("--watch", is_flag=True, help="Show progress until the workflow ends.")
@click.pass_context
def workflow_submit(ctx, manifest, namespace, watch):
    """Create a rendered manifest through the Kubernetes API (kubeconfig or in-cluster)."""
    from ..workflow.submit import submit_manifest, watch_workflow

    created = submit_manifest(manifest, namespace=namespace)
    click.echo(f"{created.kind} {created.namespace}/{created.name} created")
    if watch and created.kind == "Workflow":
        phase = watch_workflow(created, progress=say)
        click.echo(f"{created.name}: {phase}")
        if phase != "Succeeded":
            ctx.exit(1)
