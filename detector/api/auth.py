"""Bearer tokens with scopes, optionally bound to one tenant, parsed from DETECTOR_API_TOKENS.

Format: entries separated by `;`, each `TOKEN=SCOPE[,SCOPE...][@TENANT]`, for example
`gw-7f3a=decision:read;ops-91c2=admin;acme-55d0=decision:read,spend:read@acme`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from detector.errors import ConfigError

SCOPES = frozenset({"decision:read", "spend:read", "admin"})


@dataclass(frozen=True, slots=True)
class Grant:
    scopes: frozenset[str]
    tenant_id: str | None  # None: every tenant

    def permits(self, scope: str, tenant_id: str | None) -> bool:
        """True when this token holds `scope` (or admin) for `tenant_id`."""
        if scope not in self.scopes and "admin" not in self.scopes:
            return False
        return self.tenant_id is None or self.tenant_id == tenant_id


def parse_tokens(text: str) -> list[tuple[bytes, Grant]]:
    """Parse the token setting; a bad entry raises ConfigError naming it (without the secret).

    >>> [(t, sorted(g.scopes), g.tenant_id) for t, g in parse_tokens("abc=admin;xy1=spend:read@t1")]
    [(b'abc', ['admin'], None), (b'xy1', ['spend:read'], 't1')]
    """
    out = []
    for number, entry in enumerate(filter(None, (e.strip() for e in text.split(";"))), start=1):
        token, sep, grant = entry.partition("=")
        if not sep or len(token) < 3:
            raise ConfigError(
                f"DETECTOR_API_TOKENS: entry {number}: expected TOKEN=SCOPES[@TENANT]"
            )
        scopes_text, at, tenant = grant.partition("@")
        if at and not tenant.strip():
            raise ConfigError(f"DETECTOR_API_TOKENS: entry {number}: empty tenant after '@'")
        scopes = frozenset(s.strip() for s in scopes_text.split(",") if s.strip())
        unknown = scopes - SCOPES
        if not scopes or unknown:
            raise ConfigError(
                f"DETECTOR_API_TOKENS: entry {number}: unknown scope {sorted(unknown) or ['']}; "
                f"expected {', '.join(sorted(SCOPES))}"
            )
        out.append((token.encode(), Grant(scopes, tenant or None)))
    return out


def find_grant(tokens: list[tuple[bytes, Grant]], presented: str) -> Grant | None:
    """The grant of a presented token, comparing every token in constant time."""
    candidate = presented.encode()
    found = None
    for token, grant in tokens:
        if hmac.compare_digest(token, candidate):
            found = grant
    return found
