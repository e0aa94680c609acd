"""The rules in force, swapped atomically when rules.yaml changes and the new file is valid."""

from __future__ import annotations

import logging
from pathlib import Path

from detector.errors import RulesError
from detector.rules.loader import load_rules
from detector.rules.schema import RuleSet

log = logging.getLogger(__name__)


class RulesHolder:
    """Holds the current RuleSet; `reload()` keeps the old one when the new file is bad."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rules = load_rules(path)  # at start-up a bad file is fatal
        self._mtime_ns = self._stat()

    def __call__(self) -> RuleSet:
        return self._rules

    def _stat(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return -1

    def reload_if_changed(self) -> bool:
        """Reload when the file's modification time moved; True when new rules took effect."""
        mtime_ns = self._stat()
        if mtime_ns == self._mtime_ns:
            return False
        self._mtime_ns = mtime_ns
        return self.reload()

    def reload(self) -> bool:
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            log.error("rules reload refused, keeping the previous rules:\n%s", exc)
            return False
        self._rules = rules
        log.info("rules reloaded from %s: %d rules", self.path, len(rules.rules))
        return True
