"""Which process limited a measured cell: the server, the load generator, or neither."""

from __future__ import annotations

from typing import Optional

#: A process at this share of the cores it may use is taken as saturated.
BOUND = 0.9


def limit_of(server_cpu: Optional[float], generator_cpu: Optional[float],
             load_core_cpu: Optional[float] = None, server_cores: int = 1) -> str:
    """``"server"`` when the server used ≥ 90 % of its cores; ``"generator"`` when the
    load generator (one process, so one core) used ≥ 90 % of a core; ``"load core"`` when
    it did not but it, the publisher and Redis (pinned together) did; both joined with
    "and" when both; ``"neither"`` below that (the cell measures the server below
    saturation)."""
    found = []
    if server_cpu is not None and server_cpu >= BOUND * server_cores:
        found.append("server")
    if generator_cpu is not None and generator_cpu >= BOUND:
        found.append("generator")
    elif load_core_cpu is not None and load_core_cpu >= BOUND:
        found.append("load core")
    return " and ".join(found) or "neither"
