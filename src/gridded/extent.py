"""`--extent` (a lon/lat bbox, a GeoJSON file, WKT text or file) -> one EPSG:4326 geometry."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import shapely
import shapely.wkt
from odc.geo.geom import Geometry
from shapely.geometry import box, shape

from .errors import ConfigError

BBOX_TEXT = re.compile(r"[-+0-9.eE\s]+(,[-+0-9.eE\s]+){3}")


def parse_extent(text: str) -> Geometry:
    """A lon/lat bbox `minx,miny,maxx,maxy`, a GeoJSON file, or WKT (text or file) -> EPSG:4326 geometry."""
    text = text.strip()
    if BBOX_TEXT.fullmatch(text):
        return _bbox_extent(text)
    path = Path(text)
    if path.suffix.lower() in {".json", ".geojson", ".wkt"} or (len(text) < 4096 and path.is_file()):
        if not path.is_file():
            raise ConfigError(f"--extent {text}: file not found; give a GeoJSON file, WKT or minx,miny,maxx,maxy")
        body = path.read_text()
        if path.suffix.lower() == ".wkt":
            return _wkt_extent(body, where=text)
        return _geojson_extent(body, where=text)
    if re.match(r"^\s*(MULTI)?(POLYGON|POINT|LINESTRING)|^\s*GEOMETRYCOLLECTION", text, re.I):
        return _wkt_extent(text, where="--extent")
    raise ConfigError(
        f"--extent {text!r}: not a bbox, GeoJSON file or WKT; use minx,miny,maxx,maxy in degrees, "
        f"e.g. 146.9,-36.1,147.1,-35.9"
    )


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
        raise ConfigError(f"--extent {where}: not a GeoJSON geometry, Feature or FeatureCollection ({err})") from err
    return _checked_lonlat(geom, where)


def _wkt_extent(body: str, *, where: str) -> Geometry:
    try:
        geom = shapely.wkt.loads(body)
    except Exception as err:
        raise ConfigError(f"{where}: not valid WKT ({err})") from err
    return _checked_lonlat(geom, where)


def _checked_lonlat(geom, where: str) -> Geometry:
    if geom.is_empty:
        raise ConfigError(f"--extent {where}: the geometry is empty")
    minx, miny, maxx, maxy = geom.bounds
    if not (minx >= -180 and maxx <= 180 and miny >= -90 and maxy <= 90):
        raise ConfigError(f"--extent {where}: coordinates must be lon/lat degrees (EPSG:4326)")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return Geometry(geom, crs="EPSG:4326")
