"""The OpenAPI 3.1 document served at /openapi.json."""

from __future__ import annotations

from typing import Any

from detector.reports.catalog import MAX_TOP, REPORTS
from detector.schemas import IDENT_PATTERN, TENANT_PATTERN, Scope
from detector.windows.buckets import WINDOWS


def _param(name: str, required: bool = False, enum: list[str] | None = None) -> dict[str, Any]:
    # An empty value is the same as leaving the parameter out.
    schema: dict[str, Any] = {"type": "string", "pattern": "^$|" + IDENT_PATTERN}
    if name == "tenant_id":
        schema = {"type": "string", "pattern": TENANT_PATTERN}
    if enum:
        schema = {"type": "string", "enum": enum}
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _open(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """An operation that needs no token (health and metrics)."""
    return {"get": {"summary": summary, "security": [], "responses": responses}}


_ERROR = {
    "description": "bad input",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}

# What POST /v1/admin/overrides accepts (admin.OverrideRequest, written out to keep this module
# free of the handlers).
OVERRIDE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tenant_id", "scope", "action", "duration", "reason"],
    "properties": {
        "tenant_id": {"type": "string", "pattern": TENANT_PATTERN},
        "scope": {"type": "string", "enum": [s.value for s in Scope if s is not Scope.global_]},
        "entity_id": {"type": "string", "pattern": IDENT_PATTERN},
        "action": {"type": "string", "enum": ["allow", "throttle", "block"]},
        "duration": {"type": "string", "pattern": "^[0-9]{1,7}[smhdw]?$"},
        "reason": {"type": "string", "minLength": 1, "maxLength": 500},
    },
}

RESERVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["request_id", "tenant_id"],  # and an estimate: a cost, or model and tokens
    "properties": {
        "request_id": {"type": "string", "pattern": IDENT_PATTERN},
        "tenant_id": {"type": "string", "pattern": TENANT_PATTERN},
        **{
            name: {"type": ["string", "null"], "pattern": IDENT_PATTERN}
            for name in ("user_id", "api_key_id", "feature", "model", "session_id")
        },
        "estimated_cost_usd": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": 10000,
        },
        "input_tokens": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "output_tokens": {"type": "integer", "minimum": 0, "maximum": 100000000},
        "hold_s": {"type": "integer", "minimum": 1, "maximum": 3600},
    },
}

_CELL = {"type": ["string", "number", "null"]}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["report", "title", "tenant_id", "period", "columns", "rows", "totals", "notes"],
    "properties": {
        "report": {"type": "string"},
        "title": {"type": "string"},
        "tenant_id": {"type": ["string", "null"]},
        "period": {"type": "object"},
        "compared_with": {"type": "object"},
        "columns": {"type": "array", "items": {"type": "object"}},
        "rows": {"type": "array", "items": {"type": "object", "additionalProperties": _CELL}},
        "totals": {"type": "object", "additionalProperties": _CELL},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}

_AUTH_ERRORS = {
    "401": {"description": "missing or unknown bearer token"},
    "403": {"description": "the token lacks the scope or the tenant"},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "LLM spend detector lookup API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/decision": {
            "get": {
                "summary": "Strictest decision in force for the request's entities",
                "parameters": [
                    _param("tenant_id", required=True),
                    *(
                        _param(p)
                        for p in ("user_id", "api_key_id", "feature", "model", "session_id")
                    ),
                    _param("budgets", enum=["true", "false", "1", "0"]),
                ],
                "responses": {
                    "200": {
                        "description": "decision",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["action", "retry_after_s", "reasons"],
                                    "properties": {
                                        "action": {
                                            "type": "string",
                                            "enum": ["allow", "throttle", "block"],
                                        },
                                        "retry_after_s": {"type": ["integer", "null"]},
                                        "reasons": {"type": "array", "items": {"type": "object"}},
                                        "degraded": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "422": _ERROR,
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/decision/batch": {
            "post": {
                "summary": "Answers for up to 1,000 lookups, in order",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["requests"],
                                "properties": {
                                    "requests": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 1000,
                                        "items": {
                                            "type": "object",
                                            "required": ["tenant_id"],
                                            "additionalProperties": {"type": "string"},
                                        },
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "answers"}, "422": _ERROR, **_AUTH_ERRORS},
            }
        },
        "/v1/reserve": {
            "post": {
                "summary": "Hold an estimated cost against every budget the request falls under",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": RESERVE_SCHEMA}},
                },
                "responses": {
                    "200": {"description": "granted or refused, with what remains"},
                    "422": _ERROR,
                    "503": {"description": "rules or budget store unavailable"},
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/admin/overrides": {
            "post": {
                "summary": "Block, throttle or allow an entity for a while (admin)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": OVERRIDE_SCHEMA}},
                },
                "responses": {"201": {"description": "override"}, "422": _ERROR, **_AUTH_ERRORS},
            },
            "delete": {
                "summary": "Lift an entity's override and rule decision now (admin)",
                "parameters": [
                    _param("tenant_id", required=True),
                    _param("scope", enum=[s.value for s in Scope if s is not Scope.global_]),
                    _param("entity_id"),
                    {
                        "name": "reason",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 500},
                    },
                ],
                "responses": {
                    "200": {"description": "what was lifted"},
                    "422": _ERROR,
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/admin/audit": {
            "get": {
                "summary": "A tenant's decision changes, newest first (admin)",
                "parameters": [_param("tenant_id", required=True)],
                "responses": {
                    "200": {"description": "audit entries"},
                    "422": _ERROR,
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/spend": {
            "get": {
                "summary": "All metrics of one entity's window",
                "parameters": [
                    _param("scope", enum=[s.value for s in Scope]),
                    _param("tenant_id"),
                    _param("id"),
                    _param("window", enum=list(WINDOWS)),
                ],
                "responses": {
                    "200": {"description": "window metrics"},
                    "422": _ERROR,
                    "503": {**_ERROR, "description": "rules unavailable"},
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/reports/{name}": {
            "get": {
                "summary": "A cost-attribution report (the same numbers as `detector report`)",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(REPORTS)},
                    },
                    {
                        "name": "tenant_id",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^$|" + TENANT_PATTERN},
                    },
                    _param("period", enum=["day", "week", "month"]),
                    {
                        "name": "at",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                    },
                    {
                        "name": "top",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "the report",
                        "content": {"application/json": {"schema": REPORT_SCHEMA}},
                    },
                    "422": _ERROR,
                    "503": {"description": "Redis unreachable"},
                    **_AUTH_ERRORS,
                },
            }
        },
        "/healthz": _open("Process is up", {"200": {"description": "ok"}}),
        "/readyz": _open(
            "Redis reachable",
            {"200": {"description": "ready"}, "503": {"description": "not ready"}},
        ),
        "/metrics": _open("Prometheus metrics", {"200": {"description": "text"}}),
    },
}
