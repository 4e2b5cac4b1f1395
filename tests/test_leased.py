"""What a trainer decides from its leased segments alone (trainer/leased.py)."""

from __future__ import annotations

from autolfads.coordinator.search.messages import Lease
from autolfads.coordinator.search.state import StartPoint
from autolfads.trainer.leased import LeasedSegment, last_short_round

INTERVAL_S = 10.0  # the leases' heartbeat interval


def on_last_epoch(member: str, seconds: float) -> LeasedSegment:
    """A segment of 2 epochs with 1 done, which took `seconds`."""
    lease = Lease(
        lease_id=f"lease-{member}",
        member=member,
        generation=0,
        hparams={},
        epochs=2,
        start=StartPoint(seed=1),
        fallbacks=(),
        checkpoint_key=f"run/members/{member}/gen-0000/checkpoint.pt",
        metrics_key=f"run/members/{member}/gen-0000/metrics.json",
        data_key="run/data/x.h5",
        data_sha256="0" * 64,
        config_key="run/config.yaml",
        deadline=0.0,
        heartbeat_interval_s=INTERVAL_S,
        parent="",
        run="run",
    )
    return LeasedSegment(lease, epochs=[(1, {"seconds": seconds})])


def test_the_next_lease_is_asked_for_only_when_the_whole_last_round_is_short() -> None:
    """The lease asked for during the last round is first heartbeated after
    it: each epoch under half an interval was not enough, as 16 leases' last
    epochs (at most 8 intervals) outlast a lease's timeout (4 intervals)."""
    assert last_short_round([on_last_epoch("m000", 0.4 * INTERVAL_S)])
    assert last_short_round([on_last_epoch(f"m{i:03d}", 0.04 * INTERVAL_S) for i in range(12)])
    assert not last_short_round([on_last_epoch(f"m{i:03d}", 0.4 * INTERVAL_S) for i in range(16)])
    assert not last_short_round([on_last_epoch("m000", 0.6 * INTERVAL_S)])
