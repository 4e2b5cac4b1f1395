"""Bearer-token authentication over real gRPC on loopback: which role may make
which call, what a refusal looks like, that it changes nothing and is logged
without the token; token sources; the exposure rules of server and client."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from coordinator_helpers import saved_state
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autolfads.cli import main
from autolfads.coordinator.search.errors import PermissionDenied, Unauthenticated, UnknownLease
from autolfads.coordinator.security.exposure import (
    ClientSecurity,
    ServerSecurity,
    is_loopback_host,
    target_host,
)
from autolfads.coordinator.security.interceptors import UNKNOWN_METHOD, RpcMetrics
from autolfads.coordinator.security.tokens import ENV_VARS, TokenSet, resolve_client_token
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server
from autolfads.errors import ConfigError
from autolfads.launcher import LaunchOptions, _worker_command, worker_env, write_secret
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
TOKENS = TokenSet.generate()
assert TOKENS.worker is not None  # generate() makes a token for every role
BOGUS = "not-a-real-token-but-long-enough"


@pytest.fixture
def served(service):
    metrics = RpcMetrics()
    server, port = create_server(
        "127.0.0.1:0", service, metrics=metrics, security=ServerSecurity(tokens=TOKENS)
    )
    yield f"127.0.0.1:{port}", metrics
    server.stop(0)


def client(target: str, token: str | None) -> CoordinatorClient:
    return CoordinatorClient(
        target, timeout_s=5, unavailable_wait_s=2, security=ClientSecurity(token=token)
    )


def persisted(store) -> bytes:
    return saved_state(store, "search").to_json().encode()


CALLS = {
    "status": lambda c: c.status(),
    "watch": lambda c: next(iter(c.watch(timeout_s=5))),
    "heartbeat": lambda c: c.heartbeat("0" * 32, "w0"),
    "request_work": lambda c: c.request_work("w0", 1),
}
ALLOWED = {
    "observer": {"status", "watch"},
    "worker": {"status", "watch", "heartbeat", "request_work"},
    "operator": {"status", "watch", "heartbeat", "request_work"},
}


@pytest.mark.parametrize("role", [None, "bogus", "observer", "worker", "operator"])
def test_each_role_may_make_exactly_its_calls(served, local_store, role):
    target, _ = served
    token = BOGUS if role == "bogus" else TOKENS.token(role) if role else None
    with client(target, token) as c:
        for name, call in CALLS.items():
            before = persisted(local_store)
            if name in ALLOWED.get(role, set()):
                # UnknownLease: the call got past authentication to the service.
                with contextlib.suppress(UnknownLease):
                    call(c)
                continue
            expected = Unauthenticated if role in (None, "bogus") else PermissionDenied
            with pytest.raises(expected):
                call(c)
            assert persisted(local_store) == before, f"{role} {name} changed the state"
        before = persisted(local_store)
        if role == "operator":
            assert c.cancel("operator says stop") == "cancelled"
            return
        with pytest.raises(Unauthenticated if role in (None, "bogus") else PermissionDenied):
            c.cancel("not allowed")
        assert persisted(local_store) == before


def test_refusals_are_logged_once_without_the_token(served, local_store, caplog):
    target, metrics = served
    before = persisted(local_store)
    with caplog.at_level(logging.WARNING, logger="autolfads.coordinator.security.auth"):
        with client(target, BOGUS) as c:
            for _ in range(20):
                with pytest.raises(Unauthenticated, match="unknown token"):
                    c.request_work("w0", 1)
        with client(target, TOKENS.worker) as c, pytest.raises(PermissionDenied, match="operator"):
            c.cancel("a worker tries")
    assert persisted(local_store) == before
    assert metrics.wait_for("RequestWork", "UNAUTHENTICATED", 20, timeout_s=30) == 20
    assert metrics.wait_for("CancelSearch", "PERMISSION_DENIED", 1, timeout_s=30) == 1
    text = caplog.text
    assert "refused /autolfads.pbt.v1.Coordinator/RequestWork from ipv4:127.0.0.1" in text
    assert BOGUS not in text and TOKENS.worker not in text
    # Throttled: a flood of refusals is one log line plus a count, not 21 lines.
    assert len(caplog.records) < 5


@pytest.mark.parametrize(
    "metadata, why",
    [
        ((("authorization", f"Basic {TOKENS.worker}"),), "not 'Bearer <token>'"),
        ((("authorization", "Bearer "),), "not 'Bearer <token>'"),
        (
            (("authorization", f"Bearer {TOKENS.worker}"), ("authorization", "Bearer x" * 3)),
            "more than one",
        ),
        ((("authorization", f"Bearer {TOKENS.worker[:-1]}"),), "unknown token"),
    ],
)
def test_malformed_authorization_is_unauthenticated(served, metadata, why):
    target, _ = served
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetStatus(pb.GetStatusRequest(), timeout=5, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert why in err.value.details()


def test_bearer_scheme_is_case_insensitive(served):
    target, _ = served
    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.CoordinatorStub(channel).GetStatus(
            pb.GetStatusRequest(),
            timeout=5,
            metadata=(("authorization", f"bearer {TOKENS.observer}"),),
        )
    assert reply.run == "search"


def test_health_stays_open_without_a_token(served):
    target, _ = served
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- token sources


def test_tokens_load_from_files_before_the_environment(tmp_path):
    path = tmp_path / "worker.token"
    assert TOKENS.worker is not None  # generate() makes a token for every role
    path.write_text(TOKENS.worker + "\n")
    env = {ENV_VARS["worker"]: "ignored-because-a-file-is-given", ENV_VARS["observer"]: "o" * 20}
    tokens = TokenSet.load({"worker": path}, env)
    assert tokens.worker == TOKENS.worker and tokens.observer == "o" * 20
    assert tokens.operator is None and tokens.roles == ("observer", "worker")
    assert TOKENS.worker not in repr(tokens) and "o" * 20 not in repr(tokens)


@pytest.mark.parametrize(
    "files, env, message",
    [
        ({"worker": "missing.token"}, {}, "not found"),
        ({}, {ENV_VARS["worker"]: "short"}, "16-512 characters"),
        ({}, {ENV_VARS["worker"]: "has a space in it!!"}, "printable ASCII"),
        ({}, {ENV_VARS["worker"]: "x" * 20, ENV_VARS["operator"]: "x" * 20}, "share one token"),
    ],
)
def test_bad_tokens_are_one_line_config_errors(tmp_path, files, env, message):
    paths = {role: tmp_path / name for role, name in files.items()}
    with pytest.raises(ConfigError, match=message) as err:
        TokenSet.load(paths, env)
    assert "\n" not in str(err.value)
    assert all(v not in str(err.value) for v in env.values())


def test_clients_send_the_least_powerful_token_that_suffices():
    assert TOKENS.observer is not None and TOKENS.worker is not None
    assert TOKENS.operator is not None  # generate() makes a token for every role
    env = {
        ENV_VARS["observer"]: TOKENS.observer,
        ENV_VARS["worker"]: TOKENS.worker,
        ENV_VARS["operator"]: TOKENS.operator,
    }
    assert resolve_client_token("read", None, env) == TOKENS.observer
    assert resolve_client_token("work", None, env) == TOKENS.worker
    assert resolve_client_token("operate", None, env) == TOKENS.operator
    assert resolve_client_token("work", None, {ENV_VARS["operator"]: TOKENS.operator}) == (
        TOKENS.operator
    )
    assert resolve_client_token("work", None, {ENV_VARS["observer"]: TOKENS.observer}) is None


# ---------------------------------------------------------------- exposure rules


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("", False), ("::", False),
     ("10.0.0.5", False), ("coordinator.svc", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "target, host",
    [("127.0.0.1:50051", "127.0.0.1"), ("[::1]:1", "::1"), ("dns:///svc.ns:50051", "svc.ns"),
     ("ipv4:10.0.0.1:5", "10.0.0.1"), ("ipv6:[::1]:5", "::1"), ("unix:/tmp/s", "localhost"),
     ("localhost:1", "localhost")],
)  # fmt: skip
def test_target_hosts(target, host):
    assert target_host(target) == host


def test_server_exposure_rules(caplog):
    with caplog.at_level(logging.WARNING):
        ServerSecurity().check("127.0.0.1:50051", warn=False)  # an early check: silent
        assert "no tokens configured" not in caplog.text
        ServerSecurity().check("127.0.0.1:50051")  # development: allowed, with a warning
    assert caplog.text.count("no tokens configured") == 1
    with pytest.raises(ConfigError, match="without authentication.*--insecure-no-auth"):
        ServerSecurity().check("0.0.0.0:50051")
    with pytest.raises(ConfigError, match="plaintext.*--allow-plaintext"):
        ServerSecurity(tokens=TOKENS).check("0.0.0.0:50051")
    ServerSecurity(tokens=TOKENS, allow_plaintext=True).check("0.0.0.0:50051")
    ServerSecurity(insecure_no_auth=True, allow_plaintext=True).check("[::]:50051")
    # A unix socket is local: as loopback (it was refused as a remote address).
    ServerSecurity(tokens=TOKENS).check("unix:/tmp/coordinator.sock")
    ServerSecurity().check("unix-abstract:autolfads", warn=False)


def test_client_refuses_plaintext_to_a_remote_coordinator():
    with pytest.raises(ConfigError, match="plaintext gRPC to 10.1.2.3:50051"):
        CoordinatorClient("10.1.2.3:50051", security=ClientSecurity(token=TOKENS.worker))
    CoordinatorClient("10.1.2.3:50051", security=ClientSecurity(allow_plaintext=True)).close()


@pytest.mark.parametrize(
    "scheme, local, remote", [("ipv4", "127.0.0.1", "10.1.2.3"), ("ipv6", "[::1]", "[2001:db8::5]")]
)
def test_client_refuses_plaintext_to_a_list_with_a_remote_address(scheme, local, remote):
    # The channel may dial any address of the list; only the first was looked at.
    security = ClientSecurity(token=TOKENS.worker)
    with pytest.raises(ConfigError, match="refusing plaintext gRPC to"):
        CoordinatorClient(f"{scheme}:{local}:50051,{remote}:50051", security=security)
    CoordinatorClient(f"{scheme}:{local}:50051,{local}:50052", security=security).close()


def test_coordinator_cli_refuses_an_open_address_before_touching_storage(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["coordinator", "--storage", str(store), "--run", "x", "--listen", "0.0.0.0:0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autolfads: error: refusing to serve on 0.0.0.0:0 without auth")
    assert "\n" not in err and not store.exists()


# ---------------------------------------------------------------- local run


def test_local_run_hands_workers_their_token_only_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VARS["operator"], "someone-elses-operator-token")
    tokens = TokenSet.generate()
    assert tokens.observer is not None and tokens.worker is not None
    assert tokens.operator is not None  # generate() makes a token for every role
    opts = LaunchOptions(storage_url="./runs", workers=1, threads_per_worker=1)
    argv = _worker_command(opts, 5555, "demo")(0)
    assert all(t not in " ".join(argv) for t in (tokens.worker, tokens.operator))
    env = worker_env(tokens)
    assert env[ENV_VARS["worker"]] == tokens.worker
    assert ENV_VARS["operator"] not in env and ENV_VARS["observer"] not in env
    path = tmp_path / "observer.token"
    write_secret(path, tokens.observer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TokenSet.load({"observer": path}, {}).observer == tokens.observer


def test_trainer_with_a_wrong_token_exits_with_one_line(served, tmp_path):
    target, _ = served
    env = {**os.environ, ENV_VARS["worker"]: BOGUS}
    proc = subprocess.run(
        [sys.executable, "-m", "autolfads", "trainer", "--coordinator", target,
         "--storage", str(tmp_path / "store"), "--threads", "1", "--unavailable-wait", "5"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("autolfads: error: coordinator 127.0.0.1:")
    assert "unknown token" in lines[-1] and BOGUS not in proc.stderr


# ---------------------------------------------------------------- Argo wiring


def test_argo_pods_get_tokens_from_secrets_and_pass_our_own_cli():
    from autolfads.argo.manifests import (
        load_documents,
        load_workflow_template,
        parameter_values,
        substitute,
        templates_by_name,
    )
    from autolfads.cli import build_parser
    from autolfads.cli.grpc_security import client_security, server_security

    template = load_workflow_template()
    params = parameter_values(template["spec"]["arguments"]["parameters"])
    params["grpc-tls-dir"] = ""
    lookup = {f"workflow.parameters.{k}": v for k, v in params.items()}
    pods = templates_by_name(substitute(template["spec"], lookup.get))
    secrets = {
        doc["metadata"]["name"]: doc["stringData"]
        for doc in load_documents(ROOT / "deploy" / "k8s" / "dev-credentials.yaml")
    }

    def tokens_of(name: str) -> dict[str, str]:
        refs = [e["secretRef"]["name"] for e in pods[name]["container"]["envFrom"]]
        return {k: v for ref in refs for k, v in secrets[ref].items()}

    def env_of(name: str) -> dict[str, str]:
        plain = {e["name"]: e["value"] for e in pods[name]["container"]["env"] if "value" in e}
        return {**plain, **tokens_of(name)}

    assert set(tokens_of("trainer")) == {ENV_VARS["worker"]}  # never the operator token
    assert set(tokens_of("coordinator")) == set(ENV_VARS.values())
    parser = build_parser()
    coordinator = parser.parse_args(pods["coordinator"]["container"]["args"])
    security = server_security(coordinator, env_of("coordinator"))
    assert security.tokens.roles == ("observer", "worker", "operator") and security.tls is None
    security.check(coordinator.listen)  # 0.0.0.0 with tokens, plaintext explicitly allowed
    trainer = parser.parse_args(pods["trainer"]["container"]["args"])
    client = client_security(trainer, "work", env_of("trainer"))
    assert client.token == secrets["autolfads-grpc-worker"][ENV_VARS["worker"]]
    client.check(trainer.coordinator)
    for name in ("coordinator", "trainer"):
        args = " ".join(pods[name]["container"]["args"])
        assert not any(token in args for token in tokens_of(name).values())


def test_status_and_cancel_commands_use_the_right_tokens(served, tmp_path, capsys, monkeypatch):
    target, _ = served
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)
    assert main(["status", target, "--json", "--wait", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autolfads: error: coordinator") and "no bearer token" in err
    monkeypatch.setenv(ENV_VARS["observer"], TOKENS.observer)
    assert main(["status", target, "--json"]) == 0
    assert '"state": "running"' in capsys.readouterr().out
    worker_file = tmp_path / "worker.token"
    worker_file.write_text(TOKENS.worker)
    assert main(["cancel", target, "--token-file", str(worker_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert "the worker token may not call CancelSearch" in err and "\n" not in err
    monkeypatch.setenv(ENV_VARS["operator"], TOKENS.operator)
    assert main(["cancel", target, "--reason", "maintenance"]) == 0
    assert capsys.readouterr().out.strip() == f"search at {target}: cancelled"
    assert main(["status", target, "--json"]) == 0
    assert "maintenance" in capsys.readouterr().out


def test_made_up_method_paths_are_counted_under_one_name(served):
    # Each path a client makes up used to become counters of its own (the
    # calls', the refusals'), kept for good: memory without bound, with no
    # token needed.
    target, metrics = served
    with grpc.insecure_channel(target) as channel:
        for i in range(50):
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_unary(f"/made.Up/{i:0>200}")(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert metrics.wait_for(UNKNOWN_METHOD, "UNAUTHENTICATED", 50, timeout_s=30) == 50
    assert set(metrics.seconds) == {UNKNOWN_METHOD}
