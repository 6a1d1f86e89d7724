"""The rendered workflows, replayed here as Argo would run them, against the loopback S3 server."""

from __future__ import annotations

import json
import os

import pytest
from argo_replay import Replay
from click.testing import CliRunner
from expected import check_pixels

from conftest import CANARY_KEY_ID, CANARY_SECRET, demo_on_s3, download_tree
from gridded.cli import cli
from gridded.demo import DEMO_EXTENT


@pytest.fixture(scope="module")
def replay_source(s3_server, demo_catalog):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    return demo_on_s3(client, demo_catalog, "replay-imagery")


def render(*extra: str) -> str:
    result = CliRunner().invoke(cli, [
        "workflow", "render", "--source", "s3://replay-imagery/stac/catalog.json", "--extent", DEMO_EXTENT,
        "--grid", "demo-utm55s-2560m", "--pipeline", "s2-monthly-median", "--tiles-per-worker", "2",
        "--image", "ghcr.io/example/gridded:0.1.0", "--s3-secret", "s3-creds", *extra])
    assert result.exit_code == 0, result.output
    assert CANARY_SECRET not in result.stdout and CANARY_KEY_ID not in result.stdout
    return result.stdout


def replay(manifest: str, s3, tmp_path, **kw):
    # the pods' environment: no keys of their own, they come from the Secret the manifest names
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    secrets = {"s3-creds": {"AWS_ACCESS_KEY_ID": CANARY_KEY_ID, "AWS_SECRET_ACCESS_KEY": CANARY_SECRET}}
    return Replay(manifest, s3=s3, secrets=secrets, env=env, workdir=tmp_path, **kw).execute()


@pytest.mark.parametrize("style", ["dag", "steps"])
def test_replayed_workflow_matches_numpy(style, s3, replay_source, demo_catalog, tmp_path):
    bucket = f"replay-{style}"
    s3.create_bucket(Bucket=bucket)
    manifest = render("--time", "2024-01-01/2024-03-31", "--output", f"s3://{bucket}/s2", "--style", style,
                      "--aws-endpoint-url", os.environ["AWS_ENDPOINT_URL"])
    run = replay(manifest, s3, tmp_path)
    assert run.status == "Succeeded", [p["stderr"][-500:] for p in run.pods if p["exit"]]
    templates = [p["template"] for p in run.pods]
    assert templates == ["generate", "process", "process", "process", "catalog", "report-succeeded"]
    assert json.loads(run.pods[0]["stdout"]) == [0, 1, 2]
    download_tree(s3, bucket, "s2", tmp_path / "out")
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 18
    # the cells artifact went through S3 under the workflow's uid, as Argo stores it
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="s2/_workflows/")["Contents"]]
    assert len(keys) == 1 and keys[0].endswith("/cells.pickle")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_replayed_cron_processes_the_last_complete_month(s3, replay_source, demo_catalog, tmp_path):
    s3.create_bucket(Bucket="replay-cron")
    manifest = render("--output", "s3://replay-cron/s2", "--schedule", "0 3 5 * *",
                      "--aws-endpoint-url", os.environ["AWS_ENDPOINT_URL"])
    run = replay(manifest, s3, tmp_path, scheduled_time="2024-03-05T03:00:00Z")
    assert run.status == "Succeeded", [p["stderr"][-500:] for p in run.pods if p["exit"]]
    download_tree(s3, "replay-cron", "s2", tmp_path / "out")
    periods = {p.parent.name for p in (tmp_path / "out").rglob("*.stac-item.json")}
    assert periods == {"2024-02--P1M"}
    assert check_pixels(tmp_path / "out", demo_catalog)["tasks"] == 6


def test_failed_step_runs_the_failure_handler_and_does_not_retry_exit_2(s3, replay_source, tmp_path):
    s3.create_bucket(Bucket="replay-bad")
    manifest = render("--time", "2024-01-01/2024-03-31", "--output", "s3://replay-bad/s2",
                      "--aws-endpoint-url", os.environ["AWS_ENDPOINT_URL"])
    manifest = manifest.replace("s3://replay-imagery/stac/catalog.json", "s3://replay-imagery/stac/missing.json")
    run = replay(manifest, s3, tmp_path)
    assert run.status == "Failed"
    generate = [p for p in run.pods if p["template"] == "generate"]
    assert len(generate) == 1 and generate[0]["exit"] == 2  # bad input: not retried
    assert run.pods[-1]["template"] == "report-failed"
    assert "Failed" in run.pods[-1]["stdout"]
