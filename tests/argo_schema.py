"""Argo's JSON schema (vendored from argo-workflows v4.1, api/jsonschema/schema.json) made strict:
every object closed, so an unknown or misspelt field is an error. Shared by the render and replay tests."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

SCHEMA = Path(__file__).parent / "data" / "argo" / "schema.json"
ARGO = "io.argoproj.workflow.v1alpha1"


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
