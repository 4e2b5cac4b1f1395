"""The gRPC face of `KatibSuggestion`: Katib's `api.v1.beta1.Suggestion`
service plus `grpc.health.v1.Health`.

Thin: proto -> domain (`convert`) -> `KatibSuggestion` -> proto. Requests
arrive as raw bytes and are parsed here, so garbage is answered
INVALID_ARGUMENT (grpc's own deserializer would say INTERNAL). Errors map to
status codes in `STATUS_CODES`, then the coordinator's one mapping.

Katib's suggestion client reads codes this way: from ValidateAlgorithmSettings,
INVALID_ARGUMENT or UNKNOWN fail the Experiment, UNIMPLEMENTED counts as
valid; from GetSuggestions any error is logged and the reconcile retried, so
UNAVAILABLE (NotReady) means "ask again later".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autolfads.coordinator.search.errors import CoordinatorError, InvalidRequest
from autolfads.coordinator.security.limits import server_options
from autolfads.coordinator.wire.server import bind_and_start
from autolfads.coordinator.wire.status_codes import to_status
from autolfads.katib import convert
from autolfads.katib.records import TrialRecordError
from autolfads.katib.suggestion import KatibSuggestion, NotReady
from autolfads.katib_api.v1beta1 import api_pb2 as api

log = logging.getLogger(__name__)

SERVICE_NAME = api.DESCRIPTOR.services_by_name["Suggestion"].full_name  # api.v1.beta1.Suggestion
# The name Katib's gRPC readiness probe asks the health service about.
HEALTH_NAME = "manager.v1beta1.Suggestion"
DEFAULT_PORT = 6789
MAX_WORKERS = 8

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    NotReady: grpc.StatusCode.UNAVAILABLE,
    # A trial's record in storage is unreadable: retrying will not help.
    TrialRecordError: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(err: Exception) -> tuple[grpc.StatusCode, str]:
    """(code, one-line message): ours first, then the coordinator's mapping."""
    code = next((STATUS_CODES[c] for c in type(err).__mro__ if c in STATUS_CODES), None)
    message = str(err)
    if code is None:
        code, message, _ = to_status(err)
    return code, " ".join(message.split())[:1000]


class SuggestionServicer:
    def __init__(self, suggestion: KatibSuggestion) -> None:
        self._suggestion = suggestion

    def get_suggestions(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def call() -> bytes:
            request = _parse(api.GetSuggestionsRequest, raw)
            assignments = self._suggestion.suggest(
                convert.experiment_from_proto(request.experiment),
                [convert.trial_from_proto(t) for t in request.trials],
                request.current_request_number,
                request.total_request_number,
            )
            return convert.suggestions_to_proto(assignments).SerializeToString()

        return _handle(context, call)

    def validate_algorithm_settings(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def call() -> bytes:
            request = _parse(api.ValidateAlgorithmSettingsRequest, raw)
            self._suggestion.validate(convert.experiment_from_proto(request.experiment))
            return api.ValidateAlgorithmSettingsReply().SerializeToString()

        return _handle(context, call)

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(behaviour: Callable[[bytes, Any], bytes]) -> grpc.RpcMethodHandler:
            # No (de)serializers: bytes in, bytes out, parsed inside `_handle`.
            return grpc.unary_unary_rpc_method_handler(behaviour)

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "GetSuggestions": unary(self.get_suggestions),
                "ValidateAlgorithmSettings": unary(self.validate_algorithm_settings),
            },
        )


def _parse(cls: type[Message], raw: bytes) -> Any:
    try:
        return cls.FromString(raw)
    except DecodeError:
        raise InvalidRequest(f"the request is not a valid {cls.DESCRIPTOR.full_name}") from None


def _handle(context: grpc.ServicerContext, call: Callable[[], bytes]) -> bytes:
    try:
        return call()
    except Exception as err:  # mapped to a status code; nothing escapes raw
        code, message = status_of(err)  # an internal error is logged there
        if code != grpc.StatusCode.INTERNAL and not isinstance(
            err, CoordinatorError | TrialRecordError
        ):
            log.warning("%s: %s", code.name, message)
        context.abort(code, message)
        raise AssertionError("context.abort returned") from None


def create_suggestion_server(
    addr: str,
    suggestion: KatibSuggestion,
    health_servicer: health.HealthServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Build, bind and start the server; return it and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="katib-rpc"),
        options=server_options(),
    )
    server.add_generic_rpc_handlers((SuggestionServicer(suggestion).handler(),))
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", HEALTH_NAME, SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bind_and_start(server, addr)
