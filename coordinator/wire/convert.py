"""protobuf <-> domain messages, both directions, in one place.

The servicer uses the `*_from_proto` request parsers and the `*_to_proto`
reply builders; the client uses the opposite pair. Enum values that are
UNSPECIFIED or unknown become `InvalidRequest`, never a silent default.
"""

from __future__ import annotations

import threading

from google.protobuf.timestamp_pb2 import Timestamp

from autolfads.coordinator.search.errors import CoordinatorError, InvalidRequest
from autolfads.coordinator.search.messages import (
    BestView,
    HeartbeatReply,
    Lease,
    LineageStepView,
    MemberView,
    ReportAck,
    SegmentReport,
    StatusView,
    WorkReply,
)
from autolfads.coordinator.search.state import StartPoint
from autolfads.pbt.v1 import coordinator_pb2 as pb

_WORK_ACTIONS = {
    "train": pb.RequestWorkResponse.TRAIN,
    "wait": pb.RequestWorkResponse.WAIT,
    "done": pb.RequestWorkResponse.DONE,
}
_SEARCH_STATES = {
    "running": pb.SEARCH_STATE_RUNNING,
    "finished": pb.SEARCH_STATE_FINISHED,
    "cancelled": pb.SEARCH_STATE_CANCELLED,
    "failed": pb.SEARCH_STATE_FAILED,
}
_HB_ACTIONS = {"continue": pb.HeartbeatResponse.CONTINUE, "stop": pb.HeartbeatResponse.STOP}
_STOP_REASONS = {
    "": pb.HeartbeatResponse.STOP_REASON_UNSPECIFIED,
    "lease_expired": pb.HeartbeatResponse.LEASE_EXPIRED,
    "lease_revoked": pb.HeartbeatResponse.LEASE_REVOKED,
    "search_cancelled": pb.HeartbeatResponse.SEARCH_CANCELLED,
    "search_finished": pb.HeartbeatResponse.SEARCH_FINISHED,
}
_OUTCOMES = {
    "succeeded": pb.ReportResultRequest.SUCCEEDED,
    "failed": pb.ReportResultRequest.FAILED,
    "abandoned": pb.ReportResultRequest.ABANDONED,
}
_PHASES = {
    "queued": pb.MemberStatus.QUEUED,
    "training": pb.MemberStatus.TRAINING,
    "reported": pb.MemberStatus.REPORTED,
    "finished": pb.MemberStatus.FINISHED,
}


def _invert(table: dict) -> dict:
    return {v: k for k, v in table.items()}


# Proto value -> domain name, built once (every report and reply reads one).
_WORK_ACTION_NAMES = _invert(_WORK_ACTIONS)
_SEARCH_STATE_NAMES = _invert(_SEARCH_STATES)
_HB_ACTION_NAMES = _invert(_HB_ACTIONS)
_STOP_REASON_NAMES = _invert(_STOP_REASONS)
_OUTCOME_NAMES = _invert(_OUTCOMES)
_PHASE_NAMES = _invert(_PHASES)


def _lookup(table: dict, value: object, what: str) -> str:
    """A request's enum value (the server parsing it)."""
    try:
        return table[value]
    except KeyError:
        raise InvalidRequest(f"{what} {value!r} is unspecified or unknown") from None


def _answered(table: dict, value: object, what: str) -> str:
    """An answer's enum value (the client parsing it): one this client does
    not know comes from a newer coordinator, not from a bad request."""
    try:
        return table[value]
    except KeyError:
        raise CoordinatorError(
            f"the coordinator answered {what} {value!r}, which this client does not know: "
            "it is newer than this autolfads; upgrade it here"
        ) from None


def _timestamp(seconds: float) -> Timestamp:
    whole, nanos = divmod(int(round(seconds * 1e9)), 1_000_000_000)
    return Timestamp(seconds=whole, nanos=nanos)


