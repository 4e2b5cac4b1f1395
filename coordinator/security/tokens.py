"""Bearer tokens of the coordinator: roles, rights, where tokens come from.

Three roles, each with its own token (any of them may be left unset):

    role       rights              RPCs
    observer   read                GetStatus, WatchStatus
    worker     read, work          + RequestWork, Heartbeat, ReportResult
    operator   read, work, operate + CancelSearch

A token comes from a file (`--<role>-token-file`; one line, surrounding
whitespace ignored) or from the environment (`AUTOLFADS_<ROLE>_TOKEN`).
Clients pick the least powerful token that grants the call's right
(`resolve_client_token`), so a trainer with both a worker and an operator
token in its environment sends the worker one. No grpc here: the server-side
check lives in `auth`, which compares tokens in constant time.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autolfads.errors import ConfigError

Role = Literal["observer", "worker", "operator"]
Right = Literal["read", "work", "operate"]

ROLES: tuple[Role, ...] = ("observer", "worker", "operator")  # least powerful first
RIGHTS: dict[Role, frozenset[Right]] = {
    "observer": frozenset({"read"}),
    "worker": frozenset({"read", "work"}),
    "operator": frozenset({"read", "work", "operate"}),
}
ENV_VARS: dict[Role, str] = {role: f"AUTOLFADS_{role.upper()}_TOKEN" for role in ROLES}

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 512
# Printable ASCII without spaces: what an HTTP/2 header value may carry verbatim.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def check_token(token: str, source: str) -> str:
    """The token if it is usable; else ConfigError naming `source` (never the token)."""
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
        raise ConfigError(
            f"{source}: a token must have {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters "
            f"(got {len(token)}); generate one with `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`"
        )
    if not _TOKEN.fullmatch(token):
        raise ConfigError(f"{source}: a token may only hold printable ASCII without spaces")
    return token


def read_token_file(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"token file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"token file {path} is unreadable: {type(err).__name__}") from None
    return check_token(text.strip(), f"token file {path}")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, repr=False)
class TokenSet:
    """The coordinator's tokens; a role without one cannot authenticate."""

    observer: str | None = None
    worker: str | None = None
    operator: str | None = None

    def __post_init__(self) -> None:
        given = [t for t in (self.observer, self.worker, self.operator) if t is not None]
        if len(set(given)) != len(given):
            raise ConfigError(
                "two roles share one token, so the coordinator could not tell them apart; "
                "give each role its own token"
            )

    def __repr__(self) -> str:  # never print the secrets themselves
        return f"TokenSet(roles={list(self.roles)})"

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(role for role in ROLES if self.token(role) is not None)

    @property
    def empty(self) -> bool:
        return not self.roles

    def token(self, role: Role) -> str | None:
        return getattr(self, role)

    @classmethod
    def generate(cls) -> TokenSet:
        return cls(observer=new_token(), worker=new_token(), operator=new_token())

    @classmethod
    def load(
        cls, files: Mapping[Role, Path | None], environ: Mapping[str, str] | None = None
    ) -> TokenSet:
        """Each role's token from its file if given, else from its environment variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, str | None] = {}
        for role in ROLES:
            path = files.get(role)
            if path is not None:
                values[role] = read_token_file(path)
            elif environ.get(ENV_VARS[role], "").strip():
                values[role] = check_token(environ[ENV_VARS[role]].strip(), ENV_VARS[role])
            else:
                values[role] = None
        return cls(**values)


def resolve_client_token(
    right: Right, token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The token a client sends for calls needing `right`: `token_file` if given,
    else the least powerful role's environment token that grants `right`."""
    if token_file is not None:
        return read_token_file(token_file)
    environ = os.environ if environ is None else environ
    for role in ROLES:
        value = environ.get(ENV_VARS[role], "").strip()
        if right in RIGHTS[role] and value:
            return check_token(value, ENV_VARS[role])
    return None
