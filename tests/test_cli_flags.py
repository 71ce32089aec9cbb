"""The same CLI commands and flags: the live parser against ``tests/golden/cli-flags.json``
(written by ``tests/golden_cli.py``)."""

from __future__ import annotations

import json

from golden_cli import GOLDEN, cli_flags

REGENERATE = f"if the change is on purpose, rewrite {GOLDEN.name} with `python tests/golden_cli.py` and say so in the commit"


def test_every_subcommand_keeps_its_flags() -> None:
    want = json.loads(GOLDEN.read_text())
    got = cli_flags()
    problems = [f"subcommand `{c}` is gone" for c in want if c not in got]
    problems += [f"subcommand `{c}` is new" for c in got if c not in want]
    for c in sorted(set(want) & set(got)):
        gone, new = sorted(set(want[c]) - set(got[c])), sorted(set(got[c]) - set(want[c]))
        if gone:
            problems.append(f"`{c}` lost {', '.join(gone)}")
        if new:
            problems.append(f"`{c}` gained {', '.join(new)}")
    assert not problems, "\n".join([*problems, REGENERATE])


def test_the_snapshot_has_every_command() -> None:
    want = json.loads(GOLDEN.read_text())
    assert "ichseg predict" in want and "--engine" in want["ichseg predict"] and "<path>" in want["ichseg predict"]
    assert len(want) > 10 and all(flags == sorted(flags) for flags in want.values())


def test_progress_bars_only_on_a_terminal() -> None:
    """A log file (nohup … > log) gets no bar; a terminal keeps it; --no-progress always wins."""
    import argparse
    import io

    from ichseg.cli import bars_only_on_terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = argparse.Namespace(no_progress=False)
    bars_only_on_terminal(args, io.StringIO())
    assert args.no_progress is True
    args = argparse.Namespace(no_progress=False)
    bars_only_on_terminal(args, Tty())
    assert args.no_progress is False
    args = argparse.Namespace(no_progress=True)
    bars_only_on_terminal(args, Tty())
    assert args.no_progress is True
    args = argparse.Namespace()  # a command without the flag is left alone
    bars_only_on_terminal(args, io.StringIO())
    assert not hasattr(args, "no_progress")
