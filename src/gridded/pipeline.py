"""Product recipes (`pipelines/*.yaml`): what to read, how to mask and reduce, what to write."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._data import load_recipe_yaml
from .compute.statistics import statistic_for
from .errors import ConfigError
from .masks import MaskRule, parse_mask
from .period import split_period

INFER = "infer"  # the mask rule comes from the items' assets
RESOLVED_FIELDS = frozenset({"encodings", "descriptions"})  # what planning fills in from the items


@dataclass(frozen=True, slots=True, kw_only=True)
class Pipeline:
    """A product: bands, clear-observation rule, statistic, period, output dtype and nodata."""

    name: str
    bands: tuple[str, ...]
    statistic: str = "median"
    period: str = "P1M"
    mask: MaskRule | str | None = INFER
    collection: str | None = None
    grid: str | None = None
    dtype: str | None = None  # None: the source's dtype
    nodata: float | None = None  # None: the source's nodata
    max_iterations: int = 1000  # geomedian
    tolerance: float = 1e-7  # geomedian
    # Sentinel-2 L2A: every observation brought to one encoding, the one before processing baseline
    # 04.00 (reflectance = DN / 10000), so a period straddling 2022-01-25 reduces like with like
    harmonize: bool = False
    indices: tuple[tuple[str, str], ...] = ()  # (name, expression): computed per observation, reduced like a band
    # the bands are read for the indices only: reduced and written are the indices (and the counts);
    # what --band-index without --bands asks for (an NDVI product reads red and nir, writes NDVI)
    index_only: bool = False
    rank: str | None = None  # what `best` ranks by: a band or index, "-" in front to take the least
    percentile_method: str = "linear"  # numpy's: linear or nearest
    license: str = "other"  # the products' licence (SPDX id), for the output collection
    # resolved from the items when planning (as an inferred mask is), never written in a recipe: per
    # band the (scale, offset) its outputs are stored in, and its band description (JSON) to carry on
    encodings: tuple[tuple[str, float, float], ...] = ()
    descriptions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise ConfigError(f"pipeline name {self.name!r}: use letters, digits, '-', '_' and '.'")
        if not self.bands:
            raise ConfigError(f"pipeline {self.name}: no bands; pass --bands red,nir (or --band-index ndvi) or set "
                              f"bands: in the recipe")
        for band in self.bands:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", band) or band in (".", ".."):
                raise ConfigError(f"band name {band!r}: use letters, digits, '-', '_' and '.'")
        if not isinstance(self.index_only, bool):
            raise ConfigError(f"pipeline {self.name}: index_only must be true or false, got {self.index_only!r}")
        if self.index_only and not self.indices:
            raise ConfigError(f"pipeline {self.name}: index_only without indices; pass --band-index ndvi or --bands")
        self._check_indices_read()
        if "count" in self.bands:
            raise ConfigError("band name 'count' is reserved for the clear-observation count asset; "
                              "use --bands without it (every output has a count)")
        self._check_statistics()
        split_period(self.period)  # syntax, and months that divide a year
        if self.mask is not None and not isinstance(self.mask, MaskRule) and self.mask != INFER:
            raise ConfigError(f"pipeline {self.name}: bad mask {self.mask!r}")
        if self.nodata is not None and (isinstance(self.nodata, bool) or not isinstance(self.nodata, (int, float))):
            raise ConfigError(f"pipeline {self.name}: nodata must be a number, got {self.nodata!r}; set e.g. nodata: 0")
        if isinstance(self.max_iterations, bool) or not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise ConfigError(f"pipeline {self.name}: max_iterations must be a positive integer, "
                              f"got {self.max_iterations!r}; set e.g. max_iterations: 1000")
        if not isinstance(self.harmonize, bool):
            raise ConfigError(f"pipeline {self.name}: harmonize must be true or false, got {self.harmonize!r}")
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance < 1:
            raise ConfigError(f"pipeline {self.name}: tolerance must be a number in (0, 1), "
                              f"got {self.tolerance!r}; set e.g. tolerance: 1e-7")
        if self.dtype is not None:
            try:
                np.dtype(self.dtype)
            except TypeError as err:
                raise ConfigError(f"pipeline {self.name}: dtype {self.dtype!r} is not a numpy dtype; "
                                  f"use e.g. uint16") from err

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics to compute, the first named plainly in the outputs (median, p10, p90)."""
        return tuple(s.strip() for s in self.statistic.split(","))

    @property
    def reduced_bands(self) -> tuple[str, ...]:
        """The bands reduced and written: every band read, none for an index-only product."""
        return () if self.index_only else self.bands

    @property
    def layers(self) -> tuple[str, ...]:
        """What is reduced: the bands (unless index-only), then the indices."""
        return self.reduced_bands + tuple(name for name, _ in self.indices)

    def _check_indices_read(self) -> None:
        from .compute.indices import check_bands_read

        for name, expression in self.indices:
            if name in self.bands:
                raise ConfigError(f"--band-index {name}: {name} is also a band name (read for the indices); "
                                  f"call the index something else")
            check_bands_read(f"--band-index {name}", expression, self.bands)

    def _check_statistics(self) -> None:
        if not isinstance(self.statistic, str) or not self.statistic.strip():
            raise ConfigError(f"pipeline {self.name}: no statistic; pass --statistic median (or median,p10,p90)")
        canonical = tuple(statistic_for(name).name for name in self.statistics)
        if len(set(canonical)) != len(canonical):
            raise ConfigError(f"--statistic {self.statistic}: a statistic named twice; name each once")
        object.__setattr__(self, "statistic", ",".join(canonical))
        for name in canonical:
            taken = set(self.layers) & set(statistic_for(name).extra_assets)
            if taken:
                raise ConfigError(f"band name {sorted(taken)[0]!r} is the name of a --statistic {name} output; "
                                  f"pass --bands without it or use another --statistic")
        joint = [n for n in canonical if statistic_for(n).iterative]
        if joint and self.indices:
            raise ConfigError(f"--statistic {joint[0]} with --band-index: the geometric median is of the bands only; "
                              f"compute indices with median, mean or percentiles, or drop --band-index")
        if "best" in canonical:
            rank = (self.rank or "").lstrip("-")
            if not rank:
                raise ConfigError("--statistic best needs what to rank by: pass --rank ndvi (or --rank -blue for the "
                                  "least), a band or index read")
            if rank not in self.layers and rank not in self.bands:  # (a band read for the indices ranks too)
                raise ConfigError(f"--rank {self.rank}: not a band or index read ({', '.join(self.layers)}); "
                                  f"add it to --bands or --band-index")
        if self.percentile_method not in ("linear", "nearest"):
            raise ConfigError(f"pipeline {self.name}: percentile_method {self.percentile_method!r}; "
                              f"use linear or nearest")

    def parameters(self) -> dict:
        """What a result depends on, for the input fingerprint and the item's provenance."""
        mask = self.mask.spec() if isinstance(self.mask, MaskRule) else self.mask
        params: dict[str, Any] = {
            "name": self.name,
            "bands": list(self.bands),
            "statistic": self.statistic,
            "period": self.period,
            "mask": mask if mask is not None else "none",
            "dtype": self.dtype,
            "nodata": self.nodata,
        }
        if any(statistic_for(s).iterative for s in self.statistics):
            params.update(max_iterations=self.max_iterations, tolerance=self.tolerance)
        if self.harmonize:
            params["harmonize"] = True
        if self.indices:
            params["indices"] = dict(self.indices)
        if self.index_only:
            params["index_only"] = True
        if "best" in self.statistics:
            params["rank"] = self.rank
        if self.percentile_method != "linear" and any(statistic_for(s).q is not None for s in self.statistics):
            params["percentile_method"] = self.percentile_method
        stored = {band: [scale, offset] for band, scale, offset in self.encodings if (scale, offset) != (1.0, 0.0)}
        if stored:
            params["encodings"] = stored
        return params

    def encoding(self, band: str) -> tuple[float, float]:
        """(scale, offset) of a band's outputs: physical value = stored x scale + offset."""
        return next(((s, o) for b, s, o in self.encodings if b == band), (1.0, 0.0))

    def description(self, band: str) -> dict:
        """The band's description from the source items (name, common name, wavelengths), maybe empty."""
        import json

        return next((json.loads(d) for b, d in self.descriptions if b == band), {})


