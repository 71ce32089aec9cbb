"""Every ``ichseg`` subcommand's options, read off the live argparse parser
(:func:`ichseg.cli.build_parser`): the reference that keeps "the same CLI commands and flags".

``python tests/golden_cli.py`` rewrites ``tests/golden/cli-flags.json``; do that only when a
command or flag is added, renamed or removed on purpose (and say so in the commit)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden" / "cli-flags.json"


def _walk(parser: argparse.ArgumentParser, name: str, out: dict[str, list[str]]) -> None:
    """``out[name]``: the parser's sorted option strings, positionals as ``<dest>``; then its
    subcommands as ``name subcommand``."""
    flags: list[str] = []
    subs: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        elif action.option_strings:
            flags += action.option_strings
        else:
            flags.append(f"<{action.dest}>")
    out[name] = sorted(flags)
    for sub, p in subs.items():
        _walk(p, f"{name} {sub}", out)


def cli_flags() -> dict[str, list[str]]:
    """``{"ichseg": [...], "ichseg predict": [...], ...}`` for the parser as built now."""
    from ichseg.cli import build_parser

    out: dict[str, list[str]] = {}
    _walk(build_parser(), "ichseg", out)
    return dict(sorted(out.items()))


if __name__ == "__main__":
    flags = cli_flags()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(flags, indent=1) + "\n")
    print(f"{GOLDEN}: {len(flags) - 1} subcommands, {sum(map(len, flags.values()))} options", file=sys.stderr)
