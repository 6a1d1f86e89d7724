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
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from gridded.errors import ConfigError
from gridded.workflow.options import WorkflowOptions
from gridded.workflow.render import CELLS_PATH, RETRY_EXPRESSION, render, render_ingest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
# vendored from argo-workflows v4.1 (api/jsonschema/schema.json): the tests need nothing beside the clone
SCHEMA = Path(__file__).parent / "data" / "argo" / "schema.json"
ARGO = "io.argoproj.workflow.v1alpha1"

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
    if name == "ingest":
        return render_ingest("s3://example-stac/sentinel-2-l2a/catalog.json", None,
                             options(output=None, index_secret="gridded-index", cpu="1", memory="2Gi"),
                             collection="sentinel-2-l2a", bbox="146,-37,148,-35", datetime="2024-01/2024-03")
    raise KeyError(name)


EXAMPLES = ("steps", "dag", "cron", "template", "ingest")
KIND_OF = {"steps": "Workflow", "dag": "Workflow", "cron": "CronWorkflow", "template": "WorkflowTemplate",
           "ingest": "Workflow"}


@functools.cache
def example(name: str) -> dict:
    return yaml.safe_load(render_example(name))


def workflow_spec(doc: dict) -> dict:
    return doc["spec"]["workflowSpec"] if doc["kind"] == "CronWorkflow" else doc["spec"]


def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in workflow_spec(doc)["templates"]}


def container_templates(doc: dict) -> dict[str, dict]:
    return {name: t for name, t in templates(doc).items() if "container" in t}


# --- strict schema ---------------------------------------------------------------------------------

@functools.cache
def strict_definitions() -> dict:
    """Argo's definitions with every object closed: an unknown or misspelt field is an error."""
    if not SCHEMA.is_file():
        pytest.fail(f"{SCHEMA}: Argo's JSON schema is missing; it is vendored in the repository, restore it")
    definitions = copy.deepcopy(json.loads(SCHEMA.read_text())["definitions"])
    for definition in definitions.values():
        if "properties" in definition and "additionalProperties" not in definition:
            definition["additionalProperties"] = False
    # Kubernetes' int-or-string; the generated schema says only "string"
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["integer", "string"]}
    return definitions


@functools.cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/definitions/{ARGO}.{kind}", "definitions": strict_definitions()})


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(doc["kind"]).iter_errors(doc)]


@pytest.mark.parametrize("name", EXAMPLES)
def test_manifest_validates_against_argo_schema_strictly(name):
    doc = example(name)
    assert doc["kind"] == KIND_OF[name]
    assert schema_errors(doc) == []


