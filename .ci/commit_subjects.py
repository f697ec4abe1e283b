"""Refuse commit subjects longer than 72 characters (`make lint` runs this).

Only commits after BASE are judged: the history before it is what it is. The subject is
what `git log --oneline` shows (the first paragraph of the message, lines joined). A
shallow clone may lack BASE or the commits between it and HEAD, so there the check is
skipped with a note instead of judging a history it cannot see.

    python .ci/commit_subjects.py [--base COMMIT] [--max N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

# The last commit before subjects were held to the limit (issue 17).
BASE = "96054a3"
MAX_SUBJECT = 72
# Commits with longer subjects that reached main before this check did: main's history is
# not rewritten, so they are let through by full hash. Nothing is to be added here.
LANDED_BEFORE_THE_CHECK = frozenset({
    "819c78a53cfdc2d6d2c25153dcf9907e4c8622bb",  # 74 characters
})


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def too_long(base: str, limit: int) -> list[tuple[str, str]] | None:
    """(short hash, subject) of each commit after `base` with a longer subject; None when
    this checkout cannot tell (not a repository, shallow, or `base` unknown)."""
    if _git("rev-parse", "--git-dir").returncode != 0:
        return None
    if _git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        return None
    if _git("cat-file", "-e", f"{base}^{{commit}}").returncode != 0:
        return None
    done = _git("log", "--format=%H%x00%h%x00%s", f"{base}..HEAD")
    if done.returncode != 0:
        return None
    found = []
    for line in done.stdout.splitlines():
        full, short, subject = line.split("\x00", 2)
        if len(subject) > limit and full not in LANDED_BEFORE_THE_CHECK:
            found.append((short, subject))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=BASE, help=f"judge commits after this (default {BASE})")
    parser.add_argument("--max", type=int, default=MAX_SUBJECT, help="longest subject allowed")
    args = parser.parse_args(argv)
    found = too_long(args.base, args.max)
    if found is None:
        print(
            f"commit subjects: not checked (no full history back to {args.base} here: a "
            "shallow clone or no git repository)"
        )
        return 0
    for short, subject in found:
        print(f"{short}: subject is {len(subject)} characters (at most {args.max}): {subject}")
    if found:
        print(
            "Shorten them (git rebase -i, reword): say what changed in the subject, put the "
            "why and the figures in the body.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
