"""Fault injection for ``sciencegen-generate``: kills, signals and corrupt chunks at random points, then a rerun.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/faults.py --trials 30 --seed 0 --json faults.json

Every run is the console script in a fresh process (``python -c "from sciencegen.cli import generate;
generate()" ...``) on a small exact-GRF config (``model=oracle``, ``picard_sde``, 0.15-0.3 s a chunk). The truth is
one uninterrupted run of the same config. Trials cycle through the fault kinds (``--kinds``); each draws its
moment and parameters from a seeded RNG:

* ``kill9`` / ``sigint`` / ``sigterm``: the signal once ``k`` members are flagged complete (polled) or after a
  random delay since launch (start-up included); then the same command again, half of the time with another
  ``generate.batch_size`` (the store's recorded batch must win);
* ``corrupt``: a copy of the truth (half of the time with a random tail of chunks unflagged, as a partial store)
  has the file of one complete chunk of ``field`` or ``nfe`` truncated, overwritten with random bytes, or one
  bit flipped; the rerun uses ``generate.verify=true``;
* ``flags``: the ``complete`` array of such a copy is deleted (whole, its chunks, or its metadata); rerun;
* ``kill9_during_overwrite``: a finished seed-0 store is replaced by ``generate.seed=1 output.overwrite=true``,
  killed after a random delay or as soon as the old store starts to be deleted, and that command is rerun
  (truth: an uninterrupted seed-1 run).

After the fault (before any repair) each member is audited against the truth: flagged complete, readable, bitwise
equal (``field``, ``rounds``, ``nfe``). *Falsely complete* = flagged but not bitwise the truth (must be 0 for
kills and signals); for ``corrupt`` these are split into *detectable* (a decode error or non-finite field, what
``generate.verify`` checks) and *undetectable* (readable, finite, different). *Lost* = members flagged complete
and correct after the fault whose field chunk file the rerun rewrote. *Resumed bitwise* = the rerun exits 0
without a traceback and ``xr.open_zarr`` gives the truth's ``field``/``rounds``/``nfe`` with every flag set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("faults")

CLI = "from sciencegen.cli import generate; generate()"
KINDS = ("kill9", "sigint", "sigterm", "corrupt", "flags", "kill9_during_overwrite")
ARRAYS = ("field", "rounds", "nfe")
SIGNALS = {"kill9": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM,
           "kill9_during_overwrite": signal.SIGKILL}
OTHER_BATCHES = (1, 3, 4, 5)


@dataclass
class Trial:
    """One fault and its rerun, as measured (one row of ``--json``)."""

    index: int
    kind: str
    when: str = ""
    fault_rc: int | None = None
    fault_output: str = ""  # "killed", "one line", "traceback", "none", "several lines", "hang"
    fault_line: str = ""
    fault_tail: str = ""  # the last lines the faulted run printed (signals)
    complete_after: int = 0
    falsely_complete: int = 0
    detectable: int = 0
    undetectable: int = 0
    lost: int = 0
    rerun_batch: int = 0
    rerun_rc: int | None = None
    rerun_output: str = ""
    rerun_line: str = ""
    skipped: int | None = None
    resumed_bitwise: bool = False
    mismatch: str = ""
    litter: int = 0  # files a fault left that the rerun did not remove
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


class Bench:
    """The config, the truths and the process launcher shared by the trials."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.members = args.members
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE",
                    "PYTHONUNBUFFERED": "1"}
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_ARRAY_TASK_ID",
                  "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
            self.env.pop(k, None)
        self.truths: dict[int, tuple[Path, dict[str, np.ndarray]]] = {}
        self.raw: dict[int, dict[str, np.ndarray]] = {}
        self.truth_seconds = 0.0

    def overrides(self, path: Path, batch: int | None = None, *extra: str) -> list[str]:
        """The command-line overrides of a run writing ``path``."""
        a = self.args
        return ["dataset=grf", f"dataset.size={a.size}", "dataset.samples=64", "model=oracle", "sampler=picard_sde",
                f"sampler.steps={a.steps}", f"generate.members={a.members}",
                f"generate.batch_size={batch or a.batch}", "generate.progress=false",
                f"generate.threads={a.threads}", f"output.path={path}", *extra]

    def launch(self, path: Path, batch: int | None = None, *extra: str) -> subprocess.Popen:
        """Start the console script (stdout and stderr together)."""
        return subprocess.Popen([sys.executable, "-c", CLI, *self.overrides(path, batch, *extra)], cwd=self.tmp,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self, proc: subprocess.Popen, timeout: float = 600) -> tuple[int | None, str]:
        """Wait for ``proc``; ``(None, output)`` when it hung (then it is killed)."""
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return None, out

    def truth(self, seed: int = 0) -> tuple[Path, dict[str, np.ndarray]]:
        """The uninterrupted run of the config with ``generate.seed=seed`` (made once): its path and arrays."""
        if seed not in self.truths:
            path = self.tmp / f"truth{seed}.zarr"
            t0 = time.perf_counter()
            rc, out = self.finish(self.launch(path, None, f"generate.seed={seed}"))
            if rc != 0:
                raise SystemExit(f"the uninterrupted run failed (exit {rc}):\n{out}")
            if seed == 0:
                self.truth_seconds = time.perf_counter() - t0
            self.truths[seed] = (path, read_arrays(path))
            self.raw[seed] = read_raw(path)
        return self.truths[seed]


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """``field``, ``rounds``, ``nfe`` and ``complete`` as ``xr.open_zarr`` reads them."""
    import xarray as xr

    with xr.open_zarr(path) as ds:
        return {**{k: ds[k].values for k in ARRAYS}, "complete": ds["complete"].values.astype(bool)}


