"""Where the built-in grids and pipelines live: in the wheel, or beside src/ in a checkout."""

from __future__ import annotations

from pathlib import Path


def data_dir(kind: str) -> Path:
    """`grids` or `pipelines`: the packaged copy if installed from a wheel, else the repo's folder."""
    packaged = Path(__file__).parent / "_data" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / kind


def load_recipe_yaml(kind: str, name_or_path: str, *, flag: str) -> tuple[Path, object]:
    """(path, parsed YAML) of a built-in `kind` (grids, pipelines) named by stem, or of a YAML file."""
    import yaml

    from .errors import ConfigError

    names = ", ".join(sorted(p.stem for p in data_dir(kind).glob("*.yaml")))
    path = Path(name_or_path)
    if not path.suffix:
        path = data_dir(kind) / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"{flag} {name_or_path}: no such built-in name; use one of {names} or a YAML file")
    if not path.is_file():
        raise ConfigError(f"{flag} {name_or_path}: file not found; give a YAML file or one of {names}")
    try:
        return path, yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}); fix the file") from err