def load_pipeline(name_or_path: str) -> Pipeline:
    """A built-in recipe name or a YAML file -> Pipeline."""
    path, doc = load_recipe_yaml("pipelines", name_or_path, flag="--pipeline")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a pipeline is a mapping (name, bands, statistic, period, ...)")
    allowed = set(Pipeline.__dataclass_fields__) - RESOLVED_FIELDS
    unknown = set(doc) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    doc.setdefault("name", path.stem)
    bands = doc.get("bands") or ()
    if isinstance(bands, str):
        bands = bands.split(",")
    if not isinstance(bands, (list, tuple)):
        raise ConfigError(f"{path}: bands must be a list of band names, got {bands!r}; set e.g. bands: [red, nir]")
    doc["bands"] = tuple(str(b) for b in bands)
    if isinstance(doc.get("statistic"), list):
        doc["statistic"] = ",".join(str(s) for s in doc["statistic"])
    try:
        if "mask" in doc:
            doc["mask"] = INFER if doc["mask"] == INFER else parse_mask(str(doc["mask"]))
        if "indices" in doc:
            doc["indices"] = indices_of(doc["indices"], doc["bands"], where="indices")
            if not doc["bands"]:  # the bands the indices name, read for them only (unless it says otherwise)
                doc["bands"] = bands_of_indices(doc["indices"])
                doc.setdefault("index_only", True)
        return Pipeline(**doc)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def with_overrides(base: Pipeline | None, **flags) -> Pipeline:
    """The recipe with every flag the user gave (not None) put over it."""
    given = {k: v for k, v in flags.items() if v is not None}
    if base is None:
        given.setdefault("name", "composite")
        given.setdefault("bands", ())
        return Pipeline(**given)
    return replace(base, **given)