def read_raw(path: Path) -> dict[str, np.ndarray]:
    """``field``, ``rounds`` and ``nfe`` as stored (zarr, no fill-value decoding: int32 stays int32)."""
    import zarr

    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    return {k: np.asarray(group[k][:]) for k in ARRAYS}


def same_bytes(a: np.ndarray, b: np.ndarray, members: int) -> np.ndarray:
    """Per member: are the bytes of ``a`` and ``b`` identical (NaN payloads included)?"""
    if a.shape != b.shape or a.dtype != b.dtype:
        return np.zeros(members, dtype=bool)
    a8 = np.ascontiguousarray(a).view(np.uint8).reshape(members, -1)
    return (a8 == np.ascontiguousarray(b).view(np.uint8).reshape(members, -1)).all(axis=1)


def audit(path: Path, truth: dict[str, np.ndarray], members: int) -> dict[str, np.ndarray]:
    """Per member: ``flagged``, ``good`` (bitwise ``truth``, as stored), ``detectable`` (decode error or non-finite)."""
    import zarr

    from sciencegen.data.ensemble import completed_members

    out = {k: np.zeros(members, dtype=bool) for k in ("flagged", "good", "detectable")}
    if not (path / "zarr.json").exists():
        return out
    out["flagged"] = completed_members(path, members)
    try:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    except Exception:
        out["detectable"][:] = True
        return out
    differs = np.zeros(members, dtype=bool)
    for name in ARRAYS:
        try:
            arr = group[name]
        except Exception:
            out["detectable"][:] = True
            continue
        step = int(arr.chunks[0])
        for a in range(0, members, step):
            b = min(a + step, members)
            try:
                v = np.asarray(arr[a:b])
            except Exception:
                out["detectable"][a:b] = True
                continue
            differs[a:b] |= ~same_bytes(v, truth[name][a:b], b - a)
            if name == "field":
                out["detectable"][a:b] |= ~np.isfinite(v).reshape(b - a, -1).all(axis=1)
    out["good"] = ~differs & ~out["detectable"]
    return out


