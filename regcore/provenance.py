"""Which code produced a number: the git commit of the checkout regcore runs from.

Read from the files under ``.git`` (HEAD, the ref it names, ``packed-refs``), once per
process: no ``git`` is spawned per run, and a checkout without git installed still
reports its commit. Outside a git checkout the commit comes from ``REGBENCH_GIT_COMMIT``
(the Docker image's build argument ``GIT_COMMIT``); without either, runs carry no commit
tag rather than a guessed one.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1, or SHA-256 repositories
PACKAGE_DIR = Path(__file__).resolve().parent

GIT_COMMIT_TAG = "regbench.git_commit"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"  # the MLflow UI shows this one
COMMIT_ENV = "REGBENCH_GIT_COMMIT"


@functools.cache
def git_commit() -> str | None:
    """The commit checked out where regcore lives; else ``$REGBENCH_GIT_COMMIT`` (a
    Docker image has no ``.git``: its build passes the commit); else None."""
    return commit_of(PACKAGE_DIR) or commit_from_env()


def commit_from_env() -> str | None:
    value = os.environ.get(COMMIT_ENV, "").strip().lower()
    return value if SHA.match(value) else None


def git_tags() -> dict[str, str]:
    """The commit as MLflow tags (``mlflow.source.git.commit`` and ``regbench.git_commit``);
    empty outside a git checkout."""
    commit = git_commit()
    return {MLFLOW_GIT_COMMIT_TAG: commit, GIT_COMMIT_TAG: commit} if commit else {}


def commit_of(start: Path) -> str | None:
    """The HEAD commit of the checkout containing ``start`` (a worktree's ``.git`` file
    is followed to its git directory; refs may be loose or packed)."""
    for directory in (start, *start.parents):
        marker = directory / ".git"
        if marker.exists():
            try:
                return _head_commit(_git_dir(marker))
            except (OSError, UnicodeDecodeError, ValueError):
                return None
    return None


def _git_dir(marker: Path) -> Path:
    if marker.is_dir():
        return marker
    text = marker.read_text(encoding="utf-8").strip()  # a worktree: "gitdir: PATH"
    if not text.startswith("gitdir:"):
        raise ValueError(f"{marker} is neither a directory nor a gitdir file")
    target = Path(text.removeprefix("gitdir:").strip())
    return target if target.is_absolute() else (marker.parent / target).resolve()


def _head_commit(git_dir: Path) -> str | None:
    head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
    if SHA.match(head):
        return head  # a detached HEAD
    if not head.startswith("ref:"):
        return None
    ref = head.removeprefix("ref:").strip()
    # A worktree keeps HEAD of its own; branches live in the common directory.
    common = git_dir
    if (git_dir / "commondir").exists():
        pointer = (git_dir / "commondir").read_text(encoding="utf-8").strip()
        common = (git_dir / pointer).resolve()
    for directory in dict.fromkeys((git_dir, common)):
        loose = directory / ref
        if loose.is_file():
            value = loose.read_text(encoding="utf-8").strip()
            return value if SHA.match(value) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8").splitlines():
            value, _, name = line.partition(" ")
            if name.strip() == ref and SHA.match(value):
                return value
    return None  # a branch with no commit yet