def _seconds(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


# ---------------------------------------------------------------- start points


def point_to_proto(p: StartPoint) -> pb.StartPoint:
    if p.fresh:
        return pb.StartPoint(fresh=pb.FreshInit(seed=p.seed))
    return pb.StartPoint(checkpoint=checkpoint_ref(p))


def checkpoint_ref(p: StartPoint) -> pb.CheckpointRef:
    return pb.CheckpointRef(
        key=p.checkpoint, sha256=p.sha256, member=p.member, generation=p.generation
    )


def point_from_proto(msg: pb.StartPoint) -> StartPoint:
    which = msg.WhichOneof("source")
    if which == "fresh":
        return StartPoint(seed=msg.fresh.seed)
    if which == "checkpoint":
        return ref_from_proto(msg.checkpoint)
    raise InvalidRequest("start point has neither a checkpoint nor a fresh init")


def ref_from_proto(ref: pb.CheckpointRef) -> StartPoint:
    return StartPoint(ref.key, ref.sha256, ref.member, ref.generation)


# ---------------------------------------------------------------- work


def lease_to_proto(g: Lease) -> pb.Lease:
    return pb.Lease(
        lease_id=g.lease_id,
        member=g.member,
        generation=g.generation,
        hparams=g.hparams,
        epochs=g.epochs,
        start=point_to_proto(g.start),
        fallbacks=[point_to_proto(f) for f in g.fallbacks],
        checkpoint_key=g.checkpoint_key,
        metrics_key=g.metrics_key,
        data_key=g.data_key,
        data_sha256=g.data_sha256,
        config_key=g.config_key,
        deadline=_timestamp(g.deadline),
        heartbeat_interval_s=g.heartbeat_interval_s,
        parent=g.parent,
        run=g.run,
    )


def lease_from_proto(m: pb.Lease) -> Lease:
    return Lease(
        lease_id=m.lease_id,
        member=m.member,
        generation=m.generation,
        hparams=dict(m.hparams),
        epochs=m.epochs,
        start=point_from_proto(m.start),
        fallbacks=tuple(point_from_proto(f) for f in m.fallbacks),
        checkpoint_key=m.checkpoint_key,
        metrics_key=m.metrics_key,
        data_key=m.data_key,
        data_sha256=m.data_sha256,
        config_key=m.config_key,
        deadline=_seconds(m.deadline),
        heartbeat_interval_s=m.heartbeat_interval_s,
        parent=m.parent,
        run=m.run,
    )


def work_to_proto(r: WorkReply) -> pb.RequestWorkResponse:
    return pb.RequestWorkResponse(
        action=_WORK_ACTIONS[r.action],
        leases=[lease_to_proto(g) for g in r.leases],
        retry_after_s=r.retry_after_s,
        search_state=_SEARCH_STATES[r.search_state],
        held_s=r.held_s,
    )


def work_from_proto(m: pb.RequestWorkResponse) -> WorkReply:
    return WorkReply(
        action=_answered(_WORK_ACTION_NAMES, m.action, "work action"),  # type: ignore[arg-type]
        leases=tuple(lease_from_proto(x) for x in m.leases),
        retry_after_s=m.retry_after_s,
        search_state=_answered(_SEARCH_STATE_NAMES, m.search_state, "search state"),
        held_s=m.held_s,
    )


# ---------------------------------------------------------------- heartbeat


def heartbeat_to_proto(r: HeartbeatReply) -> pb.HeartbeatResponse:
    return pb.HeartbeatResponse(
        action=_HB_ACTIONS[r.action],
        reason=_STOP_REASONS[r.reason],
        deadline=_timestamp(r.deadline),
    )


def heartbeat_from_proto(m: pb.HeartbeatResponse) -> HeartbeatReply:
    return HeartbeatReply(
        action=_answered(_HB_ACTION_NAMES, m.action, "heartbeat action"),  # type: ignore[arg-type]
        reason=_STOP_REASON_NAMES.get(m.reason, ""),
        deadline=_seconds(m.deadline),
    )


# ---------------------------------------------------------------- report


def report_to_proto(r: SegmentReport) -> pb.ReportResultRequest:
    return pb.ReportResultRequest(
        lease_id=r.lease_id,
        worker_id=r.worker_id,
        member=r.member,
        generation=r.generation,
        outcome=_OUTCOMES[r.outcome],
        hparams=r.hparams,
        epochs=[pb.EpochMetrics(epoch=e, values=v) for e, v in r.epochs],
        fitness=r.fitness,
        checkpoint_key=r.checkpoint_key,
        checkpoint_sha256=r.checkpoint_sha256,
        checkpoint_size=r.checkpoint_size,
        corrupt_checkpoints=[checkpoint_ref(p) for p in r.corrupt],
        message=r.message,
    )


def report_from_proto(m: pb.ReportResultRequest) -> SegmentReport:
    return SegmentReport(
        lease_id=m.lease_id,
        worker_id=m.worker_id,
        member=m.member,
        generation=m.generation,
        outcome=_lookup(_OUTCOME_NAMES, m.outcome, "report outcome"),  # type: ignore[arg-type]
        hparams=dict(m.hparams),
        epochs=tuple((e.epoch, dict(e.values)) for e in m.epochs),
        fitness=m.fitness,
        checkpoint_key=m.checkpoint_key,
        checkpoint_sha256=m.checkpoint_sha256,
        checkpoint_size=m.checkpoint_size,
        corrupt=tuple(ref_from_proto(c) for c in m.corrupt_checkpoints),
        message=m.message,
    )


def ack_to_proto(a: ReportAck) -> pb.ReportResultResponse:
    return pb.ReportResultResponse(accepted=a.accepted, duplicate=a.duplicate)


def ack_from_proto(m: pb.ReportResultResponse) -> ReportAck:
    return ReportAck(accepted=m.accepted, duplicate=m.duplicate)


# ---------------------------------------------------------------- status


def search_state_to_proto(state: str) -> int:
    return _SEARCH_STATES[state]


def search_state_from_proto(value: int) -> str:
    return _answered(_SEARCH_STATE_NAMES, value, "search state")


def member_to_proto(m: MemberView) -> pb.MemberStatus:
    return pb.MemberStatus(
        member=m.member,
        generation=m.generation,
        hparams=m.hparams,
        metric=m.metric,
        parent=m.parent,
        phase=_PHASES[m.phase],
        worker_id=m.worker_id,
        checkpoint_key=m.checkpoint_key,
        lineage=[
            pb.LineageStep(
                generation=x.generation, member=x.member, checkpoint_key=x.checkpoint_key
            )
            for x in m.lineage
        ],
        attempts=m.attempts,
    )


class MemberProtos:
    """Each member's `MemberStatus`, kept while its view stays equal.

    A status of 1024 members at generation 40 holds 40,000 lineage steps;
    building them all took ~50 ms of the GIL per GetStatus. Between two polls
    most members are unchanged, and their lineage tuples are the very same
    objects (`views.LineageCache`), so comparing views is cheap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._protos: dict[str, tuple[MemberView, pb.MemberStatus]] = {}

    def get(self, m: MemberView) -> pb.MemberStatus:
        with self._lock:
            hit = self._protos.get(m.member)
            # The service reuses an unchanged member's view object (identity
            # first: comparing 1024 views field by field is not free).
            if hit is not None and (hit[0] is m or hit[0] == m):
                return hit[1]
        proto = member_to_proto(m)
        with self._lock:
            self._protos[m.member] = (m, proto)
        return proto


def status_to_proto(s: StatusView, members: MemberProtos | None = None) -> pb.SearchStatus:
    """`members`: the cache to take unchanged members' messages from."""
    msg = pb.SearchStatus(
        run=s.run,
        state=_SEARCH_STATES[s.state],
        mode=s.mode,
        generation=s.generation,
        population=s.population,
        best_history=list(s.best_history),
        revision=s.revision,
        max_generations=s.max_generations,
        message=s.message,
    )
    msg.members.extend(member_to_proto(m) if members is None else members.get(m) for m in s.members)
    if s.best is not None:
        b = s.best
        msg.best.CopyFrom(
            pb.BestMember(
                member=b.member,
                generation=b.generation,
                metric=b.metric,
                checkpoint_key=b.checkpoint_key,
                hparams=b.hparams,
            )
        )
    return msg


def status_from_proto(m: pb.SearchStatus) -> StatusView:
    members = tuple(
        MemberView(
            member=x.member,
            generation=x.generation,
            hparams=dict(x.hparams),
            metric=x.metric,
            parent=x.parent,
            phase=_answered(_PHASE_NAMES, x.phase, "member phase"),  # type: ignore[arg-type]
            worker_id=x.worker_id,
            checkpoint_key=x.checkpoint_key,
            lineage=tuple(
                LineageStepView(s.generation, s.member, s.checkpoint_key) for s in x.lineage
            ),
            attempts=x.attempts,
        )
        for x in m.members
    )
    best = None
    if m.HasField("best"):
        b = m.best
        best = BestView(b.member, b.generation, b.metric, b.checkpoint_key, dict(b.hparams))
    return StatusView(
        run=m.run,
        state=search_state_from_proto(m.state),
        mode=m.mode,
        generation=m.generation,
        population=m.population,
        members=members,
        best=best,
        best_history=tuple(m.best_history),
        revision=m.revision,
        max_generations=m.max_generations,
        message=m.message,
    )