def describe(path: Path) -> dict[str, str]:
    """What is on disk per array (for rows with wrong members): ``"no metadata"`` or the number of chunk files."""
    out = {"root": "zarr.json present" if (path / "zarr.json").exists() else "no zarr.json"}
    for name in (*ARRAYS, "complete"):
        files = [f for f in (path / name / "c").rglob("*") if f.is_file()] if (path / name / "c").is_dir() else []
        meta = "metadata" if (path / name / "zarr.json").exists() else "no metadata"
        out[name] = f"{meta}, {len(files)} chunk files"
    return out


def field_stamps(path: Path) -> tuple[int, dict[int, tuple[int, int, int]]]:
    """The store's member chunk and ``{chunk index: (inode, mtime_ns, size)}`` of its ``field`` chunk files."""
    meta = path / "field" / "zarr.json"
    if not meta.exists():
        return 1, {}
    info = json.loads(meta.read_text())
    chunk = int(info["chunk_grid"]["configuration"]["chunk_shape"][0])
    stamps = {}
    for f in (path / "field" / "c").glob("*"):
        inner = f.joinpath(*["0"] * (len(info["shape"]) - 1))
        if f.name.isdigit() and inner.is_file():
            st = inner.stat()
            stamps[int(f.name)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return chunk, stamps


def classify(out: str) -> tuple[str, str]:
    """What a run printed about a failure: ``("traceback" | "one line" | "several lines" | "none", line)``."""
    lines = [ln.strip() for ln in out.splitlines() if "error:" in ln or "interrupted" in ln]
    if "Traceback" in out:
        return "traceback", next((ln for ln in reversed(out.splitlines()) if ln.strip()), "")[:200]
    if not lines:
        return "none", ""
    return ("one line" if len(lines) == 1 else "several lines"), lines[0][:200]


def skipped_of(out: str) -> int | None:
    """``K`` of the run's ``..., N to do, K already written`` line."""
    for ln in out.splitlines():
        if ln.startswith("sciencegen-generate:") and "already written" in ln:
            try:
                return int(ln.rsplit(",", 1)[1].split()[0])
            except (IndexError, ValueError):
                return None
    return None


def wait_members(bench: Bench, proc: subprocess.Popen, path: Path, k: int) -> None:
    """Poll the ``complete`` flags until ``k`` members are complete (or the process ends)."""
    from sciencegen.data.ensemble import completed_members

    done = 0
    while proc.poll() is None and done < k:
        if (path / "zarr.json").exists():
            try:
                done = int(completed_members(path, bench.members).sum())
            except Exception:
                done = 0
        time.sleep(0.01)


def wait_vanish(proc: subprocess.Popen, path: Path) -> None:
    """Poll (no sleep) until the store's top-level entries change: the old store is being deleted."""
    first = sorted(os.listdir(path))
    while proc.poll() is None:
        try:
            if sorted(os.listdir(path)) != first:
                return
        except FileNotFoundError:
            return


def signal_at(bench: Bench, rng: random.Random, proc: subprocess.Popen, path: Path, kind: str, how: str) -> str:
    """Send the kind's signal at a random moment.

    ``how``: ``"delay"`` (uniform in 0..0.9 x the truth's wall time, start-up included), ``"members"`` (once a
    random number of members is complete) or ``"vanish"`` (as soon as the existing store starts to be deleted).
    """
    t0 = time.perf_counter()
    if how == "delay":
        delay = rng.uniform(0.0, 0.9 * bench.truth_seconds)
        while proc.poll() is None and time.perf_counter() - t0 < delay:
            time.sleep(0.01)
        target = f"at {delay:.2f} s"
    elif how == "members":
        k = rng.randrange(1, bench.members)
        wait_members(bench, proc, path, k)
        target = f"after {k} complete"
    else:
        wait_vanish(proc, path)
        target = "while the old store is deleted"
    if proc.poll() is not None:
        return f"{target}: the run had already ended"
    phase = "store exists" if (path / "zarr.json").exists() else "no store yet"
    proc.send_signal(SIGNALS[kind])
    return f"{target} ({phase})"


def fault_signal(bench: Bench, rng: random.Random, trial: Trial, path: Path) -> tuple[dict, list[str]]:
    """``kill9`` / ``sigint`` / ``sigterm`` / ``kill9_during_overwrite``.

    Returns the stored truth of the ensemble on disk after the fault and the rerun's extra overrides.
    """
    extra: list[str] = []
    seed = 0
    if trial.kind == "kill9_during_overwrite":
        shutil.copytree(bench.truth(0)[0], path)
        seed = 1
        extra = ["generate.seed=1", "output.overwrite=true"]
        bench.truth(1)
    proc = bench.launch(path, None, *extra)
    how = rng.choice(("delay", "vanish") if extra else ("delay", "members"))
    trial.when = signal_at(bench, rng, proc, path, trial.kind, how)
    trial.fault_rc, out = bench.finish(proc)
    if trial.kind.startswith("kill9"):
        trial.fault_output = "killed" if trial.fault_rc == -signal.SIGKILL else classify(out)[0]
    else:
        trial.fault_output, trial.fault_line = classify(out)
        trial.fault_tail = "\n".join(out.splitlines()[-3:])
    if trial.fault_rc is None:
        trial.fault_output = "hang"
    if seed == 1:  # until the new store is in place the old, finished seed-0 store is the truth on disk
        from sciencegen.data.ensemble import read_meta

        meta = read_meta(path) if (path / "zarr.json").exists() else None
        on_disk = 0 if meta is not None and meta.get("identity", {}).get("seed") == 0 else 1
        trial.notes["store_on_disk_after_fault"] = f"seed {on_disk}"
        trial.when += f"; the seed-{on_disk} store on disk"
        return bench.raw[on_disk], extra
    bench.truth(0)
    return bench.raw[0], extra


def partial_copy(bench: Bench, rng: random.Random, trial: Trial, path: Path) -> None:
    """A copy of the truth; half of the time with a random tail of its chunks unflagged (a partial store)."""
    from sciencegen.data.ensemble import set_flags

    shutil.copytree(bench.truth(0)[0], path)
    if rng.random() < 0.5:
        chunk = bench.args.batch
        start = chunk * rng.randrange(1, -(-bench.members // chunk))
        set_flags(str(path), start, bench.members, False)
        trial.notes["flagged_members"] = start


def fault_corrupt(bench: Bench, rng: random.Random, trial: Trial, path: Path) -> tuple[dict, list[str]]:
    """Truncate, overwrite with random bytes, or flip one bit of the file of a random complete chunk (field or nfe)."""
    partial_copy(bench, rng, trial, path)
    from sciencegen.data.ensemble import completed_members

    name = rng.choice(("field", "nfe"))
    flagged = completed_members(path, bench.members)
    chunks = sorted({m // bench.args.batch for m in np.flatnonzero(flagged)})  # a chunk flagged complete
    target = path.joinpath(name, "c", str(rng.choice(chunks)), *["0"] * (2 if name == "field" else 0))
    data = bytearray(target.read_bytes())
    how = rng.choice(("truncate", "garble", "bitflip"))
    if how == "truncate":
        n = rng.randrange(0, len(data))
        data = data[:n]
        detail = f"to {n} of {len(target.read_bytes())} bytes"
    elif how == "garble":
        data = bytearray(rng.randbytes(len(data)))
        detail = f"{len(data)} random bytes"
    else:
        at, bit = rng.randrange(len(data)), rng.randrange(8)
        data[at] ^= 1 << bit
        detail = f"bit {bit} of byte {at}/{len(data)}"
    target.write_bytes(bytes(data))
    trial.when = f"{how} {target.relative_to(path)} ({detail})"
    return bench.raw[0], ["generate.verify=true"]


def fault_flags(bench: Bench, rng: random.Random, trial: Trial, path: Path) -> tuple[dict, list[str]]:
    """Delete the ``complete`` array of a (partial) copy: whole, only its chunks, or only its metadata."""
    partial_copy(bench, rng, trial, path)
    what = rng.choice(("array", "chunks", "metadata"))
    target = {"array": path / "complete", "chunks": path / "complete" / "c",
              "metadata": path / "complete" / "zarr.json"}[what]
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    trial.when = f"deleted complete {what}"
    return bench.raw[0], []


def check_rerun(bench: Bench, trial: Trial, truth: dict[str, np.ndarray], path: Path, out: str) -> None:
    """Did the rerun end as the truth, bitwise? Fills ``resumed_bitwise`` and ``mismatch``."""
    trial.rerun_output, trial.rerun_line = classify(out)
    trial.skipped = skipped_of(out)
    if trial.rerun_rc != 0 or trial.rerun_output == "traceback":
        trial.mismatch = f"rerun exit {trial.rerun_rc}: {trial.rerun_line}"
        return
    try:
        got = read_arrays(path)
    except Exception as exc:
        trial.mismatch = f"unreadable after the rerun: {type(exc).__name__}: {exc}"[:200]
        return
    bad = [k for k in ARRAYS if not same_bytes(got[k], truth[k], bench.members).all()]
    if not got["complete"].all():
        bad.append(f"complete ({int(got['complete'].sum())}/{bench.members})")
    if bad:
        diff = ~same_bytes(got["field"], truth["field"], bench.members)
        trial.mismatch = f"differs from the truth: {', '.join(bad)}; field members {np.flatnonzero(diff).tolist()}"
    trial.resumed_bitwise = not bad


def run_trial(bench: Bench, rng: random.Random, index: int, kind: str) -> Trial:
    """One fault, the audit before repair, the rerun, and the check against the truth."""
    t0 = time.perf_counter()
    trial = Trial(index=index, kind=kind)
    path = bench.tmp / f"trial{index}" / "s.zarr"
    path.parent.mkdir(parents=True)
    fault = {"corrupt": fault_corrupt, "flags": fault_flags}.get(kind, fault_signal)
    raw, extra = fault(bench, rng, trial, path)
    before = audit(path, raw, bench.members)
    flagged, good = before["flagged"], before["good"]
    trial.complete_after = int(flagged.sum())
    wrong = flagged & ~good
    if kind == "corrupt":
        trial.detectable = int((wrong & before["detectable"]).sum())
        trial.undetectable = int((wrong & ~before["detectable"]).sum())
    else:
        trial.falsely_complete = int(wrong.sum())
    if wrong.any():
        trial.notes["on_disk_after_fault"] = describe(path)
    truth = bench.truth(1 if kind == "kill9_during_overwrite" else 0)[1]
    chunk, stamps = field_stamps(path)
    trial.rerun_batch = bench.args.batch
    if rng.random() < 0.5:
        trial.rerun_batch = rng.choice([b for b in OTHER_BATCHES if b != bench.args.batch])
    trial.rerun_rc, out = bench.finish(bench.launch(path, trial.rerun_batch, *extra))
    _, after = field_stamps(path)
    kept = flagged & good
    if trial.notes.get("store_on_disk_after_fault") == "seed 0":
        kept[:] = False  # the old ensemble: replacing it is the job, not a loss
    trial.lost = sum(1 for m in np.flatnonzero(kept) if after.get(m // chunk) != stamps.get(m // chunk))
    check_rerun(bench, trial, truth, path, out)
    # a half-created store beside it (``.NAME.tmp-HOST-PID``) or zarr's temporary ``*.partial`` chunk files in it
    trial.litter = len(list(path.parent.glob(f".{path.name}.tmp-*"))) + len(list(path.rglob("*.partial")))
    trial.seconds = time.perf_counter() - t0
    if not bench.args.keep:
        shutil.rmtree(path.parent, ignore_errors=True)
    return trial


def run_trials(bench: Bench, rng: random.Random) -> list[Trial]:
    """The truth, then ``--trials`` trials cycling through ``--kinds``, each logged as it ends."""
    args = bench.args
    truth_path = bench.truth(0)[0]
    if not audit(truth_path, bench.raw[0], args.members)["good"].all():  # the audit itself, on the truth
        raise SystemExit("the audit finds the uninterrupted run different from itself")
    log.info("truth: %d members in %.1f s (whole process); %d trials of %s", args.members, bench.truth_seconds,
             args.trials, ", ".join(args.kinds))
    rows = []
    for i in range(args.trials):
        kind = args.kinds[i % len(args.kinds)]
        r = run_trial(bench, rng, i, kind)
        rows.append(r)
        log.info("%2d %-22s %s | exit %s %s | complete %d, false %d, det/undet %d/%d, lost %d | rerun batch %d: "
                 "%s %s (%.1f s)", i, kind, r.when, r.fault_rc, r.fault_output, r.complete_after,
                 r.falsely_complete, r.detectable, r.undetectable, r.lost, r.rerun_batch,
                 "bitwise" if r.resumed_bitwise else "NOT BITWISE", r.mismatch, r.seconds)
    return rows


def counts(values: Any) -> str:
    """``"a: 3, b: 1"`` for the values seen, or ``"-"``."""
    seen: dict[str, int] = {}
    for v in values:
        seen[v] = seen.get(v, 0) + 1
    return ", ".join(f"{k}: {n}" for k, n in sorted(seen.items())) or "-"


def summarise(rows: list[Trial], kinds: list[str]) -> str:
    """The table: one row per kind (counts), then the totals."""
    cols = ("kind", "trials", "faulted exit codes", "faulted output", "complete after fault (mean)",
            "falsely complete", "corrupt flagged: detectable / undetectable", "lost", "resumed bitwise",
            "rerun traceback", "litter", "s/trial")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    groups = [(k, [r for r in rows if r.kind == k]) for k in kinds] + [("**all**", rows)]
    for kind, rs in groups:
        if not rs:
            continue
        code_s = counts(str(r.fault_rc) for r in rs if r.kind not in ("corrupt", "flags"))
        out_s = counts(r.fault_output for r in rs if r.fault_output)
        lines.append(
            f"| {kind} | {len(rs)} | {code_s} | {out_s} | {statistics.mean(r.complete_after for r in rs):.1f} "
            f"| {sum(r.falsely_complete for r in rs)} | {sum(r.detectable for r in rs)} / "
            f"{sum(r.undetectable for r in rs)} | {sum(r.lost for r in rs)} "
            f"| {sum(r.resumed_bitwise for r in rs)}/{len(rs)} "
            f"| {sum(r.rerun_output == 'traceback' for r in rs)} | {sum(r.litter for r in rs)} "
            f"| {statistics.mean(r.seconds for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    """Parse the options, make the truth, run the trials, print the table (and write ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--trials", type=int, default=20, help="number of faults (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RNG that picks moments and parameters")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="fault kinds to cycle through")
    p.add_argument("--members", type=int, default=24)
    p.add_argument("--batch", type=int, default=2, help="generate.batch_size of the faulted runs and the truth")
    p.add_argument("--steps", type=int, default=400, help="picard_sde steps (400: 0.15-0.3 s a chunk of 2)")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="generate.threads and OMP_NUM_THREADS of each run")
    p.add_argument("--dir", default=None, help="where to make the work directory (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (every trial's store, the truths)")
    p.add_argument("--json", default=None, help="write the raw rows here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    tmp = Path(tempfile.mkdtemp(prefix="sg-faults-", dir=args.dir))
    try:
        rows = run_trials(Bench(args, tmp), random.Random(args.seed))
    finally:
        if args.keep:
            log.info("stores kept in %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.trials} trials, seed {args.seed}, GRF {args.size}^2 oracle, picard_sde {args.steps} steps, "
          f"{args.members} members in batches of {args.batch}\n")
    print(summarise(rows, list(args.kinds)))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
