from __future__ import annotations

import pytest

from detector.api.auth import SCOPES, Grant, find_grant, parse_tokens
from detector.errors import ConfigError

EXPECTED_SCOPES = "expected admin, decision:read, spend:read"


def test_parse_tokens_example() -> None:
    got = parse_tokens(
        "gw-7f3a=decision:read;ops-91c2=admin;acme-55d0=decision:read,spend:read@acme"
    )
    assert got == [
        (b"gw-7f3a", Grant(frozenset({"decision:read"}), None)),
        (b"ops-91c2", Grant(frozenset({"admin"}), None)),
        (b"acme-55d0", Grant(frozenset({"decision:read", "spend:read"}), "acme")),
    ]


@pytest.mark.parametrize("text", ["", ";", " ; ; ", "\n"])
def test_parse_tokens_empty(text: str) -> None:
    assert parse_tokens(text) == []


def test_parse_tokens_trims_entries_and_scopes() -> None:
    got = parse_tokens("  abc= decision:read , spend:read ;  ")
    assert got == [(b"abc", Grant(frozenset({"decision:read", "spend:read"}), None))]


def test_tenant_may_contain_at_sign() -> None:
    [(_, grant)] = parse_tokens("abc=decision:read@acme@corp")
    assert grant.tenant_id == "acme@corp"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "DETECTOR_API_TOKENS: entry 1: expected TOKEN=SCOPES[@TENANT]"),
        ("ab=admin", "DETECTOR_API_TOKENS: entry 1: expected TOKEN=SCOPES[@TENANT]"),
        ("=admin", "DETECTOR_API_TOKENS: entry 1: expected TOKEN=SCOPES[@TENANT]"),
        ("abc=admin;;xyz", "DETECTOR_API_TOKENS: entry 2: expected TOKEN=SCOPES[@TENANT]"),
        ("abc=", f"DETECTOR_API_TOKENS: entry 1: unknown scope ['']; {EXPECTED_SCOPES}"),
        ("abc=@acme", f"DETECTOR_API_TOKENS: entry 1: unknown scope ['']; {EXPECTED_SCOPES}"),
        (
            "abc=admin,write",
            f"DETECTOR_API_TOKENS: entry 1: unknown scope ['write']; {EXPECTED_SCOPES}",
        ),
        (
            "abc=admin;xyz=root,sudo@t",
            f"DETECTOR_API_TOKENS: entry 2: unknown scope ['root', 'sudo']; {EXPECTED_SCOPES}",
        ),
    ],
)
def test_parse_tokens_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_tokens(text)
    assert str(exc.value) == message


@pytest.mark.parametrize("text", ["s3cr3t-token", "s3cr3t-token=write", "s3cr3t-token=root@t"])
def test_parse_tokens_errors_never_show_the_secret(text: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_tokens(text)
    assert "s3cr3t" not in str(exc.value)


def test_empty_tenant_binding_is_an_error() -> None:
    with pytest.raises(ConfigError):
        parse_tokens("abc=decision:read@")


# --- find_grant --------------------------------------------------------------------------------


def test_find_grant() -> None:
    tokens = parse_tokens("abc=admin;xyz=spend:read@t1")
    assert find_grant(tokens, "abc") == Grant(frozenset({"admin"}), None)
    assert find_grant(tokens, "xyz") == Grant(frozenset({"spend:read"}), "t1")


@pytest.mark.parametrize("presented", ["", "ab", "abcd", "ABC", "abc ", " abc", "xyz=", "é"])
def test_find_grant_unknown_token(presented: str) -> None:
    assert find_grant(parse_tokens("abc=admin;xyz=spend:read"), presented) is None


def test_find_grant_without_tokens() -> None:
    assert find_grant([], "abc") is None


def test_find_grant_last_duplicate_wins() -> None:
    tokens = parse_tokens("abc=spend:read;abc=decision:read@t1")
    assert find_grant(tokens, "abc") == Grant(frozenset({"decision:read"}), "t1")


# --- Grant.permits -----------------------------------------------------------------------------


def test_scope_list() -> None:
    assert frozenset({"decision:read", "spend:read", "admin"}) == SCOPES


def test_unbound_grant_permits_its_scopes_for_every_tenant() -> None:
    grant = Grant(frozenset({"decision:read"}), None)
    assert grant.permits("decision:read", "acme")
    assert grant.permits("decision:read", "other")
    assert grant.permits("decision:read", None)
    assert not grant.permits("spend:read", "acme")
    assert not grant.permits("admin", "acme")


def test_tenant_bound_grant_permits_only_its_tenant() -> None:
    grant = Grant(frozenset({"decision:read", "spend:read"}), "acme")
    assert grant.permits("decision:read", "acme")
    assert grant.permits("spend:read", "acme")
    assert not grant.permits("decision:read", "other")
    assert not grant.permits("decision:read", "ACME")
    assert not grant.permits("decision:read", None)
    assert not grant.permits("admin", "acme")


def test_admin_permits_every_scope() -> None:
    grant = Grant(frozenset({"admin"}), None)
    for scope in ("decision:read", "spend:read", "admin", "anything"):
        assert grant.permits(scope, "acme")
        assert grant.permits(scope, None)


def test_tenant_bound_admin_is_still_bound() -> None:
    grant = Grant(frozenset({"admin"}), "acme")
    assert grant.permits("spend:read", "acme")
    assert not grant.permits("spend:read", "other")
    assert not grant.permits("admin", None)
