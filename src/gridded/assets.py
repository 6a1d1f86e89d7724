"""An item's assets -> the one asset of each band a recipe asks for, and how its numbers read: data
type, nodata and the scale and offset that make them physical values (STAC 1.0 `raster:bands`,
STAC 1.1 `bands`), with the band's description (`eo:bands`) for the outputs to carry on."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pystac

from .errors import ConfigError

# assets that show a scene rather than measure it: never a band unless asked for by key
NOT_DATA_ROLES = frozenset({"visual", "overview", "thumbnail"})
TIFF_TYPES = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff")


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoding:
    """physical value = stored value x scale + offset."""

    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)) or self.scale == 0:
            raise ConfigError(f"scale {self.scale} / offset {self.offset}: not a usable encoding")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BandInfo:
    """What an item declares of one band's asset."""

    key: str
    data_type: str | None
    nodata: float | None
    encoding: Encoding
    description: dict  # the asset's band entry (name, common_name, center_wavelength, ...), maybe empty


def _band_entries(asset: pystac.Asset) -> list[dict]:
    """The asset's band descriptions: STAC 1.1 `bands`, else `eo:bands`."""
    entries = asset.extra_fields.get("bands") or asset.extra_fields.get("eo:bands") or []
    return [e for e in entries if isinstance(e, dict)]


def _names(entry: dict) -> set[str]:
    return {str(entry.get(k, "")).lower() for k in ("name", "common_name", "eo:common_name")} - {""}


def find_band_asset(item: pystac.Item, band: str) -> tuple[str, pystac.Asset] | None:
    """The asset of a band: the asset of that key (any asset, asked for by name); else the one
    single-band data asset whose band name or common name it is (never a `visual`, `overview` or
    `thumbnail` asset, nor a multi-band one; a GeoTIFF before another format of the same band).
    None when no asset matches; several candidates are a ConfigError naming them."""
    lowered = band.lower()
    for key, asset in item.assets.items():
        if key.lower() == lowered:
            return key, asset
    candidates = []
    for key, asset in item.assets.items():
        entries = _band_entries(asset)
        if len(entries) != 1 or NOT_DATA_ROLES & set(asset.roles or ()):
            continue
        if lowered in _names(entries[0]):
            candidates.append((key, asset))
    tiffs = [c for c in candidates if str(c[1].media_type or "").startswith(TIFF_TYPES)]
    candidates = tiffs or candidates
    if len(candidates) > 1:
        keys = ", ".join(k for k, _ in candidates)
        raise ConfigError(f"item {item.id}: band {band!r} matches {len(candidates)} assets ({keys}); "
                          f"name one of them in --bands")
    return candidates[0] if candidates else None


def band_info(item: pystac.Item, key: str, asset: pystac.Asset) -> BandInfo:
    """The data type, nodata, encoding and description an asset declares for its (first) band."""
    raster = asset.extra_fields.get("raster:bands") or []
    entries = _band_entries(asset)
    first = {**(entries[0] if entries else {}), **(raster[0] if raster and isinstance(raster[0], dict) else {})}
    values = {}
    for name, default in (("scale", 1.0), ("offset", 0.0)):
        value = first.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"item {item.id} asset {key}: {name} {value!r} is not a number; fix the item's "
                              f"raster:bands, or name another asset in --bands")
        values[name] = float(value)
    if values["scale"] == 0:
        raise ConfigError(f"item {item.id} asset {key}: scale 0 makes every value the offset; fix the item")
    nodata = first.get("nodata", asset.extra_fields.get("nodata"))
    if isinstance(nodata, str) and nodata.lower() in ("nan", "inf", "-inf"):
        nodata = float(nodata)
    data_type = first.get("data_type", asset.extra_fields.get("data_type"))
    description = {k: v for k, v in (entries[0] if entries else {}).items()
                   if k in ("name", "common_name", "eo:common_name", "description", "center_wavelength",
                            "full_width_half_max", "eo:center_wavelength", "eo:full_width_half_max")}
    return BandInfo(key=key, data_type=str(data_type) if data_type else None,
                    nodata=float(nodata) if isinstance(nodata, (int, float)) and not isinstance(nodata, bool) else None,
                    encoding=Encoding(**values), description=description)


# --- Sentinel-2 L2A: the reflectance bands' encoding by processing baseline ------------------------

SENTINEL2_SCALE = 1e-4  # reflectance = (DN + BOA_ADD_OFFSET) / 10000
SENTINEL2_BOA_OFFSET_DN = 1000  # from processing baseline 04.00 (2022-01-25) the DN carry +1000
SENTINEL2_BAND = re.compile(r"^B(0[1-9]|1[0-2]|8A)$", re.IGNORECASE)


def is_sentinel2_reflectance(scale: float, offset: float) -> bool:
    """Whether an encoding is one of Sentinel-2 L2A's reflectance encodings (with or without the offset)."""
    return math.isclose(scale, SENTINEL2_SCALE) and any(
        math.isclose(offset, -dn * SENTINEL2_SCALE, abs_tol=1e-12) for dn in (0, SENTINEL2_BOA_OFFSET_DN))


def _is_sentinel2_band(item: pystac.Item, info: BandInfo) -> bool:
    names = {info.key, str(info.description.get("name", ""))}
    return "s2:processing_baseline" in item.properties and (
        any(SENTINEL2_BAND.match(n) for n in names) or math.isclose(info.encoding.scale, SENTINEL2_SCALE))


def sentinel2_offset_dn(item: pystac.Item) -> int:
    """The offset the item's reflectance DN carry: 1000 from processing baseline 04.00 on, unless the
    provider removed it from the pixels (Earth Search's `earthsearch:boa_offset_applied`)."""
    baseline = str(item.properties.get("s2:processing_baseline", "00.00"))
    try:
        major = float(baseline)
    except ValueError as err:
        raise ConfigError(f"item {item.id}: s2:processing_baseline {baseline!r} is not a number like 04.00; "
                          f"fix the item") from err
    if major < 4.0:
        return 0
    if item.properties.get("earthsearch:boa_offset_applied") is True:
        return 0
    return SENTINEL2_BOA_OFFSET_DN


# Landsat Collection 2 Level-2 surface reflectance (USGS): reflectance = DN x 2.75e-05 - 0.2
LANDSAT_SR_ENCODING = (2.75e-05, -0.2)
LANDSAT_SR_KEYS = frozenset({"coastal", "blue", "green", "red", "nir08", "swir16", "swir22"})


def _is_landsat_sr_band(item: pystac.Item, info: BandInfo) -> bool:
    level2 = item.properties.get("landsat:correction") == "L2SP" or str(item.collection_id or "").startswith(
        ("landsat-c2-l2", "landsat-c2l2-sr"))
    name = str(info.description.get("name", ""))
    return level2 and (info.key.lower() in LANDSAT_SR_KEYS or name.startswith(("SR_B", "OLI_B")))


def stored_encoding(item: pystac.Item, band: str, info: BandInfo) -> tuple[float, float]:
    """(scale, offset) of a band's stored values as they really are: what the asset declares, but for
    Sentinel-2 L2A reflectance, whose offset follows from the processing baseline whatever is
    declared (Planetary Computer declares none; Earth Search's declared offsets are not always right),
    and for Landsat Collection 2 surface reflectance where the item declares nothing (USGS's)."""
    if _is_sentinel2_band(item, info):
        return SENTINEL2_SCALE, -sentinel2_offset_dn(item) * SENTINEL2_SCALE
    if info.encoding.is_identity and _is_landsat_sr_band(item, info):
        return LANDSAT_SR_ENCODING
    return info.encoding.scale, info.encoding.offset
