"""Real filesystem faults for tests: a tiny tmpfs that fills up (ENOSPC) and a read-only bind mount (EROFS).

Both need the right to mount (root, as on the CI machines); without it the test is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount here ({res.stderr.strip() or res.returncode}): needs root")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def small_fs(path: str | os.PathLike, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created) for the block: writes past it fail with ENOSPC."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path: str | os.PathLike) -> Iterator[Path]:
    """Bind-mount ``path`` read-only onto itself for the block: writes fail with EROFS (even for root)."""
    path = Path(path)
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        _umount(path)


def fill(path: str | os.PathLike) -> None:
    """Fill the filesystem holding ``path`` (a directory) so that the next write fails with ENOSPC."""
    with open(Path(path) / ".filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
