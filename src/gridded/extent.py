"""`--extent` (a lon/lat bbox, WKT text, or a GeoJSON or WKT file: a path, s3:// or https:// URL)
-> one EPSG:4326 geometry."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import urlsplit

import shapely
import shapely.wkt
from odc.geo.geom import Geometry
from shapely.geometry import box, shape

from .errors import ConfigError, GriddedError, SourceError

BBOX_TEXT = re.compile(r"[-+0-9.eE\s]+(,[-+0-9.eE\s]+){3}")
EXTENT_URL = re.compile(r"^(s3|https?)://", re.IGNORECASE)
EXTENT_SUFFIXES = (".json", ".geojson", ".wkt")
MAX_EXTENT_BYTES = 256 * 1024 * 1024  # a detailed coastline is tens of MB; more is not an area
HTTP_TIMEOUT_S = 60
FORMS = "a GeoJSON or WKT file (path, s3:// or https://), WKT or minx,miny,maxx,maxy"


def parse_extent(text: str) -> Geometry:
    """A lon/lat bbox `minx,miny,maxx,maxy`, WKT, or a GeoJSON (geometry, Feature or FeatureCollection)
    or WKT file, local or at an s3:// or https:// URL -> EPSG:4326 geometry."""
    text = text.strip()
    if BBOX_TEXT.fullmatch(text):
        return _bbox_extent(text)
    if is_extent_url(text):
        return _file_extent(read_extent_url(text), where=_shown(text))
    path = Path(text)
    if path.suffix.lower() in EXTENT_SUFFIXES or (len(text) < 4096 and path.is_file()):
        if not path.is_file():
            raise ConfigError(f"--extent {text}: file not found; give {FORMS}")
        if path.stat().st_size > MAX_EXTENT_BYTES:
            raise ConfigError(f"--extent {text}: larger than {MAX_EXTENT_BYTES >> 20} MiB; simplify the geometry")
        return _file_extent(path.read_bytes(), where=text)
    if re.match(r"^\s*(MULTI)?(POLYGON|POINT|LINESTRING)|^\s*GEOMETRYCOLLECTION", text, re.I):
        return _wkt_extent(text, where="(WKT)")
    raise ConfigError(
        f"--extent {text[:200]!r}: not a bbox, WKT or a GeoJSON or WKT file; use minx,miny,maxx,maxy in degrees, "
        f"e.g. 146.9,-36.1,147.1,-35.9"
    )


def is_extent_url(text: str) -> bool:
    """True for an extent to read from an object store or web server."""
    return bool(EXTENT_URL.match(text.strip()))


def check_extent_url(url: str) -> None:
    """An s3:// or https:// extent names a bucket or host and a file in it (nothing is read)."""
    parts = urlsplit(url.strip())
    if not parts.netloc or not parts.path.strip("/"):
        raise ConfigError(f"--extent {_shown(url)}: no file in that URL; give e.g. s3://BUCKET/areas/extent.geojson")


def read_extent_url(url: str) -> bytes:
    """The bytes of an s3:// (gridded's storage layer: retries, one-line errors) or https:// extent file.
    Transient failures are retryable errors (exit 1); a missing or refused file is bad input (exit 2)."""
    check_extent_url(url)
    if url.lower().startswith("s3://"):
        from .io.storage import storage_for_file

        store, name = storage_for_file(url, source=True)
        try:
            body = store.get_range(name, 0, MAX_EXTENT_BYTES + 1)
        except GriddedError as err:  # the message starts with the URL
            raise type(err)(f"--extent {err}", retryable=err.retryable) from err
    else:
        body = _http_get(url)
    if len(body) > MAX_EXTENT_BYTES:
        raise ConfigError(f"--extent {_shown(url)}: larger than {MAX_EXTENT_BYTES >> 20} MiB; simplify the geometry")
    return body


