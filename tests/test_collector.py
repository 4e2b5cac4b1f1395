"""The coordinator process's garbage-collector settings: the imports are
frozen and collections come less often, but cycles are still collected, so
a long search's memory stays bounded. Run in a child process: the settings
are process-wide and must not leak into the test runner."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import gc
    import weakref

    from autolfads.coordinator.wire import server  # what a coordinator imports
    from autolfads.coordinator.wire.collector import (
        OLDER_THRESHOLDS, YOUNG_THRESHOLD, settle_collector,
    )

    class Node:
        pass

    before = Node()
    before.itself = before  # garbage made before: collected, not frozen
    gone_before = weakref.ref(before)
    del before

    frozen = settle_collector()
    assert gone_before() is None, "garbage made before the freeze was frozen"
    assert frozen == gc.get_freeze_count() > 10_000, frozen  # the imports
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.isenabled()

    after = Node()
    after.itself = after
    gone_after = weakref.ref(after)
    del after
    # No gc.collect(): as many new cyclic objects as the young threshold
    # must set off a collection on their own.
    for _ in range(YOUNG_THRESHOLD + 1000):
        node = Node()
        node.itself = node
    assert gone_after() is None, "a cycle made after the freeze was not collected"
    print("ok", frozen)
    """
)


def test_settle_collector_freezes_the_imports_and_still_collects_cycles() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ")
