"""The ensemble store on disk: create it, lock it, write a chunk of members, read back what is complete.

The rules that keep a store true (DESIGN.md §5, docs/generate.md):

* the store is created whole (metadata only) in a hidden sibling directory and renamed into place;
* every store carries a random ``store_id`` in its root attributes; a writer checks that the store at its
  path is still the one it planned for **before the data and again before the completion flags** of every
  chunk, so a store replaced underneath a running job (``output.overwrite=true`` elsewhere) is never written
  into, let alone marked complete;
* jobs that write hold a shared lock on ``.NAME.lock`` beside the store; replacing a store needs the
  exclusive lock, so an overwrite cannot delete a store another job is filling;
* a chunk's data go first, its ``complete`` flags last (each Zarr chunk write is atomic on a local store);
* a missing ``complete`` array means "nothing complete", never an error; unreadable chunks count as
  incomplete, and :func:`unreadable_chunks` finds chunks flagged complete whose bytes cannot be decoded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import SciencegenError

__all__ = [
    "ATTR",
    "FORMAT_VERSION",
    "FLAG_ARRAYS",
    "StoreError",
    "StoreLock",
    "completed_members",
    "create_store",
    "is_zarr",
    "read_meta",
    "repair_arrays",
    "set_flags",
    "unreadable_chunks",
    "write_chunk",
]

#: root attribute holding the JSON description of an ensemble store
ATTR = "sciencegen_ensemble"
FORMAT_VERSION = 1
#: per-member arrays beside the fields
FLAG_ARRAYS = ("rounds", "nfe", "complete")


class StoreError(SciencegenError):
    """The ensemble store cannot be used as asked; the message is one line naming the store."""


class StoreReplaced(StoreError):
    """The store at the path is no longer the one this job planned for (it was deleted or replaced)."""


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a directory that holds Zarr metadata at its root."""
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs", ".zmetadata"))


def read_meta(path: Path) -> dict[str, Any] | None:
    """The store's ``sciencegen_ensemble`` description; None when it is a Zarr store of something else.

    Raises
    ------
    StoreError
        The root metadata exists but cannot be read (truncated or garbled): the store is corrupt.
    """
    root = Path(path) / "zarr.json"
    if root.exists():
        try:
            attrs = json.loads(root.read_text()).get("attributes") or {}
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"{path} is corrupt: its root metadata zarr.json cannot be read ({exc}); "
                             "move it away (or delete it) and rerun to regenerate the ensemble") from None
    else:
        import zarr

        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception:
            return None
    text = attrs.get(ATTR)
    if not text:
        return None
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        raise StoreError(f"{path} is corrupt: its {ATTR} attribute is not valid JSON; move it away and rerun") from None
    return meta if isinstance(meta, dict) else None


def _check_owner(path: str, store_id: str | None) -> None:
    """Raise :class:`StoreReplaced` unless the store at ``path`` carries ``store_id``."""
    if store_id is None:
        return
    try:
        meta = read_meta(Path(path))
    except StoreError:
        meta = None
    if not meta or meta.get("store_id") != store_id:
        raise StoreReplaced(f"{path} was deleted or replaced by another job while this one was writing "
                            "(output.overwrite=true elsewhere?): this job wrote nothing into the new store")


