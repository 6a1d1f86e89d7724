"""JSON parsed fast: orjson (about three times the standard library on a STAC item, most of what
an ingest's parsers spend), the standard library where orjson refuses what it accepts (NaN and
Infinity, integers past 64 bits, lone surrogates), so a document reads the same either way."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The document; json.JSONDecodeError (or UnicodeDecodeError) as json.loads raises them."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
