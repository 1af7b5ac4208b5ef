"""Which process limited a measured cell: the server, the load generator, or neither."""

from __future__ import annotations

from typing import Optional

#: A process at this share of the cores it may use is taken as saturated.
BOUND = 0.9


def limit_of(server_cpu: Optional[float], generator_cpu: Optional[float],
             load_core_cpu: Optional[float] = None, server_cores: int = 1,
             server_wait: Optional[float] = None,
             generator_wait: Optional[float] = None) -> str:
    """Which process was the limit of a cell, from the shares of a core each used (and
    waited for, runnable, while other processes had it):

    - ``server``: the server used ≥ 90 % of its cores;
    - ``generator``: the load generator (one process: one core) used ≥ 90 % of a core;
    - ``load core``: it did not, but it, the publisher and Redis (pinned together) did;
    - ``server starved`` / ``generator starved``: it used less, but used and waited
      together make ≥ 90 %: it wanted its core and other processes (not the suite's,
      when pinned) had it, so the cell measures the machine's other load;
    - joined with "and" when several hold; ``neither`` below all that (the server below
      saturation)."""
    found = []
    if server_cpu is not None and server_cpu >= BOUND * server_cores:
        found.append("server")
    elif server_cpu is not None and server_cpu + (server_wait or 0) >= BOUND * server_cores:
        found.append("server starved")
    if generator_cpu is not None and generator_cpu >= BOUND:
        found.append("generator")
    elif load_core_cpu is not None and load_core_cpu >= BOUND:
        found.append("load core")
    elif generator_cpu is not None and generator_cpu + (generator_wait or 0) >= BOUND:
        found.append("generator starved")
    return " and ".join(found) or "neither"
