"""`python -m vlmops.scale.loopback_node start ...`: `ray start` for a multi-node Ray on loopback.

The same command line as `ray start` (it calls Ray's own CLI). What it changes: every process the node
starts runs in Ray's single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), so none of them looks up
the machine's interface address by a UDP connect towards 8.8.8.8 (Ray's runtime-env agent does, even
when given --node-ip-address); only this process, for a worker node (`--address`), keeps the
multi-node mode that `ray start --address` requires, and there "this node's address" is the
--node-ip-address given, not one looked up. The node's HOME is VLMOPS_RAY_HOME (default
/tmp/vlmops-ray-home-UID), set up by `vlmops.scale.cluster.loopback_env` (usage stats off, no cloud
probe); nodes sharing it share Ray's auth token, which `vlmops ... --ray ADDRESS` finds there too.
The node's workers meant for an actor pool import its modules when they start
(`vlmops.scale.warm.preload_env`, added to RAY_preload_python_modules).
Give each node its own loopback address (--node-ip-address 127.0.0.2, 127.0.0.3, ...): Ray rewrites
127.0.0.1 into the machine's interface address on a multi-node cluster.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    """Run Ray's CLI on `argv` with the node's processes kept on loopback."""
    from vlmops.scale.cluster import loopback_env, ray_home
    from vlmops.scale.warm import preload_env

    os.environ.update(loopback_env(ray_home()))
    os.environ.update(preload_env())
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by every process of the node
    import ray._private.ray_constants as constants
    from ray.scripts.scripts import main as ray_main

    if "--head" not in argv:
        constants.ENABLE_RAY_CLUSTER = True  # `ray start --address` refuses single-node mode
        given = _flag(argv, "--node-ip-address")
        if given:
            _pin_node_address(given)
    sys.argv = ["ray", *argv]
    ray_main()


def _flag(argv: list[str], name: str) -> str | None:
    """The value of `name` in `argv` (``--name VALUE`` or ``--name=VALUE``), or None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _pin_node_address(address: str) -> None:
    """In this process, "this node's address" (Ray asks it with no argument) is `address`, not looked up."""
    import ray._private.services as services

    lookup = services.get_node_ip_address

    def get_node_ip_address(towards: str | None = None) -> str:
        return lookup(towards) if towards else address

    services.get_node_ip_address = get_node_ip_address


if __name__ == "__main__":
    main(sys.argv[1:])
