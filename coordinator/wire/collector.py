"""Garbage-collector settings for a process whose job is to serve a search.

Every gRPC call leaves a few reference cycles behind (gRPC's own per-call
handler lookup makes one, with or without interceptors), so under load the
collector runs often; and CPython's collector walks every tracked object it
holds, the imported modules' included. With its defaults a coordinator of
1,024 members under 2,000 simulated workers ran about 850 collections in two
generations, six of them full ones that stopped the event loop for 150-165
ms each: about 0.9 s of the 7-8 s of CPU the server spent
(benchmarks/README.md, "Coordinator capacity", part 7).

`settle_collector()` collects once, then freezes what is left (the
imports: they live as long as the process, and the collector then skips
them), and
collects the young generation only after `YOUNG_THRESHOLD` new objects
instead of 700, the older ones after `OLDER_THRESHOLDS` young collections:
the same run then made about 8 young collections of at most 50-65 ms and
no full one. Cycles are still collected (memory stays bounded); they wait
longer.

Call it once, early, in a process that runs a coordinator and little else
(`autolfads coordinator`, the Ray coordinator actor), never in a library
function: the settings are the whole process's.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLDS = (20, 20)


def settle_collector() -> int:
    """Freeze the objects alive now and raise the collection thresholds;
    returns how many objects were frozen."""
    gc.collect()  # garbage made so far is freed, not frozen for good
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    return gc.get_freeze_count()
