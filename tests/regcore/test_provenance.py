"""The code version on every run: the git commit read from ``.git`` without git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from regcore.pipeline import environment_tags
from regcore.provenance import commit_from_env, commit_of, git_commit

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def git_head() -> str | None:
    """The commit of the checkout the tests run from, None outside one (this spawns git;
    the code under test does not)."""
    try:
        return git("rev-parse", "HEAD", cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return None


def make_repo(path: Path) -> str:
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    (path / "a.txt").write_text("a")
    git("add", "a.txt", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one", cwd=path)
    return git("rev-parse", "HEAD", cwd=path)


def test_this_checkout_s_commit_is_a_tag_of_every_run() -> None:
    assert git_commit() == git_head()
    tags = environment_tags()
    assert tags.get("mlflow.source.git.commit") == git_head()  # absent outside a checkout
    assert tags.get("regbench.git_commit") == git_head()


def test_loose_packed_detached_and_worktree_heads_are_read(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = make_repo(repo)
    (repo / "pkg").mkdir()
    assert commit_of(repo / "pkg") == first  # a loose ref, found from a subfolder
    git("pack-refs", "--all", cwd=repo)
    assert not (repo / ".git/refs/heads/main").exists()
    assert commit_of(repo) == first  # packed
    git("checkout", "-q", "--detach", cwd=repo)
    assert commit_of(repo) == first  # detached
    git("checkout", "-q", "main", cwd=repo)
    (repo / "b.txt").write_text("b")
    git("add", "b.txt", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "two", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo)
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "side"), first, cwd=repo)
    assert commit_of(repo) == second
    assert commit_of(tmp_path / "side") == first  # a worktree: its own HEAD, shared refs


def test_outside_a_checkout_there_is_no_commit_and_no_tag(tmp_path: Path) -> None:
    assert commit_of(tmp_path / "nowhere") is None
    (tmp_path / "empty").mkdir()
    git("init", "-q", cwd=tmp_path / "empty")
    assert commit_of(tmp_path / "empty") is None  # a branch with no commit yet


def test_outside_a_checkout_the_build_s_commit_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Docker image has no .git: its build passes GIT_COMMIT as REGBENCH_GIT_COMMIT."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("REGBENCH_GIT_COMMIT", sha.upper())
    assert commit_from_env() == sha
    for junk in ("", "unknown", "$(git rev-parse HEAD)", sha[:12]):
        monkeypatch.setenv("REGBENCH_GIT_COMMIT", junk)
        assert commit_from_env() is None