def bands_of_indices(indices: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """The bands the expressions name, in order of first appearance."""
    from .compute.indices import bands_in_order, parse_expression

    return tuple(dict.fromkeys(band for name, expression in indices
                               for band in bands_in_order(parse_expression(expression, where=f"--band-index {name}"))))


def indices_of(spec, bands: tuple[str, ...], *, where: str = "--band-index") -> tuple[tuple[str, str], ...]:
    """Recipe or flag indices -> ((name, expression), ...): a mapping {ndvi: expression or null}, a
    list of built-in names, or --band-index values "ndvi" / "ndvi=(nir - red) / (nir + red)". With no
    bands, an expression may name any band (an index-only product reads what its indices name)."""
    from .compute.indices import bands_of, parse_expression, resolve_index

    if isinstance(spec, dict):
        pairs = [(str(k), None if v is None else str(v)) for k, v in spec.items()]
    elif isinstance(spec, (list, tuple)):
        pairs = []
        for entry in spec:
            name, sep, expression = str(entry).partition("=")
            pairs.append((name.strip(), expression.strip() if sep else None))
    else:
        raise ConfigError(f"{where}: indices must be a mapping of name to expression, e.g. indices: {{ndvi: null}}")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: an index named twice ({', '.join(names)}); name each once")
    resolved = tuple((name, resolve_index(name, expression, bands, where=where)) for name, expression in pairs)
    for name, expression in resolved:  # over bands only: an index is not an input of another
        named = bands_of(parse_expression(expression, where=f"{where} {name}")) & (set(names) - {name})
        if named:
            raise ConfigError(f"{where} {name}={expression}: names the index {sorted(named)[0]}; an expression is "
                              f"over bands only, so write it out with the bands (e.g. (nir - red) / (nir + red))")
    return resolved
