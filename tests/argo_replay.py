"""Replays a rendered Argo workflow on this machine the way the Argo controller would run it.

Templates are resolved by name (or inline); `{{...}}` tags substituted: simple tags, and expression
tags (`{{=...}}`) in the small part of Argo's expression language the renders use (numbers, names,
`+ - * /`, comparisons, `a ? b : c`, `asInt`, `int`, `min`, `max`); DAG tasks run in dependency
order and steps group by group; `withParam` fans a template out over the JSON list a step printed
and `withSequence` over `count` or `start`..`end`; `when` is evaluated after substitution; a
container's stdout is its `outputs.result`; `retryStrategy` retries a failure unless its expression
(no retry of exit 2) says no; a `resource` template creating a Workflow substitutes its manifest
as the parent's controller does (tags it cannot resolve are left for the child), then runs that
child here and waits on its phase with the template's success and failure conditions; then `onExit`
runs with `{{workflow.status}}`. Each container's command runs as a local process with the
container's env, secrets resolved from `secrets`, unless `stubs` answers for it.

`sample=N` runs at most N pods of any fan-out of containers (the first, the last and some evenly
between; every child workflow still runs) and records every item in `run.fanouts`, so a plan of
10^5 batches can be replayed in seconds.
Artifacts are not replayed: the rendered workflows pass S3 URLs, and a template that declares one
is an error here.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

VAR = re.compile(r"\{\{\s*(=?)\s*(.+?)\s*\}\}")
FUNCTIONS = {"asInt": "int", "int": "int", "min": "min", "max": "max"}


@dataclass
class Run:
    """What happened: each container's workflow, name, argv, exit status and stdout, in order; the
    child workflows created (their manifests as created) and every fan-out's items."""

    pods: list[dict] = field(default_factory=list)
    children: list[dict] = field(default_factory=list)
    fanouts: list[dict] = field(default_factory=list)
    status: str = "Running"


