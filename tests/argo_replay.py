"""Replays a rendered Argo workflow on this machine the way the Argo controller would run it.

Templates are resolved by name; `{{...}}` parameters substituted; DAG tasks run in dependency
order and steps group by group; `withParam` fans a template out over the JSON list a step
printed; a container's stdout is its `outputs.result`; output artifacts are uploaded to their
S3 key and input artifacts downloaded to the path the template names (remapped under a temporary
folder, as each pod has its own /tmp); `retryStrategy` retries a failure unless its expression
(no retry of exit 2) says no; then `onExit` runs with `{{workflow.status}}`. Each container's
command runs as a local process with the container's env, secrets resolved from `secrets`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VAR = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")


@dataclass
class Run:
    """What happened: each container's name, argv, exit status and stdout, in order."""

    pods: list[dict] = field(default_factory=list)
    status: str = "Running"


class Replay:
    def __init__(self, manifest: str, *, s3, secrets: dict[str, dict[str, str]], env: dict[str, str],
                 scheduled_time: str | None = None, workdir: Path):
        doc = yaml.safe_load(manifest)
        self.kind = doc["kind"]
        spec = doc["spec"]
        self.spec = spec["workflowSpec"] if self.kind == "CronWorkflow" else spec
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.s3, self.secrets, self.env, self.workdir = s3, secrets, env, workdir
        self.globals = {f"workflow.parameters.{p['name']}": str(p.get("value", ""))
                        for p in self.spec.get("arguments", {}).get("parameters", [])}
        self.globals.update({"workflow.uid": str(uuid.uuid4()), "workflow.name": "replay-" + uuid.uuid4().hex[:5],
                             "workflow.namespace": "argo", "workflow.failures": "[]"})
        if scheduled_time:
            self.globals["workflow.scheduledTime"] = scheduled_time
        self.run = Run()

    # --- substitution -------------------------------------------------------------------------
    def sub(self, text: str, scope: dict[str, str]) -> str:
        def value(m):
            key = m.group(1)
            if key in scope:
                return scope[key]
            if key in self.globals:
                return self.globals[key]
            raise KeyError(f"unresolved {{{{{key}}}}}")
        return VAR.sub(value, text)

    # --- templates ----------------------------------------------------------------------------
    def execute(self) -> Run:
        try:
            self.call(self.spec["entrypoint"], {}, {})
            self.run.status = "Succeeded"
        except StepFailed:
            self.run.status = "Failed"
        if self.spec.get("onExit"):
            self.globals["workflow.status"] = self.run.status
            self.call(self.spec["onExit"], {}, {})
        return self.run

    def call(self, name: str, params: dict[str, str], artifacts: dict[str, dict]) -> dict:
        template = self.templates[name]
        scope = {f"inputs.parameters.{k}": v for k, v in params.items()}
        for p in template.get("inputs", {}).get("parameters", []):
            if f"inputs.parameters.{p['name']}" not in scope:
                scope[f"inputs.parameters.{p['name']}"] = str(p["value"])
        if "dag" in template:
            return self.dag(template["dag"]["tasks"])
        if "steps" in template:
            return self.steps(template["steps"])
        return self.container(template, scope, artifacts)

    def _arguments(self, task: dict, scope: dict[str, str], outputs: dict[str, dict], prefix: str):
        params, artifacts = {}, {}
        for p in task.get("arguments", {}).get("parameters", []):
            params[p["name"]] = self.sub(str(p["value"]), scope)
        for a in task.get("arguments", {}).get("artifacts", []):
            ref = VAR.fullmatch(a["from"]).group(1)  # e.g. tasks.generate.outputs.artifacts.cells
            _, step, _, _, art = ref.split(".")
            artifacts[a["name"]] = outputs[step]["artifacts"][art]
        return params, artifacts

    def _run_task(self, task: dict, outputs: dict[str, dict], prefix: str) -> dict:
        scope = {f"{prefix}.{n}.outputs.result": o["result"] for n, o in outputs.items() if "result" in o}
        if "when" in task and not self._when(self.sub(task["when"], scope)):
            return {"skipped": True}
        if "withParam" in task:
            items = json.loads(self.sub(task["withParam"], scope))
            results = []
            for item in items:
                item_scope = dict(scope, item=json.dumps(item) if not isinstance(item, (str, int)) else str(item))
                params, artifacts = self._arguments(task, item_scope, outputs, prefix)
                results.append(self.call(task["template"], params, artifacts))
            return {"fanout": results}
        params, artifacts = self._arguments(task, scope, outputs, prefix)
        return self.call(task["template"], params, artifacts)

    def dag(self, tasks: list[dict]) -> dict:
        outputs: dict[str, dict] = {}
        pending = {t["name"]: t for t in tasks}
        while pending:
            ready = [t for t in pending.values() if all(d in outputs for d in _deps(t))]
            if not ready:
                raise AssertionError(f"DAG cycle or missing dependency among {sorted(pending)}")
            for task in ready:
                outputs[task["name"]] = self._run_task(task, outputs, "tasks")
                del pending[task["name"]]
        return {}

    def steps(self, groups: list[list[dict]]) -> dict:
        outputs: dict[str, dict] = {}
        for group in groups:
            for step in group:
                outputs[step["name"]] = self._run_task(step, outputs, "steps")
        return {}

    @staticmethod
    def _when(expr: str) -> bool:
        left, op, right = re.fullmatch(r"\s*(\S+)\s*(==|!=)\s*(\S+)\s*", expr).groups()
        return (left == right) if op == "==" else (left != right)

    def container(self, template: dict, scope: dict[str, str], artifacts: dict[str, dict]) -> dict:
        pod = Path(tempfile.mkdtemp(prefix="pod-", dir=self.workdir))
        remap = {}
        for a in template.get("inputs", {}).get("artifacts", []):
            local = pod / Path(a["path"]).name
            src = artifacts[a["name"]]
            local.write_bytes(self.s3.get_object(Bucket=src["bucket"], Key=src["key"])["Body"].read())
            remap[a["path"]] = str(local)
        for a in template.get("outputs", {}).get("artifacts", []):
            remap[a["path"]] = str(pod / Path(a["path"]).name)
        c = template["container"]
        argv = [self.sub(x, scope) for x in c.get("command", []) + c.get("args", [])]
        argv = [remap.get(x, x) for x in argv]
        if argv[0] == "gridded":
            argv = [sys.executable, "-m", "gridded.cli", *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        env = dict(self.env)
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = self.sub(str(e["value"]), scope)
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.secrets[ref["name"]][ref["key"]]
        retry = template.get("retryStrategy", {})
        limit = int(retry.get("limit", 0))
        for attempt in range(limit + 1):
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            self.run.pods.append({"template": template["name"], "argv": argv, "exit": proc.returncode,
                                  "stdout": proc.stdout, "stderr": proc.stderr, "attempt": attempt})
            if proc.returncode == 0:
                break
            if "!= 2" in retry.get("expression", "") and proc.returncode == 2:
                break
        if proc.returncode != 0:
            raise StepFailed(template["name"], proc.returncode, proc.stderr)
        out = {"result": proc.stdout.strip(), "artifacts": {}}
        for a in template.get("outputs", {}).get("artifacts", []):
            key = self.sub(a["s3"]["key"], scope)
            self.s3.put_object(Bucket=a["s3"]["bucket"], Key=key, Body=Path(remap[a["path"]]).read_bytes())
            out["artifacts"][a["name"]] = {"bucket": a["s3"]["bucket"], "key": key}
        return out


class StepFailed(Exception):
    pass


def _deps(task: dict) -> list[str]:
    if "depends" in task:
        return re.findall(r"[A-Za-z0-9-]+(?=\.|\b)", re.sub(r"\.(Succeeded|Failed|Errored|Skipped|Daemoned)", "",
                                                            task["depends"].replace("&&", " ").replace("||", " ")))
    return list(task.get("dependencies", []))
