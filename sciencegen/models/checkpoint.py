"""Crash-safe training checkpoints: atomic writes, keep-last-k pruning, newest-valid resume.

Layout of a run directory::

    run_dir/checkpoints/step_000001000.pt     # the checkpoint (torch.save of a dict, see below)
    run_dir/checkpoints/step_000001000.json   # human-readable sidecar: step, time, meta

Every file is written to a temporary name in the same directory
(``step_000001000.pt.tmp-<host>-<pid>``), flushed and ``fsync``-ed, renamed to its final name with
:func:`os.replace` (atomic on POSIX and Windows) and the directory is ``fsync``-ed. A process killed at
any moment (``kill -9``, out of memory, pre-emption) therefore leaves either the complete final file or
no final file plus a temporary one; :func:`list_checkpoints` and :func:`load_checkpoint` never look at
temporary files, and the next :func:`save_checkpoint` on the same host removes those whose writer
process is gone. A save that fails (disk full) removes its own temporary files, renames nothing and
raises an :class:`OSError` naming the file.

A checkpoint file holds one dict::

    {"format": "sciencegen-checkpoint", "format_version": 1, "step": int,
     "saved_at": ISO-8601 UTC str, "meta": dict (JSON), "state": <what the trainer passed>}

and :func:`load_checkpoint` returns it whole: the trainer's state dicts are under ``"state"``.

Examples
--------
>>> path = save_checkpoint("runs/x", step, {"model": model.state_dict(), "optimizer": opt.state_dict()},
...                        meta={"model": model_cfg, "code": code_version()})  # doctest: +SKIP
>>> path, ckpt = load_checkpoint("runs/x")  # newest valid one  # doctest: +SKIP
>>> check_compatible(ckpt["meta"], {"model": model_cfg}, where=path)  # doctest: +SKIP
>>> model.load_state_dict(ckpt["state"]["model"])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import operator
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import SciencegenError
from ..owners import host_tag, pid_alive
from .meta import code_version, compact, first_difference, normalise

__all__ = [
    "CHECKPOINT_SUBDIR",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointWarning",
    "check_compatible",
    "code_version",
    "first_difference",
    "list_checkpoints",
    "load_checkpoint",
    "normalise",
    "save_checkpoint",
]

#: Name of the sub-directory of a run directory that holds the checkpoints.
CHECKPOINT_SUBDIR = "checkpoints"
#: Version of the checkpoint file layout written by :func:`save_checkpoint`; newer files are refused.
FORMAT_VERSION = 1
FORMAT_NAME = "sciencegen-checkpoint"

_FINAL_RE = re.compile(r"^step_(\d+)\.pt$")
_SIDECAR_RE = re.compile(r"^step_(\d+)\.json$")
_TMP_RE = re.compile(r"^.+\.tmp-(?P<host>[^-]+)-(?P<pid>\d+)$")


class CheckpointError(SciencegenError):
    """A checkpoint cannot be read, none is valid, or it does not match the requested configuration."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable) or could not be pruned."""


# ----------------------------------------------------------------------------------------------- paths


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory of ``path``: ``path/checkpoints`` if it exists, else ``path`` itself."""
    p = Path(path)
    sub = p / CHECKPOINT_SUBDIR
    return sub if sub.is_dir() else p


def _final_name(step: int) -> str:
    return f"step_{step:09d}.pt"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint files of a run, sorted by step, newest last.

    Parameters
    ----------
    run_dir
        A run directory (holding ``checkpoints/``) or a checkpoint directory itself.

    Returns
    -------
    list of Path
        Files named ``step_<int>.pt``; temporary files of interrupted writes and sidecars are ignored.
        Validity is not checked (see :func:`load_checkpoint`). Empty if the directory does not exist.
    """
    d = _checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _FINAL_RE.match(p.name)
        if m is not None and p.is_file():
            found.append((int(m.group(1)), p.name, p))
    return [p for _, _, p in sorted(found)]


# ------------------------------------------------------------------------------------------ atomic I/O


