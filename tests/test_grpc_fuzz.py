"""Hostile input, property-based: random and malformed requests over real
gRPC on 127.0.0.1 never crash the coordinator, never get INTERNAL/UNKNOWN,
change the persisted state only as the protocol allows (a refused call
changes nothing), and leave `coordinator/state.json` loadable every time."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

import grpc
import pytest
from coordinator_helpers import fake_train, open_tiny_search, saved_state, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autolfads.config import TUNABLE_HPARAMS
from autolfads.coordinator.search.clock import ManualClock
from autolfads.coordinator.search.errors import StaleLease
from autolfads.coordinator.search.messages import SegmentReport
from autolfads.coordinator.search.service import CoordinatorService
from autolfads.coordinator.search.state import SearchState
from autolfads.coordinator.security.auth import bearer_metadata
from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.convert import report_to_proto
from autolfads.coordinator.wire.server import create_server
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc
from autolfads.storage import LocalStore, RunLayout

TOKENS = TokenSet.generate()
assert TOKENS.worker is not None  # generate() makes a token for every role
WORKER = bearer_metadata(TOKENS.worker)
FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# A refusal must be one of the protocol's codes, never a crash.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
PATHS = {
    "RequestWork": "/autolfads.pbt.v1.Coordinator/RequestWork",
    "Heartbeat": "/autolfads.pbt.v1.Coordinator/Heartbeat",
    "ReportResult": "/autolfads.pbt.v1.Coordinator/ReportResult",
    "GetStatus": "/autolfads.pbt.v1.Coordinator/GetStatus",
    "CancelSearch": "/autolfads.pbt.v1.Coordinator/CancelSearch",
}


@dataclass
class Arena:
    """A served search plus real leases and reports to mutate."""

    store: LocalStore
    service: CoordinatorService
    clock: ManualClock
    target: str
    channel: grpc.Channel
    stub: pb_grpc.CoordinatorStub
    reports: list = field(default_factory=list)  # genuine, unsent or sent reports

    def persisted(self) -> bytes:
        return saved_state(self.store, "search").to_json().encode()  # loadable every time

    def call(self, method: str, request: bytes, metadata=WORKER) -> grpc.StatusCode:
        raw = self.channel.unary_unary(PATHS[method])
        try:
            raw(request, timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            assert err.code() in REFUSALS, f"{method}: {err.code()} {err.details()}"
            return err.code()
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("fuzz") / "store")
    cfg = tiny_config(population=8, max_generations=50, stop_patience_generations=50)
    clock = ManualClock()
    service = open_tiny_search(store, cfg, clock=clock)
    server, port = create_server(
        "127.0.0.1:0", service, max_streams=2, security=ServerSecurity(tokens=TOKENS)
    )
    target = f"127.0.0.1:{port}"
    with CoordinatorClient(target, security=ClientSecurity(token=TOKENS.worker)) as client:
        grants = client.request_work("w0", 8).leases
        reports = [fake_train(store, g, "w0") for g in grants]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        yield Arena(store, service, clock, target, channel, stub, reports)
    server.stop(0)


# ---------------------------------------------------------------- strategies

floats = st.floats(allow_nan=True, allow_infinity=True)
names = st.one_of(st.sampled_from(TUNABLE_HPARAMS), st.text(max_size=20))
ids = st.one_of(st.text(max_size=40), st.sampled_from(["w0", "w1", "0" * 32, ""]))


@st.composite
def report_requests(draw, arena_reports):
    """A genuine report with random fields replaced (or a fully random one)."""
    base = report_to_proto(draw(st.sampled_from(arena_reports)))
    if draw(st.booleans()):
        base = pb.ReportResultRequest()
    fields = {
        "lease_id": ids,
        "worker_id": ids,
        "member": st.text(max_size=20),
        "generation": st.integers(0, 2**32 - 1),
        "outcome": st.integers(-(2**31), 2**31 - 1),
        "fitness": floats,
        "checkpoint_key": st.text(max_size=60),
        "checkpoint_sha256": st.one_of(st.text(max_size=70), st.just("0" * 64)),
        "checkpoint_size": st.integers(0, 2**64 - 1),
        "message": st.text(max_size=200),
    }
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=4)):
        setattr(base, name, draw(fields[name]))
    if draw(st.booleans()):
        base.hparams.clear()
        base.hparams.update(draw(st.dictionaries(names, floats, max_size=9)))
    if draw(st.booleans()):
        del base.epochs[:]
        for epoch, values in draw(
            st.lists(
                st.tuples(st.integers(0, 2**32 - 1), st.dictionaries(names, floats, max_size=4)),
                max_size=30,
            )
        ):
            base.epochs.add(epoch=epoch, values=values)
    return base


def protocol_allows(before: SearchState, request: pb.ReportResultRequest) -> bool:
    """Whether the protocol lets this report change the state: the sender holds
    the active lease, for that member and generation; unless it hands the lease
    back, with the lease's hyperparameters and checkpoint key. (The metric is
    the worker's word: a worker is trusted to train honestly.)"""
    lease = before.leases.get(request.lease_id)
    if lease is None or lease.status != "active" or lease.worker_id != request.worker_id:
        return False
    if (lease.member, lease.generation) != (request.member, request.generation):
        return False
    if request.outcome == pb.ReportResultRequest.ABANDONED:
        return True
    segment = before.segments[lease.member]
    if dict(request.hparams) != segment.hparams:
        return False
    expected = RunLayout("search").checkpoint(lease.member, lease.generation)
    return request.outcome == pb.ReportResultRequest.FAILED or request.checkpoint_key == expected


# ---------------------------------------------------------------- properties


