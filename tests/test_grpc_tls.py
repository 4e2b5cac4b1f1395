"""TLS end to end on 127.0.0.1 with a CA and certificates made in the test:
the coordinator serves TLS (optionally mutual), a client with the CA works,
clients without it fail fast with one clear line; PEM loading errors; and the
`autolfads coordinator` command serving TLS + tokens from files."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from coordinator_helpers import fake_train, stage_tiny_run, tiny_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autolfads.coordinator.search.errors import CoordinatorError, CoordinatorUnavailable, TlsError
from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity
from autolfads.coordinator.security.tls import ClientTls, ServerTls
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.coordinator.wire.client import CoordinatorClient
from autolfads.coordinator.wire.server import create_server
from autolfads.errors import ConfigError
from autolfads.pbt.v1 import coordinator_pb2 as pb
from autolfads.pbt.v1 import coordinator_pb2_grpc as pb_grpc

TOKENS = TokenSet.generate()


# ---------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
    )


class Ca:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, _name(name), self.key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, names: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for `cn` with DNS/IP `names`."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(cn, self.cert.subject, key)
        if names:
            sans = [
                x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
                for n in names
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def pki():
    ca, other = Ca("autolfads-test-ca"), Ca("someone-else")
    return {
        "ca": ca,
        "other": other,
        "server": ca.issue("coordinator", ("127.0.0.1", "localhost")),
        "named": ca.issue("coordinator", ("coordinator.autolfads.test",)),
        "client": ca.issue("trainer-0"),
        "stranger": other.issue("trainer-x"),
    }


def serve_tls(service, cert_key, client_ca: bytes | None = None):
    cert, key = cert_key
    tls = ServerTls(cert_chain=cert, private_key=key, client_ca=client_ca)
    return create_server("127.0.0.1:0", service, security=ServerSecurity(tokens=TOKENS, tls=tls))


def tls_client(port: int, tls: ClientTls | None, token: str | None = TOKENS.worker, **kw):
    return CoordinatorClient(
        f"127.0.0.1:{port}",
        timeout_s=5,
        unavailable_wait_s=kw.pop("wait", 30),
        security=ClientSecurity(token=token, tls=tls),
    )


# ---------------------------------------------------------------- end to end


def test_tls_end_to_end_with_tokens(service, local_store, pki):
    server, port = serve_tls(service, pki["server"])
    try:
        with tls_client(port, ClientTls(ca=pki["ca"].pem)) as client:
            grant = client.request_work("trainer-0", 1).leases[0]
            assert client.report(fake_train(local_store, grant, "trainer-0")).accepted
            member = next(m for m in client.status().members if m.member == grant.member)
            assert member.phase == "reported"
    finally:
        server.stop(0)


@pytest.mark.parametrize("trust", ["system roots", "another CA"])
def test_client_without_the_ca_fails_fast_with_one_line(service, pki, trust):
    server, port = serve_tls(service, pki["server"])
    tls = ClientTls() if trust == "system roots" else ClientTls(ca=pki["other"].pem)
    try:
        with tls_client(port, tls, wait=60) as client:
            start = time.monotonic()
            with pytest.raises(TlsError) as err:
                client.status()
            # Not retried for the whole 60 s budget: a certificate does not heal.
            assert time.monotonic() - start < 20
    finally:
        server.stop(0)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"coordinator 127.0.0.1:{port}: TLS handshake failed: its certificate is not signed "
        "by a CA this client trusts (give --tls-ca)"
    )


@pytest.mark.parametrize("material", ["garbled CA", "key of another certificate"])
def test_a_client_with_unusable_tls_material_fails_fast_with_one_line(service, pki, material):
    # Made in memory (`load` refuses such files): gRPC cannot build a
    # handshaker from them, on every connection; no outage to ride out.
    server, port = serve_tls(service, pki["server"], client_ca=pki["ca"].pem)
    cert, key = pki["client"]
    if material == "garbled CA":
        tls = ClientTls(ca=GARBLED_CERT, cert_chain=cert, private_key=key)
    else:
        tls = ClientTls(ca=pki["ca"].pem, cert_chain=cert, private_key=pki["stranger"][1])
    try:
        with tls_client(port, tls, wait=60) as client:
            start = time.monotonic()
            with pytest.raises(TlsError) as err:
                client.status()
            assert time.monotonic() - start < 20
    finally:
        server.stop(0)
    assert str(err.value) == (
        f"coordinator 127.0.0.1:{port}: TLS handshake failed: this client's CA, certificate "
        "or key cannot be used (check --tls-ca, --tls-client-cert and --tls-client-key)"
    )


def test_plaintext_and_tls_mismatches_fail_clearly(service, pki):
    server, port = serve_tls(service, pki["server"])
    try:
        with (
            tls_client(port, None, wait=1) as client,
            pytest.raises(CoordinatorUnavailable, match="serves TLS, give --tls-ca"),
        ):
            client.status()  # plaintext to a TLS server: the server hangs up
    finally:
        server.stop(0)
    server, port = create_server("127.0.0.1:0", service)
    try:
        with (
            tls_client(port, ClientTls(ca=pki["ca"].pem)) as client,
            pytest.raises(TlsError, match="does not speak TLS"),
        ):
            client.status()
    finally:
        server.stop(0)


def test_server_name_override_matches_a_named_certificate(service, pki):
    server, port = serve_tls(service, pki["named"])
    try:
        unnamed = ClientTls(ca=pki["ca"].pem)
        # The certificate names coordinator.autolfads.test only, not 127.0.0.1.
        with (
            tls_client(port, unnamed, wait=1) as client,
            pytest.raises(TlsError, match="--tls-server-name"),
        ):
            client.status()
        named = ClientTls(ca=pki["ca"].pem, server_name="coordinator.autolfads.test")
        with tls_client(port, named) as client:
            assert client.status().run == "search"
    finally:
        server.stop(0)


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(service, pki):
    server, port = serve_tls(service, pki["server"], client_ca=pki["ca"].pem)
    ca = pki["ca"].pem
    try:
        cert, key = pki["client"]
        with tls_client(port, ClientTls(ca=ca, cert_chain=cert, private_key=key)) as client:
            assert client.status().run == "search"
        stranger_cert, stranger_key = pki["stranger"]
        for tls in (
            ClientTls(ca=ca),
            ClientTls(ca=ca, cert_chain=stranger_cert, private_key=stranger_key),
        ):
            with tls_client(port, tls, wait=1) as client, pytest.raises(CoordinatorError):
                client.status()
    finally:
        server.stop(0)


# ---------------------------------------------------------------- PEM files


def write_dir(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_kubernetes_tls_secret_layout(tmp_path, pki):
    cert, key = pki["server"]
    folder = write_dir(tmp_path / "tls", {"tls.crt": cert, "tls.key": key, "ca.crt": pki["ca"].pem})
    server = ServerTls.from_dir(folder)
    assert server.cert_chain == cert and not server.mutual
    assert key.decode() not in repr(server)
    client = ClientTls.from_dir(folder)  # ca.crt, and tls.crt/tls.key for mutual TLS
    assert client.ca == pki["ca"].pem and client.cert_chain == cert
    only_ca = write_dir(tmp_path / "trainer", {"ca.crt": pki["ca"].pem})
    assert ClientTls.from_dir(only_ca).cert_chain is None


@pytest.mark.parametrize(
    "files, message",
    [
        ({"tls.key": b"k"}, "--tls-cert .*tls.crt not found"),
        ({"tls.crt": b"hello", "tls.key": b"k"}, "tls.crt is not PEM"),
        ({"tls.crt": "CERT", "tls.key": "CERT"}, "tls.key is not PEM"),
    ],
)
def test_bad_pem_files_are_one_line_errors(tmp_path, pki, files, message):
    cert = pki["server"][0]
    data = {k: cert if v == "CERT" else v for k, v in files.items()}
    folder = write_dir(tmp_path / "tls", data)
    with pytest.raises(ConfigError, match=message) as err:
        ServerTls.from_dir(folder)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="go together"):
        ClientTls(ca=None, cert_chain=cert)


GARBLED_CERT = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
GARBLED_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("other key", r"--tls-key .*tls.key is not the private key of the certificate in"),
        ("garbled key", r"--tls-key .*tls.key is not a usable private key"),
        ("encrypted key", r"--tls-key .*tls.key is encrypted"),
        ("garbled cert", r"--tls-cert .*tls.crt holds a certificate that cannot be read"),
        ("garbled client CA", r"--tls-client-ca .*ca.crt holds a certificate that cannot"),
    ],
)
def test_unusable_tls_material_is_refused_when_loaded_in_one_line(tmp_path, pki, case, message):
    # gRPC's core finds out only when it uses the files: the server said
    # "Failed to bind to address", a client retried for its whole wait.
    cert, key = pki["server"]
    files = {"tls.crt": cert, "tls.key": key, "ca.crt": pki["ca"].pem}
    files.update(
        {
            "other key": {"tls.key": pki["named"][1]},
            "garbled key": {"tls.key": GARBLED_KEY},
            "encrypted key": {"tls.key": _encrypted(key)},
            "garbled cert": {"tls.crt": GARBLED_CERT},
            "garbled client CA": {"ca.crt": GARBLED_CERT},
        }[case]
    )
    folder = write_dir(tmp_path / "tls", files)
    with pytest.raises(ConfigError, match=message) as err:
        ServerTls.from_dir(folder, folder / "ca.crt")
    assert "\n" not in str(err.value) and key.decode() not in str(err.value)
    client_message = message.replace("--tls-key", "--tls-client-key")
    client_message = client_message.replace("--tls-cert", "--tls-client-cert")
    with pytest.raises(ConfigError, match=client_message.replace("--tls-client-ca", "--tls-ca")):
        ClientTls.from_dir(folder)  # ca.crt, tls.crt + tls.key: mutual TLS


# ---------------------------------------------------------------- the command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe(port: int) -> str:
    """What Kubernetes' gRPC probe sees: a plaintext Check, no token."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.mark.parametrize("relays", [0, 2])
