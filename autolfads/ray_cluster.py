"""Connecting `autolfads run --ray` to an existing Ray cluster, and checking
that the cluster can run the search, before anything is staged.

Every check here fails with one line naming the problem and the fix: an
address nothing answers on, `file://` storage on nodes of other machines
(they share no disk), or trainer resources no node has (Ray would leave
such an actor pending forever instead of failing).

Ray is imported inside the functions only: the base install has no Ray.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass

from autolfads.errors import AutolfadsError, ConfigError

log = logging.getLogger(__name__)

# Actors of every search live in one Ray namespace, found by run name there.
NAMESPACE = "autolfads"
CONNECT_TIMEOUT_S = 5.0
START_HINT = "start one with `ray start --head --port 6379` (then `ray start --address HEAD:6379` on the other machines)"


class ClusterUnavailable(AutolfadsError):
    """No Ray cluster answers at the address given."""


@dataclass(frozen=True)
class TrainerResources:
    """What each trainer actor asks Ray for (fractional GPUs share a GPU)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def check(self) -> None:
        if self.cpus < 0 or self.gpus < 0:
            raise ConfigError("--trainer-cpus and --trainer-gpus must be >= 0")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ConfigError(
                f"--trainer-gpus {self.gpus}: Ray takes a fraction below 1 or a whole number"
            )


@dataclass(frozen=True)
class NodeInfo:
    ip: str
    cpus: float
    gpus: float
    head: bool


def _tcp_reachable(host: str, port: int) -> str | None:
    """None if something accepts connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as err:
        return err.strerror or str(err)


def split_address(address: str) -> tuple[str, int] | None:
    """'HOST:PORT' or 'ray://HOST:PORT' -> (host, port); 'auto' -> None."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"--ray {address!r}: expected auto, HOST:PORT (the head's GCS port, e.g. "
            "10.0.0.5:6379) or ray://HOST:10001"
        )
    return host.strip("[]"), int(port)


def connect(address: str) -> None:
    """Join the cluster at `address` as a driver, or raise ClusterUnavailable.

    An address is probed first: `ray.init` would otherwise retry an
    unreachable GCS for minutes before giving up.
    """
    target = split_address(address)
    if target is not None:
        why = _tcp_reachable(*target)
        if why is not None:
            raise ClusterUnavailable(
                f"no Ray cluster at {address} ({why}); {START_HINT}, or pass --ray auto on a node"
            )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            logging_level=logging.WARNING,
            log_to_driver=False,  # trainer logs stay in Ray's per-actor log files
        )
    except (ConnectionError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterUnavailable(
            f"cannot join the Ray cluster at {address} ({first}); {START_HINT}"
        ) from None


def nodes() -> list[NodeInfo]:
    """The cluster's live nodes."""
    import ray

    return [
        NodeInfo(
            ip=node["NodeManagerAddress"],
            cpus=node["Resources"].get("CPU", 0.0),
            gpus=node["Resources"].get("GPU", 0.0),
            head="node:__internal_head__" in node["Resources"],
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]


def driver_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def check_storage(storage_url: str, live: list[NodeInfo], here: str) -> None:
    """A local store only when every node is this machine (as Ray sees it: the
    same node IP), since nodes share no disk."""
    if storage_url.startswith("s3://"):
        return
    others = sorted({n.ip for n in live if n.ip != here})
    if others:
        raise ConfigError(
            f"--storage {storage_url} is a local folder, but Ray nodes {', '.join(others)} are "
            "other machines that cannot see it; use s3:// storage (MinIO or S3) with --ray"
        )


def trainers_fitting(node: NodeInfo, need: TrainerResources) -> int:
    """How many trainers asking `need` (not all zero) one node holds."""
    counts = [
        # Ray counts in 1/10000 of a resource: 0.6 / 0.2 is 3 to it.
        math.floor(have / want + 1e-6)
        for have, want in ((node.cpus, need.cpus), (node.gpus, need.gpus))
        if want
    ]
    return min(counts)


def check_resources(need: TrainerResources, live: list[NodeInfo]) -> None:
    """At least one node must fit one trainer, or its actor would never start."""
    if need.gpus > 0 and not any(n.gpus > 0 for n in live):
        raise ConfigError(
            f"--trainer-gpus {need.gpus}: the Ray cluster has no GPUs; drop --trainer-gpus "
            "or add nodes with GPUs (`ray start --num-gpus N`)"
        )
    if not any(n.cpus >= need.cpus and n.gpus >= need.gpus for n in live):
        biggest = max(live, key=lambda n: (n.gpus, n.cpus))
        raise ConfigError(
            f"no Ray node fits one trainer ({need.cpus:g} CPUs, {need.gpus:g} GPUs); the "
            f"largest has {biggest.cpus:g} CPUs, {biggest.gpus:g} GPUs: lower "
            "--trainer-cpus/--trainer-gpus"
        )


def head_ip(live: list[NodeInfo]) -> str:
    for node in live:
        if node.head:
            return node.ip
    raise AutolfadsError("the Ray cluster reports no head node")  # pragma: no cover
