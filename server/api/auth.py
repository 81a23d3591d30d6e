"""Bearer tokens with roles: who may call which RPC.

The tokens file (``BANDITD_AUTH_TOKENS_FILE``) holds one token per line, ``<sha256 of the
token, hex> <role> <name>`` (``#`` starts a comment), or the same as TOML (``[[token]]`` tables
with ``sha256``, ``role`` and ``name``). Only digests are stored: the file reveals no token.
A client sends ``authorization: Bearer <token>`` metadata; the server hashes what it got and
compares the digest with :func:`hmac.compare_digest` (constant time), after narrowing the
candidates by the digest's first bytes (which an attacker cannot steer towards a secret).

Roles (:data:`RPC_ROLES`, the one table): ``decide`` calls the hot-path RPCs, ``read`` the
reads, ``admin`` everything. A missing or unknown token is UNAUTHENTICATED, a known token
whose role does not cover the RPC PERMISSION_DENIED. Tokens are never logged; a caller is
named by the token's ``name``. The health service is not behind tokens.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from banditd.server.errors import PermissionDenied, Unauthenticated

log = logging.getLogger("banditd")

DECIDE, READ, ADMIN = "decide", "read", "admin"
ROLES = (DECIDE, READ, ADMIN)

# RPC -> the role it needs (admin may call everything). An RPC missing here needs admin.
RPC_ROLES: dict[str, str] = {
    "SelectArm": DECIDE, "BatchSelectArms": DECIDE, "RecordReward": DECIDE,
    "BatchRecordRewards": DECIDE, "PaceBid": DECIDE, "RecordSpend": DECIDE,
    "GetExperiment": READ, "ListExperiments": READ, "GetArmStats": READ,
    "GetAllocation": READ, "AllocateBudget": READ, "GetPacingStatus": READ,
    "ExportDecisions": READ, "EvaluatePolicy": READ,
    "CreateExperiment": ADMIN, "DeleteExperiment": ADMIN, "UpdateArms": ADMIN,
    "ResetExperiment": ADMIN, "IngestMetrics": ADMIN, "CreateCampaign": ADMIN,
    "UpdateCampaign": ADMIN,
}

METADATA_KEY = "authorization"
_PREFIX = 8  # digest bytes that pick the candidates (the full digest then decides)
_BEARER = ("Bearer ", "bearer ")
_sha256 = hashlib.sha256
_compare_digest = hmac.compare_digest
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


def role_of(rpc: str) -> str:
    """The role ``rpc`` needs."""
    return RPC_ROLES.get(rpc, ADMIN)


def allows(role: str, needed: str) -> bool:
    """Whether a token of ``role`` may call an RPC that needs ``needed``."""
    return role in (ADMIN, needed)


@dataclass(frozen=True)
class Caller:
    """Who made a call: the token's name and role ("" and admin without authentication)."""

    name: str
    role: str


ANONYMOUS = Caller("", ADMIN)
# The caller of the RPC being handled (each grpc.aio RPC runs in its own task), set for the
# RPCs that need admin: what the audit trail records.
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "banditd_caller", default=ANONYMOUS)


def token_digest(token: str) -> str:
    """The hex SHA-256 of ``token``: what the tokens file holds for it."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokensFileError(ValueError):
    """The tokens file cannot be read or has a bad entry (the message names file and line)."""


def parse_tokens(path: Path) -> dict[bytes, list[tuple[bytes, Caller]]]:
    """The tokens of ``path``: digest prefix -> [(digest, caller)]. TokensFileError."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"{path}: cannot read the tokens file: {exc}") from None
    entries = _toml_entries(path, text) if _is_toml(path, text) else _line_entries(path, text)
    table: dict[bytes, list[tuple[bytes, Caller]]] = {}
    seen: dict[bytes, str] = {}
    for where, digest_hex, role, name in entries:
        if not _HEX_DIGEST.fullmatch(digest_hex):
            raise TokensFileError(f"{where}: expected the token's SHA-256 as 64 hex digits")
        if role not in ROLES:
            raise TokensFileError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if not name:
            raise TokensFileError(f"{where}: the token needs a name")
        digest = bytes.fromhex(digest_hex)
        if digest in seen:
            raise TokensFileError(f"{where}: the same token is already listed ({seen[digest]})")
        seen[digest] = where
        table.setdefault(digest[:_PREFIX], []).append((digest, Caller(name, role)))
    return table


def _is_toml(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".toml":
        return True
    first = next((line.strip() for line in text.splitlines()
                  if line.strip() and not line.strip().startswith("#")), "")
    return first.startswith("[")


def _line_entries(path: Path, text: str) -> list[tuple[str, str, str, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) != 3:
            raise TokensFileError(f"{path}:{number}: expected `<sha256 hex> <role> <name>`")
        out.append((f"{path}:{number}", parts[0], parts[1], parts[2].strip()))
    return out


def _toml_entries(path: Path, text: str) -> list[tuple[str, str, str, str]]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise TokensFileError(f"{path}: TOML tokens files need Python >= 3.11; use the "
                              "line format") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokensFileError(f"{path}: {exc}") from None
    tokens = data.get("token", [])
    if not isinstance(tokens, list):
        raise TokensFileError(f"{path}: expected [[token]] tables")
    out = []
    for i, entry in enumerate(tokens):
        if not isinstance(entry, dict):
            raise TokensFileError(f"{path}: token[{i}] is not a table")
        out.append((f"{path}: token[{i}]", str(entry.get("sha256", "")),
                    str(entry.get("role", "")), str(entry.get("name", ""))))
    return out


class Authenticator:
    """The token check of every DecisionService RPC (see :func:`handlers.bytes_handler`);
    without a tokens file every call is let through as :data:`ANONYMOUS`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._table = parse_tokens(path) if path is not None else {}

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def __len__(self) -> int:
        return sum(len(v) for v in self._table.values())

    def reload(self) -> bool:
        """Read the tokens file again (SIGHUP). A file that does not parse is logged and the
        tokens in force are kept. Whether the new tokens are in force."""
        if self.path is None:
            return False
        try:
            table = parse_tokens(self.path)
        except TokensFileError as exc:
            log.error("tokens file not reloaded, the previous tokens stay in force: %s", exc)
            return False
        self._table = table
        log.info("tokens file reloaded: %d tokens", len(self))
        return True

    def identify(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
        """The caller named by the ``authorization: Bearer <token>`` of ``metadata``, or
        None (no such metadata, or an unknown token). Runs on every call: kept lean."""
        value = None
        for key, item in metadata or ():
            if key == METADATA_KEY:
                value = item
                break
        if not isinstance(value, str) or value[:7] not in _BEARER:
            return None
        digest = _sha256(value[7:].strip().encode()).digest()
        for candidate, caller in self._table.get(digest[:_PREFIX], ()):
            if _compare_digest(candidate, digest):
                return caller
        return None

    def checker(self, rpc: str) -> Callable[[object], None] | None:
        """For the handler of ``rpc``: a function of the call's context that raises
        Unauthenticated / PermissionDenied, or None without authentication."""
        if not self.enabled:
            return None
        needed = role_of(rpc)
        identify = self.identify
        audited = needed == ADMIN

        def check(context) -> None:
            caller = identify(context.invocation_metadata())
            if caller is None:
                raise Unauthenticated(
                    f"{rpc}: a valid bearer token is required (metadata "
                    f"'{METADATA_KEY}: Bearer <token>')")
            if not allows(caller.role, needed):
                raise PermissionDenied(
                    f"{rpc} needs role {needed}; token '{caller.name}' has role {caller.role}")
            if audited:
                current_caller.set(caller)

        return check
