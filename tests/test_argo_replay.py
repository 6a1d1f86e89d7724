"""The rendered workflows, replayed here as Argo would run them, against the loopback S3 server:
a plain `withSequence` fan-out, child workflows over ranges of batches (a real plan split small, and
10^5 batches with the pods stubbed and a sample run), a cron run, a failure, and a plan from an index."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from argo_replay import Replay
from argo_schema import schema_errors
from click.testing import CliRunner
from expected import check_pixels

from conftest import CANARY_KEY_ID, CANARY_SECRET, demo_on_s3, download_tree
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT

SOURCE = "s3://replay-imagery/stac/catalog.json"
SELECT = ["--extent", DEMO_EXTENT, "--grid", "demo-utm55s-2560m", "--pipeline", "s2-monthly-median",
          "--tiles-per-worker", "2"]
ITEMS = 18  # 6 cells x 3 months; 2 cells a batch: 3 batches


@pytest.fixture(scope="module")
def replay_source(s3_server, demo_catalog):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    return demo_on_s3(client, demo_catalog, "replay-imagery")


def render(*extra: str, source: tuple[str, ...] = ("--source", SOURCE)) -> str:
    endpoint = ["--aws-endpoint-url", os.environ["AWS_ENDPOINT_URL"]] if "AWS_ENDPOINT_URL" in os.environ else []
    result = CliRunner().invoke(cli, [
        "workflow", "render", *source, *SELECT, "--image", "ghcr.io/example/gridded:0.1.0", "--s3-secret",
        "s3-creds", *endpoint, *extra])
    assert result.exit_code == 0, result.output
    assert CANARY_SECRET not in result.stdout and CANARY_KEY_ID not in result.stdout
    return result.stdout


def replay(manifest: str, s3, tmp_path, secrets=None, **kw):
    # the pods' environment: no keys of their own, they come from the Secret the manifest names
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "GRIDDED_INDEX_DSN"}
    env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    secrets = {"s3-creds": {"AWS_ACCESS_KEY_ID": CANARY_KEY_ID, "AWS_SECRET_ACCESS_KEY": CANARY_SECRET},
               **(secrets or {})}
    return Replay(manifest, s3=s3, secrets=secrets, env=env, workdir=tmp_path, **kw).execute()


def failures(run) -> list[str]:
    return [f"{p['template']}: {p['stderr'][-500:]}" for p in run.pods if p["exit"]]


def keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


class CatalogWatch:
    """After each pod: whether the output has a catalog yet. Only the final `catalog` step may write it."""

    def __init__(self, s3, bucket: str):
        self.s3, self.bucket, self.seen = s3, bucket, []

    def __call__(self, pod: dict) -> None:
        self.seen.append((pod["template"], "s2/catalog.json" in keys(self.s3, self.bucket, "s2/catalog.json")))


def check_output(s3, bucket: str, tmp_path, demo_catalog, watch: CatalogWatch) -> None:
    """18 items, each with every COG it names; the pixels numpy's; the catalog written once, by the last step."""
    out = tmp_path / "out"
    download_tree(s3, bucket, "s2", out)
    items = sorted(out.rglob("*.stac-item.json"))
    assert len(items) == ITEMS
    cogs = {p.relative_to(out).as_posix() for p in out.rglob("*.tif")}
    named = set()
    for path in items:
        item = json.loads(path.read_text())
        named |= {(path.parent / a["href"].rsplit("/", 1)[-1]).relative_to(out).as_posix()
                  for a in item["assets"].values() if a["href"].endswith(".tif")}
    assert cogs == named and len(cogs) >= ITEMS * 5
    assert check_pixels(out, demo_catalog)["tasks"] == ITEMS
    catalog = json.loads((out / "catalog.json").read_text())
    assert len([link for link in catalog["links"] if link["rel"] == "child"]) == 1
    collection = json.loads((out / "collection.json").read_text())
    assert len([link for link in collection["links"] if link["rel"] == "item"]) == ITEMS
    # no catalog until the catalog step, which wrote it; nothing after it but the report
    steps = [template for template, _ in watch.seen]
    assert steps[-2:] == ["catalog", "report-succeeded"] and steps.count("catalog") == 1
    assert [present for _, present in watch.seen] == [False] * (len(steps) - 2) + [True, True]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("style", ["dag", "steps"])