class Replay:
    def __init__(self, manifest: str, *, s3, secrets: dict[str, dict[str, str]], env: dict[str, str],
                 scheduled_time: str | None = None, workdir: Path, sample: int | None = None,
                 stubs: dict[str, Callable[[list[str]], tuple[int, str]]] | None = None,
                 on_pod: Callable[[dict], None] | None = None, run: Run | None = None, name: str | None = None):
        doc = yaml.safe_load(manifest)
        self.kind = doc["kind"]
        spec = doc["spec"]
        self.spec = spec["workflowSpec"] if self.kind == "CronWorkflow" else spec
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        for t in self.spec["templates"]:
            if t.get("inputs", {}).get("artifacts") or t.get("outputs", {}).get("artifacts"):
                raise NotImplementedError(f"template {t['name']} declares artifacts, which this replay does not pass")
        self.s3, self.secrets, self.env, self.workdir = s3, secrets, env, workdir
        self.sample, self.stubs, self.on_pod = sample, stubs or {}, on_pod
        self.name = name or "replay-" + uuid.uuid4().hex[:5]
        self.globals = {f"workflow.parameters.{p['name']}": str(p.get("value", ""))
                        for p in self.spec.get("arguments", {}).get("parameters", [])}
        self.globals.update({"workflow.uid": str(uuid.uuid4()), "workflow.name": self.name,
                             "workflow.namespace": "argo", "workflow.failures": "[]"})
        if scheduled_time:
            self.globals["workflow.scheduledTime"] = scheduled_time
        self.run = run or Run()

    # --- substitution -------------------------------------------------------------------------
    def sub(self, text: str, scope: dict[str, str], *, strict: bool = True) -> str:
        """`text` with its tags replaced; not `strict` (a resource manifest), tags that name
        something out of scope are left as they are, as Argo's controller leaves them."""
        def value(match):
            expression, body = match.group(1) == "=", match.group(2)
            names = {**self.globals, **scope}
            try:
                return evaluate(body, names) if expression else names[body]
            except KeyError:
                if strict:
                    raise KeyError(f"unresolved {match.group(0)}") from None
                return match.group(0)
        return VAR.sub(value, text)

    # --- templates ----------------------------------------------------------------------------
    def execute(self) -> Run:
        try:
            self.call(self.templates[self.spec["entrypoint"]], {})
            status = "Succeeded"
        except StepFailed:
            status = "Failed"
        if self.spec.get("onExit"):
            self.globals["workflow.status"] = status
            self.call(self.templates[self.spec["onExit"]], {})
        self.run.status = status
        return self.run

    def call(self, template: dict, params: dict[str, str]) -> dict:
        scope = {f"inputs.parameters.{k}": v for k, v in params.items()}
        for p in template.get("inputs", {}).get("parameters", []):
            if f"inputs.parameters.{p['name']}" not in scope:
                scope[f"inputs.parameters.{p['name']}"] = str(p["value"])
        if "dag" in template:
            return self.dag(template["dag"]["tasks"], scope)
        if "steps" in template:
            return self.steps(template["steps"], scope)
        if "resource" in template:
            return self.resource(template, scope)
        return self.container(template, scope)

    def _template_of(self, task: dict, scope: dict[str, str]) -> dict:
        if "inline" in task:  # part of the task, so substituted with it (`{{item}}` included), as Argo does
            inline = json.loads(self.sub(json.dumps(task["inline"]), scope))
            return {**inline, "name": inline.get("name", task["name"])}
        return self.templates[task["template"]]

    def _arguments(self, task: dict, scope: dict[str, str]) -> dict[str, str]:
        return {p["name"]: self.sub(str(p["value"]), scope) for p in task.get("arguments", {}).get("parameters", [])}

    def _items(self, task: dict, scope: dict[str, str]) -> list[str] | None:
        if "withParam" in task:
            items = json.loads(self.sub(task["withParam"], scope))
            return [json.dumps(i) if not isinstance(i, (str, int)) else str(i) for i in items]
        if "withSequence" in task:
            seq = {k: int(self.sub(str(v), scope)) for k, v in task["withSequence"].items() if k != "format"}
            start = seq.get("start", 0)
            end = seq["end"] if "end" in seq else start + seq["count"] - 1
            return [str(i) for i in range(start, end + 1)] if seq.get("count", 1) else []
        return None

    def _run_task(self, task: dict, outputs: dict[str, dict], scope: dict[str, str], prefix: str) -> dict:
        scope = {**scope, **{f"{prefix}.{n}.outputs.result": o["result"] for n, o in outputs.items() if "result" in o}}
        items = self._items(task, scope)
        if items is None:
            if "when" in task and not self._when(self.sub(task["when"], scope)):
                return {"skipped": True}
            return self.call(self._template_of(task, scope), self._arguments(task, scope))
        pods = "container" in (task.get("inline") or self.templates.get(task.get("template"), {}))
        ran = _sampled(items, self.sample) if pods else items  # every child workflow, a sample of pods
        self.run.fanouts.append({"workflow": self.name, "task": task["name"], "items": items, "ran": ran})
        results = []
        for item in ran:
            item_scope = dict(scope, item=item)
            if "when" in task and not self._when(self.sub(task["when"], item_scope)):
                continue
            results.append(self.call(self._template_of(task, item_scope), self._arguments(task, item_scope)))
        return {"fanout": results, "skipped": not items}

    def dag(self, tasks: list[dict], scope: dict[str, str]) -> dict:
        outputs: dict[str, dict] = {}
        pending = {t["name"]: t for t in tasks}
        while pending:
            ready = [t for t in pending.values() if all(d in outputs for d in _deps(t))]
            if not ready:
                raise AssertionError(f"DAG cycle or missing dependency among {sorted(pending)}")
            for task in ready:
                outputs[task["name"]] = self._run_task(task, outputs, scope, "tasks")
                del pending[task["name"]]
        return {}

    def steps(self, groups: list[list[dict]], scope: dict[str, str]) -> dict:
        outputs: dict[str, dict] = {}
        for group in groups:
            for step in group:
                outputs[step["name"]] = self._run_task(step, outputs, scope, "steps")
        return {}

    @staticmethod
    def _when(expr: str) -> bool:
        left, op, right = re.fullmatch(r"\s*(\S+)\s*(==|!=|<=|>=|<|>)\s*(\S+)\s*", expr).groups()
        if op in ("==", "!="):
            return (left == right) == (op == "==")
        a, b = float(left), float(right)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]

    def resource(self, template: dict, scope: dict[str, str]) -> dict:
        """action create of a Workflow: substituted as the parent's controller would, then run here."""
        spec = template["resource"]
        assert spec["action"] == "create", spec
        text = self.sub(spec["manifest"], scope, strict=False)
        child = yaml.safe_load(text)
        assert child["kind"] == "Workflow", child["kind"]
        name = child["metadata"].get("name") or child["metadata"]["generateName"] + uuid.uuid4().hex[:5]
        replay = Replay(text, s3=self.s3, secrets=self.secrets, env=self.env, workdir=self.workdir,
                        sample=self.sample, stubs=self.stubs, on_pod=self.on_pod, run=Run(), name=name)
        record = {"name": name, "manifest": text, "doc": child, "parent": self.name}
        self.run.children.append(record)
        child_run = replay.execute()
        record["status"] = child_run.status
        self.run.pods += child_run.pods
        self.run.children += child_run.children
        self.run.fanouts += child_run.fanouts
        phase = {"status.phase": child_run.status}
        if _condition(spec["failureCondition"], phase):
            raise StepFailed(template["name"], 1, f"child workflow {name} {child_run.status}")
        assert _condition(spec["successCondition"], phase), (spec["successCondition"], phase)
        return {"result": name}

    def container(self, template: dict, scope: dict[str, str]) -> dict:
        c = template["container"]
        argv = [self.sub(x, scope) for x in c.get("command", []) + c.get("args", [])]
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
            stub = self.stubs.get(template["name"])
            if stub is not None:
                code, stdout, stderr = *stub(argv), ""
            else:
                cwd = tempfile.mkdtemp(prefix="pod-", dir=self.workdir)  # each pod has its own disk
                proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, cwd=cwd)
                code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
            pod = {"workflow": self.name, "template": template["name"], "argv": argv, "exit": code,
                   "stdout": stdout, "stderr": stderr, "attempt": attempt}
            self.run.pods.append(pod)
            if self.on_pod:
                self.on_pod(pod)
            if code == 0:
                break
            if "!= 2" in retry.get("expression", "") and code == 2:
                break
        if code != 0:
            raise StepFailed(template["name"], code, stderr)
        return {"result": stdout.strip()}


