"""Read and validate rules.yaml, reporting every problem with file, rule, field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from detector.errors import RulesError
from detector.rules.schema import RuleSet


def load_rules(path: Path) -> RuleSet:
    """Parse `path` into a RuleSet or raise RulesError listing every problem, one per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path.name}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path.name}: not UTF-8 text (byte {exc.start})") from exc
    return parse_rules(text, path.name)


def parse_rules(text: str, source: str) -> RuleSet:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with a 'rules' list at the top")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError("\n".join(_describe(source, data, err) for err in exc.errors())) from exc


RULE_KIND_TAGS = ("threshold", "growth", "abuse")


def _describe(source: str, data: dict[str, Any], err: Any) -> str:
    loc = list(err["loc"])
    if len(loc) > 2 and loc[0] == "rules" and loc[2] in RULE_KIND_TAGS:
        del loc[2]  # the union's branch name, not a field of the file
    loc = [part for part in loc if part != "[key]"]  # pydantic's marker for a mapping's key
    where = ""
    for part in loc:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            where += f".{part}" if where else str(part)
    rule_id = _rule_id(data, loc)
    if rule_id:
        where = where.replace(f"{loc[0]}[{loc[1]}]", f"{loc[0]}[{loc[1]}] ({rule_id})", 1)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{source}: {where}: is required"
    if err["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key"
    got = err.get("input")
    if not where:
        return f"{source}: {message}"
    if isinstance(got, dict) and not loc[2:]:
        return f"{source}: {where}: {message}"
    return f"{source}: {where}: {message}, got {got!r}"


def _rule_id(data: dict[str, Any], loc: list[Any]) -> str | None:
    if len(loc) < 2 or loc[0] not in ("rules", "budgets") or not isinstance(loc[1], int):
        return None
    rules = data.get(loc[0])
    if not isinstance(rules, list) or loc[1] >= len(rules) or not isinstance(rules[loc[1]], dict):
        return None
    value = rules[loc[1]].get("id")
    return f"id={value}" if isinstance(value, str) else None
