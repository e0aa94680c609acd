"""Every Redis key, TTL and Kafka topic name the detector uses, built in one place."""

from __future__ import annotations

TOPIC_EVENTS = "llm.cost.events"
TOPIC_DECISIONS = "llm.cost.decisions"
TOPIC_ALERTS = "llm.cost.alerts"
TOPIC_DEADLETTER = "llm.cost.deadletter"

GLOBAL_TENANT = "_global"  # pseudo-tenant holding the global scope's windows

# Channel on which decision changes are announced to API processes (cache invalidation).
DECISIONS_CHANNEL = "det:decisions:changed"


def _tag(tenant: str) -> str:
    # the {t:...} hash tag keeps one tenant's keys in one Redis Cluster slot
    return f"{{t:{tenant}}}"


def window_hash_key(
    tenant: str, scope: str, bucket_s: int | str, bucket_start_ms: int | str
) -> str:
    """Key of one time bucket of the global scope (or of a global rule's filtered series):
    its packed counters.

    >>> window_hash_key("_global", "global", 60, 120000)
    'det:win:{t:_global}:global:60:120000'
    """
    return f"det:win:{_tag(tenant)}:{scope}:{bucket_s}:{bucket_start_ms}"


def window_bucket_key(tenant: str, bucket_s: int | str, bucket_start_ms: int | str) -> str:
    """Hash of one time bucket of everything counted in a tenant: field = `<scope>|<entity>`
    (`tenant` for the tenant itself, `<series>[|<entity>]` for a rule's filtered series),
    value = its packed counters.

    >>> window_bucket_key("acme", 60, 120000)
    'det:win:{t:acme}:60:120000'
    """
    return f"det:win:{_tag(tenant)}:{bucket_s}:{bucket_start_ms}"


def rank_key(tenant: str, scope: str, day_start_ms: int) -> str:
    """Sorted set of one UTC day's cost (micro-dollars) per entity of a scope in a tenant.

    Under the pseudo-tenant GLOBAL_TENANT with scope "tenant" it ranks the tenants.

    >>> rank_key("acme", "user", 86400000)
    'det:rank:{t:acme}:user:86400000'
    """
    return f"det:rank:{_tag(tenant)}:{scope}:{day_start_ms}"


def quality_key(tenant: str, day_start_ms: int) -> str:
    """Hash of one UTC day's quality signal per model: `<model>|n` events, `<model>|q` sum
    of quality in millionths, `<model>|c` cost in micro-dollars of those events."""
    return f"det:quality:{_tag(tenant)}:{day_start_ms}"


def report_scratch_key(tenant: str, token: str) -> str:
    """Short-lived union of a report's daily rank sets, in the tenant's slot like its sources.

    >>> report_scratch_key("acme", "f00d")
    'det:tmp:{t:acme}:f00d'
    """
    return f"det:tmp:{_tag(tenant)}:{token}"


def digest_claim_key(kind: str, period_start_ms: int) -> str:
    """Claim that one worker sends (or sent) the digest of one period, so it goes out once."""
    return f"det:digest:{_tag(GLOBAL_TENANT)}:{kind}:{period_start_ms}"


def seen_key(tenant: str, event_id: str) -> str:
    """Marker that one event id was already applied (idempotency)."""
    return f"det:seen:{_tag(tenant)}:{event_id}"


def first_seen_key(tenant: str, scope: str, entity: str) -> str:
    """When an entity was first seen (epoch ms), for rules about new entities."""
    return f"det:first:{_tag(tenant)}:{scope}:{entity}"


def key_users_key(tenant: str, api_key: str, hour_start_ms: int) -> str:
    """HyperLogLog of the distinct users of one API key in one hour."""
    return f"det:hll:{_tag(tenant)}:users:{api_key}:{hour_start_ms}"


def key_tenants_key(api_key: str, hour_start_ms: int) -> str:
    """HyperLogLog of the distinct tenants an API key id was used from in one hour."""
    return f"det:hll:{_tag(GLOBAL_TENANT)}:tenants:{api_key}:{hour_start_ms}"


def hold_key(tenant: str, budget_id: str, scope: str, entity: str) -> str:
    """Hash of the open reservations against one budget of one entity."""
    return f"det:hold:{_tag(tenant)}:{budget_id}:{scope}:{entity}"


def global_outbox_key(tenant: str) -> str:
    """List of a tenant's contributions to the global scope not yet added there, each
    "<sequence number>|<JSON>", oldest first (see detector.windows.counters)."""
    return f"det:gout:{_tag(tenant)}"