class StepFailed(Exception):
    pass


def evaluate(expression: str, names: dict[str, str]) -> str:
    """An Argo expression over `names` (flat `a.b.c` keys), its result as Argo writes it into text.
    Raises KeyError for a name not given, and anything outside the subset this replay knows."""
    if " ? " in expression:  # expr's `c ? a : b` -> Python's `a if c else b`
        cond, rest = expression.split(" ? ", 1)
        then, other = rest.split(" : ", 1)
        expression = f"({then}) if ({cond}) else ({other})"
    value = _eval(ast.parse(expression, mode="eval").body, names)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _eval(node: ast.AST, names: dict[str, str]):
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        return names[ast.unparse(node)]
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return ops[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        a, b = _eval(node.left, names), _eval(node.comparators[0], names)
        return {ast.Lt: a < b, ast.LtE: a <= b, ast.Gt: a > b, ast.GtE: a >= b, ast.Eq: a == b,
                ast.NotEq: a != b}[type(node.ops[0])]
    if isinstance(node, ast.IfExp):
        return _eval(node.body, names) if _eval(node.test, names) else _eval(node.orelse, names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        args = [_eval(a, names) for a in node.args]
        if FUNCTIONS[node.func.id] == "int":  # expr's int(): a string parsed, a float truncated
            return int(args[0]) if isinstance(args[0], (int, float)) else int(str(args[0]))
        return {"min": min, "max": max}[FUNCTIONS[node.func.id]](*args)
    raise NotImplementedError(f"expression {ast.unparse(node)!r} is outside what the replay evaluates")


def _condition(text: str, values: dict[str, str]) -> bool:
    """A resource template's condition: `KEY == VALUE` or `KEY in (A, B)`."""
    match = re.fullmatch(r"\s*(\S+)\s*==\s*(\S+)\s*", text)
    if match:
        return values[match.group(1)] == match.group(2)
    match = re.fullmatch(r"\s*(\S+)\s+in\s+\(([^)]*)\)\s*", text)
    if match:
        return values[match.group(1)] in {v.strip() for v in match.group(2).split(",")}
    raise NotImplementedError(f"condition {text!r}")


def _sampled(items: list[str], sample: int | None) -> list[str]:
    if sample is None or len(items) <= sample:
        return items
    if sample < 2:
        return items[:sample]
    step = (len(items) - 1) / (sample - 1)
    return [items[round(i * step)] for i in range(sample)]


def _deps(task: dict) -> list[str]:
    if "depends" in task:
        return re.findall(r"[A-Za-z0-9-]+(?=\.|\b)", re.sub(r"\.(Succeeded|Failed|Errored|Skipped|Daemoned)", "",
                                                            task["depends"].replace("&&", " ").replace("||", " ")))
    return list(task.get("dependencies", []))
