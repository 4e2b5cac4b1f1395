"""Garbage-collector settings for a process whose job is to serve a search.

Every gRPC call leaves a few reference cycles behind (gRPC's own per-call
handler lookup makes one, with or without interceptors), so under load the
collector runs often; and CPython's collector walks every tracked object of
the generation it collects, the imported modules' included once they have
aged into the oldest. Each collection stops the event loop, whichever thread
runs it. With the defaults, a coordinator of 1,024 members under 2,000
simulated workers made about 700 collections in a two-generation search,
five of them full ones of up to 168-205 ms (benchmarks/README.md,
"Coordinator capacity", part 7).

`settle_collector()` collects once, then freezes what is left (mostly the
imports, which live as long as the process: the collector skips frozen
objects), and collects the young generation only after `YOUNG_THRESHOLD`
new objects instead of 700, the older ones after `OLDER_THRESHOLDS` young
collections. The same run then made 6 young collections of at most 49-81 ms
and no full one. Cycles are still collected, only later; the young
generation holds up to `YOUNG_THRESHOLD` more objects meanwhile.

Call it once, in a process that hosts a coordinator as its main job
(`autolfads coordinator`, the Ray coordinator actor), after the imports and
before the search state is loaded (the state changes; freezing it would
keep its discarded records for good). Never in a library function: the
settings are the whole process's. `autolfads run` leaves them alone: its
process also runs the progress display and supervises the trainers, for
searches small enough that collections cost little.
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