def _fsync_dir(d: Path) -> None:
    """Make a rename/creation in ``d`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


class _ErrorRecorder:
    """A binary file wrapper that remembers the :class:`OSError` of a failed ``write``.

    :func:`torch.save` turns an error of the underlying file (disk full, quota) into a ``RuntimeError``
    without the errno; this keeps the original so that the caller can report it.
    """

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _write_temp(final: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write the content of ``final`` to a temp file in its directory (flushed, fsync-ed); returns the temp path.

    On failure the temp file is removed; an operating-system error (disk full, read-only, quota) is raised
    as an :class:`OSError` with its errno and ``filename`` = ``final``, even when :func:`torch.save` wrapped it.
    """
    tmp = final.with_name(f"{final.name}.tmp-{host_tag()}-{os.getpid()}")
    rec: _ErrorRecorder | None = None
    try:
        with open(tmp, "wb") as f:
            rec = _ErrorRecorder(f)
            write(rec)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = e if isinstance(e, OSError) else (rec.error if rec is not None else None)
        if cause is not None and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror or os.strerror(cause.errno), os.fspath(final)) from e
        raise
    return tmp


def _remove_stale_temps(d: Path) -> list[Path]:
    """Delete temp files in ``d`` left by dead writer processes of this host; return the deleted paths.

    Temp files of live processes (a concurrent writer), of this process, and of other hosts (a shared
    file system: their liveness cannot be checked from here) are left alone.
    """
    host, me = host_tag(), os.getpid()
    removed = []
    for p in d.iterdir():
        m = _TMP_RE.match(p.name)
        if m is None or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        if pid == me or pid_alive(pid):
            continue
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            warnings.warn(f"cannot remove stale temporary file {p}: {e}", CheckpointWarning, stacklevel=3)
            continue
        removed.append(p)
    return removed


def _looks_complete(path: Path) -> bool:
    """Cheap validity check used for pruning: a readable zip archive (torch format) holding ``data.pkl``.

    A truncated file has no zip central directory at its end and garbage has none at all; this reads
    only the end of the file, not the tensors (damage in the middle is caught by :func:`load_checkpoint`).
    """
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def _jsonable(obj: Any) -> Any:
    """``obj`` round-tripped through JSON: numpy/torch scalars and arrays → Python lists/numbers, paths →
    strings, tuples → lists, keys → strings. Raises :class:`TypeError` for anything else."""

    def default(o: Any) -> Any:
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        if hasattr(o, "tolist"):  # numpy scalars/arrays, torch tensors
            return o.tolist()
        raise TypeError(f"meta holds a {type(o).__name__}, which is not JSON-serialisable: {o!r}")

    return json.loads(json.dumps(obj, default=default))


