"""Who may reach the coordinator, and how: the exposure rules for servers and
clients in one place.

Server (`ServerSecurity.check`, run before the port is bound):

* no tokens on a non-loopback address: refused unless `insecure_no_auth`;
  on loopback allowed for development, with a warning;
* no TLS on a non-loopback address: refused unless `allow_plaintext`.

Client (`ClientSecurity.check`): plaintext to a non-loopback target is
refused unless `allow_plaintext`, so a bearer token never crosses a network
in the clear by accident.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from autolfads.coordinator.security.tls import ClientTls, ServerTls
from autolfads.coordinator.security.tokens import TokenSet
from autolfads.errors import ConfigError

log = logging.getLogger(__name__)

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for wildcards and other names."""
    host = host.strip().strip("[]").lower()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_host(listen: str) -> str:
    """'0.0.0.0:50051' -> '0.0.0.0'; '[::1]:0' -> '::1'; ':50051' -> '' (all interfaces)."""
    host, sep, _ = listen.rpartition(":")
    if not sep:
        raise ConfigError(f"listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return host.strip("[]")


def target_host(target: str) -> str:
    """The host a gRPC target names: 'h:1', '[::1]:1', 'dns:///h:1', 'ipv4:h:1',
    'ipv6:[::1]:1'; 'unix:' targets are local sockets (reported as 'localhost').
    The first, for a list of addresses ('ipv4:a:1,b:2')."""
    return target_hosts(target)[0]


def target_hosts(target: str) -> list[str]:
    """Every host a gRPC target names (`target_host`): 'ipv4:a:1,b:2' and
    'ipv6:' lists name several, and the channel may dial any of them."""
    if target.startswith(("unix:", "unix-abstract:")):
        return ["localhost"]
    rest = target
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest.removeprefix(scheme)
            if rest.startswith("//"):
                rest = rest[2:].split("/", 1)[-1]  # dns://authority/host:port
            break
    return [_address_host(address) for address in rest.split(",")]


def _address_host(address: str) -> str:
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


@dataclass(frozen=True)
class ServerSecurity:
    tokens: TokenSet = field(default_factory=TokenSet)
    tls: ServerTls | None = None
    allow_plaintext: bool = False
    insecure_no_auth: bool = False

    @property
    def authenticated(self) -> bool:
        return not self.tokens.empty

    def check(self, listen: str, *, warn: bool = True) -> None:
        """Raise ConfigError if serving on `listen` this way would be unsafe;
        log what is allowed but risky unless `warn` is false (a command that
        checks early, before the server checks again, says it only once)."""
        # A unix socket is local, as a client sees it too (`target_host`).
        local = listen.startswith(("unix:", "unix-abstract:"))
        if local or is_loopback_host(listen_host(listen)):
            if not self.authenticated and warn:
                log.warning(
                    "no tokens configured: any local user can call the coordinator on %s "
                    "(fine for development; see docs/protocol.md, Authentication)",
                    listen,
                )
            return
        if not self.authenticated and not self.insecure_no_auth:
            raise ConfigError(
                f"refusing to serve on {listen} without authentication: give tokens "
                "(--worker-token-file etc. or AUTOLFADS_WORKER_TOKEN etc.), listen on "
                "127.0.0.1, or pass --insecure-no-auth"
            )
        if self.tls is None and not self.allow_plaintext:
            raise ConfigError(
                f"refusing plaintext gRPC on {listen}: give --tls-cert and --tls-key "
                "(or --tls-dir), listen on 127.0.0.1, or pass --allow-plaintext"
            )
        if not self.authenticated and warn:
            log.warning("--insecure-no-auth: anyone who reaches %s controls the search", listen)


@dataclass(frozen=True, repr=False)
class ClientSecurity:
    token: str | None = None
    tls: ClientTls | None = None
    allow_plaintext: bool = False

    def __repr__(self) -> str:  # never show the token
        return f"ClientSecurity(token={'set' if self.token else 'none'}, tls={self.tls!r})"

    def check(self, target: str) -> None:
        if (
            self.tls is None
            and not self.allow_plaintext
            and not all(is_loopback_host(host) for host in target_hosts(target))
        ):
            raise ConfigError(
                f"refusing plaintext gRPC to {target}: give --tls-ca (or --tls-dir) for a "
                "TLS coordinator, or pass --allow-plaintext on a trusted network"
            )
