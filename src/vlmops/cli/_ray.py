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
    help="Embed images (and generate answers) on Ray Data: 'local' starts a private single-node Ray on "
    "127.0.0.1, 'auto' or HOST:PORT joins a running cluster. Default (unset): work in this process.",
)
RayActorsOption = typer.Option(2, "--ray-actors", min=1, help="With --ray: actors in the embedding pool.")
RayCpusOption = typer.Option(
    1.0, "--ray-cpus-per-actor", min=0.01, help="With --ray: CPUs (and torch threads) per actor."
)  # one pool size for both kinds of work: a job embeds, then generates, never both at once


RayMinItemsOption = typer.Option(
    None,
    "--ray-min-items",
    min=0,
    help="With --ray: generation jobs with fewer answers to make stay in this process (a pool's start-up "
    "costs more than it saves on a few hundred answers; an eval's robustness part makes many small jobs). "
    "Default 512; 0 sends every job to Ray.",
)


@contextlib.contextmanager
def ray_embedding(
    address: str | None, actors: int, cpus_per_actor: float, min_items: int | None = None
) -> Iterator[None]:
    """Within the block, the store's image embeddings and generations go to Ray actor pools (nothing
    when no address)."""
    if address is None or not address.strip():
        yield
        return
    from vlmops.scale import RayGenerator, RayImageEmbedder, connect
    from vlmops.store.embed import use_image_backend
    from vlmops.store.generate import use_generation_backend

    embedder = RayImageEmbedder(actors=actors, cpus_per_actor=cpus_per_actor)
    generator = RayGenerator(actors=actors, cpus_per_actor=cpus_per_actor)
    if min_items is not None:
        generator.min_items = min_items
    with (
        connect(address, preload=True) as cluster,
        use_image_backend(embedder),
        use_generation_backend(generator),
    ):
        embedder.warm()  # one pool's workers start (and import) while this process loads and hashes
        console.print(
            f"[dim]ray:[/] {cluster.describe()}; embedding and generating with {actors} actor(s) x "
            f"{cpus_per_actor:g} CPU",
            highlight=False,
        )
        yield


ServeRayOption = typer.Option(
    None,
    "--ray",
    help="Serve on Ray Serve instead of local worker processes: 'local' starts a private single-node Ray "
    "on 127.0.0.1, 'auto' or HOST:PORT joins a running cluster. Serve's HTTP proxy listens on --host:--port.",
)
ServeReplicasOption = typer.Option(
    1, "--ray-replicas", min=1, help="With --ray: gateway replicas (initial count with --ray-autoscale)."
)
ServeAutoscaleOption = typer.Option(
    None, "--ray-autoscale", help="With --ray: MIN:MAX replicas, scaled by Serve on requests in flight."
)
ServeCpusOption = typer.Option(
    1.0, "--ray-cpus-per-replica", min=0.01, help="With --ray: CPUs per replica (and its model threads)."
)


def serve_ray(
    builder,
    address: str,
    host: str,
    port: int,
    *,
    replicas: int,
    autoscale: str | None,
    cpus: float,
    max_ongoing: int,
    store_url: str,
    what: str,
) -> None:
    """Serve `builder`'s app on Ray Serve until Ctrl-C/SIGTERM, saying what was deployed."""
    from vlmops.scale.serve import ReplicaPlan, check_shared_store, parse_autoscale, serve_on_ray

    plan = ReplicaPlan(
        replicas, parse_autoscale(autoscale) if autoscale else None, cpus, max_ongoing=max_ongoing
    )
    check_shared_store(store_url, plan)
    console.print(f"deploying {what} on Ray Serve: {plan.describe()} ...", highlight=False, soft_wrap=True)

    def announce(cluster) -> None:
        console.print(
            f"[dim]ray:[/] {cluster.describe()}\nserving {what} on http://{host}:{port} through Ray Serve "
            f"(application 'vlmops', {plan.describe()}); Ctrl-C stops it",
            highlight=False,
            soft_wrap=True,
        )

    serve_on_ray(builder, address=address, host=host, port=port, plan=plan, announce=announce)
