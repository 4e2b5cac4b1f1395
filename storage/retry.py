"""Bounded exponential backoff for operations against a remote store.

The whole operation is retried (a put re-reads its source, a get restarts),
so every retried operation must be idempotent: S3 puts, gets, stats, lists
and deletes are.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from autolfads.storage.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_attempts` tries; the pause before try n+1 is drawn from
    [d/2, d] with d = min(max_delay_s, base_delay_s * 2**n) ("equal jitter",
    so many pods retrying at once spread out).

    The default (8 tries, 0.25 s doubling to at most 8 s) waits 12-24 s in
    all before giving up: enough for a MinIO pod restart.
    """

    max_attempts: int = 8
    base_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise StorageError(f"retry max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise StorageError(f"retry max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise StorageError(
                f"retry delays need 0 <= base_delay_s ({self.base_delay_s}) "
                f"<= max_delay_s ({self.max_delay_s})"
            )

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The pauses between tries: max_attempts - 1 of them."""
        rng = rng or random.Random()
        for n in range(self.max_attempts - 1):
            ceiling = min(self.max_delay_s, self.base_delay_s * (2**n))
            yield rng.uniform(ceiling / 2, ceiling)

    @property
    def worst_case_wait_s(self) -> float:
        return sum(
            min(self.max_delay_s, self.base_delay_s * 2**n) for n in range(self.max_attempts - 1)
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        """AUTOLFADS_S3_MAX_ATTEMPTS / _BASE_DELAY_S / _MAX_DELAY_S override the defaults."""
        default = cls()
        return cls(
            max_attempts=int(
                env_number(env, "AUTOLFADS_S3_MAX_ATTEMPTS", int, default.max_attempts)
            ),
            base_delay_s=env_number(env, "AUTOLFADS_S3_BASE_DELAY_S", float, default.base_delay_s),
            max_delay_s=env_number(env, "AUTOLFADS_S3_MAX_DELAY_S", float, default.max_delay_s),
        )


def env_number(env: Mapping[str, str], name: str, kind: type, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise StorageError(
            f"environment variable {name}={raw!r} is not a valid {kind.__name__}"
        ) from None
    if value < 0 or value != value:
        raise StorageError(f"environment variable {name}={raw!r} must be a non-negative number")
    return value


class RetriesExhausted(Exception):
    """Internal: the last transient error once the budget is spent."""

    def __init__(self, last: BaseException, attempts: int, waited_s: float) -> None:
        super().__init__(str(last))
        self.last = last
        self.attempts = attempts
        self.waited_s = waited_s


def call_with_retry(
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `operation`; retry transient failures per `policy`.

    Non-transient errors propagate at once. When the budget is spent, raises
    RetriesExhausted carrying the last error, for the caller to turn into a
    one-line StorageUnavailable.
    """
    delays = policy.delays()
    attempt = 0
    waited = 0.0
    while True:
        attempt += 1
        try:
            return operation()
        except Exception as err:
            if not is_transient(err):
                raise
            delay = next(delays, None)
            if delay is None:
                raise RetriesExhausted(err, attempt, waited) from err
            log.info(
                "%s: attempt %d failed (%s); retrying in %.2f s",
                what,
                attempt,
                type(err).__name__,
                delay,
            )
            sleep(delay)
            waited += delay
