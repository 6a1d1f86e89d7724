"""The batches fanned out: `tiles generate` prints how many batches it wrote (their ids are 0..N-1),
and the workflow decides at run time how to run them:

- N <= options.max_batches_per_workflow: one `process` pod per id, `withSequence` over the count;
- above: `chunks` creates child Workflows (Argo's workflow of workflows: `resource` templates,
  action create, waiting on the child's phase), one after another, each over a range of at most
  that many ids with its own `parallelism` and the same retry policy, so no Workflow object holds
  more nodes than the limit (etcd refuses objects above ~1.5 MB);

then `catalog` writes the output catalog once, from the items' listing. Only a count and a few
numbers travel between steps, whatever the plan's size.
"""

from __future__ import annotations

from hera.workflows import models as m

from .options import WorkflowOptions
from .templates import API_VERSION, container_template, dump, to_yaml, ttl_strategy

OUTPUT = "{{workflow.parameters.output}}"
SUCCEEDED = "status.phase == Succeeded"
FAILED = "status.phase in (Failed, Error)"


def process_args(options: WorkflowOptions, batch: str) -> list[str]:
    """`tiles process` of one batch: it reads the header and its own batch of the S3 artifact (ranged reads)."""
    args = ["tiles", "process", "--cells", options.cells_uri(), "--batch", batch, "--output", OUTPUT]
    if options.on_bad_source != "fail":
        args += ["--on-bad-source", options.on_bad_source]
    return args


def fan_out_templates(options: WorkflowOptions, labels: dict[str, str]) -> list[m.Template]:
    """main (generate -> process | chunks -> catalog), process, chunks and child."""
    process = container_template("process", process_args(options, "{{inputs.parameters.batch}}"), options,
                                 inputs=m.Inputs(parameters=[m.Parameter(name="batch")]))
    return [_main(options), process, _chunks(options), _child(options, labels)]


def _main(options: WorkflowOptions) -> m.Template:
    scope = "steps" if options.style == "steps" else "tasks"
    count = f"{{{{{scope}.generate.outputs.result}}}}"
    n, limit = f"asInt({scope}.generate.outputs.result)", options.max_batches_per_workflow
    nodes = [
        dict(name="generate", template="generate"),
        # above the limit the count is 0: a `when` alone would still expand every id (a skipped node each)
        dict(name="process", template="process", with_sequence=m.Sequence(
            count=m.IntOrString(f"{{{{={n} <= {limit} ? {n} : 0}}}}")),
            arguments=_parameters(batch="{{item}}")),
        dict(name="chunks", template="chunks", when=f"{count} > {limit}", arguments=_parameters(batches=count)),
        dict(name="catalog", template="catalog", when=f"{count} > 0"),  # nothing planned: nothing to list
    ]
    if options.style == "steps":
        by_name = {node["name"]: m.WorkflowStep(**node) for node in nodes}
        return m.Template(name="main", steps=[m.ParallelSteps([by_name[name] for name in group])
                                              for group in (("generate",), ("process", "chunks"), ("catalog",))])
    after = {"process": "generate", "chunks": "generate", "catalog": "process && chunks"}
    return m.Template(name="main", dag=m.DAGTemplate(tasks=[
        m.DAGTask(**node, depends=after.get(node["name"])) for node in nodes]))


def _chunks(options: WorkflowOptions) -> m.Template:
    """One child Workflow per range of ids, one at a time: at most --parallelism pods run, as below the limit."""
    limit = options.max_batches_per_workflow
    how_many = f"{{{{=asInt((asInt(inputs.parameters.batches) + {limit - 1}) / {limit})}}}}"
    node = dict(name="child", template="child", with_sequence=m.Sequence(count=m.IntOrString(how_many)),
                arguments=_parameters(chunk="{{item}}", batches="{{inputs.parameters.batches}}"))
    inputs = m.Inputs(parameters=[m.Parameter(name="batches")])
    if options.style == "steps":
        return m.Template(name="chunks", inputs=inputs, parallelism=1,
                          steps=[m.ParallelSteps([m.WorkflowStep(**node)])])
    return m.Template(name="chunks", inputs=inputs, parallelism=1, dag=m.DAGTemplate(tasks=[m.DAGTask(**node)]))


def _child(options: WorkflowOptions, labels: dict[str, str]) -> m.Template:
    """Create the Workflow of one chunk and wait for its phase (setOwnerReference: it goes with the parent)."""
    return m.Template(
        name="child",
        inputs=m.Inputs(parameters=[m.Parameter(name="chunk"), m.Parameter(name="batches")]),
        resource=m.ResourceTemplate(action="create", set_owner_reference=True, manifest=child_manifest(options, labels),
                                    success_condition=SUCCEEDED, failure_condition=FAILED),
    )


def child_manifest(options: WorkflowOptions, labels: dict[str, str]) -> str:
    """The Workflow over ids [chunk * limit, min((chunk + 1) * limit, batches) - 1], as YAML.

    The parent substitutes this text before creating it: workflow.* are the parent's (its output
    parameter, and its uid in the cells artifact's key) and the range is computed from the parent's
    inputs. The child's own variable is `{{item}}` alone, in an inline template: Argo's validation
    of the parent checks every `{{inputs.*}}`, `{{workflow.*}}`, `{{tasks.*}}` tag in the manifest
    against the parent's scope (argo-workflows#12634) but not a bare `{{item}}`, and the parent's
    substitution leaves tags it cannot resolve as they are.
    """
    limit = options.max_batches_per_workflow
    chunk, batches = "asInt(inputs.parameters.chunk)", "asInt(inputs.parameters.batches)"
    ids = m.Sequence(start=m.IntOrString(f"{{{{={chunk} * {limit}}}}}"),
                     end=m.IntOrString(f"{{{{=min({chunk} * {limit} + {limit}, {batches}) - 1}}}}"))
    process = container_template(None, process_args(options, "{{item}}"), options)
    if options.style == "steps":
        main = m.Template(name="main", steps=[m.ParallelSteps([
            m.WorkflowStep(name="process", inline=process, with_sequence=ids)])])
    else:
        main = m.Template(name="main", dag=m.DAGTemplate(tasks=[
            m.DAGTask(name="process", inline=process, with_sequence=ids)]))
    child_labels = dict(sorted({**labels, "app.kubernetes.io/component": "batches",
                                "gridded/parent": "{{workflow.name}}",
                                "gridded/chunk": "{{inputs.parameters.chunk}}"}.items()))
    spec = m.WorkflowSpec(entrypoint="main", templates=[main], parallelism=options.parallelism,
                          service_account_name=options.service_account, pod_gc=m.PodGC(strategy="OnPodSuccess"),
                          ttl_strategy=ttl_strategy(), pod_metadata=m.Metadata(labels=child_labels))
    child = m.Workflow(api_version=API_VERSION, kind="Workflow", spec=spec,
                       metadata=m.ObjectMeta(generate_name="{{workflow.name}}-", labels=child_labels))
    return to_yaml(dump(child))


def _parameters(**values: str) -> m.Arguments:
    return m.Arguments(parameters=[m.Parameter(name=k, value=v) for k, v in values.items()])
