"""Publishing finished segments off the training path.

A finished segment is stored (checkpoint, then metrics.json) and reported to
the coordinator, in that order, on one background thread, while the trainer
asks for its next lease and trains it. One thread keeps segments in the
order they finished, and a report always follows its own durable upload: the
coordinator is never told of a checkpoint that is not stored yet.

Until its report is sent, a submitted segment's lease is heartbeated
(`trainer/beats.py`), both while it waits behind earlier segments and while
it uploads: a slow store is not a silent worker.

A failure (storage down, coordinator gone) is raised on the trainer's thread
at its next `check` or `wait`, where it ends the worker as it did when
publishing was inline.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from autolfads.trainer.beats import Beat, Beats


class Publisher:
    def __init__(self, beats: Beats) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autolfads-publish")
        self._pending: list[Future[None]] = []
        self._beats = beats  # the owner closes them, after `close`

    def submit(self, publish: Callable[[], None], beat: Beat | None = None) -> None:
        """Run `publish` after everything submitted before it; until it has
        run, `beat` is called on its interval."""
        if beat is None:
            self._pending.append(self._pool.submit(publish))
            return
        token = self._beats.add(beat)

        def run() -> None:
            try:
                publish()
            finally:
                self._beats.discard(token)

        self._pending.append(self._pool.submit(run))

    @property
    def busy(self) -> bool:
        """Something submitted has not finished yet."""
        return any(not f.done() for f in self._pending)

    def check(self) -> None:
        """Raise the error of a finished publish, if any (without waiting)."""
        done: list[Future[None]] = []
        pending: list[Future[None]] = []
        for future in self._pending:
            (done if future.done() else pending).append(future)
        self._pending = pending
        for future in done:
            future.result()

    def wait(self) -> None:
        """Wait until everything submitted has finished; raise the first error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Finish what was submitted (errors are left to `wait`; the beats go
        on meanwhile), then stop the thread."""
        self._pool.shutdown(wait=True)
