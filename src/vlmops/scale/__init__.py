"""Ray backends for vlmops: start or join Ray on loopback (`cluster`), embed and generate on Ray Data
(`embed`, `generate`, both on the actor pool of `pool`), serve an ASGI app (the gateway) as Ray Serve
replicas (`serve`).

Ray is the optional extra ``vlmops[ray]``; nothing here imports it before it is used.
"""

from vlmops.scale.cluster import ADDRESS_ENV, LOCAL, RayCluster, connect, loopback_env
from vlmops.scale.embed import RayImageEmbedder
from vlmops.scale.generate import RayGenerator

__all__ = [
    "ADDRESS_ENV", "LOCAL", "RayCluster", "RayGenerator", "RayImageEmbedder", "connect", "loopback_env",
]  # fmt: skip