def test_replayed_workflow_fans_out_with_sequence_and_matches_numpy(style, s3, replay_source, demo_catalog, tmp_path):
    bucket = f"replay-{style}"
    s3.create_bucket(Bucket=bucket)
    watch = CatalogWatch(s3, bucket)
    manifest = render("--time", "2024-01-01/2024-03-31", "--output", f"s3://{bucket}/s2", "--style", style)
    run = replay(manifest, s3, tmp_path, on_pod=watch)
    assert run.status == "Succeeded", failures(run)
    assert [p["template"] for p in run.pods] == ["generate", "process", "process", "process", "catalog",
                                                 "report-succeeded"]
    assert run.pods[0]["stdout"] == "3\n"  # the count, and nothing else, on stdout
    assert run.children == []
    (fanout,) = [f for f in run.fanouts if f["task"] == "process"]
    assert fanout["items"] == ["0", "1", "2"]
    # generate wrote the cells artifact to S3 under the workflow's uid; each pod got that URL, not a copy
    (cells,) = keys(s3, bucket, "s2/_workflows/")
    assert cells.endswith("/cells.pickle")
    for pod in run.pods[1:4]:
        argv = pod["argv"]
        assert argv[argv.index("--cells") + 1] == f"s3://{bucket}/{cells}"
    check_output(s3, bucket, tmp_path, demo_catalog, watch)


@pytest.mark.parametrize("style", ["dag", "steps"])
def test_replayed_workflow_of_workflows_splits_the_batches_into_child_workflows(style, s3, replay_source, demo_catalog,
                                                                                tmp_path):
    bucket = f"replay-children-{style}"
    s3.create_bucket(Bucket=bucket)
    watch = CatalogWatch(s3, bucket)
    manifest = render("--time", "2024-01-01/2024-03-31", "--output", f"s3://{bucket}/s2", "--style", style,
                      "--max-batches-per-workflow", "2")
    run = replay(manifest, s3, tmp_path, on_pod=watch)
    assert run.status == "Succeeded", failures(run)
    parent = run.pods[0]["workflow"]
    assert run.pods[0]["stdout"] == "3\n"
    # above the limit the parent makes no process node at all, and two children of 2 and 1 batches
    assert [f["items"] for f in run.fanouts if f["workflow"] == parent and f["task"] == "process"] == [[]]
    assert [f["items"] for f in run.fanouts if f["task"] == "child"] == [["0", "1"]]
    assert [c["status"] for c in run.children] == ["Succeeded", "Succeeded"]
    ranges = [f["items"] for f in run.fanouts if f["workflow"] != parent]
    assert ranges == [["0", "1"], ["2"]]
    for child, ids in zip(run.children, ranges):
        assert schema_errors(child["doc"]) == []
        assert child["doc"]["metadata"]["labels"]["gridded/parent"] == parent
        assert "{{" not in child["manifest"].replace("{{item}}", "")  # the parent resolved all but the child's own
        batches = [p["argv"][p["argv"].index("--batch") + 1] for p in run.pods if p["workflow"] == child["name"]]
        assert batches == ids
    assert [p["template"] for p in run.pods if p["workflow"] == parent] == ["generate", "catalog",
                                                                          "report-succeeded"]
    check_output(s3, bucket, tmp_path, demo_catalog, watch)


def stubbed(batches: int, fail_batch: int | None = None):
    """Pods that answer at once: generate prints `batches`, process fails for `fail_batch` (exit 1)."""
    def process(argv: list[str]) -> tuple[int, str]:
        return (1 if argv[argv.index("--batch") + 1] == str(fail_batch) else 0), ""

    return {"generate": lambda argv: (0, f"{batches}\n"), "process": process, "catalog": lambda argv: (0, ""),
            "report-succeeded": lambda argv: (0, ""), "report-failed": lambda argv: (0, "")}