# ------------------------------------------------------------------------------------------------ save


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    state: Mapping[str, Any],
    *,
    keep: int | None = 3,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step:09d}.pt`` atomically and prune old checkpoints.

    Order of operations: remove temp files of dead writers (same host); ``torch.save`` to a temp file in
    the checkpoint directory, flush, ``os.fsync``; the same for the JSON sidecar ``step_{step:09d}.json``;
    ``os.replace`` both to their final names; ``fsync`` the directory; then delete all but the newest
    ``keep`` valid checkpoints (and their sidecars, and sidecars without a checkpoint). A save that fails
    (disk full, read-only file system, quota) removes its temp files and renames nothing, so the
    checkpoints written before stay as they were.

    Parameters
    ----------
    run_dir
        Run directory; ``checkpoints/`` is created inside it if needed.
    step
        Training step (non-negative integer); names the file. Saving the same step again replaces it.
    state
        What to resume from: model/EMA/optimizer/scheduler state dicts, RNG states, counters... Anything
        :func:`torch.save` can pickle.
    keep
        Number of valid checkpoints to keep, counted from the newest step (validity: a cheap check that
        the file is a complete torch archive). The file just written is never deleted, even when newer
        steps exist (a run restarted from an older checkpoint). ``None`` keeps everything. Corrupt files
        newer than the kept ones are left in place (:func:`load_checkpoint` skips them).
    meta
        JSON-able description: config, data statistics, model identity, :func:`code_version`. Numpy and
        torch scalars/arrays are converted to lists/numbers; it is stored (after that JSON round trip)
        in the file under ``"meta"`` and in the sidecar.

    Returns
    -------
    Path
        The final checkpoint path.

    Raises
    ------
    TypeError
        ``meta`` is not JSON-serialisable (checked before anything is written), or ``step`` is a bool.
    ValueError
        ``step`` is negative or ``keep < 1``.
    OSError
        The files cannot be written (e.g. ``errno.ENOSPC``); ``filename`` is the checkpoint (or sidecar)
        path, also when :func:`torch.save` reported the failure as a ``RuntimeError``.
    """
    if isinstance(step, bool):
        raise TypeError(f"step must be an integer, got {step!r}")
    step = operator.index(step)
    if step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if keep is not None and operator.index(keep) < 1:
        raise ValueError(f"keep must be >= 1 (or None to keep all), got {keep!r}")
    meta_json = _jsonable(dict(meta) if meta is not None else {})

    run = Path(run_dir)
    d = run / CHECKPOINT_SUBDIR
    created = not d.is_dir()
    d.mkdir(parents=True, exist_ok=True)
    if created:
        _fsync_dir(run)
    _remove_stale_temps(d)

    saved_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "saved_at": saved_at,
        "meta": meta_json,
        "state": state,
    }
    final = d / _final_name(step)
    sidecar = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "step": step,
        "file": final.name,
        "saved_at": saved_at,
        "meta": meta_json,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    # both files are complete on disk before either is renamed: a failed save (disk full) renames nothing
    temps: list[Path] = []
    try:
        temps.append(_write_temp(final, lambda f: torch.save(payload, f)))
        temps.append(_write_temp(_sidecar(final), lambda f: f.write(text.encode("utf-8"))))
        os.replace(temps[0], final)
        os.replace(temps[1], _sidecar(final))
    except BaseException:
        for t in temps:
            with contextlib.suppress(OSError):
                t.unlink()
        raise
    _fsync_dir(d)

    if keep is not None:
        _prune(d, int(keep), protect=final)
    return final


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"cannot remove old checkpoint file {p}: {e}", CheckpointWarning, stacklevel=4)


def _prune(d: Path, keep: int, *, protect: Path) -> None:
    """Keep the newest ``keep`` valid checkpoints of ``d`` (``protect`` always counts and stays)."""
    kept = 0
    for p in reversed(list_checkpoints(d)):
        if p == protect:
            kept += 1
        elif kept >= keep:
            _unlink_quietly(p)
            _unlink_quietly(_sidecar(p))
        elif _looks_complete(p):
            kept += 1
    for p in d.iterdir():  # sidecars whose checkpoint is gone
        if _SIDECAR_RE.match(p.name) and not p.with_suffix(".pt").exists():
            _unlink_quietly(p)


# ------------------------------------------------------------------------------------------------ load


def _one_line(e: BaseException) -> str:
    msg = str(e).strip()
    first = msg.splitlines()[0] if msg else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


class _Unreadable(Exception):
    """Internal: the file is not a readable checkpoint (skippable when scanning a directory)."""


def _read(path: Path, map_location: Any, weights_only: bool) -> dict:
    """Load and check one file; :class:`_Unreadable` if damaged, :class:`CheckpointError` if too new."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        raise _Unreadable(_one_line(e)) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME or "state" not in payload:
        raise _Unreadable("not a sciencegen checkpoint (no 'format'/'state' entries)")
    version = payload.get("format_version")
    if not isinstance(version, int):
        raise _Unreadable(f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, newer than this sciencegen reads "
            f"({FORMAT_VERSION}): update sciencegen"
        )
    return payload


