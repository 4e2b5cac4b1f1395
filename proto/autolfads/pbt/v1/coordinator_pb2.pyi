import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_STATE_UNSPECIFIED: _ClassVar[SearchState]
    SEARCH_STATE_RUNNING: _ClassVar[SearchState]
    SEARCH_STATE_FINISHED: _ClassVar[SearchState]
    SEARCH_STATE_CANCELLED: _ClassVar[SearchState]
    SEARCH_STATE_FAILED: _ClassVar[SearchState]
SEARCH_STATE_UNSPECIFIED: SearchState
SEARCH_STATE_RUNNING: SearchState
SEARCH_STATE_FINISHED: SearchState
SEARCH_STATE_CANCELLED: SearchState
SEARCH_STATE_FAILED: SearchState

class RequestWorkRequest(_message.Message):
    __slots__ = ("worker_id", "max_leases", "request_id", "wait_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    max_leases: int
    request_id: str
    wait_s: float
    def __init__(self, worker_id: _Optional[str] = ..., max_leases: _Optional[int] = ..., request_id: _Optional[str] = ..., wait_s: _Optional[float] = ...) -> None: ...

class RequestWorkResponse(_message.Message):
    __slots__ = ("action", "leases", "retry_after_s", "search_state", "held_s")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[RequestWorkResponse.Action]
        TRAIN: _ClassVar[RequestWorkResponse.Action]
        WAIT: _ClassVar[RequestWorkResponse.Action]
        DONE: _ClassVar[RequestWorkResponse.Action]
    ACTION_UNSPECIFIED: RequestWorkResponse.Action
    TRAIN: RequestWorkResponse.Action
    WAIT: RequestWorkResponse.Action
    DONE: RequestWorkResponse.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    SEARCH_STATE_FIELD_NUMBER: _ClassVar[int]
    HELD_S_FIELD_NUMBER: _ClassVar[int]
    action: RequestWorkResponse.Action
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    retry_after_s: float
    search_state: SearchState
    held_s: float
    def __init__(self, action: _Optional[_Union[RequestWorkResponse.Action, str]] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., retry_after_s: _Optional[float] = ..., search_state: _Optional[_Union[SearchState, str]] = ..., held_s: _Optional[float] = ...) -> None: ...

class CheckpointRef(_message.Message):
    __slots__ = ("key", "sha256", "member", "generation")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    key: str
    sha256: str
    member: str
    generation: int
    def __init__(self, key: _Optional[str] = ..., sha256: _Optional[str] = ..., member: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class FreshInit(_message.Message):
    __slots__ = ("seed",)
    SEED_FIELD_NUMBER: _ClassVar[int]
    seed: int
    def __init__(self, seed: _Optional[int] = ...) -> None: ...

class StartPoint(_message.Message):
    __slots__ = ("checkpoint", "fresh")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointRef
    fresh: FreshInit
    def __init__(self, checkpoint: _Optional[_Union[CheckpointRef, _Mapping]] = ..., fresh: _Optional[_Union[FreshInit, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "member", "generation", "hparams", "epochs", "start", "fallbacks", "checkpoint_key", "metrics_key", "data_key", "data_sha256", "config_key", "deadline", "heartbeat_interval_s", "parent", "run")
    class HparamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    METRICS_KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONFIG_KEY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    member: str
    generation: int
    hparams: _containers.ScalarMap[str, float]
    epochs: int
    start: StartPoint
    fallbacks: _containers.RepeatedCompositeFieldContainer[StartPoint]
    checkpoint_key: str
    metrics_key: str
    data_key: str
    data_sha256: str
    config_key: str
    deadline: _timestamp_pb2.Timestamp
    heartbeat_interval_s: float
    parent: str
    run: str
    def __init__(self, lease_id: _Optional[str] = ..., member: _Optional[str] = ..., generation: _Optional[int] = ..., hparams: _Optional[_Mapping[str, float]] = ..., epochs: _Optional[int] = ..., start: _Optional[_Union[StartPoint, _Mapping]] = ..., fallbacks: _Optional[_Iterable[_Union[StartPoint, _Mapping]]] = ..., checkpoint_key: _Optional[str] = ..., metrics_key: _Optional[str] = ..., data_key: _Optional[str] = ..., data_sha256: _Optional[str] = ..., config_key: _Optional[str] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_interval_s: _Optional[float] = ..., parent: _Optional[str] = ..., run: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("lease_id", "worker_id", "epochs_done")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_DONE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    worker_id: str
    epochs_done: int
    def __init__(self, lease_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., epochs_done: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("action", "reason", "deadline")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[HeartbeatResponse.Action]
        CONTINUE: _ClassVar[HeartbeatResponse.Action]
        STOP: _ClassVar[HeartbeatResponse.Action]
    ACTION_UNSPECIFIED: HeartbeatResponse.Action
    CONTINUE: HeartbeatResponse.Action
    STOP: HeartbeatResponse.Action
    class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STOP_REASON_UNSPECIFIED: _ClassVar[HeartbeatResponse.StopReason]
        LEASE_EXPIRED: _ClassVar[HeartbeatResponse.StopReason]
        LEASE_REVOKED: _ClassVar[HeartbeatResponse.StopReason]
        SEARCH_CANCELLED: _ClassVar[HeartbeatResponse.StopReason]
        SEARCH_FINISHED: _ClassVar[HeartbeatResponse.StopReason]
    STOP_REASON_UNSPECIFIED: HeartbeatResponse.StopReason
    LEASE_EXPIRED: HeartbeatResponse.StopReason
    LEASE_REVOKED: HeartbeatResponse.StopReason
    SEARCH_CANCELLED: HeartbeatResponse.StopReason
    SEARCH_FINISHED: HeartbeatResponse.StopReason
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    action: HeartbeatResponse.Action
    reason: HeartbeatResponse.StopReason
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, action: _Optional[_Union[HeartbeatResponse.Action, str]] = ..., reason: _Optional[_Union[HeartbeatResponse.StopReason, str]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    values: _containers.ScalarMap[str, float]
    def __init__(self, epoch: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("lease_id", "worker_id", "member", "generation", "outcome", "hparams", "epochs", "fitness", "checkpoint_key", "checkpoint_sha256", "checkpoint_size", "corrupt_checkpoints", "message")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[ReportResultRequest.Outcome]
        SUCCEEDED: _ClassVar[ReportResultRequest.Outcome]
        FAILED: _ClassVar[ReportResultRequest.Outcome]
        ABANDONED: _ClassVar[ReportResultRequest.Outcome]
    OUTCOME_UNSPECIFIED: ReportResultRequest.Outcome
    SUCCEEDED: ReportResultRequest.Outcome
    FAILED: ReportResultRequest.Outcome
    ABANDONED: ReportResultRequest.Outcome
    class HparamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    worker_id: str
    member: str
    generation: int
    outcome: ReportResultRequest.Outcome
    hparams: _containers.ScalarMap[str, float]
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    fitness: float
    checkpoint_key: str
    checkpoint_sha256: str
    checkpoint_size: int
    corrupt_checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointRef]
    message: str
    def __init__(self, lease_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., member: _Optional[str] = ..., generation: _Optional[int] = ..., outcome: _Optional[_Union[ReportResultRequest.Outcome, str]] = ..., hparams: _Optional[_Mapping[str, float]] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., fitness: _Optional[float] = ..., checkpoint_key: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., checkpoint_size: _Optional[int] = ..., corrupt_checkpoints: _Optional[_Iterable[_Union[CheckpointRef, _Mapping]]] = ..., message: _Optional[str] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ("accepted", "duplicate")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LineageStep(_message.Message):
    __slots__ = ("generation", "member", "checkpoint_key")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    generation: int
    member: str
    checkpoint_key: str
    def __init__(self, generation: _Optional[int] = ..., member: _Optional[str] = ..., checkpoint_key: _Optional[str] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("member", "generation", "hparams", "metric", "parent", "phase", "worker_id", "checkpoint_key", "lineage", "attempts")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[MemberStatus.Phase]
        QUEUED: _ClassVar[MemberStatus.Phase]
        TRAINING: _ClassVar[MemberStatus.Phase]
        REPORTED: _ClassVar[MemberStatus.Phase]
        FINISHED: _ClassVar[MemberStatus.Phase]
    PHASE_UNSPECIFIED: MemberStatus.Phase
    QUEUED: MemberStatus.Phase
    TRAINING: MemberStatus.Phase
    REPORTED: MemberStatus.Phase
    FINISHED: MemberStatus.Phase
    class HparamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    member: str
    generation: int
    hparams: _containers.ScalarMap[str, float]
    metric: float
    parent: str
    phase: MemberStatus.Phase
    worker_id: str
    checkpoint_key: str
    lineage: _containers.RepeatedCompositeFieldContainer[LineageStep]
    attempts: int
    def __init__(self, member: _Optional[str] = ..., generation: _Optional[int] = ..., hparams: _Optional[_Mapping[str, float]] = ..., metric: _Optional[float] = ..., parent: _Optional[str] = ..., phase: _Optional[_Union[MemberStatus.Phase, str]] = ..., worker_id: _Optional[str] = ..., checkpoint_key: _Optional[str] = ..., lineage: _Optional[_Iterable[_Union[LineageStep, _Mapping]]] = ..., attempts: _Optional[int] = ...) -> None: ...

class BestMember(_message.Message):
    __slots__ = ("member", "generation", "metric", "checkpoint_key", "hparams")
    class HparamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    HPARAMS_FIELD_NUMBER: _ClassVar[int]
    member: str
    generation: int
    metric: float
    checkpoint_key: str
    hparams: _containers.ScalarMap[str, float]
    def __init__(self, member: _Optional[str] = ..., generation: _Optional[int] = ..., metric: _Optional[float] = ..., checkpoint_key: _Optional[str] = ..., hparams: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SearchStatus(_message.Message):
    __slots__ = ("run", "state", "mode", "generation", "population", "members", "best", "best_history", "revision", "max_generations", "message")
    RUN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    BEST_HISTORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MAX_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    run: str
    state: SearchState
    mode: str
    generation: int
    population: int
    members: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    best: BestMember
    best_history: _containers.RepeatedScalarFieldContainer[float]
    revision: int
    max_generations: int
    message: str
    def __init__(self, run: _Optional[str] = ..., state: _Optional[_Union[SearchState, str]] = ..., mode: _Optional[str] = ..., generation: _Optional[int] = ..., population: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ..., best: _Optional[_Union[BestMember, _Mapping]] = ..., best_history: _Optional[_Iterable[float]] = ..., revision: _Optional[int] = ..., max_generations: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class CancelSearchRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CancelSearchResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: SearchState
    def __init__(self, state: _Optional[_Union[SearchState, str]] = ...) -> None: ...
