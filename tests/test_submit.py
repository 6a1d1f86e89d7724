"""`gridded workflow submit`: the manifest goes to the Kubernetes API as the kubernetes client sends
it, here to a loopback stand-in for the API server (no cluster on this machine), via a kubeconfig."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from click.testing import CliRunner

from gridded.cli import cli


class FakeApi(http.server.BaseHTTPRequestHandler):
    created: ClassVar[list[tuple[str, dict]]] = []
    phases: ClassVar[list[str]] = ["Running", "Running", "Succeeded"]

    def log_message(self, *args):
        pass

    def _json(self, code: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeApi.created.append((self.path, json.loads(json.dumps(body))))
        body["metadata"]["name"] = body["metadata"].get("name") or body["metadata"]["generateName"] + "abcde"
        self._json(201, body)

    def do_GET(self):
        phase = FakeApi.phases.pop(0) if len(FakeApi.phases) > 1 else FakeApi.phases[0]
        self._json(200, {"metadata": {"name": self.path.rsplit("/", 1)[-1]},
                         "status": {"phase": phase, "progress": "3/5" if phase == "Running" else "5/5"}})


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
              "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
              "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
              "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u", "namespace": "argo"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    FakeApi.created.clear()
    yield
    server.shutdown()


def test_submit_creates_the_workflow_and_watch_follows_it(kubeconfig, monkeypatch):
    from gridded.workflow import submit

    monkeypatch.setattr(submit, "WATCH_POLL_S", 0.05)
    result = CliRunner().invoke(cli, ["workflow", "submit", "workflows/dag.yaml", "--watch"])
    assert result.exit_code == 0, result.output
    path, body = FakeApi.created[0]
    assert path == "/apis/argoproj.io/v1alpha1/namespaces/argo/workflows"
    assert body == yaml.safe_load(Path("workflows/dag.yaml").read_text())
    assert "Workflow argo/gridded-s2-monthly-median-abcde created" in result.stdout
    assert "Succeeded" in result.stdout.splitlines()[-1]


def test_submit_a_cron_workflow_to_another_namespace(kubeconfig):
    result = CliRunner().invoke(cli, ["workflow", "submit", "workflows/cron.yaml", "--namespace", "batch"])
    assert result.exit_code == 0, result.output
    assert FakeApi.created[0][0] == "/apis/argoproj.io/v1alpha1/namespaces/batch/cronworkflows"


def test_submit_without_kubernetes_configuration_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = CliRunner().invoke(cli, ["workflow", "submit", "workflows/dag.yaml"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("gridded: error: no Kubernetes configuration")
