"""Build detector/data/prices.json from LiteLLM's model price table.

Usage: python scripts/build_price_table.py LITELLM_JSON [--out PATH] [--check]

Keeps the chat models of the major providers, as their own first-party entries, and only the
fields the pricing stage reads; the output stays in LiteLLM's format so the same parser reads
the packaged table and a user's override file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "detector" / "data" / "prices.json"

KEPT_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "litellm_provider",
    "mode",
)

_OPENAI_DATE = r"(-\d{4}-\d{2}-\d{2})?"
_GEMINI = r"gemini-(1\.5|2\.0|2\.5|3(\.\d+)?)-(pro|flash)(-lite)?(-preview)?(-\d{2}-\d{4})?"

# (litellm_provider, pattern the whole model name must match). Llama comes from together_ai,
# whose names are Meta's own Hugging Face ids (meta-llama/...), as gateways usually send them.
SELECTION: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "openai",
        re.compile(
            r"(gpt-4o|gpt-4o-mini|gpt-4\.1(-mini|-nano)?|gpt-[56](\.\d+)?(-[a-z]+)*"
            r"|o1|o3|o3-mini|o4-mini)" + _OPENAI_DATE
        ),
    ),
    ("anthropic", re.compile(r"claude-[a-z0-9-]+")),
    ("gemini", re.compile(r"gemini/" + _GEMINI)),
    ("vertex_ai-language-models", re.compile(r"(vertex_ai/)?" + _GEMINI)),
    (
        "mistral",
        re.compile(
            r"mistral/(mistral|ministral|magistral|codestral|devstral|pixtral|open-mistral)-.+"
        ),
    ),
    ("deepseek", re.compile(r"(deepseek/)?deepseek-.+")),
    ("together_ai", re.compile(r"together_ai/meta-llama/.+")),
)

# Chat-mode entries that are not text chat priced per token (audio, web search, realtime).
EXCLUDED_WORDS = re.compile(r"audio|search|realtime|tts|transcribe")


def is_selected(name: str, entry: dict[str, Any]) -> bool:
    """Whether a LiteLLM entry belongs in the packaged table.

    >>> is_selected("gpt-4o", {"litellm_provider": "openai", "mode": "chat",
    ...     "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05})
    True
    >>> is_selected("gpt-4o-search-preview", {"litellm_provider": "openai", "mode": "chat",
    ...     "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05})
    False
    """
    if entry.get("mode") != "chat" or EXCLUDED_WORDS.search(name):
        return False
    if "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
        return False
    provider = entry.get("litellm_provider")
    return any(p == provider and pattern.fullmatch(name) for p, pattern in SELECTION)


def build_table(litellm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The selected entries, sorted by name, each cut down to KEPT_FIELDS."""
    return {
        name: {field: entry[field] for field in KEPT_FIELDS if field in entry}
        for name, entry in sorted(litellm.items())
        if isinstance(entry, dict) and is_selected(name, entry)
    }


def render(table: dict[str, dict[str, Any]]) -> str:
    return json.dumps(table, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("litellm_json", type=Path, help="LiteLLM model_prices JSON file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the table")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs from what would be written"
    )
    args = parser.parse_args(argv)
    litellm = json.loads(args.litellm_json.read_text(encoding="utf-8"))
    text = render(build_table(litellm))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date; rerun without --check", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(json.loads(text))} models to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
