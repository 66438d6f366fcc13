"""What streaming to Zarr costs: wall time with writes vs output discarded, and peak memory vs members.

    OMP_NUM_THREADS=1 python benchmarks/generate_overhead.py --size 64 --members 1024 --repeats 5 \
        --memory-members 256 4096

Every measurement is a fresh child process running :func:`sciencegen.pipelines.generate.run_generate` on the
exact GRF (``model=oracle``), so peak RSS is that of one generation. Timing pairs are interleaved
(write, discard, write, discard, ...) and the ratio is the median of the per-pair ratios; the time is the
sampling loop including the wait for the last write (``summary["seconds"]``), not the process start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from sciencegen.config import config_dir, register
    from sciencegen.pipelines.generate import run_generate

    torch.set_num_threads(args.threads)
    register()
    over = ["dataset=grf", f"dataset.size={args.size}", "model=oracle", f"sampler={args.sampler}",
            f"sampler.steps={args.steps}", f"generate.members={args.members}", f"generate.batch_size={args.batch}",
            "generate.progress=false", f"output.path={args.out}", f"output.discard={str(args.discard).lower()}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("generate", overrides=over)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        s = run_generate(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": s["seconds"], "peak_bytes": peak, "done": s["done"], "bytes": s["bytes"]}))


def run(args: argparse.Namespace, members: int, discard: bool, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", "--size", str(args.size), "--steps", str(args.steps),
           "--sampler", args.sampler, "--members", str(members), "--batch", str(args.batch),
           "--threads", str(args.threads), "--out", str(out)] + (["--discard"] if discard else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--sampler", default="dpm2m")
    p.add_argument("--members", type=int, default=1024, help="members of the timing runs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory-members", type=int, nargs="*", default=[256, 4096])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--discard", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    print(f"GRF {args.size}^2 oracle, {args.sampler} {args.steps} steps, batch {args.batch}, "
          f"{args.threads} thread(s); timing: {args.members} members x {args.repeats} interleaved pairs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sg-overhead-") as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / f"t{r}.zarr"
            w = run(args, args.members, False, out)
            d = run(args, args.members, True, out)
            rows.append({"write_s": w["seconds"], "discard_s": d["seconds"], "ratio": w["seconds"] / d["seconds"]})
            print(f"  pair {r}: with writes {w['seconds']:.2f} s, discarded {d['seconds']:.2f} s, "
                  f"ratio {rows[-1]['ratio']:.3f}", flush=True)
        mem = []
        for m in args.memory_members:
            res = run(args, m, False, Path(tmp) / f"m{m}.zarr")
            mem.append({"members": m, "peak_mib": res["peak_bytes"] / 2**20, "seconds": res["seconds"],
                        "written_mib": res["bytes"] / 2**20})
            print(f"  {m} members: peak RSS {mem[-1]['peak_mib']:.0f} MiB, {mem[-1]['written_mib']:.0f} MiB "
                  f"written in {res['seconds']:.1f} s", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    print(f"\nwall with writes / discarded: median {ratio:.3f} (min {min(r['ratio'] for r in rows):.3f}, "
          f"max {max(r['ratio'] for r in rows):.3f})")
    if len(mem) >= 2:
        print(f"peak memory {mem[-1]['members']} vs {mem[0]['members']} members: "
              f"{mem[-1]['peak_mib'] / mem[0]['peak_mib']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"timing": rows, "median_ratio": ratio, "memory": mem,
                                               "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
