"""Peak memory and time of ``sciencegen-evaluate`` on a large ensemble store (docs/evaluate.md).

Builds a store that follows the ensemble contract of ``sciencegen-generate`` (dim ``member`` + ``y, x``, float32
``field``, per-member ``rounds``/``nfe``/``complete``, the root attributes of a small real store with ``members``
patched), filled chunk by chunk with exact GRF samples (region writes, ~32 MB member chunks; the last chunk is
left unwritten, i.e. incomplete, as in a store still being written). Then runs the console script on it in a
subprocess against the exact law and reports its wall time and peak resident memory (``ru_maxrss`` of the child
from ``wait4``, which covers the whole process tree it waited for; Dask runs threads, no worker processes), plus
an RSS-vs-time trace sampled every 0.2 s.

    OMP_NUM_THREADS=1 python benchmarks/evaluate_memory.py --gb 4 --size 256 --threads 1 \\
        --dir /tmp/evalmem --json docs/figures/evaluate_memory.json --figure docs/figures/evaluate_memory.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np


def build_store(path: Path, size: int, gb: float, chunk_mb: float, incomplete_chunks: int, seed: int = 0) -> dict:
    """An ensemble store of about ``gb`` GiB of float32 GRF fields; returns its description."""
    import dask.array as da
    import torch
    import xarray as xr
    import zarr

    from sciencegen.config import register
    from sciencegen.data.ensemble import ATTR
    from sciencegen.pipelines.generate import run_generate
    from sciencegen.targets import GaussianRandomField

    # a small real store: its attributes and coordinates are the template
    small = path.parent / f".{path.name}.small"
    if small.exists():
        shutil.rmtree(small)
    from hydra import compose, initialize_config_dir

    from sciencegen.config import config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("generate", overrides=[
            "dataset=grf", f"dataset.size={size}", "model=oracle", "sampler=dpm2m", "sampler.steps=8",
            "generate.members=2", "generate.batch_size=2", "generate.progress=false", f"output.path={small}"])
    run_generate(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = xr.open_zarr(small)
    field_bytes = size * size * 4
    chunk = max(1, int(chunk_mb * 2**20) // field_bytes)
    n_chunks = max(incomplete_chunks + 1, math.ceil(gb * 2**30 / (chunk * field_bytes)))
    members = n_chunks * chunk
    meta = json.loads(ref.attrs[ATTR])
    meta["identity"]["members"] = members
    meta["chunk"] = chunk
    attrs = dict(ref.attrs)
    attrs[ATTR] = json.dumps(meta, sort_keys=True)
    attrs["history"] = attrs.get("history", "") + "\nbenchmarks/evaluate_memory.py: filled with exact GRF samples"
    shape = (members, size, size)
    tmpl = xr.Dataset(
        {"field": (("member", "y", "x"), da.zeros(shape, chunks=(chunk, size, size), dtype="f4"),
                   dict(ref["field"].attrs)),
         "rounds": (("member",), da.zeros(members, chunks=chunk, dtype="i4"), dict(ref["rounds"].attrs)),
         "nfe": (("member",), da.zeros(members, chunks=chunk, dtype="i4"), dict(ref["nfe"].attrs)),
         "complete": (("member",), da.zeros(members, chunks=chunk, dtype=bool), dict(ref["complete"].attrs))},
        coords={"member": ("member", np.arange(members), dict(ref["member"].attrs)),
                "y": ref["y"].load(), "x": ref["x"].load()},
        attrs=attrs)
    ref.close()
    shutil.rmtree(small)
    if path.exists():
        shutil.rmtree(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmpl.to_zarr(path, mode="w-", compute=False, consolidated=False,
                     encoding={"field": {"_FillValue": np.float32("nan")}})
    target = GaussianRandomField(size)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    written = n_chunks - incomplete_chunks
    for c in range(written):
        a, b = c * chunk, (c + 1) * chunk
        x = target.sample(b - a, gen, dtype=torch.float32)[:, 0].numpy()
        data = xr.Dataset({"field": (("member", "y", "x"), x),
                           "rounds": (("member",), np.full(b - a, 16, "i4")),
                           "nfe": (("member",), np.full(b - a, 16, "i4"))})
        data.to_zarr(path, region={"member": slice(a, b)}, consolidated=False)
        xr.Dataset({"complete": (("member",), np.ones(b - a, bool))}).to_zarr(
            path, region={"member": slice(a, b)}, consolidated=False)
        if c % 16 == 0 or c == written - 1:
            print(f"  chunk {c + 1}/{n_chunks} written ({time.perf_counter() - t0:.0f} s)", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))
    return {"members": members, "chunk": chunk, "complete": written * chunk, "size": size,
            "field_bytes": members * field_bytes, "build_seconds": time.perf_counter() - t0}


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``cmd``; wall time, ``ru_maxrss`` of the child (wait4) and a sampled RSS trace of its process tree."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    trace: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        try:
            p = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            try:
                rss = p.memory_info().rss + sum(ch.memory_info().rss for ch in p.children(recursive=True))
                trace.append((time.perf_counter() - t0, rss))
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    return {"returncode": proc.returncode, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "sampled_peak_rss_bytes": max((r for _, r in trace), default=0), "trace": trace, "output": out}


def plot(res: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    t = np.array([p[0] for p in res["trace"]])
    r = np.array([p[1] for p in res["trace"]]) / 2**30
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(t, r, "C0-", lw=1.2, label="resident memory of sciencegen-evaluate")
    ax.axhline(res["peak_rss_bytes"] / 2**30, color="C0", ls=":", lw=1,
               label=f"peak (ru_maxrss) {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    ax.axhline(res["store_bytes"] / 2**30, color="C3", ls="--", lw=1,
               label=f"store on disk {res['store_bytes'] / 2**30:.2f} GiB")
    ax.axhline(2.0, color="k", ls="-.", lw=0.8, label="2 GiB budget")
    ax.set_xlabel("time [s]")
    ax.set_ylabel("memory [GiB]")
    ax.set_ylim(0, max(2.2, res["store_bytes"] / 2**30 * 1.1))
    ax.set_title(f"sciencegen-evaluate on {res['complete']} complete members of {res['size']}² "
                 f"({res['threads']} thread{'s' if res['threads'] > 1 else ''}): {res['seconds']:.0f} s wall, "
                 f"{res['cpu_seconds']:.0f} s CPU", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=4.0, help="GiB of float32 fields in the store (default 4)")
    p.add_argument("--size", type=int, default=256, help="grid points per side (default 256)")
    p.add_argument("--chunk-mb", type=float, default=32.0, help="MiB per member chunk of the store (default 32)")
    p.add_argument("--incomplete-chunks", type=int, default=1, help="trailing chunks left unwritten (default 1)")
    p.add_argument("--threads", type=int, default=1, help="evaluate.threads (default 1)")
    p.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    p.add_argument("--reuse", action="store_true", help="reuse an existing store in --dir")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--figure", default=None, help="write the memory-vs-time figure here")
    a = p.parse_args(argv)
    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="evalmem-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "big.zarr"
    try:
        info_file = work / "big.json"
        if a.reuse and store.exists() and info_file.exists():
            info = json.loads(info_file.read_text())
        else:
            print(f"building a {a.gb:g} GiB store of {a.size}² fields in {store}", flush=True)
            info = build_store(store, a.size, a.gb, a.chunk_mb, a.incomplete_chunks)
            info_file.write_text(json.dumps(info))
        nbytes = store_bytes(store)
        print(f"store: {info['members']} members ({info['complete']} complete), {nbytes / 2**30:.2f} GiB on disk, "
              f"chunks of {info['chunk']} members", flush=True)
        out = work / "evaluation"
        if out.exists():
            shutil.rmtree(out)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               "OMP_WAIT_POLICY": "PASSIVE"}
        exe = shutil.which("sciencegen-evaluate")
        cmd = [exe] if exe else [sys.executable, "-c", "from sciencegen.cli import evaluate; evaluate()"]
        cmd += ["dataset=grf", f"dataset.size={a.size}", f"samples.path={store}", f"output.dir={out}",
                f"evaluate.threads={a.threads}", f"hydra.run.dir={work / 'run'}"]
        print("running: " + " ".join(cmd[len(cmd) - 6:]), flush=True)
        res = measure(cmd, env, work)
        print(res["output"], end="")
        if res["returncode"] != 0:
            print(f"sciencegen-evaluate failed with status {res['returncode']}", file=sys.stderr)
            return 1
        res.update(info)
        res["store_bytes"] = nbytes
        res["threads"] = a.threads
        print(f"\nevaluated a {nbytes / 2**30:.2f} GiB store in {res['seconds']:.1f} s "
              f"({res['cpu_seconds']:.1f} s CPU); peak resident memory "
              f"{res['peak_rss_bytes'] / 2**30:.2f} GiB (ru_maxrss), {res['sampled_peak_rss_bytes'] / 2**30:.2f} GiB "
              f"sampled; metrics in {out / 'metrics.json'}")
        if a.figure:
            plot(res, Path(a.figure))
            print(f"figure: {a.figure}")
        if a.json:
            slim = {k: v for k, v in res.items() if k != "output"}
            slim["trace"] = [[round(t, 2), r] for t, r in res["trace"]]
            slim["command"] = " ".join(["sciencegen-evaluate", *cmd[-6:]])
            Path(a.json).write_text(json.dumps(slim, indent=1) + "\n")
        return 0
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