def test_coordinator_command_serves_tls_and_tokens_from_files(tmp_path, pki, relays):
    # With relays, the certificate and tokens reach the front processes.
    health_port = free_port()
    stage_tiny_run(tmp_path)
    cert, key = pki["server"]
    folder = write_dir(tmp_path / "tls", {"tls.crt": cert, "tls.key": key})
    for role in ("worker", "observer"):
        token = TOKENS.token(role)
        assert token is not None  # generate() makes a token for every role
        (tmp_path / f"{role}.token").write_text(token + "\n")
    port_file = tmp_path / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLFADS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autolfads", "coordinator", "--storage", str(tmp_path / "store"),
         "--run", "search", "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         "--tls-dir", str(folder), "--worker-token-file", str(tmp_path / "worker.token"),
         "--observer-token-file", str(tmp_path / "observer.token"), "--relays", str(relays),
         "--health-listen", f"127.0.0.1:{health_port}"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(port_file.read_text())
        tls = ClientTls(ca=pki["ca"].pem)
        with tls_client(port, tls, token=TOKENS.observer) as client:
            assert client.status().population == 4
        with tls_client(port, tls, token=TOKENS.worker) as client:
            assert client.request_work("trainer-0", 1).action == "train"
        # Kubernetes' probes cannot speak TLS: they ask the health-only port,
        # which serves nothing else.
        assert probe(health_port) == "SERVING"
        assert probe(port) == "UNAVAILABLE"
        with (
            grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            pb_grpc.CoordinatorStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        proc.terminate()
        assert proc.wait(30) == 143


def test_argo_render_switches_tls_on_with_the_secret_layout():
    from autolfads.argo.render import POD_TLS_DIR, RenderOptions, render_workflow

    wf = render_workflow(tiny_config(), RenderOptions(grpc_tls=True, inline=True))
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert params["grpc-tls-dir"] == POD_TLS_DIR
    volumes = {v["name"]: v["secret"] for v in wf["spec"]["volumes"] if "secret" in v}
    assert volumes["grpc-tls-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # no key
    pods = {t["name"]: t for t in wf["spec"]["templates"]}
    mounts = {m["name"]: m["mountPath"] for m in pods["trainer"]["container"]["volumeMounts"]}
    assert mounts["grpc-tls-ca"] == POD_TLS_DIR and "grpc-tls" not in mounts
    mounts = {m["name"]: m["mountPath"] for m in pods["coordinator"]["container"]["volumeMounts"]}
    assert mounts["grpc-tls"] == POD_TLS_DIR