class StoreLock:
    """An advisory ``flock`` on ``.NAME.lock`` beside a store: shared for writers, exclusive to replace it.

    Local and most cluster filesystems honour it; where ``flock`` is unsupported the lock is a no-op and the
    ``store_id`` check of every write still keeps foreign writes out.
    """

    def __init__(self, path: Path) -> None:
        self.file = path.parent / f".{path.name}.lock"
        self.fd: int | None = None

    def _open(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)

    def shared(self) -> None:
        """Hold the lock shared (waits while another job replaces the store)."""
        self._open()
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def exclusive(self) -> bool:
        """Try to hold the lock exclusively, without waiting; False while any other job holds it."""
        self._open()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
        return True

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it would race with other jobs)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def create_store(path: Path, template: xr.Dataset, variables: tuple[str, ...]) -> bool:
    """Write the template's metadata into a hidden sibling and rename it into place; False if another won."""
    import zarr

    tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # consolidated metadata is a zarr v3 extension; xarray reads it
            template.to_zarr(tmp, mode="w-", compute=False, encoding=_encoding(template, variables),
                             consolidated=False)
            zarr.consolidate_metadata(str(tmp))
        for _ in range(5):
            try:
                os.rename(tmp, path)
                return True
            except OSError:
                if is_zarr(path):  # another process created it first
                    return False
                if not _stray(path, set(template.variables)):
                    raise
                # chunks a writer of a just-deleted store put back (a filesystem without flock): not ours
                shutil.rmtree(path, ignore_errors=True)
        raise StoreError(f"{path} keeps being written by another job while it is replaced: stop that job first")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stray(path: Path, names: set[str]) -> bool:
    """A directory without Zarr metadata holding only array folders of an ensemble store."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return not is_zarr(path) and all(e.is_dir() and e.name in names for e in entries)


def _encoding(template: xr.Dataset, variables: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    # explicit fill values: unwritten members read as NaN and unwritten flags as "not complete" on every zarr;
    # zstd with its content checksum: a flipped bit in a chunk fails to decode instead of reading as other numbers
    import zarr

    enc: dict[str, dict[str, Any]] = {v: {"_FillValue": np.float32("nan")} for v in variables}
    enc["complete"] = {"_FillValue": False}
    for v in ("rounds", "nfe"):
        enc[v] = {"_FillValue": np.int32(0)}
    for e in enc.values():
        e["compressors"] = [zarr.codecs.ZstdCodec(level=0, checksum=True)]
    return {k: v for k, v in enc.items() if k in template}


def repair_arrays(path: Path, template: xr.Dataset, variables: tuple[str, ...]) -> list[str]:
    """Recreate arrays of the template missing from the store (metadata only); returns their names.

    A missing field or cost array means its members' bytes are gone, so every ``complete`` flag is cleared;
    a missing ``complete`` array alone just means nothing counts as complete.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    have = set(group.array_keys())
    missing = [v for v in template.data_vars if v not in have]
    if not missing:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = _encoding(template, variables)
        part = template[missing]
        part.drop_vars(list(part.coords)).to_zarr(
            str(path), mode="a", compute=False, consolidated=False, encoding={k: enc[k] for k in missing if k in enc})
    if any(v != "complete" for v in missing):
        set_flags(str(path), 0, int(template.sizes["member"]), False)
    return missing


def completed_members(path: str | os.PathLike, members: int | None = None) -> np.ndarray:
    """The ``complete`` flag of every member (a missing array or unreadable chunks count as incomplete)."""
    import zarr

    try:
        arr = zarr.open_array(str(path), path="complete", mode="r")
    except Exception:
        if members is None:
            raise
        return np.zeros(members, dtype=bool)
    n = arr.shape[0] if members is None else members
    out = np.zeros(n, dtype=bool)
    step = int(arr.chunks[0])
    for a in range(0, n, step):
        with contextlib.suppress(Exception):
            out[a:a + step] = np.asarray(arr[a:min(a + step, n)], dtype=bool)
    return out


def set_flags(path: str, start: int, stop: int, value: bool) -> None:
    """Set the ``complete`` flags of members ``start..stop-1``."""
    import zarr

    zarr.open_array(path, path="complete", mode="r+")[start:stop] = np.full(stop - start, value, dtype=bool)


def write_chunk(path: str, store_id: str | None, start: int, stop: int, fields_: dict[str, np.ndarray],
                rounds: np.ndarray, nfe: np.ndarray) -> int:
    """Write one chunk of members: data first, then their completion flags. Returns the bytes of data.

    The store's ``store_id`` is checked before the data and again before the flags, so a store replaced
    under this job is never written into nor marked complete. Straight into the Zarr arrays the template
    created (xarray's region writes cost several times more Python time per chunk).

    Raises
    ------
    StoreReplaced
        The store at ``path`` is not the one with ``store_id`` any more.
    """
    import zarr

    _check_owner(path, store_id)
    try:
        group = zarr.open_group(path, mode="r+", use_consolidated=False)
        for v, a in fields_.items():
            group[v][start:stop] = a
        group["rounds"][start:stop] = rounds.astype(np.int32)
        group["nfe"][start:stop] = nfe.astype(np.int32)
        _check_owner(path, store_id)
        group["complete"][start:stop] = np.ones(stop - start, dtype=bool)  # last: the members are now on disk
    except (OSError, KeyError):  # the store vanished under the write: say so, not which temp file failed
        _check_owner(path, store_id)
        raise
    return int(sum(a.nbytes for a in fields_.values()))


def unreadable_chunks(path: Path, ranges: list[tuple[int, int]], chunks: list[int],
                      variables: tuple[str, ...]) -> dict[int, str]:
    """Chunks among ``chunks`` whose bytes cannot be decoded, or whose fields are not finite: ``{chunk: why}``.

    Reads every listed chunk of every field and cost array once (``generate.verify=true``).
    """
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    bad: dict[int, str] = {}
    for c in chunks:
        a, b = ranges[c]
        for name in (*variables, "rounds", "nfe"):
            try:
                values = np.asarray(group[name][a:b])
            except Exception as exc:  # truncated or garbled chunk file: any codec error
                bad[c] = f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
                break
            if name in variables and not np.isfinite(values).all():
                bad[c] = f"{name}: missing or non-finite values in members flagged complete"
                break
    return bad
