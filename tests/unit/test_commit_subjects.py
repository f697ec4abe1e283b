"""`make lint` refuses long commit subjects after the base commit, and skips where the
history is not there to judge (a shallow clone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "commit_subjects.py"
ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, env=ENV, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def commit(repo: Path, subject: str) -> str:
    git(repo, "commit", "-q", "--allow-empty", "-m", subject)
    return git(repo, "rev-parse", "--short", "HEAD")


def check(repo: Path, base: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--base", base], cwd=repo, env=ENV,
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q")
    return path


def test_only_commits_after_the_base_are_judged(repo: Path) -> None:
    commit(repo, "x" * 300)  # before the base: history as it was
    base = commit(repo, "Base")
    commit(repo, "y" * 72)
    assert check(repo, base).returncode == 0


def test_a_subject_of_73_characters_fails_and_is_named(repo: Path) -> None:
    base = commit(repo, "Base")
    long = commit(repo, "z" * 73)
    done = check(repo, base)
    assert done.returncode == 1
    assert f"{long}: subject is 73 characters (at most 72)" in done.stdout


def test_the_subject_is_the_first_paragraph_joined(repo: Path) -> None:
    # `git log --oneline` joins a subject written over two lines: so does the check.
    base = commit(repo, "Base")
    commit(repo, ("a" * 40) + "\n" + ("b" * 40) + "\n\nThe body may be as long as it likes.")
    assert check(repo, base).returncode == 1


def test_a_shallow_clone_is_skipped_with_a_note(repo: Path, tmp_path: Path) -> None:
    base = commit(repo, "Base")
    commit(repo, "z" * 80)
    commit(repo, "Latest")
    shallow = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)],
        env=ENV, check=True, capture_output=True,
    )
    done = check(shallow, base)
    assert done.returncode == 0
    assert "not checked" in done.stdout
