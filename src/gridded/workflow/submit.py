"""`gridded workflow submit`: create a rendered manifest through the Kubernetes API and watch it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError, GriddedError

GROUP, VERSION = "argoproj.io", "v1alpha1"
PLURALS = {"Workflow": "workflows", "WorkflowTemplate": "workflowtemplates", "CronWorkflow": "cronworkflows"}
DONE_PHASES = ("Succeeded", "Failed", "Error")
WATCH_POLL_S = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Created:
    kind: str
    namespace: str
    name: str


def _api():
    """CustomObjectsApi from the in-cluster service account, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            # KUBECONFIG read now, not when the kubernetes package was imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (config.ConfigException, OSError, TypeError) as err:
            raise ConfigError(f"no Kubernetes configuration ({str(err).splitlines()[0]}); "
                              f"set KUBECONFIG or run inside the cluster") from err
    return client.CustomObjectsApi()


def _default_namespace() -> str:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
        return active.get("context", {}).get("namespace") or "default"
    except (config.ConfigException, OSError, TypeError):
        return "default"


def submit_manifest(path: str, *, namespace: str | None = None) -> Created:
    """Create the Workflow, WorkflowTemplate or CronWorkflow in a YAML file."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        body = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read a YAML manifest ({err.__class__.__name__}); "
                          f"give the output of `gridded workflow render`") from err
    kind = body.get("kind") if isinstance(body, dict) else None
    if kind not in PLURALS:
        raise ConfigError(f"{path}: kind {kind!r} is not one of {', '.join(PLURALS)}; give a rendered workflow")
    api = _api()
    ns = namespace or body.get("metadata", {}).get("namespace") or _default_namespace()
    body.setdefault("metadata", {})["namespace"] = ns
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], body)
    except ApiException as err:
        fix = {401: "check your credentials", 403: "check your RBAC permissions in the namespace",
               404: "check that Argo Workflows is installed and the namespace exists",
               409: "an object of that name exists; use another --name"}.get(err.status, "check the manifest")
        raise ConfigError(f"{path}: the Kubernetes API refused it ({err.status} {err.reason}); {fix}") from err
    except HTTPError as err:
        raise GriddedError(f"cannot reach the Kubernetes API ({err.__class__.__name__}); check KUBECONFIG") from err
    return Created(kind=kind, namespace=ns, name=created["metadata"]["name"])


def watch_workflow(created: Created, *, progress: Callable[[str], None], poll_s: float | None = None,
                   timeout_s: float | None = None) -> str:
    """Poll the workflow until it ends; report its phase and `status.progress` as they change."""
    api = _api()
    started, last = time.monotonic(), None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, created.namespace, "workflows", created.name)
        status = obj.get("status", {})
        phase = status.get("phase", "Pending")
        line = f"{created.name}: {phase} {status.get('progress', '')}".strip()
        if line != last:
            progress(line)
            last = line
        if phase in DONE_PHASES:
            return phase
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return phase
        time.sleep(WATCH_POLL_S if poll_s is None else poll_s)
