"""Ray backends for vlmops: start or join Ray on loopback (`cluster`), embed on Ray Data (`embed`), serve an
ASGI app (the gateway) as Ray Serve replicas (`serve`).

Ray is the optional extra ``vlmops[ray]``; nothing here imports it before it is used.
"""

from vlmops.scale.cluster import ADDRESS_ENV, LOCAL, RayCluster, connect, loopback_env
from vlmops.scale.embed import RayImageEmbedder

__all__ = ["ADDRESS_ENV", "LOCAL", "RayCluster", "RayImageEmbedder", "connect", "loopback_env"]