@pytest.mark.parametrize("batches, children", [(5000, 0), (5001, 2), (100_000, 20)])
def test_a_plan_of_up_to_10_5_batches_splits_into_children_that_cover_every_id_once(batches, children, tmp_path):
    manifest = render("--time", "2024-01", "--output", "s3://products/s2")
    assert len(manifest.encode()) < 32 * 1024  # the same small manifest whatever the plan's size
    run = Replay(manifest, s3=None, secrets={"s3-creds": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}},
                 env={}, workdir=tmp_path, sample=3, stubs=stubbed(batches)).execute()
    assert run.status == "Succeeded"
    assert len(run.children) == children
    parent = run.pods[0]["workflow"]
    per_workflow = {f["workflow"]: f["items"] for f in run.fanouts if f["task"] == "process"}
    covered = [int(i) for items in per_workflow.values() for i in items]
    assert sorted(covered) == list(range(batches))  # every id once, none twice
    assert all(len(items) <= 5000 for items in per_workflow.values())  # no Workflow holds more nodes
    assert (per_workflow[parent] == []) == (children > 0)
    for child in run.children:
        assert schema_errors(child["doc"]) == []
        assert len(child["manifest"].encode()) < 32 * 1024
        assert len(yaml.safe_load(child["manifest"])["spec"]["templates"]) == 1
    for workflow, items in per_workflow.items():  # a sample of each range ran: its first, middle and last ids
        ran = [p["argv"][p["argv"].index("--batch") + 1] for p in run.pods
               if p["workflow"] == workflow and p["template"] == "process"]
        assert ran == ([items[0], items[len(items) // 2], items[-1]] if len(items) >= 3 else items)


def test_a_failing_batch_fails_its_child_and_the_parent_without_a_catalog(tmp_path):
    manifest = render("--time", "2024-01", "--output", "s3://products/s2", "--max-batches-per-workflow", "4")
    run = Replay(manifest, s3=None, secrets={"s3-creds": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}},
                 env={}, workdir=tmp_path, stubs=stubbed(10, fail_batch=5)).execute()
    assert run.status == "Failed"
    assert [c["status"] for c in run.children] == ["Succeeded", "Failed"]  # one child at a time: the third waits
    failed = [p for p in run.pods if p["exit"]]
    assert {p["argv"][p["argv"].index("--batch") + 1] for p in failed} == {"5"}
    assert len(failed) == 3  # retried twice (exit 1 is transient), like any process pod
    templates = [p["template"] for p in run.pods]
    assert "catalog" not in templates and templates[-1] == "report-failed"


def test_replayed_cron_processes_the_last_complete_month(s3, replay_source, demo_catalog, tmp_path):
    s3.create_bucket(Bucket="replay-cron")
    manifest = render("--output", "s3://replay-cron/s2", "--schedule", "0 3 5 * *")
    run = replay(manifest, s3, tmp_path, scheduled_time="2024-03-05T03:00:00Z")
    assert run.status == "Succeeded", failures(run)
    download_tree(s3, "replay-cron", "s2", tmp_path / "out")
    periods = {p.parent.name for p in (tmp_path / "out").rglob("*.stac-item.json")}
    assert periods == {"2024-02--P1M"}
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 6


def test_failed_step_runs_the_failure_handler_and_does_not_retry_exit_2(s3, replay_source, tmp_path):
    s3.create_bucket(Bucket="replay-bad")
    manifest = render("--time", "2024-01-01/2024-03-31", "--output", "s3://replay-bad/s2")
    manifest = manifest.replace(SOURCE, "s3://replay-imagery/stac/missing.json")
    run = replay(manifest, s3, tmp_path)
    assert run.status == "Failed"
    generate = [p for p in run.pods if p["template"] == "generate"]
    assert len(generate) == 1 and generate[0]["exit"] == 2  # bad input: not retried
    assert run.pods[-1]["template"] == "report-failed"
    assert "Failed" in run.pods[-1]["stdout"]


def test_replayed_workflow_plans_from_the_index_in_its_secret(s3, demo_catalog, tmp_path):
    """The generate pod gets the DSN from the Secret (here a SQLite file the local pods can share)."""
    dsn = f"sqlite:///{tmp_path / 'index.db'}"
    ingest = CliRunner().invoke(cli, ["-q", "stac", "ingest", str(demo_catalog), "--index", dsn])
    assert ingest.exit_code == 0, ingest.output
    s3.create_bucket(Bucket="replay-index")
    manifest = render("--time", "2024-01", "--output", "s3://replay-index/s2", "--index-secret", "stac-index",
                      "--index", "postgresql://gridded:hunter2@db/stac", source=())
    assert "hunter2" not in manifest and "sqlite" not in manifest
    run = replay(manifest, s3, tmp_path, secrets={"stac-index": {"dsn": dsn}})
    assert run.status == "Succeeded", failures(run)
    assert run.pods[0]["stdout"] == "3\n"
    download_tree(s3, "replay-index", "s2", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 6
