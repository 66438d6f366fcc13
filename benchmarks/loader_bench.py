"""Throughput and memory of the streaming loader against plain Zarr reads of the same chunks.

Creates (unless present) a float32 store in the prepared-dataset format (dims ``sample, y, x``, chunks of
``--chunk`` samples, statistics group, ``sciencegen_dataset`` attribute), written chunk by chunk so that
creating it needs little memory; then reads it in full, in one run, side by side and alternating:

* ``FieldStream`` + ``make_loader`` (shuffle on, normalised batches) for each ``--workers`` value;
* plain ``zarr``: ``zarr.open_array(...)[slice]`` per chunk, in the same (shuffled) chunk order.

It reports the median samples/s of each over ``--repeats`` epochs, their ratio, and the peak resident memory
(the process plus its DataLoader workers, sampled every 20 ms, and ``ru_maxrss``). The OS page cache makes a
second read of a file faster: the order alternates, and with ``--cold`` the store's files are evicted from
the page cache (``posix_fadvise(DONTNEED)``) before every timed read.

Example::

    OMP_NUM_THREADS=1 python benchmarks/loader_bench.py --size-gb 4 --workers 0 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """Peak memory of this process plus its children (DataLoader workers), sampled in a thread.

    ``peak``: sum of resident set sizes, every 50 ms (counts pages shared between processes, e.g. the torch
    libraries of forked workers, once per process: an upper bound); ``peak_pss``: sum of proportional set
    sizes (shared pages split between the processes sharing them: the memory the tree actually uses), every
    2 s only. Reading PSS (~10 ms of CPU per process) and listing children (~4 ms) are kept rare so that the
    sampler does not slow the readers it measures.
    """

    def __init__(self, interval: float = 0.05, children_every: int = 10, pss_every: int = 40):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._children_every, self._pss_every = children_every, pss_every
        self._procs = [self._proc]
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self, pss: bool, children: bool) -> None:
        if children:
            self._procs = [self._proc, *self._proc.children(recursive=True)]
        rss = total_pss = 0
        for p in self._procs:
            try:
                if pss:
                    info = p.memory_full_info()
                    total_pss += getattr(info, "pss", info.rss)
                else:
                    info = p.memory_info()
            except Exception:  # a worker exiting
                continue
            rss += info.rss
        self.peak = max(self.peak, rss)
        if pss:
            self.peak_pss = max(self.peak_pss, total_pss)

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(self._interval):
            i += 1
            self._sample(pss=i % self._pss_every == 0, children=i % self._children_every == 0)

    def __enter__(self) -> PeakRSS:
        self.peak = self.peak_pss = 0
        self._sample(pss=True, children=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample(pss=True, children=True)


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) so far of this process and of each live child, by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except Exception:
            pass
    return out


def create_store(path: Path, size_gb: float, n: int, chunk: int, seed: int = 0) -> dict:
    """A prepared-format store of ~``size_gb`` GB of float32 ``N(3, 2²)`` fields, written chunk by chunk."""
    import dask.array as da
    import xarray as xr
    import zarr

    samples = int(round(size_gb * 1e9 / (4 * n * n) / chunk)) * chunk
    meta = {"format": 1, "name": "loader-bench", "variables": ["field"], "sample_dims": ["sample"],
            "field_dims": ["y", "x"], "periodic": {"y": True, "x": True}, "nonfinite": "error", "complete": False,
            "config": {"size_gb": size_gb, "n": n, "chunk": chunk, "seed": seed}}
    template = xr.Dataset({"field": (("sample", "y", "x"),
                                     da.zeros((samples, n, n), dtype="float32", chunks=(chunk, n, n)))})
    template.attrs["sciencegen_dataset"] = json.dumps(meta)
    template.to_zarr(path, mode="w", compute=False, consolidated=False,
                     encoding={"field": {"chunks": (chunk, n, n)}})
    z = zarr.open_array(str(path / "field"), mode="r+")
    rng = np.random.default_rng(seed)
    total, total2, t0 = 0.0, 0.0, time.perf_counter()
    for i, start in enumerate(range(0, samples, chunk)):
        block = rng.standard_normal((chunk, n, n), dtype=np.float32) * np.float32(2.0) + np.float32(3.0)
        z[start : start + chunk] = block
        b = block.astype(np.float64)
        total += b.sum()
        total2 += (b * b).sum()
        if i % 128 == 0:
            print(f"  writing {start + chunk}/{samples} samples ({time.perf_counter() - t0:.0f} s)", flush=True)
    count = samples * n * n
    mean = total / count
    std = float(np.sqrt(max(total2 / count - mean * mean, 0.0)))
    stats = xr.Dataset({"mean": ("variable", [mean]), "std": ("variable", [std]), "min": ("variable", [np.nan]),
                        "max": ("variable", [np.nan]), "count": ("variable", [count])},
                       coords={"variable": ["field"]})
    stats.attrs["variables"] = ["field"]
    stats.to_zarr(path, group="statistics", mode="w", consolidated=False)
    meta["complete"] = True
    zarr.open_group(str(path), mode="a").attrs["sciencegen_dataset"] = json.dumps(meta)
    return meta


def evict(path: Path) -> None:
    """Drop the store's files from the OS page cache (no root needed; only these files)."""
    for root, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_stream(loader, stream, epoch: int) -> tuple[int, float]:
    stream.set_epoch(epoch)
    t0 = time.perf_counter()
    samples = 0
    for batch in loader:
        samples += batch.shape[0]
    return samples, time.perf_counter() - t0