def global_outbox_seq_key(tenant: str) -> str:
    """Counter numbering a tenant's global contributions; never expires, never goes back."""
    return f"det:gout:{_tag(tenant)}:seq"


def global_forwarded_key() -> str:
    """Hash, in the global slot, of the last contribution added per tenant (tenant -> seq)."""
    return f"det:gseq:{_tag(GLOBAL_TENANT)}"


def global_tenants_key() -> str:
    """Set, in the global slot, of the tenants whose global outboxes have been forwarded (the
    worker's periodic sweep reads their outboxes without scanning the keyspace)."""
    return f"det:gtenants:{_tag(GLOBAL_TENANT)}"


def hold_index_key(tenant: str, request_id: str) -> str:
    """The hold keys one reservation wrote, so its cost event can release them."""
    return f"det:holdidx:{_tag(tenant)}:{request_id}"


def decision_key(tenant: str, scope: str, entity: str) -> str:
    """Hash holding the current decision for one entity; expires with the decision."""
    return f"det:dec:{_tag(tenant)}:{scope}:{entity}"


def override_key(tenant: str, scope: str, entity: str) -> str:
    """A manual decision for one entity; it takes the place of rule decisions until it expires."""
    return f"det:ovr:{_tag(tenant)}:{scope}:{entity}"


def cooldown_key(tenant: str, rule_id: str, scope: str, entity: str) -> str:
    """Marker that a rule alerted for an entity recently; expires after the cooldown."""
    return f"det:cool:{_tag(tenant)}:{rule_id}:{scope}:{entity}"


def audit_key(tenant: str) -> str:
    """Capped list of the tenant's decision changes, newest first."""
    return f"det:audit:{_tag(tenant)}"


AUDIT_MAX_ENTRIES = 1000


# Slack notifier state: what was posted where, threads per (rule, entity), bursts, open threads.
SLACK_RECORD_TTL_S = 8 * 86400  # longer than the alerts topic's default 7-day retention
SLACK_OPEN_KEY = f"det:slack:open:{_tag(GLOBAL_TENANT)}"


def slack_message_key(tenant: str, message_id: str) -> str:
    """Whether one Slack message is pending or posted (channel, ts): exactly-once posting.

    >>> slack_message_key("acme", "a1")
    'det:slack:msg:{t:acme}:a1'
    """
    return f"det:slack:msg:{_tag(tenant)}:{message_id}"


def slack_alert_key(tenant: str, alert_id: str) -> str:
    """The id of the Slack message that carries one alert (its own, or a burst summary)."""
    return f"det:slack:alert:{_tag(tenant)}:{alert_id}"


def slack_thread_key(tenant: str, rule_id: str, scope: str, entity: str) -> str:
    """Hash of the current Slack thread of one (rule, entity): channel, ts, decision, state."""
    return f"det:slack:thread:{_tag(tenant)}:{rule_id}:{scope}:{entity}"


def slack_burst_key(tenant: str, rule_id: str) -> str:
    """Hash of the burst summary message a rule's alerts in a tenant currently join."""
    return f"det:slack:burst:{_tag(tenant)}:{rule_id}"


def slack_burst_members_key(tenant: str, rule_id: str) -> str:
    """Hash entity -> alert JSON of the entities in the current burst summary."""
    return f"det:slack:burstm:{_tag(tenant)}:{rule_id}"


def slack_recent_key(tenant: str, rule_id: str) -> str:
    """Count of a rule's alerts posted in a tenant within the burst window."""
    return f"det:slack:recent:{_tag(tenant)}:{rule_id}"


def slack_claim_key(tenant: str, message_id: str) -> str:
    """Short lease so that one notifier process posts a timer-driven message."""
    return f"det:slack:claim:{_tag(tenant)}:{message_id}"


def slack_channel_ids_key() -> str:
    """Hash channel name -> channel id, learnt from Slack's answers."""
    return f"det:slack:chanid:{_tag(GLOBAL_TENANT)}"


def anomaly_models_key(tenant: str) -> str:
    """Hash of the tenant's pickled anomaly model states, one field per 'scope:entity'.

    >>> anomaly_models_key("acme")
    'det:anom:{t:acme}:models'
    """
    return f"det:anom:{_tag(tenant)}:models"


def anomaly_index_key(tenant: str) -> str:
    """Hash of the tenant's modelled entities ('scope:entity') -> last interval fed (epoch ms)."""
    return f"det:anom:{_tag(tenant)}:idx"
