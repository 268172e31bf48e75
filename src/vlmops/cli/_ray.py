"""`--ray ADDRESS`, `--ray-actors`, `--ray-cpus-per-actor`: the options that send a job's embedding to Ray."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from vlmops.cli._common import console

RayOption = typer.Option(
    None,
    "--ray",
    envvar="VLMOPS_RAY_ADDRESS",
    help="Embed images on Ray Data: 'local' starts a private single-node Ray on 127.0.0.1, 'auto' or "
    "HOST:PORT joins a running cluster. Default (unset): embed in this process.",
)
RayActorsOption = typer.Option(2, "--ray-actors", min=1, help="With --ray: actors in the embedding pool.")
RayCpusOption = typer.Option(
    1.0, "--ray-cpus-per-actor", min=0.01, help="With --ray: CPUs (and torch threads) per actor."
)


@contextlib.contextmanager
def ray_embedding(address: str | None, actors: int, cpus_per_actor: float) -> Iterator[None]:
    """Within the block, image embeddings of the store go to a Ray actor pool (nothing when no address)."""
    if address is None or not address.strip():
        yield
        return
    from vlmops.scale import RayImageEmbedder, connect
    from vlmops.store.embed import use_image_backend

    backend = RayImageEmbedder(actors=actors, cpus_per_actor=cpus_per_actor)
    with connect(address) as cluster, use_image_backend(backend):
        console.print(
            f"[dim]ray:[/] {cluster.describe()}; embedding with {actors} actor(s) x {cpus_per_actor:g} CPU",
            highlight=False,
        )
        yield