def load_checkpoint(
    path_or_run_dir: str | os.PathLike,
    *,
    map_location: Any = "cpu",
    weights_only: bool = False,
) -> tuple[Path, dict]:
    """Load one checkpoint file, or the newest valid checkpoint of a run.

    Parameters
    ----------
    path_or_run_dir
        A checkpoint file; or a run directory (holding ``checkpoints/``) or a checkpoint directory, in
        which case the checkpoints are tried newest step first and unreadable ones (truncated, garbage,
        not a sciencegen checkpoint) are skipped with a :class:`CheckpointWarning` naming them.
    map_location
        Passed to :func:`torch.load`; CPU by default so a GPU-saved checkpoint loads anywhere.
    weights_only
        Passed to :func:`torch.load`. ``False`` by default because ``state`` is whatever the trainer
        passes, and the restricted unpickler of ``weights_only=True`` refuses common resume state: numpy
        arrays and scalars (e.g. the legacy ``np.random.get_state()`` tuple, statistics kept as numpy
        values) and any custom object. These files are written by our own trainer; but a full unpickling
        can run arbitrary code, so only load checkpoints you trust, and pass ``True`` for files of unknown
        origin (their ``state`` must then hold only tensors and plain Python containers/scalars, which is
        all ``save_checkpoint`` itself adds).

    Returns
    -------
    path : Path
        The file loaded.
    checkpoint : dict
        ``{"format", "format_version", "step", "saved_at", "meta", "state"}`` as written by
        :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        The file is unreadable (one-line message naming it); no file or directory at the path; a directory
        with no valid checkpoint (``"no valid checkpoint in DIR ..."``); or a checkpoint written with a
        newer format version (raised, not skipped, even when scanning a directory).
    """
    p = Path(path_or_run_dir)
    if p.is_file():
        try:
            return p, _read(p, map_location, weights_only)
        except _Unreadable as e:
            raise CheckpointError(f"cannot read checkpoint {p}: {e}") from e.__cause__
    if not p.is_dir():
        raise CheckpointError(f"no checkpoint file or directory at {p}")
    d = _checkpoint_dir(p)
    files = list_checkpoints(d)
    for f in reversed(files):
        try:
            return f, _read(f, map_location, weights_only)
        except _Unreadable as e:
            warnings.warn(f"skipping unreadable checkpoint {f}: {e}", CheckpointWarning, stacklevel=2)
    detail = f"{len(files)} unreadable" if files else "no step_*.pt files"
    raise CheckpointError(f"no valid checkpoint in {d} ({detail})")


# --------------------------------------------------------------------------------------- compatibility


def check_compatible(
    meta: Mapping[str, Any],
    expected: Mapping[str, Any],
    keys: Iterable[str] = ("model",),
    *,
    where: str | os.PathLike | None = None,
) -> None:
    """Check that a checkpoint's ``meta`` agrees with the configuration about to use it.

    Parameters
    ----------
    meta
        The checkpoint's ``meta`` (``load_checkpoint(...)[1]["meta"]``).
    expected
        The current configuration, with the same top-level keys.
    keys
        Entries to compare; a key absent from ``expected`` is not checked. Values are compared after a
        JSON round trip (so tuples equal lists, as stored).
    where
        The checkpoint path, for the message.

    Raises
    ------
    CheckpointError
        At the first differing key, e.g. ``checkpoint runs/x/checkpoints/step_000001000.pt was trained for
        model {"width": 64} but the config asks for {"width": 128} (first difference: model.width: 64 vs
        128)``, or when ``meta`` lacks a key that ``expected`` has.
    """
    name = f"checkpoint {os.fspath(where)}" if where is not None else "the checkpoint"
    for key in keys:
        if key not in expected:
            continue
        want = normalise(expected[key])
        if key not in meta:
            raise CheckpointError(f"{name} records no {key!r} in its meta but the config asks for {compact(want)}")
        have = normalise(meta[key])
        diff = first_difference(have, want, key)
        if diff is not None:
            at, a, b = diff
            detail = f" (first difference: {at}: {compact(a)} vs {compact(b)})" if at != key else ""
            raise CheckpointError(
                f"{name} was trained for {key} {compact(have)} but the config asks for {compact(want)}{detail}"
            )


#: public names of the temp-file rules the prepared-store writer (sciencegen.data.store) shares
