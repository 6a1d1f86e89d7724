"""The rendered Argo manifests: strict schema validation, shape, secrets, bad options, golden files.

The examples in workflows/ are golden files: a test fails when a fresh render differs. After an
intended change, regenerate them and review the diff:

    GRIDDED_REGEN_GOLDEN=1 python -m pytest tests/test_argo.py -k golden
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from argo_schema import ARGO, SCHEMA, schema_errors
from jsonschema import Draft202012Validator

from gridded.errors import ConfigError
from gridded.workflow.options import WorkflowOptions
from gridded.workflow.render import RETRY_EXPRESSION, render, render_ingest, render_workflow

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"

IMAGE = "ghcr.io/example/gridded:0.1.0"
SELECTION = {
    "source": "s3://example-stac/sentinel-2-l2a/catalog.json",
    "extent": "146.9,-36.1,147.1,-35.9",
    "time": "2024-01/2024-03",
    "as_of": None,
    "pipeline": "s2-monthly-median",
    "grid": "utm55s-10m",
    "statistic": None,
    "period": "P1M",
    "bands": "blue,green,red,nir",
    "mask": "scl:0,1,3,8,9,10",
    "collection": "sentinel-2-l2a",
    "tiles_per_worker": "4",
}
BASE = {"image": IMAGE, "output": "s3://example-composites/s2-monthly", "namespace": "argo",
        "service_account": "gridded", "owner": "data-team", "s3_secret": "gridded-s3", "version": "0.1.0"}
MINIO = "http://minio.minio.svc:9000"


def options(**overrides) -> WorkflowOptions:
    return WorkflowOptions(**{**BASE, **overrides})


def render_example(name: str) -> str:
    """The fixed inputs of each golden file in workflows/."""
    if name == "steps":
        return render(SELECTION, options(style="steps", aws_endpoint_url=MINIO))
    if name == "dag":  # on AWS: credentials from the service account (IRSA), no Secret
        return render(SELECTION, options(style="dag", s3_secret=None))
    if name == "cron":
        return render({**SELECTION, "time": "last:P1M"}, options(schedule="0 3 1 * *"))
    if name == "template":
        return render(SELECTION, options(kind="template", name="gridded-s2-monthly"))
    if name == "index":  # planned from a PostgreSQL index whose DSN is in a Secret
        return render({k: v for k, v in SELECTION.items() if k != "source"}, options(index_secret="gridded-index"))
    if name == "ingest":
        return render_ingest("s3://example-stac/sentinel-2-l2a/catalog.json", None,
                             options(output=None, index_secret="gridded-index", cpu="1", memory="2Gi"),
                             collection="sentinel-2-l2a", bbox="146,-37,148,-35", datetime="2024-01/2024-03")
    raise KeyError(name)


EXAMPLES = ("steps", "dag", "cron", "template", "index", "ingest")
COMPOSITES = tuple(name for name in EXAMPLES if name != "ingest")
KIND_OF = {"steps": "Workflow", "dag": "Workflow", "cron": "CronWorkflow", "template": "WorkflowTemplate",
           "index": "Workflow", "ingest": "Workflow"}
CELLS = "s3://example-composites/s2-monthly/_workflows/{{workflow.uid}}/cells.pickle"
LIMIT_BYTES = 256 * 1024  # no object the controller keeps, nor any template, above this


@functools.cache
def example(name: str) -> dict:
    return yaml.safe_load(render_example(name))


def workflow_spec(doc: dict) -> dict:
    return doc["spec"]["workflowSpec"] if doc["kind"] == "CronWorkflow" else doc["spec"]


def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in workflow_spec(doc)["templates"]}


def container_templates(doc: dict) -> dict[str, dict]:
    return {name: t for name, t in templates(doc).items() if "container" in t}


def child_of(doc: dict) -> dict:
    """The Workflow the `child` resource template creates, as rendered (before the parent substitutes it)."""
    return yaml.safe_load(templates(doc)["child"]["resource"]["manifest"])


def child_process(doc: dict) -> dict:
    """The inline template each child fans out over its range of batch ids."""
    (main,) = child_of(doc)["spec"]["templates"]
    (node,) = main["dag"]["tasks"] if "dag" in main else [s for group in main["steps"] for s in group]
    return node


# --- strict schema ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_manifest_validates_against_argo_schema_strictly(name):
    doc = example(name)
    assert doc["kind"] == KIND_OF[name]
    assert schema_errors(doc) == []


@pytest.mark.parametrize("path, key, misspelt", [
    (("spec", "templates", 1), "retryStrategy", "retryStratgy"),
    (("spec", "templates", 0, "dag", "tasks", 1), "withSequence", "withSequense"),
    (("spec", "templates", 2, "container", "resources"), "limits", "limit"),
    (("spec", "podGC"), "strategy", "stratgy"),
])
def test_strict_validator_rejects_misspelt_fields(path, key, misspelt):
    doc = copy.deepcopy(example("dag"))
    node = doc
    for part in path:
        node = node[part]
    node[misspelt] = node.pop(key)
    errors = schema_errors(doc)
    assert any(misspelt in e for e in errors), errors
    # the open schema as published would let the typo through: closing the objects is what catches it
    published = json.loads(SCHEMA.read_text())
    published["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["integer", "string"]}
    loose = Draft202012Validator({"$ref": f"#/definitions/{ARGO}.Workflow", "definitions": published["definitions"]})
    assert list(loose.iter_errors(doc)) == []


def test_strict_validator_accepts_int_or_string_and_rejects_wrong_types():
    doc = copy.deepcopy(example("dag"))
    process = doc["spec"]["templates"][2]
    process["retryStrategy"]["limit"] = "3"
    assert schema_errors(doc) == []
    doc["spec"]["parallelism"] = "ten"
    assert any("parallelism" in e for e in schema_errors(doc))


# --- shape ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, scope", [("steps", "steps"), ("dag", "tasks")])
def test_processors_fan_out_over_the_generators_count_or_child_workflows_above_the_limit(name, scope):
    main = templates(example(name))["main"]
    nodes = [s for group in main["steps"] for s in group] if scope == "steps" else main["dag"]["tasks"]
    by_name = {n["name"]: n for n in nodes}
    assert [n["name"] for n in nodes] == ["generate", "process", "chunks", "catalog"]
    count, n = f"{{{{{scope}.generate.outputs.result}}}}", f"asInt({scope}.generate.outputs.result)"
    process = by_name["process"]
    # a count, not a list: above the limit it is 0, so no per-id node is made (not even a skipped one)
    assert process["withSequence"] == {"count": f"{{{{={n} <= 5000 ? {n} : 0}}}}"}
    assert "withParam" not in process and "when" not in process
    assert process["arguments"] == {"parameters": [{"name": "batch", "value": "{{item}}"}]}
    chunks = by_name["chunks"]
    assert chunks["when"] == f"{count} > 5000"
    assert chunks["arguments"] == {"parameters": [{"name": "batches", "value": count}]}
    assert by_name["catalog"]["when"] == f"{count} > 0"
    if scope == "tasks":
        assert process["depends"] == chunks["depends"] == "generate"
        assert by_name["catalog"]["depends"] == "process && chunks"
    else:
        assert [[s["name"] for s in group] for group in main["steps"]] == [["generate"], ["process", "chunks"],
                                                                          ["catalog"]]
    assert "artifacts" not in json.dumps(workflow_spec(example(name)))  # no Argo artifact anywhere


def test_generator_writes_the_cells_artifact_to_s3_and_each_processor_gets_its_url():
    doc = example("dag")
    generate = templates(doc)["generate"]
    args = generate["container"]["args"]
    assert args[:2] == ["tiles", "generate"] and args[-2:] == ["--cells", CELLS]
    for flag, value in SELECTION.items():
        if value is not None:
            assert args[args.index(f"--{flag.replace('_', '-')}") + 1] == f"{{{{workflow.parameters.{flag}}}}}"
    assert "--as-of" not in args and "--statistic" not in args  # None flags are omitted
    assert "outputs" not in generate
    process = templates(doc)["process"]
    assert process["inputs"] == {"parameters": [{"name": "batch"}]}
    assert process["container"]["args"] == ["tiles", "process", "--cells", CELLS, "--batch",
                                            "{{inputs.parameters.batch}}", "--output", "{{workflow.parameters.output}}"]
    assert templates(doc)["catalog"]["container"]["args"] == ["catalog", "--output", "{{workflow.parameters.output}}"]


@pytest.mark.parametrize("name", ["steps", "dag"])
def test_child_workflows_cover_ranges_of_ids_with_the_same_pods_one_child_at_a_time(name):
    doc = example(name)
    chunks, child = templates(doc)["chunks"], templates(doc)["child"]
    assert chunks["parallelism"] == 1 and chunks["inputs"] == {"parameters": [{"name": "batches"}]}
    (node,) = chunks["dag"]["tasks"] if "dag" in chunks else [s for group in chunks["steps"] for s in group]
    assert node["template"] == "child"
    assert node["withSequence"] == {"count": "{{=asInt((asInt(inputs.parameters.batches) + 4999) / 5000)}}"}
    assert node["arguments"]["parameters"] == [{"name": "chunk", "value": "{{item}}"},
                                               {"name": "batches", "value": "{{inputs.parameters.batches}}"}]
    resource = child["resource"]
    assert resource["action"] == "create" and resource["setOwnerReference"] is True
    assert resource["successCondition"] == "status.phase == Succeeded"
    assert resource["failureCondition"] == "status.phase in (Failed, Error)"
    workflow = child_of(doc)
    assert schema_errors(workflow) == []
    assert workflow["metadata"] == {"generateName": "{{workflow.name}}-", "labels": {
        **{k: v for k, v in doc["metadata"]["labels"].items() if k != "app.kubernetes.io/component"},
        "app.kubernetes.io/component": "batches", "gridded/chunk": "{{inputs.parameters.chunk}}",
        "gridded/parent": "{{workflow.name}}"}}
    spec = workflow["spec"]
    assert spec["parallelism"] == 10 and spec["serviceAccountName"] == "gridded"
    assert spec["podGC"] == {"strategy": "OnPodSuccess"} and spec["ttlStrategy"] == workflow_spec(doc)["ttlStrategy"]
    process = child_process(doc)
    assert process["withSequence"] == {
        "start": "{{=asInt(inputs.parameters.chunk) * 5000}}",
        "end": "{{=min(asInt(inputs.parameters.chunk) * 5000 + 5000, asInt(inputs.parameters.batches)) - 1}}"}
    # the same pod as below the limit: image, env, resources, retries and deadline; only the batch differs
    inline, parent = process["inline"], templates(doc)["process"]
    assert {k: v for k, v in inline.items() if k != "container"} == \
        {k: v for k, v in parent.items() if k not in ("container", "name", "inputs")}
    assert inline["container"]["args"] == [a if a != "{{inputs.parameters.batch}}" else "{{item}}"
                                           for a in parent["container"]["args"]]
    assert {k: v for k, v in inline["container"].items() if k != "args"} == \
        {k: v for k, v in parent["container"].items() if k != "args"}


# Argo validates the parent's templates, the manifest text included, before anything runs: a tag
# with one of these prefixes must resolve in the resource template's scope (argo-workflows#12634).
VALIDATED_PREFIXES = ("item.", "steps.", "inputs.", "outputs.", "pod.", "workflow.", "tasks.")


@pytest.mark.parametrize("name", COMPOSITES)
def test_the_child_manifest_passes_the_parents_validation_and_leaves_only_item_to_the_child(name):
    doc = example(name)
    text = templates(doc)["child"]["resource"]["manifest"]
    scope = {f"workflow.parameters.{p['name']}" for p in workflow_spec(doc)["arguments"]["parameters"]}
    scope |= {"workflow.uid", "workflow.name", "inputs.parameters.chunk", "inputs.parameters.batches"}
    tags = re.findall(r"\{\{\s*(=?)\s*(.+?)\s*\}\}", text)
    simple = {body for is_expression, body in tags if not is_expression}
    checked = {t for t in simple if t.startswith(VALIDATED_PREFIXES)}
    assert checked <= scope, checked - scope
    assert simple - checked == {"item"}  # the child's own variable, which the parent leaves alone
    for _, body in (t for t in tags if t[0]):  # expressions: only the parent's inputs, resolved by the parent
        names = set(re.findall(r"[A-Za-z_][\w.]*", body)) - {"asInt", "min"}
        assert names <= {"inputs.parameters.chunk", "inputs.parameters.batches"}, body


@pytest.mark.parametrize("name", COMPOSITES)
def test_no_manifest_nor_template_is_near_the_object_size_limits(name):
    """The parent holds no list of batches nor cells whatever the plan's size (10^5 batches: see the
    replay test), and each child only its range's numbers: every object stays small."""
    text = render_example(name)
    assert len(text.encode()) < LIMIT_BYTES / 8
    doc = yaml.safe_load(text)
    for t in workflow_spec(doc)["templates"]:
        assert len(json.dumps(t).encode()) < LIMIT_BYTES / 16, t["name"]
    assert len(templates(doc)["child"]["resource"]["manifest"].encode()) < LIMIT_BYTES / 32