@pytest.mark.parametrize("path, key, misspelt", [
    (("spec", "templates", 1), "retryStrategy", "retryStratgy"),
    (("spec", "templates", 0, "dag", "tasks", 1), "withParam", "withParams"),
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
def test_processors_fan_out_over_the_generators_batch_ids(name, scope):
    main = templates(example(name))["main"]
    nodes = [s for group in main["steps"] for s in group] if scope == "steps" else main["dag"]["tasks"]
    by_name = {n["name"]: n for n in nodes}
    assert [n["name"] for n in nodes] == ["generate", "process", "catalog"]
    process = by_name["process"]
    assert process["withParam"] == f"{{{{{scope}.generate.outputs.result}}}}"
    assert process["arguments"]["parameters"] == [{"name": "batch", "value": "{{item}}"}]
    assert process["arguments"]["artifacts"] == [
        {"name": "cells", "from": f"{{{{{scope}.generate.outputs.artifacts.cells}}}}"}]
    if scope == "tasks":
        assert process["depends"] == "generate" and by_name["catalog"]["depends"] == "process"


def test_generator_writes_the_cells_artifact_to_s3_under_the_workflow_uid():
    doc = example("dag")
    generate = templates(doc)["generate"]
    args = generate["container"]["args"]
    assert args[:2] == ["tiles", "generate"] and args[-2:] == ["--cells", CELLS_PATH]
    for flag, value in SELECTION.items():
        if value is not None:
            assert args[args.index(f"--{flag.replace('_', '-')}") + 1] == f"{{{{workflow.parameters.{flag}}}}}"
    assert "--as-of" not in args and "--statistic" not in args  # None flags are omitted
    (cells,) = generate["outputs"]["artifacts"]
    assert cells["name"] == "cells" and cells["path"] == CELLS_PATH
    assert cells["s3"]["bucket"] == "example-composites"
    assert cells["s3"]["key"] == "s2-monthly/_workflows/{{workflow.uid}}/cells.pickle"
    process = templates(doc)["process"]
    assert process["inputs"]["artifacts"] == [{"name": "cells", "path": CELLS_PATH}]
    assert process["inputs"]["parameters"] == [{"name": "batch"}]
    assert process["container"]["args"] == ["tiles", "process", "--cells", CELLS_PATH, "--batch",
                                            "{{inputs.parameters.batch}}", "--output", "{{workflow.parameters.output}}"]
    assert templates(doc)["catalog"]["container"]["args"] == ["catalog", "--output", "{{workflow.parameters.output}}"]


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


def test_s3_endpoint_is_a_parameter_and_the_artifact_location_is_complete():
    doc = example("steps")
    params = {p["name"]: p["value"] for p in doc["spec"]["arguments"]["parameters"]}
    assert params["aws_endpoint_url"] == MINIO and params["output"] == BASE["output"]
    for t in container_templates(doc).values():
        if t["container"]["command"] == ["gridded"]:
            env = {e["name"]: e for e in t["container"]["env"]}
            assert env["AWS_ENDPOINT_URL"]["value"] == "{{workflow.parameters.aws_endpoint_url}}"
            assert env["GRIDDED_IMAGE"]["value"] == IMAGE
    s3 = templates(doc)["generate"]["outputs"]["artifacts"][0]["s3"]
    assert s3["endpoint"] == "minio.minio.svc:9000" and s3["insecure"] is True
    assert s3["accessKeySecret"] == {"name": "gridded-s3", "key": "AWS_ACCESS_KEY_ID"}
    aws = templates(example("dag"))["generate"]["outputs"]["artifacts"][0]["s3"]
    assert aws["endpoint"] == "s3.amazonaws.com" and aws["useSDKCreds"] is True and "accessKeySecret" not in aws


def test_artifact_bucket_and_prefix_override_the_output():
    doc = yaml.safe_load(render(SELECTION, options(artifact_bucket="scratch", artifact_prefix="argo/cells")))
    s3 = templates(doc)["generate"]["outputs"]["artifacts"][0]["s3"]
    assert (s3["bucket"], s3["key"]) == ("scratch", "argo/cells/{{workflow.uid}}/cells.pickle")


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
        args = substituted(container["args"], doc, **{"inputs.parameters.batch": "0",
                                                      "workflow.scheduledTime": "2024-03-01T03:00:00Z"})
        command, rest = cli_command_for(args)
        params = command.make_context(tname, rest).params  # raises on an unknown flag or a bad value
        if tname == "generate":
            assert params["cells"] == CELLS_PATH and params["source"] == SELECTION["source"]


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
    for t in container_templates(yaml.safe_load(text)).values():
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
        f"{path} is stale; run GRIDDED_REGEN_GOLDEN=1 python -m pytest tests/test_argo.py -k golden and review the diff")


def test_on_bad_source_skip_reaches_the_processors_and_only_them():
    doc = yaml.safe_load(render(SELECTION, options(on_bad_source="skip")))
    args = {name: t["container"]["args"] for name, t in container_templates(doc).items()}
    assert args["process"][-2:] == ["--on-bad-source", "skip"]
    assert all("--on-bad-source" not in a for name, a in args.items() if name != "process")
    assert schema_errors(doc) == []
    with pytest.raises(ConfigError, match="--on-bad-source maybe"):
        options(on_bad_source="maybe")
