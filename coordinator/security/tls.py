"""TLS material for the coordinator (server certificate + key, optional client
CA for mutual TLS) and for its clients (the CA to trust, optional client
certificate), read from PEM files into frozen objects.

    autolfads coordinator ... --tls-cert server.crt --tls-key server.key [--tls-client-ca ca.crt]
    autolfads trainer ...     --tls-ca ca.crt [--tls-client-cert c.crt --tls-client-key c.key]

`--tls-dir DIR` reads the files of a Kubernetes TLS Secret mounted at DIR:
the server takes tls.crt + tls.key, a client takes ca.crt (plus tls.crt +
tls.key if both are present, for mutual TLS). Problems are one-line
ConfigErrors naming the file; private keys never appear in reprs or logs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from autolfads.errors import ConfigError

MAX_PEM_BYTES = 1024 * 1024


def read_pem(path: Path, what: str, marker: bytes = b"-----BEGIN ") -> bytes:
    """The PEM file's bytes, or ConfigError naming the file and the problem."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} not found") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} is unreadable: {err.strerror or err}") from None
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_PEM_BYTES} bytes; not a PEM file?")
    if marker not in data:
        raise ConfigError(f"{what} {path} is not PEM (no {marker.decode().strip()!r} line)")
    return data


def _read_cert(path: Path, what: str) -> bytes:
    data = read_pem(path, what, b"-----BEGIN CERTIFICATE-----")
    _check_certificates(data, path, what)
    return data


# Checked here with the standard library's OpenSSL, because gRPC's core only
# finds out when it uses the files: a server then says "Failed to bind to
# address" (as if the port were taken), and a client fails every connection
# with "Failed to create security handshaker", which reads as an outage.


def _check_certificates(data: bytes, path: Path, what: str) -> None:
    """Every certificate in `data` parses, or ConfigError naming the file."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, ValueError) as err:
        why = err.reason if isinstance(err, ssl.SSLError) and err.reason else type(err).__name__
        raise ConfigError(
            f"{what} {path} holds a certificate that cannot be read ({why})"
        ) from None


def _check_pair(cert: Path, key: Path, key_data: bytes, cert_what: str, key_what: str) -> None:
    """The key is usable and belongs to the certificate (whose file parses)."""
    try:
        # A password callback: an encrypted key fails here, never prompts.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            why = f"is not the private key of the certificate in {cert_what} {cert}"
        elif b"ENCRYPTED" in key_data:
            why = "is encrypted; give it unencrypted (openssl pkey -in KEY -out KEY.plain)"
        else:
            why = f"is not a usable private key ({err.reason or err.library or 'PEM'})"
        raise ConfigError(f"{key_what} {key} {why}") from None


def _read_key(path: Path, what: str) -> bytes:
    return read_pem(path, what, b"PRIVATE KEY-----")


@dataclass(frozen=True, repr=False)
class ServerTls:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate it signed

    def __repr__(self) -> str:
        return f"ServerTls(mutual={self.mutual})"

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        tls = cls(
            cert_chain=_read_cert(cert, "--tls-cert"),
            private_key=_read_key(key, "--tls-key"),
            client_ca=_read_cert(client_ca, "--tls-client-ca") if client_ca else None,
        )
        _check_pair(cert, key, tls.private_key, "--tls-cert", "--tls-key")
        return tls

    @classmethod
    def from_dir(cls, folder: Path, client_ca: Path | None = None) -> ServerTls:
        return cls.load(Path(folder) / "tls.crt", Path(folder) / "tls.key", client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


@dataclass(frozen=True, repr=False)
class ClientTls:
    ca: bytes | None = None  # None: the system's trusted roots
    cert_chain: bytes | None = None  # mutual TLS: this client's certificate
    private_key: bytes | None = None
    server_name: str | None = None  # expected name in the server certificate

    def __post_init__(self) -> None:
        if (self.cert_chain is None) != (self.private_key is None):
            raise ConfigError("--tls-client-cert and --tls-client-key go together; give both")

    def __repr__(self) -> str:
        return f"ClientTls(custom_ca={self.ca is not None}, mutual={self.cert_chain is not None})"

    @classmethod
    def load(
        cls,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        server_name: str | None = None,
    ) -> ClientTls:
        tls = cls(
            ca=_read_cert(ca, "--tls-ca") if ca else None,
            cert_chain=_read_cert(cert, "--tls-client-cert") if cert else None,
            private_key=_read_key(key, "--tls-client-key") if key else None,
            server_name=server_name or None,
        )
        if cert and key and tls.private_key is not None:
            _check_pair(cert, key, tls.private_key, "--tls-client-cert", "--tls-client-key")
        return tls

    @classmethod
    def from_dir(cls, folder: Path, server_name: str | None = None) -> ClientTls:
        folder = Path(folder)
        cert, key = folder / "tls.crt", folder / "tls.key"
        mutual = cert.is_file() and key.is_file()
        return cls.load(
            folder / "ca.crt", cert if mutual else None, key if mutual else None, server_name
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def channel_options(self) -> tuple[tuple[str, str], ...]:
        if self.server_name is None:
            return ()
        return (("grpc.ssl_target_name_override", self.server_name),)
