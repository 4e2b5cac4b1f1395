"""Command-line flags for gRPC authentication and TLS, shared by the commands
that serve (`coordinator`) or call (`trainer`, `status`) the coordinator.

Not a subcommand: the command modules call `add_server_flags` /
`add_client_flags` in `register` and `server_security` / `client_security`
in `func`. Tokens never travel on a command line (other users can read it in
`ps`): only token *files* are flags; tokens themselves come from files or
the environment (AUTOLFADS_{WORKER,OBSERVER,OPERATOR}_TOKEN). For containers,
AUTOLFADS_TLS_DIR stands in for --tls-dir ("" = none) and
AUTOLFADS_ALLOW_PLAINTEXT=true for --allow-plaintext (the Argo template sets
both); flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from autolfads.errors import ConfigError

if TYPE_CHECKING:  # grpc is imported only when a command runs
    from autolfads.coordinator.security.exposure import ClientSecurity, ServerSecurity


TLS_DIR_ENV = "AUTOLFADS_TLS_DIR"
ALLOW_PLAINTEXT_ENV = "AUTOLFADS_ALLOW_PLAINTEXT"
_TRUE, _FALSE = {"1", "true", "yes"}, {"", "0", "false", "no"}


def _optional_path(text: str) -> Path | None:
    return Path(text) if text.strip() else None


def _tls_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> Path | None:
    if args.tls_dir is not None:
        return args.tls_dir
    return _optional_path(environ.get(TLS_DIR_ENV, ""))


def _allow_plaintext(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    if args.allow_plaintext:
        return True
    value = environ.get(ALLOW_PLAINTEXT_ENV, "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise ConfigError(f"{ALLOW_PLAINTEXT_ENV}={value!r}: use true or false")
    return value in _TRUE


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "authentication and TLS",
        "Tokens: files below, else AUTOLFADS_WORKER_TOKEN / AUTOLFADS_OBSERVER_TOKEN / "
        "AUTOLFADS_OPERATOR_TOKEN. Without tokens or TLS only loopback addresses are served "
        "unless --insecure-no-auth / --allow-plaintext say otherwise.",
    )
    for role, rights in (
        ("worker", "RequestWork, Heartbeat, ReportResult and reads"),
        ("observer", "GetStatus, WatchStatus"),
        ("operator", "every call, including CancelSearch"),
    ):
        g.add_argument(
            f"--{role}-token-file", type=Path, metavar="FILE", help=f"{role} token ({rights})"
        )
    g.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback address without tokens (anyone reaching it controls the search)",
    )
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate chain (PEM)")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="server private key (PEM)")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="mutual TLS: accept only clients with a certificate signed by this CA",
    )
    g.add_argument(
        "--tls-dir",
        type=_optional_path,
        metavar="DIR",
        help=f'tls.crt + tls.key of a mounted Kubernetes TLS Secret ("": none; or ${TLS_DIR_ENV})',
    )
    g.add_argument(
        "--allow-plaintext",
        action="store_true",
        help=f"serve a non-loopback address without TLS (e.g. in a cluster; or ${ALLOW_PLAINTEXT_ENV})",
    )


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "authentication and TLS",
        "The token comes from --token-file, else from the environment: the least powerful of "
        "AUTOLFADS_OBSERVER_TOKEN / AUTOLFADS_WORKER_TOKEN / AUTOLFADS_OPERATOR_TOKEN that "
        "allows the calls this command makes.",
    )
    g.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token file")
    g.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificate to trust (PEM)")
    g.add_argument("--tls-client-cert", type=Path, metavar="FILE", help="mutual TLS certificate")
    g.add_argument("--tls-client-key", type=Path, metavar="FILE", help="mutual TLS private key")
    g.add_argument(
        "--tls-dir",
        type=_optional_path,
        metavar="DIR",
        help=f"ca.crt (+ tls.crt/tls.key for mutual TLS) of a mounted Secret (or ${TLS_DIR_ENV})",
    )
    g.add_argument(
        "--tls-server-name", metavar="NAME", help="name expected in the server certificate"
    )
    g.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="talk to a non-loopback coordinator without TLS (the token travels in the clear; "
        f"or ${ALLOW_PLAINTEXT_ENV})",
    )


def server_security(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerSecurity:
    """The ServerSecurity the flags (and environment) describe."""
    from autolfads.coordinator.security.exposure import ServerSecurity
    from autolfads.coordinator.security.tls import ServerTls
    from autolfads.coordinator.security.tokens import TokenSet

    environ = os.environ if environ is None else environ
    tokens = TokenSet.load(
        {
            "worker": args.worker_token_file,
            "observer": args.observer_token_file,
            "operator": args.operator_token_file,
        },
        environ,
    )
    folder = _tls_dir(args, environ)
    if folder is not None and (args.tls_cert or args.tls_key):
        raise ConfigError("give either --tls-dir or --tls-cert/--tls-key, not both")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together; give both")
    if args.tls_client_ca and folder is None and args.tls_cert is None:
        raise ConfigError("--tls-client-ca needs a server certificate (--tls-cert/--tls-key)")
    tls = None
    if folder is not None:
        tls = ServerTls.from_dir(folder, args.tls_client_ca)
    elif args.tls_cert is not None:
        tls = ServerTls.load(args.tls_cert, args.tls_key, args.tls_client_ca)
    return ServerSecurity(
        tokens=tokens,
        tls=tls,
        allow_plaintext=_allow_plaintext(args, environ),
        insecure_no_auth=args.insecure_no_auth,
    )


def client_security(
    args: argparse.Namespace, right: str, environ: Mapping[str, str] | None = None
) -> ClientSecurity:
    """The ClientSecurity for a command whose calls need `right` (read/work/operate)."""
    from autolfads.coordinator.security.exposure import ClientSecurity
    from autolfads.coordinator.security.tls import ClientTls
    from autolfads.coordinator.security.tokens import resolve_client_token

    environ = os.environ if environ is None else environ
    token = resolve_client_token(right, args.token_file, environ)  # type: ignore[arg-type]
    folder = _tls_dir(args, environ)
    explicit = args.tls_ca or args.tls_client_cert or args.tls_client_key
    if folder is not None and explicit:
        raise ConfigError("give either --tls-dir or --tls-ca/--tls-client-cert/--tls-client-key")
    tls = None
    if folder is not None:
        tls = ClientTls.from_dir(folder, args.tls_server_name)
    elif explicit or args.tls_server_name:
        tls = ClientTls.load(
            args.tls_ca, args.tls_client_cert, args.tls_client_key, args.tls_server_name
        )
    return ClientSecurity(token=token, tls=tls, allow_plaintext=_allow_plaintext(args, environ))
