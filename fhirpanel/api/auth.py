"""Bearer tokens from settings, in two scopes: `read` sees everything, `admin` may also override,
confirm and start runs.

`api.read_tokens` and `api.admin_tokens` are comma-separated; an entry is `name=token` (the name
goes into the audit log) or a bare token, named `read-1`, `admin-2`, ... by its position. A token
listed in both is an admin token. Tokens are compared in constant time against every configured
token and are never logged or kept in a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field

from fhirpanel.config import ApiSettings
from fhirpanel.errors import ConfigError

log = logging.getLogger(__name__)

SCOPES = ("read", "admin")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_TOKEN_LENGTH = 16  # shorter tokens work but are warned about (a guessable secret)


@dataclass(frozen=True)
class Account:
    name: str
    scope: str  # read | admin
    token: str = field(repr=False)

    @property
    def admin(self) -> bool:
        return self.scope == "admin"

    def allows(self, scope: str) -> bool:
        return self.admin or scope == "read"


class TokenTable:
    """The configured accounts, looked up by token in constant time."""

    def __init__(self, accounts: list[Account]) -> None:
        self.accounts = accounts
        # Compare fixed-length digests so token length does not leak through timing either.
        self._digests = [(hashlib.sha256(a.token.encode()).digest(), a) for a in accounts]

    @classmethod
    def from_settings(cls, api: ApiSettings) -> TokenTable:
        by_token: dict[str, Account] = {}
        names: dict[str, str] = {}
        for scope, raw in (("admin", api.admin_tokens), ("read", api.read_tokens)):
            entries = [e.strip() for e in raw.split(",") if e.strip()]
            for index, entry in enumerate(entries, 1):
                name, sep, token = entry.partition("=")
                if sep:
                    name, token = name.strip(), token.strip()
                else:
                    name, token = f"{scope}-{index}", entry
                where = f"api.{scope}_tokens entry {index}"
                if not token:
                    raise ConfigError(f"{where}: empty token")
                if not NAME.match(name):
                    raise ConfigError(
                        f"{where}: the name must be 1-64 letters, digits or _.@- characters"
                    )
                if token in by_token:
                    # Listed as admin and again as read: admin wins (admins come first).
                    continue
                if name in names:
                    raise ConfigError(f"{where}: the name {name!r} is used twice")
                names[name] = scope
                if len(token) < MIN_TOKEN_LENGTH:
                    log.warning(
                        "API token %r is shorter than %d characters", name, MIN_TOKEN_LENGTH
                    )
                by_token[token] = Account(name, scope, token)
        return cls(list(by_token.values()))

    def __bool__(self) -> bool:
        return bool(self.accounts)

    def lookup(self, token: str) -> Account | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, account in self._digests:  # no early exit: every token is compared
            if hmac.compare_digest(known, digest) and found is None:
                found = account
        return found

    def derived_secret_key(self) -> str:
        """A session key every worker derives alike from the tokens (when `api.secret_key` is
        empty): it changes when the tokens change, which signs old sessions out."""
        material = "\0".join(sorted(a.token for a in self.accounts)).encode()
        return hmac.new(b"fhirpanel-session-key-v1", material, hashlib.sha256).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header (scheme case-insensitive, RFC 6750
    section 2.1), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
