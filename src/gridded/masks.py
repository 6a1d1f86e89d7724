"""Clear-observation rules per sensor: Sentinel-2 SCL classes, Landsat Collection 2 QA_PIXEL bits."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

# Sentinel-2 L2A scene classes excluded by default: 0 no data, 1 saturated/defective,
# 3 cloud shadow, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus.
S2_EXCLUDED_CLASSES = (0, 1, 3, 8, 9, 10)
# Landsat C2 QA_PIXEL bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow.
LANDSAT_EXCLUDED_BITS = (0, 1, 2, 3, 4)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskRule:
    """Which asset says a pixel is clear, and how: excluded classes or excluded bits."""

    asset: str
    kind: str  # "classes" or "bits"
    values: tuple[int, ...]

    def __post_init__(self):
        if self.kind not in ("classes", "bits"):
            raise ConfigError(f"mask rule kind must be classes or bits, got {self.kind!r}")
        if self.kind == "bits" and any(not 0 <= b < 32 for b in self.values):
            raise ConfigError(f"--mask {self.asset}:bits:{','.join(map(str, self.values))}: bits must be 0..31; "
                              f"e.g. qa_pixel:bits:0,1,2,3,4")

    def clear(self, mask: np.ndarray) -> np.ndarray:
        """Boolean array: True where the mask says the pixel is clear."""
        if self.kind == "classes":
            if np.issubdtype(mask.dtype, np.integer):  # a class the mask's dtype cannot hold never occurs
                info = np.iinfo(mask.dtype)
                values = [v for v in self.values if info.min <= v <= info.max]
                return ~np.isin(mask, np.asarray(values, dtype=mask.dtype))
            return ~np.isin(mask, np.asarray(self.values, dtype=np.float64))
        bits = 0
        for b in self.values:
            bits |= 1 << b
        return (mask.astype(np.uint32, copy=False) & np.uint32(bits)) == 0

    def lookup(self, dtype: np.dtype) -> np.ndarray | None:
        """For an 8- or 16-bit integer mask, the clear rule as a table indexed by the mask value
        (a signed value indexes from the end, where its bit pattern's entry is); else None."""
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu" or dtype.itemsize > 2:
            return None
        unsigned = np.dtype(f"u{dtype.itemsize}")
        return self.clear(np.arange(1 << (8 * dtype.itemsize), dtype=unsigned).view(dtype))

    @property
    def fill_value(self) -> int:
        """A mask value that reads as not clear: where the mask raster has no pixel, nothing is clear."""
        if self.kind == "bits":
            return sum(1 << b for b in self.values)
        return self.values[0] if self.values else 0

    def spec(self) -> str:
        prefix = "bits:" if self.kind == "bits" else ""
        return f"{self.asset}:{prefix}{','.join(str(v) for v in self.values)}"


MASK_RULES: dict[str, MaskRule | None] = {
    "s2": MaskRule(asset="scl", kind="classes", values=S2_EXCLUDED_CLASSES),
    "landsat": MaskRule(asset="qa_pixel", kind="bits", values=LANDSAT_EXCLUDED_BITS),
    "none": None,
}


def parse_mask(text: str) -> MaskRule | None:
    """`s2`, `landsat`, `none`, `ASSET:1,2,3` (excluded classes) or `ASSET:bits:0,3,4`."""
    text = text.strip()
    if text in MASK_RULES:
        return MASK_RULES[text]
    m = re.fullmatch(r"(?P<asset>[A-Za-z0-9_.-]+):(?P<bits>bits:)?(?P<values>\d+(,\d+)*)", text)
    if not m:
        raise ConfigError(
            f"--mask {text!r}: not a mask rule; use {', '.join(MASK_RULES)}, ASSET:CLASS,CLASS "
            f"(e.g. scl:0,1,3,8,9,10) or ASSET:bits:BIT,BIT (e.g. qa_pixel:bits:0,1,2,3,4)"
        )
    values = tuple(int(v) for v in m["values"].split(","))
    return MaskRule(asset=m["asset"], kind="bits" if m["bits"] else "classes", values=values)


def infer_mask(asset_keys: set[str]) -> MaskRule | None:
    """The rule the items' assets imply: an `scl` asset -> Sentinel-2, `qa_pixel` -> Landsat, else none."""
    lowered = {k.lower(): k for k in asset_keys}
    if "scl" in lowered:  # as MASK_RULES["s2"]
        return MaskRule(asset=lowered["scl"], kind="classes", values=S2_EXCLUDED_CLASSES)
    if "qa_pixel" in lowered:  # as MASK_RULES["landsat"]
        return MaskRule(asset=lowered["qa_pixel"], kind="bits", values=LANDSAT_EXCLUDED_BITS)
    return None

