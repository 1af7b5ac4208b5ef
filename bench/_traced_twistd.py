"""``twistd`` with tracemalloc on demand, for ``subscription_memory.py --objects``:
``python _traced_twistd.py DUMPDIR twistd-arguments...``. Each SIGUSR1 collects garbage,
starts tracing on the first one (so that start-up costs nothing) and writes a snapshot to
``DUMPDIR/N.snapshot``, then an empty ``DUMPDIR/N.done``. Its working directory comes
first on ``sys.path``, as with ``twistd``: the checkout it runs in is what is measured."""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from typing import Any

#: Frames kept per allocation.
DEPTH = 10


def main() -> None:
    dump_dir = sys.argv[1]
    taken = [0]

    def dump(*_: Any) -> None:
        gc.collect()
        if not tracemalloc.is_tracing():
            tracemalloc.start(DEPTH)
        taken[0] += 1
        path = os.path.join(dump_dir, str(taken[0]))
        tracemalloc.take_snapshot().dump(path + ".snapshot")
        open(path + ".done", "w").close()

    signal.signal(signal.SIGUSR1, dump)
    sys.path.insert(0, os.getcwd())
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *sys.argv[2:]]
    run()


if __name__ == "__main__":
    main()
