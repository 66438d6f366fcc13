"""sciencegen-data under faults: a full or read-only disk, an output under a file, SIGINT/SIGTERM, writers killed
mid-write, and an input declaring a huge variable. Real processes, real signals, real file systems (tests/fsfaults.py).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr
from fsfaults import read_only, small_fs

from sciencegen.data.store import open_prepared, remove_stale_temps

CODE = "from sciencegen.cli import data; data()"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
GRF_SMALL = ["dataset=grf", "dataset.size=8", "dataset.samples=16", "progress=false"]
# a Kolmogorov run of about 5 CPU-s in 16 tasks: long enough to be interrupted in the middle
KOLMOGOROV_SECONDS = ["dataset=kolmogorov", "dataset.trajectories=16", "dataset.chunk=1", "dataset.size=32",
                      "dataset.snapshots=4", "dataset.spinup=10.0", "dataset.snapshot_interval=1.0", "progress=false"]


def host_tag() -> str:
    """This host as temp names spell it (the rule of sciencegen.models.checkpoint, written out independently)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def cli(args: list[str], cwd: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """Run sciencegen-data; return the result and the CPU seconds it used (independent of the machine's load)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-c", CODE, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The whole of stderr, which must be one line and no traceback."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    return lines[0]


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if re.search(r"\.(tmp|old)-", p.name))


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    """The pid of a process that existed and was reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    try:
        os.kill(p.pid, 0)
    except ProcessLookupError:
        return p.pid
    pytest.skip(f"pid {p.pid} was reused at once")


def wait_for_temp(d: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The temp folder of a running writer in ``d``, once it exists."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = [p for p in d.iterdir() if ".tmp-" in p.name] if d.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the writer never created its temp folder")


# --------------------------------------------------------------------------- disk full, read-only, a file in the way


def test_disk_full_is_one_line_and_complete_stores_stay_usable(tmp_path):
    with small_fs(tmp_path / "disk", "1m") as disk:
        done = disk / "small.zarr"
        r, _ = cli([*GRF_SMALL, f"output.path={done}"], tmp_path)
        assert r.returncode == 0, r.stderr
        before = files(done)
        # a new store that cannot fit (8.4 MB of float32 on 1 MB)
        big = disk / "big.zarr"
        r, _ = cli(["dataset=grf", "dataset.size=32", "dataset.samples=2048", f"output.path={big}",
                    "progress=false"], tmp_path)
        line = one_error_line(r)
        assert r.returncode in (1, 2)
        assert line.startswith(f"sciencegen-data: error: cannot write {big}: the disk is full;"), line
        assert "nothing was written" in line and "complete stores stay usable" in line
        assert not big.exists() and temps(disk) == []
        # replacing the complete store with one that cannot fit: the old one stays, byte for byte
        r, _ = cli(["dataset=grf", "dataset.size=32", "dataset.samples=2048", f"output.path={done}",
                    "output.overwrite=true", "progress=false"], tmp_path)
        line = one_error_line(r)
        assert r.returncode in (1, 2) and "the disk is full" in line and f"the store already at {done} is kept" in line
        assert temps(disk) == [] and files(done) == before
        p = open_prepared(done)
        assert p.samples == 16 and p.field_shape == (8, 8)


def test_read_only_output_is_refused_before_any_work_and_reuse_still_works(tmp_path):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    kept = shelf / "kept.zarr"
    r, _ = cli([*GRF_SMALL, f"output.path={kept}"], tmp_path)
    assert r.returncode == 0, r.stderr
    with read_only(shelf):
        # the default Kolmogorov set is about 100 CPU-s of solver: refused before any of it
        out = shelf / "k.zarr"
        r, cpu = cli(["dataset=kolmogorov", f"output.path={out}", "progress=false"], tmp_path)
        line = one_error_line(r)
        assert r.returncode in (1, 2)
        assert line == (f"sciencegen-data: error: cannot write {out}: the filesystem is read-only; nothing was "
                        f"written to {out} and complete stores stay usable")
        assert cpu < 30, cpu
        # a complete store of the same config on a read-only shelf is reused, not rewritten
        r, _ = cli([*GRF_SMALL, f"output.path={kept}"], tmp_path)
        assert r.returncode == 0 and "reused (same config)" in r.stdout, r.stderr
    assert temps(shelf) == [] and not out.exists()


def test_output_under_a_regular_file_is_one_line(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    r, _ = cli([*GRF_SMALL, f"data_root={blocker / 'sub'}"], tmp_path)  # default store path DATA_ROOT/NAME-HASH.zarr
    line = one_error_line(r)
    assert r.returncode in (1, 2)
    assert re.match(rf"sciencegen-data: error: cannot write {re.escape(str(blocker))}/sub/grf-\w+\.zarr: "
                    rf"{re.escape(str(blocker))} is a file, not a directory; nothing was written", line), line
    assert blocker.read_text() == "mine"


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_generation_stops_cleanly(tmp_path, sig):
    out = tmp_path / "data" / "k.zarr"
    proc = subprocess.Popen([sys.executable, "-c", CODE, *KOLMOGOROV_SECONDS, f"output.path={out}"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_temp(out.parent, proc)
        time.sleep(0.5)  # inside the generation (16 tasks of about 0.3 CPU-s each)
        assert proc.poll() is None, "the generation ended before the signal"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0] == (f"sciencegen-data: interrupted ({sig.name}); nothing was written to {out} (the partial "
                        "store was removed), rerun the same command to prepare it")
    assert not out.exists() and temps(out.parent) == []


# --------------------------------------------------------------------------- writers that died


def test_temp_folders_of_dead_writers_are_removed_by_the_next_run(tmp_path):
    data = tmp_path / "data"
    # a writer killed mid-write (kill -9: no cleanup possible) leaves its temp folder ...
    proc = subprocess.Popen([sys.executable, "-c", CODE, *KOLMOGOROV_SECONDS, f"data_root={data}"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = wait_for_temp(data, proc)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert killed.exists() and killed.name.endswith(f".tmp-{host_tag()}-{proc.pid}"), killed.name
    # ... beside others: of a live process (this one), of another host, and from earlier versions (no host)
    dead = dead_pid()
    live = data / f".grf-0123456789.zarr.tmp-{host_tag()}-{os.getpid()}"
    other_host = data / f".grf-0123456789.zarr.tmp-otherhost-{dead}"
    legacy_old = data / f".grf-0123456789.zarr.tmp-{dead}"
    legacy_recent = data / f".kolmogorov-0123456789.zarr.tmp-{dead}"
    for d in (live, other_host, legacy_old, legacy_recent):
        d.mkdir()
        (d / "zarr.json").write_text("{}")
    hours_ago = time.time() - 2 * 3600
    for p in (legacy_old / "zarr.json", legacy_old):
        os.utime(p, (hours_ago, hours_ago))
    r, _ = cli([*GRF_SMALL, f"data_root={data}"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert not killed.exists() and not legacy_old.exists()
    assert temps(data) == sorted(p.name for p in (live, other_host, legacy_recent))
    assert f"removed {killed}" in r.stdout


def test_a_writer_killed_while_swapping_stores_gets_its_old_store_back(tmp_path):
    from sciencegen.data.prepare import prepare

    conf = {"_target_": "sciencegen.physics.datasets.GRFSource", "size": 8, "samples": 16}
    store = tmp_path / "s.zarr"
    prepare(conf, store)
    before = files(store)
    dead = dead_pid()
    aside = tmp_path / f".s.zarr.old-{host_tag()}-{dead}"
    os.replace(store, aside)  # where a writer killed between its two renames leaves the replaced store
    assert remove_stale_temps(tmp_path) == [aside]
    assert files(store) == before and not aside.exists()
    assert open_prepared(store).samples == 16


# --------------------------------------------------------------------------- a huge declared variable


def test_a_huge_declared_variable_is_refused_up_front(tmp_path):
    path = tmp_path / "huge.nc"
    with netCDF4.Dataset(path, "w") as f:  # declared, never written: the file stays tiny
        for dim, n in (("time", 2000), ("y", 2000), ("x", 2000), ("step", 5000)):
            f.createDimension(dim, n)
        f.createVariable("v", "f4", ("time", "y", "x"))
        f.createVariable("w", "f4", ("step", "y", "x"))
    assert path.stat().st_size < 100_000
    out = tmp_path / "h.zarr"
    base = ["dataset=netcdf", f"dataset.path={path}", f"output.path={out}", "progress=false"]
    r, cpu = cli([*base, "dataset.variables=[v]", "dataset.sample_dims=[time]", "dataset.max_gb=16"], tmp_path)
    line = one_error_line(r)
    assert r.returncode == 2 and cpu < 10, (r.returncode, cpu)
    assert line == (f"sciencegen-data: error: {path}: variable 'v' has shape (2000, 2000, 2000) float32, 32.0 GB, "
                    "more than dataset.max_gb=16; raise dataset.max_gb to read it all, or read a part with "
                    "dataset.select")
    # the default limit (64 GB) refuses 5000 x 2000 x 2000 float32 = 80 GB
    r, cpu = cli([*base, "dataset.variables=[w]", "dataset.sample_dims=[step]"], tmp_path)
    line = one_error_line(r)
    assert r.returncode == 2 and cpu < 10, (r.returncode, cpu)
    assert "variable 'w' has shape (5000, 2000, 2000) float32, 80.0 GB, more than dataset.max_gb=64;" in line
    assert not out.exists() and temps(tmp_path) == []


def test_what_is_read_and_its_size_are_logged(tmp_path):
    rng = np.random.default_rng(0)
    src = xr.Dataset({"t2m": (("time", "lat", "lon"), rng.standard_normal((40, 10, 20)))})  # float64: 64 kB
    src.to_netcdf(tmp_path / "t.nc")
    out = tmp_path / "t.zarr"
    r, _ = cli(["dataset=netcdf", f"dataset.path={tmp_path / 't.nc'}", "dataset.variables=[t2m]",
                f"output.path={out}", "progress=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"reading t2m (40, 10, 20) float64 from {tmp_path / 't.nc'}: 64.0 kB" in r.stdout, r.stdout
    assert f"writing {out}: 40 samples, 32.0 kB uncompressed" in r.stdout, r.stdout
    # the size limit is not part of the store's identity: another limit reuses the same store
    r, _ = cli(["dataset=netcdf", f"dataset.path={tmp_path / 't.nc'}", "dataset.variables=[t2m]",
                f"output.path={out}", "progress=false", "dataset.max_gb=null"], tmp_path)
    assert r.returncode == 0 and "reused (same config)" in r.stdout, r.stderr
    assert "max_gb" not in json.loads(xr.open_zarr(out).attrs["sciencegen_dataset"])["config"]