def _one_field_off(report: SegmentReport, field_name: str, data) -> SegmentReport:
    """`report` with exactly one field made wrong (each must be refused)."""
    if field_name == "hparams":
        name = data.draw(st.sampled_from(sorted(report.hparams)))
        factor = data.draw(st.sampled_from([0.5, 2.0, 0.0, math.inf]))
        if data.draw(st.booleans()):
            return replace(report, hparams={k: v for k, v in report.hparams.items() if k != name})
        value = report.hparams[name] * factor
        value = value if value != report.hparams[name] else value + 1.0
        return replace(report, hparams={**report.hparams, name: value})
    if field_name == "epochs":
        extra = report.epochs + ((len(report.epochs), {"valid_recon_smth": 1.0}),)
        return replace(report, epochs=extra)
    if field_name == "generation":
        return replace(report, generation=report.generation + data.draw(st.integers(1, 2**31)))
    if field_name == "checkpoint_sha256":
        return replace(report, checkpoint_sha256=data.draw(st.text(max_size=70)))
    value = data.draw(st.text(max_size=40).filter(lambda v: v != getattr(report, field_name)))
    return replace(report, **{field_name: value})


@FUZZ
@given(data=st.data())
def test_genuine_reports_with_one_field_wrong_are_refused(arena, data):
    report = data.draw(st.sampled_from(arena.reports))
    field_name = data.draw(
        st.sampled_from(
            ["lease_id", "worker_id", "member", "generation", "hparams", "epochs",
             "checkpoint_key", "checkpoint_sha256"]
        )
    )  # fmt: skip
    wrong = _one_field_off(report, field_name, data)
    before = arena.persisted()
    code = arena.call("ReportResult", report_to_proto(wrong).SerializeToString())
    assert code != grpc.StatusCode.OK, f"{field_name} off by one, yet accepted"
    assert arena.persisted() == before


@FUZZ
@given(data=st.data())
def test_random_reports_change_state_only_when_genuine(arena, data):
    request = data.draw(report_requests(arena.reports))
    before = arena.persisted()
    allowed = protocol_allows(SearchState.from_json(before), request)
    code = arena.call("ReportResult", request.SerializeToString())
    after = arena.persisted()
    if code != grpc.StatusCode.OK:
        assert after == before, "a refused report changed the persisted state"
    elif after != before:
        assert allowed, "a report the protocol forbids changed the state"
        lease = SearchState.from_json(after).leases[request.lease_id]
        assert lease.status in ("accepted", "abandoned")
    replay = arena.call("ReportResult", request.SerializeToString())
    assert arena.persisted() == after, "a replayed report changed the state"
    assert replay == code or code == grpc.StatusCode.OK


@FUZZ
@given(
    worker_id=ids,
    max_leases=st.integers(0, 2**32 - 1),
    request_id=st.text(max_size=200),
    lease_id=ids,
    epochs_done=st.integers(0, 2**32 - 1),
)
def test_random_work_requests_and_heartbeats(
    arena, worker_id, max_leases, request_id, lease_id, epochs_done
):
    before = SearchState.from_json(arena.persisted())
    request = pb.RequestWorkRequest(
        worker_id=worker_id, max_leases=max_leases, request_id=request_id
    )
    code = arena.call("RequestWork", request.SerializeToString())
    after = SearchState.from_json(arena.persisted())
    if code != grpc.StatusCode.OK:
        assert after.to_json() == before.to_json()
    # Whatever happened, no worker ever holds more than the per-worker cap.
    active = [x for x in after.leases.values() if x.status == "active"]
    for name in {x.worker_id for x in active}:
        assert sum(x.worker_id == name for x in active) <= arena.service.max_leases_per_request
    beat = pb.HeartbeatRequest(lease_id=lease_id, worker_id=worker_id, epochs_done=epochs_done)
    arena.call("Heartbeat", beat.SerializeToString())  # heartbeats are not persisted
    assert arena.persisted() == after.to_json().encode()


@FUZZ
@given(method=st.sampled_from(sorted(PATHS)), payload=st.binary(max_size=300), auth=st.booleans())
def test_random_bytes_on_every_method_path(arena, method, payload, auth):
    before = arena.persisted()
    metadata = WORKER if auth else (("authorization", "Bearer " + "z" * 40),)
    code = arena.call(method, payload, metadata)
    if not auth:
        assert code == grpc.StatusCode.UNAUTHENTICATED
    if method == "CancelSearch":  # a worker token may never cancel, whatever the bytes
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    if (
        method in ("ReportResult", "CancelSearch", "Heartbeat", "GetStatus")
        or code != grpc.StatusCode.OK
    ):
        assert arena.persisted() == before
    assert not arena.service.terminal or arena.service.exit_status != "cancelled"


def test_the_fuzzed_coordinator_still_finishes_generation_zero_once(arena):
    """After all of the above (run in this order): a real worker reports what
    it holds, takes over what fuzzed workers hold once their leases expire, and
    generation 0 ends with exactly one result per member."""
    security = ClientSecurity(token=TOKENS.worker)
    with CoordinatorClient(arena.target, security=security) as client:
        for report in arena.reports:
            # StaleLease: a fuzzed ABANDONED report handed the lease back.
            with contextlib.suppress(StaleLease):
                assert client.report(report).accepted
        arena.clock.advance(arena.service.lease_timeout_s + 1)  # fuzzed leases expire
        for _ in range(20):
            if client.status().generation >= 1:
                break
            for grant in client.request_work("real-worker", 8).leases:
                assert client.report(fake_train(arena.store, grant, "real-worker")).accepted
        status = client.status()
    assert status.state == "running" and status.generation >= 1
    state = SearchState.from_json(arena.persisted())
    for member in state.segments:
        assert [h.generation for h in state.history[member]].count(0) == 1
    assert not any(math.isinf(m.metric) for m in status.members)