def read_zarr(path: Path, stream, epoch: int) -> tuple[int, float]:
    import zarr

    order = stream._order(epoch)  # the same shuffled chunk order as the stream's
    c = stream.chunk_shape[0]
    t0 = time.perf_counter()
    z = zarr.open_array(str(path / "field"), mode="r")
    samples = 0
    for ch in order.tolist():
        samples += z[ch * c : (ch + 1) * c].shape[0]
    return samples, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gb", type=float, default=4.0, help="store size in GB (float32); default 4")
    p.add_argument("--path", default="/tmp/sciencegen_loader_bench.zarr", help="store location (reused if present)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try; default 0 2")
    p.add_argument("--repeats", type=int, default=3, help="epochs read per reader (median); default 3")
    p.add_argument("--keep", action="store_true", help="keep the store (default: delete it at the end)")
    p.add_argument("--size", type=int, default=128, help="field side (fields are size x size); default 128")
    p.add_argument("--chunk", type=int, default=64, help="samples per chunk; default 64 (4 MB at 128²)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buffer-chunks", type=int, default=4)
    p.add_argument("--cold", action="store_true", help="evict the store from the page cache before every read")
    a = p.parse_args(argv)

    import torch

    from sciencegen.data.loader import from_store, make_loader

    path = Path(a.path)
    want = {"size_gb": a.size_gb, "n": a.size, "chunk": a.chunk, "seed": 0}
    created = False
    try:
        meta = None
        if path.exists():
            import zarr

            try:
                meta = json.loads(zarr.open_group(str(path), mode="r").attrs["sciencegen_dataset"])
            except Exception:
                meta = None
            if not meta or meta.get("config") != want or not meta.get("complete"):
                print(f"{path} exists but is not this benchmark's store; remove it or pass another --path",
                      file=sys.stderr)
                return 2
            print(f"reusing {path}")
        else:
            print(f"creating {path} ({a.size_gb} GB) ...", flush=True)
            t0 = time.perf_counter()
            with PeakRSS() as mem:
                create_store(path, a.size_gb, a.size, a.chunk)
            created = True
            print(f"  created in {time.perf_counter() - t0:.0f} s, peak RSS {mem.peak / 2**20:.0f} MiB", flush=True)
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

        streams = {w: from_store(path, batch_size=a.batch_size, split="all", holdout=0.0, shuffle=True,
                                 buffer_chunks=a.buffer_chunks) for w in a.workers}
        s0 = streams[a.workers[0]]
        nbytes = s0.n_samples * a.size * a.size * 4
        print(f"store: {s0.n_samples} samples of {a.size}x{a.size} float32 = {nbytes / 1e9:.2f} GB "
              f"({disk / 1e9:.2f} GB on disk), {s0.n_chunks} chunks of {a.chunk}; batch {a.batch_size}, "
              f"shuffle buffer {a.buffer_chunks} chunks; torch threads {torch.get_num_threads()}; "
              f"{'cold' if a.cold else 'warm'} page cache; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}")
        loaders = {w: make_loader(streams[w], num_workers=w) for w in a.workers}
        readers = [(f"FieldStream workers={w}", w) for w in a.workers] + [("plain zarr", None)]
        times: dict[str, list[float]] = {name: [] for name, _ in readers}
        cpus: dict[str, list[float]] = {name: [] for name, _ in readers}
        peaks: dict[str, int] = {name: 0 for name, _ in readers}
        peaks_pss: dict[str, int] = {name: 0 for name, _ in readers}
        log = []
        for r in range(a.repeats):
            seq = readers if r % 2 == 0 else readers[::-1]  # alternate: no reader always goes first
            for name, w in seq:
                if a.cold:
                    evict(path)
                before = cpu_seconds()
                with PeakRSS() as mem:
                    if w is None:
                        n, t = read_zarr(path, s0, r)
                    else:
                        n, t = read_stream(loaders[w], streams[w], r)
                cpu = sum(v - before.get(pid, 0.0) for pid, v in cpu_seconds().items())
                cpus[name].append(cpu)
                assert n == s0.n_samples, (name, n, s0.n_samples)
                times[name].append(t)
                peaks[name] = max(peaks[name], mem.peak)
                peaks_pss[name] = max(peaks_pss[name], mem.peak_pss)
                log.append(f"{name}: {t:.1f} s")
                print(f"  epoch {r} {name:24s} {n / t:9.0f} samples/s  {nbytes / t / 1e9:5.2f} GB/s  "
                      f"{t:6.1f} s (CPU {cpu:5.1f} s)  peak RSS {mem.peak / 2**20:6.0f} MiB  "
                      f"PSS {mem.peak_pss / 2**20:6.0f} MiB", flush=True)
        del loaders
        base = statistics.median(times["plain zarr"])
        base_cpu = statistics.median(cpus["plain zarr"])
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print("\nread order: " + " | ".join(log))
        print("\n| reader | median samples/s | GB/s | epochs (s) | speed vs plain zarr | median CPU s "
              "| CPU vs plain zarr | peak RSS sum (MiB) | peak PSS sum (MiB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, _ in readers:
            med = statistics.median(times[name])
            cpu_med = statistics.median(cpus[name])
            runs = ", ".join(f"{t:.1f}" for t in times[name])
            print(f"| {name} | {s0.n_samples / med:.0f} | {nbytes / med / 1e9:.2f} | {runs} | "
                  f"{base / med:.2f} | {cpu_med:.1f} | {cpu_med / base_cpu:.2f}x | {peaks[name] / 2**20:.0f} | "
                  f"{peaks_pss[name] / 2**20:.0f} |")
        print(f"\nru_maxrss: this process {own:.0f} MiB, largest child {kids:.0f} MiB; "
              f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if created and not a.keep:
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
