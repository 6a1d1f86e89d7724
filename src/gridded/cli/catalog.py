"""`gridded catalog`: rebuild an output root's catalog.json and collection.json from its items."""

from __future__ import annotations

import click

from ..errors import ConfigError


@click.command()
@click.option("--output", required=True, help="The output root whose catalog.json to rebuild.")
@click.option("--collection-id", default=None, help="Collection id (default: the items' collection).")
@click.option("--relative", is_flag=True,
              help="Rewrite the items' asset hrefs relative to them: a self-contained catalog to copy anywhere.")
def catalog(output, collection_id, relative):
    """Rebuild catalog.json and collection.json at an output root from its items."""
    from ..catalog import make_relative, write_catalog
    from ..io.storage import open_storage

    storage = open_storage(output)
    if not storage.list(".stac-item.json"):
        raise ConfigError(f"--output {output}: no STAC items there; give the output root of a run")
    if relative:
        make_relative(storage)
    n = write_catalog(storage, collection_id=collection_id)
    click.echo(f"catalog of {n} items written to {output}")