def test_max_batches_per_workflow_sets_the_fan_out_split():
    doc = yaml.safe_load(render(SELECTION, options(max_batches_per_workflow=2)))
    main = {t["name"]: t for t in templates(doc)["main"]["dag"]["tasks"]}
    assert main["process"]["withSequence"]["count"] == (
        "{{=asInt(tasks.generate.outputs.result) <= 2 ? asInt(tasks.generate.outputs.result) : 0}}")
    assert main["chunks"]["when"] == "{{tasks.generate.outputs.result}} > 2"
    assert templates(doc)["chunks"]["dag"]["tasks"][0]["withSequence"]["count"] == (
        "{{=asInt((asInt(inputs.parameters.batches) + 1) / 2)}}")
    assert child_process(doc)["withSequence"]["end"] == (
        "{{=min(asInt(inputs.parameters.chunk) * 2 + 2, asInt(inputs.parameters.batches)) - 1}}")
    with pytest.raises(ConfigError, match="--max-batches-per-workflow 0") as err:
        options(max_batches_per_workflow=0)
    assert "\n" not in str(err.value)


def test_every_parameter_a_container_uses_is_a_workflow_argument():
    for name in EXAMPLES:
        spec = workflow_spec(example(name))
        declared = {p["name"] for p in spec["arguments"]["parameters"]}
        text = json.dumps(spec["templates"])
        used = {part.split("}}")[0] for part in text.split("{{workflow.parameters.")[1:]}
        assert used <= declared, (name, used - declared)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_container_template_retries_but_not_exit_2_and_has_deadline_and_resources(name):
    found = container_templates(example(name))
    assert found
    if name != "ingest":
        found["child process"] = child_process(example(name))["inline"]
    for tname, t in found.items():
        retry = t["retryStrategy"]
        assert retry["retryPolicy"] == "Always", tname
        assert retry["limit"] == 2
        assert retry["expression"] == RETRY_EXPRESSION == "asInt(lastRetry.exitCode) != 2"
        assert {"duration", "factor", "maxDuration", "cap"} <= set(retry["backoff"])
        assert isinstance(t["activeDeadlineSeconds"], int) and t["activeDeadlineSeconds"] > 0
        resources = t["container"]["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_exit_handler_branches_on_workflow_status(name):
    spec = workflow_spec(example(name))
    handler = templates(example(name))[spec["onExit"]]
    branches = {s["template"]: s["when"] for group in handler["steps"] for s in group}
    assert branches == {"report-succeeded": "{{workflow.status}} == Succeeded",
                        "report-failed": "{{workflow.status}} != Succeeded"}
    assert all(b in container_templates(example(name)) for b in branches)


@pytest.mark.parametrize("name", EXAMPLES)
def test_metadata_labels_gc_ttl_and_parallelism(name):
    doc = example(name)
    labels = doc["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "gridded"
    assert labels["gridded/owner"] == "data-team" and labels["gridded/version"] == "0.1.0"
    if name != "ingest":
        assert labels["gridded/pipeline"] == "s2-monthly-median"
    spec = workflow_spec(doc)
    assert spec["parallelism"] == 10
    assert spec["podGC"] == {"strategy": "OnPodSuccess"}
    assert spec["ttlStrategy"]["secondsAfterSuccess"] > 0 and spec["ttlStrategy"]["secondsAfterFailure"] > 0
    assert spec["serviceAccountName"] == "gridded"
    assert spec["podMetadata"]["labels"] == labels
    assert doc["metadata"]["namespace"] == "argo"
    if doc["kind"] == "Workflow":
        assert doc["metadata"]["generateName"].startswith("gridded-") and "name" not in doc["metadata"]
    else:
        assert doc["metadata"]["name"].startswith("gridded-")


def test_steps_and_dag_run_the_same_containers():
    steps = render(SELECTION, options(style="steps"))
    dag = render(SELECTION, options(style="dag"))
    assert container_templates(yaml.safe_load(steps)) == container_templates(yaml.safe_load(dag))
    assert {t for t in templates(yaml.safe_load(steps))} == {t for t in templates(yaml.safe_load(dag))}


def test_cron_processes_the_last_complete_period_at_the_scheduled_time():
    doc = example("cron")
    assert doc["spec"]["schedules"] == ["0 3 1 * *"]
    assert doc["spec"]["concurrencyPolicy"] == "Forbid"
    assert doc["spec"]["startingDeadlineSeconds"] > 0
    assert doc["spec"]["workflowMetadata"]["labels"] == doc["metadata"]["labels"]
    params = {p["name"]: p["value"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    assert params["time"] == "last:P1M"
    args = templates(doc)["generate"]["container"]["args"]
    assert args[args.index("--as-of") + 1] == "{{workflow.scheduledTime}}"
    # no --time given: the period picks it
    quarterly = yaml.safe_load(render({**SELECTION, "time": None, "period": "P3M"}, options(schedule="@monthly")))
    assert {p["name"]: p["value"] for p in workflow_spec(quarterly)["arguments"]["parameters"]}["time"] == "last:P3M"


def test_template_kind_passes_labels_to_submitted_workflows():
    doc = example("template")
    assert doc["kind"] == "WorkflowTemplate" and doc["metadata"]["name"] == "gridded-s2-monthly"
    assert doc["spec"]["workflowMetadata"]["labels"] == doc["metadata"]["labels"]


def test_s3_endpoint_is_a_parameter_and_pods_write_and_read_s3_themselves():
    doc = example("steps")
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert params["aws_endpoint_url"] == MINIO and params["output"] == BASE["output"]
    gridded = [t for t in container_templates(doc).values() if t["container"]["command"] == ["gridded"]]
    for t in [*gridded, child_process(doc)["inline"]]:
        env = {e["name"]: e for e in t["container"]["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == "{{workflow.parameters.aws_endpoint_url}}"
        assert env["GRIDDED_IMAGE"]["value"] == IMAGE
        key = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
        assert key == {"name": "gridded-s3", "key": "AWS_ACCESS_KEY_ID"}
    aws = container_templates(example("dag"))["generate"]["container"]["env"]  # IRSA: no keys at all
    assert {e["name"] for e in aws} == {"GRIDDED_IMAGE"}


def test_artifact_bucket_and_prefix_override_the_output():
    doc = yaml.safe_load(render(SELECTION, options(artifact_bucket="scratch", artifact_prefix="argo/cells")))
    url = "s3://scratch/argo/cells/{{workflow.uid}}/cells.pickle"
    assert templates(doc)["generate"]["container"]["args"][-2:] == ["--cells", url]
    for args in (templates(doc)["process"]["container"]["args"], child_process(doc)["inline"]["container"]["args"]):
        assert args[args.index("--cells") + 1] == url


def test_unsigned_and_requester_pays_reach_every_gridded_container():
    doc = yaml.safe_load(render(SELECTION, options(unsigned=True, requester_pays=True)))
    for name in ("generate", "process", "catalog"):
        env = {e["name"]: e.get("value") for e in templates(doc)[name]["container"]["env"]}
        assert env["AWS_NO_SIGN_REQUEST"] == "YES" and env["AWS_REQUEST_PAYER"] == "requester"
    assert "AWS_NO_SIGN_REQUEST" not in render(SELECTION, options())


def cli_command_for(args: list[str]):
    """The click command an argv names, and its own arguments."""
    from gridded.cli import cli

    command, rest = cli, list(args)
    while hasattr(command, "commands"):
        name = rest.pop(0)
        assert name in command.commands, f"`gridded ... {name}` does not exist"
        command = command.commands[name]
    return command, rest


def substituted(args: list[str], doc: dict, **variables: str) -> list[str]:
    """Args with {{...}} replaced the way Argo would: workflow parameters, then the given variables."""
    values = {f"workflow.parameters.{p['name']}": p["value"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    values.update(variables)
    out = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace(f"{{{{{name}}}}}", value)
        assert "{{" not in arg, arg
        out.append(arg)
    return out


@pytest.mark.parametrize("name", ["steps", "cron"])
def test_rendered_commands_parse_with_the_real_cli(name):
    """Every gridded container's argv is accepted by the CLI it will run (flags exist, values parse)."""
    doc = example(name)
    for tname in ("generate", "process", "catalog"):
        container = templates(doc)[tname]["container"]
        assert container["command"] == ["gridded"]
        args = substituted(container["args"], doc, **{"inputs.parameters.batch": "0", "workflow.uid": "u1",
                                                      "workflow.scheduledTime": "2024-03-01T03:00:00Z"})
        command, rest = cli_command_for(args)
        params = command.make_context(tname, rest).params  # raises on an unknown flag or a bad value
        if tname == "generate":
            assert params["cells"] == CELLS.replace("{{workflow.uid}}", "u1")
            assert params["source"] == SELECTION["source"]
    args = substituted(child_process(doc)["inline"]["container"]["args"], doc, item="5000", **{"workflow.uid": "u1"})
    command, rest = cli_command_for(args)
    params = command.make_context("child process", rest).params
    assert (params["batch_id"], params["cells"]) == (5000, CELLS.replace("{{workflow.uid}}", "u1"))


def test_rendered_ingest_command_parses_with_the_real_cli():
    from gridded.cli import cli

    if "stac" not in cli.commands:
        pytest.skip("`gridded stac ingest` is not in the CLI yet")
    doc = example("ingest")
    args = substituted(templates(doc)["ingest"]["container"]["args"], doc)
    command, rest = cli_command_for(args)
    command.make_context("ingest", rest)


# --- secrets --------------------------------------------------------------------------------------

CANARIES = {"AWS_ACCESS_KEY_ID": "AKIACANARY0000000001", "AWS_SECRET_ACCESS_KEY": "canary/secret+key/0000000001",
            "AWS_SESSION_TOKEN": "canary-session-token-0001", "PGPASSWORD": "canary-pg-password"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_credential_values_anywhere(monkeypatch, name):
    for key, value in CANARIES.items():
        monkeypatch.setenv(key, value)
    text = render_example(name)
    for value in CANARIES.values():
        assert value not in text
    doc = yaml.safe_load(text)
    found = list(container_templates(doc).values())
    if name != "ingest":
        found.append(child_process(doc)["inline"])
    for t in found:
        for env in t["container"]["env"]:
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GRIDDED_INDEX_DSN"):
                assert set(env) == {"name", "valueFrom"} and set(env["valueFrom"]) == {"secretKeyRef"}


def test_ingest_takes_the_dsn_from_a_secret_and_never_inlines_a_password():
    doc = example("ingest")
    ingest = templates(doc)["ingest"]
    assert ingest["container"]["args"][:3] == ["stac", "ingest", "{{workflow.parameters.source}}"]
    assert "--index" not in ingest["container"]["args"]
    env = {e["name"]: e for e in ingest["container"]["env"]}
    assert env["GRIDDED_INDEX_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "gridded-index", "key": "dsn"}
    args = ingest["container"]["args"]
    assert args[args.index("--bbox") + 1] == "{{workflow.parameters.bbox}}"
    inline = yaml.safe_load(render_ingest("s3://b/catalog.json", "postgresql://gridded@db:5432/stac",
                                          options(output=None)))
    args = templates(inline)["ingest"]["container"]["args"]
    assert args[args.index("--index") + 1] == "{{workflow.parameters.index}}"
    assert schema_errors(inline) == []
    with pytest.raises(ConfigError, match="--index-secret") as err:
        render_ingest("s3://b/catalog.json", "postgresql://gridded:hunter2@db/stac", options(output=None))
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="--index-secret") as err:
        render_ingest("s3://b/catalog.json", "host=db dbname=stac password=hunter2", options(output=None))
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="PostgreSQL"):
        render_ingest("s3://b/catalog.json", "index.db", options(output=None))
    with pytest.raises(ConfigError, match="one way"):
        render_ingest("s3://b/catalog.json", "postgresql://gridded@db/stac", options(output=None, index_secret="x"))


# --- planning from the index ------------------------------------------------------------------------

def test_index_workflow_reads_the_dsn_from_a_secret_in_the_generate_pod_only():
    doc = example("index")
    assert schema_errors(doc) == []
    params = {p["name"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    assert "source" not in params and "index" not in params
    generate = templates(doc)["generate"]["container"]
    assert "--source" not in generate["args"] and "--index" not in generate["args"]
    env = {e["name"]: e for e in generate["env"]}
    assert env["GRIDDED_INDEX_DSN"] == {"name": "GRIDDED_INDEX_DSN", "valueFrom": {
        "secretKeyRef": {"name": "gridded-index", "key": "dsn"}}}
    for name in ("process", "catalog"):  # the others never see it
        assert "GRIDDED_INDEX_DSN" not in {e["name"] for e in templates(doc)[name]["container"]["env"]}
    # the pod's `tiles generate` takes the DSN from that variable when given neither --source nor --index
    args = substituted(generate["args"], doc, **{"workflow.uid": "u1"})
    command, rest = cli_command_for(args)
    params = command.make_context("generate", rest).params
    assert params["source"] is None and params["index"] is None


FLAGS = {**SELECTION, "source": None, "tiles_per_worker": 4}
WITH_SOURCE = {**SELECTION, "tiles_per_worker": 4}


def test_render_from_the_index_checks_the_dsn_and_never_keeps_it():
    text = render_workflow({**FLAGS, "index": "postgresql://gridded:hunter2@db:5432/stac"},
                           options(index_secret="stac-index"))
    assert "hunter2" not in text and "db:5432" not in text
    env = {e["name"]: e for e in templates(yaml.safe_load(text))["generate"]["container"]["env"]}
    assert env["GRIDDED_INDEX_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "stac-index", "key": "dsn"}
    assert render_workflow(FLAGS, options(index_secret="stac-index")) == text  # the DSN only checked


@pytest.mark.parametrize("flags, opts, match", [
    ({**FLAGS, "index": "postgresql://gridded:hunter2@db/stac"}, {}, "--index-secret NAME"),
    ({**FLAGS, "index": "host=db dbname=stac password=hunter2"}, {}, "--index-secret NAME"),
    ({**FLAGS, "index": "sqlite:///home/me/index.db"}, {"index_secret": "s"}, "PostgreSQL"),
    ({**FLAGS, "index": "mysql://me:hunter2@db/stac"}, {"index_secret": "s"}, "PostgreSQL"),
    ({**FLAGS, "index": "host=db password=hunter2"}, {"index_secret": "s"}, "not a PostgreSQL URL"),
    ({**FLAGS, "index": "postgresql://u:hunter2@[::1/stac"}, {}, "--index-secret NAME"),  # not even a URL
    ({**FLAGS, "index": "postgresql://u:hunter2@[::1/stac"}, {"index_secret": "s"}, "not a PostgreSQL URL"),
    ({**FLAGS, "index": "postgresql://u:hunter2@db:port/stac"}, {}, "--index-secret NAME"),
    ({**FLAGS, "index": "postgresql:///stac?host=/run&password=hunter2"}, {}, "--index-secret NAME"),
    (WITH_SOURCE, {"index_secret": "s"}, "--source with --index-secret"),
    ({**FLAGS, "query": "eo:cloud_cover<20"}, {"index_secret": "s"}, "STAC API"),
    (FLAGS, {}, "no --source"),
])
def test_bad_index_flags_are_one_line_errors_that_never_echo_a_password(flags, opts, match):
    with pytest.raises(ConfigError, match=match) as err:
        render_workflow(flags, options(**opts))
    assert "\n" not in str(err.value) and "hunter2" not in str(err.value)


def test_cli_renders_from_the_index_and_never_prints_the_password():
    from click.testing import CliRunner

    from gridded.cli import cli

    base = ["workflow", "render", "--extent", SELECTION["extent"], "--time", "2024-01", "--grid", "utm55s-10m",
            "--bands", "red,nir", "--output", BASE["output"], "--image", IMAGE]
    ok = CliRunner().invoke(cli, [*base, "--index", "postgresql://u:hunter2@db/stac", "--index-secret", "idx"])
    assert ok.exit_code == 0, ok.output
    assert "hunter2" not in ok.output and schema_errors(yaml.safe_load(ok.stdout)) == []
    refused = CliRunner().invoke(cli, [*base, "--index", "postgresql://u:hunter2@db/stac"])
    assert refused.exit_code == 2 and "hunter2" not in refused.output
    assert refused.output.count("\n") == 1 and "--index-secret NAME" in refused.output


# --- the extent -------------------------------------------------------------------------------------

def test_an_extent_url_travels_as_its_url_and_is_read_by_the_generate_pod_only():
    url = "s3://example-areas/africa/coastline.geojson"
    doc = yaml.safe_load(render_workflow({**WITH_SOURCE, "extent": url}, options()))
    params = {p["name"]: p["value"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    assert params["extent"] == url
    used = [name for name, t in container_templates(doc).items()
            if "{{workflow.parameters.extent}}" in t["container"].get("args", [])]
    assert used == ["generate"]


def test_a_small_local_extent_file_is_inlined_as_wkt_and_a_large_one_refused(tmp_path):
    small = tmp_path / "small.geojson"
    small.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[146.9, -36.1], [147.1, -36.1], [147.1, -35.9], [146.9, -36.1]]]}}))
    doc = yaml.safe_load(render_workflow({**WITH_SOURCE, "extent": str(small)}, options()))
    params = {p["name"]: p["value"] for p in workflow_spec(doc)["arguments"]["parameters"]}
    assert params["extent"].startswith("POLYGON ((146.9 -36.1")
    ring = [[146 + 2 * i / 2000, -36 + 0.01 * (i % 2)] for i in range(2000)]
    ring = [[146, -37], *ring, [148, -37], [146, -37]]
    large = tmp_path / "coast.geojson"
    large.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    for extent in (str(large), "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"):
        with pytest.raises(ConfigError, match=r"KiB.*--extent s3://BUCKET/extent.geojson") as err:
            render_workflow({**WITH_SOURCE, "extent": extent}, options())
        assert "\n" not in str(err.value) and len(str(err.value)) < 400
    with pytest.raises(ConfigError, match="--extent"):  # render(), given the flags as they are
        render({**SELECTION, "extent": "POLYGON ((" + "1 1, " * 3000 + "1 1))"}, options())


@pytest.mark.parametrize("url", ["s3://bucket-only", "https://example.org/", "s3://b/"])
def test_an_extent_url_without_a_file_is_refused_at_render(url):
    with pytest.raises(ConfigError, match="no file in that URL"):
        render_workflow({**WITH_SOURCE, "extent": url}, options())


# --- bad options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, flag", [
    ({"schedule": "0 3 1 *"}, "--schedule"),
    ({"schedule": "61 * * * *"}, "--schedule"),
    ({"schedule": "0 3 1 * FOO"}, "--schedule"),
    ({"schedule": "0 3 1 MON *"}, "--schedule"),
    ({"schedule": "*/0 * * * *"}, "--schedule"),
    ({"schedule": "every day"}, "--schedule"),
    ({"image": "gridded"}, "--image"),
    ({"image": "repo:"}, "--image"),
    ({"image": "localhost:5000/gridded"}, "--image"),
    ({"image": "ghcr.io/org/gridded:latest"}, "--image"),
    ({"image": "gridded@sha256:abc"}, "--image"),
    ({"parallelism": 0}, "--parallelism"),
    ({"output": "/data/composites"}, "--output"),
    ({"output": "file:///data/composites"}, "--output"),
    ({"retries": -1}, "--retries"),
    ({"deadline_s": 0}, "--deadline"),
    ({"cpu": "two"}, "--cpu"),
    ({"memory": "0"}, "--memory"),
    ({"style": "flow"}, "--style"),
    ({"kind": "cron"}, "--kind"),
    ({"kind": "template", "schedule": "@daily"}, "--schedule"),
    ({"owner": "Data Team"}, "--owner"),
    ({"namespace": "Argo"}, "--namespace"),
    ({"s3_secret": "my_secret"}, "--s3-secret"),
    ({"aws_endpoint_url": "minio:9000"}, "--aws-endpoint-url"),
])
def test_bad_options_are_one_line_config_errors_naming_the_flag(overrides, flag):
    with pytest.raises(ConfigError) as err:
        options(**overrides)
    message = str(err.value)
    assert "\n" not in message and flag in message
    if "output" in overrides:
        assert "use an s3:// output" in message


@pytest.mark.parametrize("cron", ["0 3 1 * *", "*/15 * * * *", "0 0 * JAN-MAR MON-FRI", "30 2 1 1,4,7,10 *",
                                  "0 0 1-7 * sun", "@monthly"])
def test_good_schedules_are_accepted(cron):
    assert options(schedule=cron).schedule == cron


@pytest.mark.parametrize("image", [IMAGE, "localhost:5000/gridded:1.2", "gridded@sha256:" + "0" * 64])
def test_pinned_images_are_accepted(image):
    assert options(image=image).image == image


@pytest.mark.parametrize("selection, opts, match", [
    ({**SELECTION, "time": "2024-01/2024-03"}, {"schedule": "0 3 1 * *"}, "last:P1M"),
    ({**SELECTION, "time": "last:P1M", "as_of": "2024-03-01"}, {"schedule": "0 3 1 * *"}, "--as-of"),
    ({**SELECTION, "extent": None}, {}, "--extent"),
    ({**SELECTION, "tiles_per_worker": "0"}, {}, "--tiles-per-worker"),
    ({**SELECTION, "colour": "red"}, {}, "colour"),
    (SELECTION, {"output": None}, "s3://"),
])
def test_bad_selection_is_a_config_error(selection, opts, match):
    with pytest.raises(ConfigError, match=match) as err:
        render(selection, options(**opts))
    assert "\n" not in str(err.value)


# --- golden files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", EXAMPLES)
def test_golden_workflows_are_current(name):
    path = WORKFLOWS / f"{name}.yaml"
    fresh = render_example(name)
    assert fresh == render_example(name)  # deterministic
    if os.environ.get("GRIDDED_REGEN_GOLDEN") == "1":
        path.write_text(fresh)
    assert path.is_file(), f"{path} missing; run GRIDDED_REGEN_GOLDEN=1 python -m pytest tests/test_argo.py -k golden"
    assert path.read_text() == fresh, (
        f"{path} is stale; run GRIDDED_REGEN_GOLDEN=1 python -m pytest tests/test_argo.py -k golden and review "
        f"the diff")


def test_on_bad_source_skip_reaches_the_processors_and_only_them():
    doc = yaml.safe_load(render(SELECTION, options(on_bad_source="skip")))
    args = {name: t["container"]["args"] for name, t in container_templates(doc).items()}
    assert args["process"][-2:] == ["--on-bad-source", "skip"]
    assert child_process(doc)["inline"]["container"]["args"][-2:] == ["--on-bad-source", "skip"]
    assert all("--on-bad-source" not in a for name, a in args.items() if name != "process")
    assert schema_errors(doc) == []
    with pytest.raises(ConfigError, match="--on-bad-source maybe"):
        options(on_bad_source="maybe")