def _http_get(url: str) -> bytes:
    import urllib.request
    from http.client import HTTPException

    from .io.s3 import with_retries
    from .source import transient_http

    def get() -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as answer:
                return answer.read(MAX_EXTENT_BYTES + 1)
        except (OSError, HTTPException) as err:  # urllib's URLError and HTTPError are OSErrors
            transient = transient_http(err) or isinstance(err, HTTPException)
            fix = "retry later" if transient else "check the URL"
            raise SourceError(f"--extent {_shown(url)}: cannot be read ({_reason(err)}); {fix}",
                              retryable=transient) from err

    return with_retries(get, what=_shown(url))


def _reason(err: BaseException) -> str:
    code = getattr(err, "code", None)
    if code is not None:
        return f"HTTP {code}"
    reason = getattr(err, "reason", None) or err
    return (str(reason).splitlines() or [err.__class__.__name__])[0][:200] or err.__class__.__name__


def _shown(url: str) -> str:
    """A URL fit for messages: signed query strings (tokens) left out."""
    from .io.access import redact

    return redact(url.strip())


def _file_extent(body: bytes, *, where: str) -> Geometry:
    """A file's content: WKT for a .wkt name or text that does not start with '{', else GeoJSON."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--extent {where}: not text; give a GeoJSON or WKT file") from err
    suffix = Path(urlsplit(where).path).suffix.lower()
    if suffix == ".wkt" or (suffix not in (".json", ".geojson") and not text.lstrip().startswith("{")):
        return _wkt_extent(text, where=where)
    return _geojson_extent(text, where=where)


def _bbox_extent(text: str) -> Geometry:
    try:
        minx, miny, maxx, maxy = (float(v) for v in text.split(","))
    except ValueError as err:
        raise ConfigError(f"--extent {text}: not four numbers; use minx,miny,maxx,maxy") from err
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise ConfigError(f"--extent {text}: coordinates must be finite numbers")
    if not (-180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90):
        raise ConfigError(
            f"--extent {text}: out of range; longitudes are -180..180 and latitudes -90..90 (order minx,miny,maxx,maxy)"
        )
    if minx >= maxx or miny >= maxy:
        raise ConfigError(f"--extent {text}: min must be less than max; use minx,miny,maxx,maxy")
    return Geometry(box(minx, miny, maxx, maxy), crs="EPSG:4326")


def _geojson_extent(body: str, *, where: str) -> Geometry:
    try:
        doc = json.loads(body)
        if doc.get("type") == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in doc["features"]]
        elif doc.get("type") == "Feature":
            geoms = [shape(doc["geometry"])]
        else:
            geoms = [shape(doc)]
        geom = shapely.union_all(geoms)
    except Exception as err:
        reason = (str(err).splitlines() or [""])[0][:200] or err.__class__.__name__
        raise ConfigError(f"--extent {where}: not GeoJSON ({reason}); give a geometry, Feature or "
                          f"FeatureCollection in lon/lat") from err
    return _checked_lonlat(geom, where)


def _wkt_extent(body: str, *, where: str) -> Geometry:
    try:
        geom = shapely.wkt.loads(body)
    except Exception as err:
        reason = (str(err).splitlines() or [""])[0][:200] or err.__class__.__name__
        raise ConfigError(f"--extent {where}: not valid WKT ({reason}); give e.g. POLYGON((146 -37, 148 -37, "
                          f"148 -35, 146 -35, 146 -37))") from err
    return _checked_lonlat(geom, where)


def _checked_lonlat(geom, where: str) -> Geometry:
    if geom.is_empty:
        raise ConfigError(f"--extent {where}: the geometry is empty; give the area's outline")
    minx, miny, maxx, maxy = geom.bounds
    if not (minx >= -180 and maxx <= 180 and miny >= -90 and maxy <= 90):
        raise ConfigError(f"--extent {where}: coordinates are not lon/lat degrees; use EPSG:4326")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return Geometry(geom, crs="EPSG:4326")
