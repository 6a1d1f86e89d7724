"""STAC documents validated against the JSON schemas of the versions they declare, offline: the
core, extension, GeoJSON and PROJJSON schemas are vendored under data/stac-schemas (mirroring their
URLs; provenance in its SOURCES.md). A schema that is not there is an error, never a download."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import referencing
import referencing.exceptions
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
CORE = {"Feature": "item-spec/json-schema/item.json", "Collection": "collection-spec/json-schema/collection.json",
        "Catalog": "catalog-spec/json-schema/catalog.json"}


def _url(path: Path) -> str:
    rel = path.relative_to(SCHEMAS).as_posix()
    if rel.startswith("json-schema.org/"):  # served without the .json
        return "http://" + rel.removesuffix(".json")
    return "https://" + rel


def _nowhere(uri: str):
    raise referencing.exceptions.NoSuchResource(ref=uri)


@functools.cache
def registry() -> Registry:
    resources = []
    for path in sorted(SCHEMAS.rglob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        # by URL and by $id: some $id are not their URL (v1.1.0's common.json says "commonjson")
        for key in {_url(path), contents.get("$id", _url(path)), contents.get("$id", _url(path)).rstrip("#")}:
            resources.append((key, resource))
    return Registry(retrieve=_nowhere).with_resources(resources)


def schema_urls(doc: dict) -> list[str]:
    """The core schema of the document's type and version, then each declared extension's."""
    core = f"https://schemas.stacspec.org/v{doc['stac_version']}/{CORE[doc['type']]}"
    return [core, *doc.get("stac_extensions", [])]


def errors(doc: dict) -> list[str]:
    """Every schema error of a STAC document, as 'schema: path: message'."""
    found = []
    for url in schema_urls(doc):
        validator = Draft7Validator({"$ref": url}, registry=registry())
        found += [f"{url}: {'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
                  for e in validator.iter_errors(doc)]
    return found
