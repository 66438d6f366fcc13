"""``sciencegen-evaluate`` under faults (issue 13): damaged stores, an unusable output directory, Ctrl-C.

Real ensemble stores written by ``run_generate`` and then damaged on disk (a truncated chunk file, a chunk
overwritten with garbage, a chunk file deleted while its members are flagged complete, truncated metadata),
real filesystem faults (a read-only bind mount, a full tmpfs: ``tests/fsfaults.py``), the real console script
in a subprocess and a real SIGINT. The truth for the unreadable members is computed from the damaged chunk
indices and the chunk size read from the array's own ``zarr.json``; the metrics of the readable members are
checked against :func:`sciencegen.targets.spectral_error` on those members of the undamaged store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from fsfaults import fill, read_only, small_fs
from hydra import compose, initialize_config_dir

from sciencegen.config import config_dir, register
from sciencegen.evaluation import EvaluateError
from sciencegen.pipelines.evaluate import run_evaluate
from sciencegen.pipelines.generate import run_generate
from sciencegen.targets import GaussianRandomField, spectral_error

DATA = ["dataset=grf", "dataset.size=16", "dataset.samples=64"]
GEN = [*DATA, "model=oracle", "sampler=dpm2m", "sampler.steps=8", "generate.members=64", "generate.batch_size=8",
       "generate.progress=false", "generate.threads=1"]
CLI = "from sciencegen.cli import evaluate; evaluate()"


def compose_cfg(name: str, overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=overrides)


def env1() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}


def cli_args(store: Path, out: Path, run: Path, *extra: str, data: list[str] = DATA) -> list[str]:
    return [sys.executable, "-c", CLI, *data, f"samples.path={store}", f"output.dir={out}", "evaluate.threads=1",
            f"data_root={run / 'data'}", f"hydra.run.dir={run}", *extra]


def cli(store: Path, out: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli_args(store, out, run, *extra), cwd=run.parent, env=env1(), capture_output=True,
                          text=True, timeout=300)


def evaluate(store: Path, out: Path, *extra: str) -> dict:
    return run_evaluate(compose_cfg("evaluate", [*DATA, f"samples.path={store}", f"output.dir={out}",
                                                 "evaluate.threads=1", f"data_root={out.parent / 'data'}", *extra]))


def one_error_line(p: subprocess.CompletedProcess, status: int = 2) -> str:
    """The single stderr line of a failed run (no traceback)."""
    assert p.returncode == status, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    return err[0]


# ------------------------------------------------------------------------------------------- damaged stores


def chunk_size(store: Path, var: str = "field") -> int:
    """Members per chunk, from the array's own metadata."""
    meta = json.loads((store / var / "zarr.json").read_text())
    return int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])


def chunk_file(store: Path, c: int, var: str = "field") -> Path:
    """The file of member chunk ``c`` of ``var`` (default v3 chunk keys ``c/<member>/0/0``)."""
    path = store / var / "c" / str(c) / "0" / "0"
    assert path.is_file(), path
    return path


def truth(store: Path, chunks: list[int]) -> list[list[int]]:
    """Inclusive member ranges of the given chunks, merged where they touch."""
    size = chunk_size(store)
    runs: list[list[int]] = []
    for c in sorted(chunks):
        a, b = c * size, (c + 1) * size - 1
        if runs and runs[-1][1] + 1 == a:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return runs


def damage(store: Path, truncate: list[int] = (), garbage: list[int] = (), delete: list[int] = ()) -> None:
    rng = np.random.default_rng(0)
    for c in truncate:
        f = chunk_file(store, c)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    for c in garbage:
        f = chunk_file(store, c)
        f.write_bytes(rng.integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())
    for c in delete:
        chunk_file(store, c).unlink()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ens") / "grf16.zarr"
    run_generate(compose_cfg("generate", [*GEN, f"output.path={path}"]))
    assert chunk_size(path) == 8
    return path


@pytest.fixture()
def store(pristine, tmp_path) -> Path:
    """A fresh copy of the pristine store, to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "copy.zarr"))


def test_unreadable_members_are_named_excluded_and_recorded(store, pristine, tmp_path):
    damage(store, truncate=[3], garbage=[5], delete=[6])
    expect = truth(store, [3, 5, 6])
    assert expect == [[24, 31], [40, 55]]
    out = tmp_path / "out"
    p = cli(store, out, tmp_path / "run", "evaluate.figures=false")
    assert p.returncode == 0, p.stderr
    text = p.stdout + p.stderr
    assert "Traceback" not in text, text
    # said in one line, logged before the work and repeated as a note in the summary, with the repair command
    said = [ln[ln.index("samples.path "):] for ln in text.splitlines() if "cannot be read" in ln]
    assert len(said) == 2 and said[0] == said[1], said
    line = said[0]
    assert str(store) in line and "of field" in line and "24 of its 64 complete members" in line
    assert "members 24..31, 40..47 of field (chunk cannot be decoded: " in line
    assert "members 48..55 of field (missing chunk or non-finite values)" in line
    hint = re.search(r"rerun the same sciencegen-generate command with generate\.verify=true to regenerate "
                     r"members ([0-9., ]+)$", line)
    assert hint, line
    assert hint.group(1) == ", ".join(f"{a}..{b}" for a, b in expect)
    m = json.loads((out / "metrics.json").read_text())
    s = m["samples"]
    assert (s["members"], s["complete"], s["incomplete"], s["unreadable"], s["evaluated"]) == (64, 64, 0, 24, 40)
    assert s["unreadable_members"] == {"field": expect}
    assert any("cannot be read" in w for w in m["warnings"])
    assert "24 complete but unreadable" in (out / "report.md").read_text()
    # the metrics are those of exactly the 40 readable members (the undamaged store is the truth)
    keep = np.ones(64, dtype=bool)
    for a, b in expect:
        keep[a:b + 1] = False
    with xr.open_zarr(pristine) as ds:
        x = torch.from_numpy(ds["field"].values[keep].astype(np.float64))[:, None]
    f = m["variables"]["field"]
    assert f["moments"]["sample"]["count"] == 40 * 16 * 16
    assert f["spectral_error_all_shells"] == pytest.approx(spectral_error(x, GaussianRandomField(16)), rel=1e-9)
    assert m["reference"]["samples"] == 40


def test_the_repair_command_regenerates_the_named_members(store, pristine, tmp_path):
    damage(store, truncate=[3], garbage=[0])
    first = evaluate(store, tmp_path / "first", "evaluate.figures=false")
    assert first["samples"]["unreadable_members"] == {"field": truth(store, [0, 3])}
    # the advice: the same generate command with generate.verify=true
    run_generate(compose_cfg("generate", [*GEN, f"output.path={store}", "generate.verify=true"]))
    again = evaluate(store, tmp_path / "again", "evaluate.figures=false")
    assert (again["samples"]["unreadable"], again["samples"]["evaluated"]) == (0, 64)
    with xr.open_zarr(store) as a, xr.open_zarr(pristine) as b:
        np.testing.assert_array_equal(a["field"].values, b["field"].values)


def test_nothing_readable_left_is_one_line(store, tmp_path):
    damage(store, truncate=[0, 2, 4, 6], garbage=[1, 3, 5], delete=[7])
    out = tmp_path / "out"
    line = one_error_line(cli(store, out, tmp_path / "run"))
    assert line.startswith("sciencegen-evaluate: error: samples.path ")
    assert "64 of its 64 complete members cannot be read" in line
    assert "only 0 readable complete member(s) are left" in line
    assert line.endswith("generate.verify=true to regenerate members 0..63")
    assert not out.exists()  # created for the probe, removed again: nothing was written


def test_a_damaged_reference_store_is_excluded_too(pristine, store, tmp_path):
    damage(store, garbage=[2])
    m = evaluate(pristine, tmp_path / "out", f"reference.source={store}", "evaluate.figures=false")
    assert m["reference"]["samples"] == 56
    assert any(w.startswith(f"reference.source {store}: 8 of its 64 complete members cannot be read: "
                            "members 16..23 of field") for w in m["warnings"])


def test_truncated_root_metadata_is_called_corrupt(store, tmp_path):
    root = store / "zarr.json"
    root.write_bytes(root.read_bytes()[:200])
    line = one_error_line(cli(store, tmp_path / "out", tmp_path / "run"))
    assert line.startswith(f"sciencegen-evaluate: error: samples.path {store} is corrupt (its root metadata "
                           "zarr.json cannot be read: ")
    assert "rerun the sciencegen-generate command" in line and "not written by" not in line


@pytest.mark.parametrize("what", ["empty_root", "array_metadata"])
def test_other_unreadable_metadata_is_called_corrupt(store, tmp_path, what):
    if what == "empty_root":
        (store / "zarr.json").write_bytes(b"")
        expect = "its root metadata zarr.json cannot be read: it is empty"
    else:
        meta = store / "field" / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:50])
        expect = "the metadata field/zarr.json cannot be read"
    with pytest.raises(EvaluateError, match="is corrupt") as info:
        evaluate(store, tmp_path / "out")
    assert expect in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- output.dir


def test_read_only_output_is_one_line_before_any_work(pristine, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        out = ro / "evaluation"  # cannot be created
        p = cli(pristine, out, tmp_path / "run")
        line = one_error_line(p)
        assert line == (f"sciencegen-evaluate: error: output.dir: cannot write {out}: the filesystem is "
                        "read-only; nothing was evaluated (choose another output.dir)"), line
        assert "complete members of" not in p.stdout  # stopped before the evaluation started
        with pytest.raises(EvaluateError) as info:  # exists, but takes no file
            evaluate(pristine, ro)
        assert str(info.value) == (f"output.dir: cannot write {ro}: the filesystem is read-only; nothing was "
                                   "evaluated (choose another output.dir)")
        assert list(ro.iterdir()) == []


def test_full_output_filesystem_is_one_line_before_any_work(pristine, tmp_path):
    with small_fs(tmp_path / "full", "1m") as full:
        fill(full)
        out = full / "evaluation"
        p = cli(pristine, out, tmp_path / "run")
        line = one_error_line(p)
        assert line == (f"sciencegen-evaluate: error: output.dir: cannot write {out}: the disk is full; nothing "
                        "was evaluated (choose another output.dir)"), line
        assert "complete members of" not in p.stdout
        assert sorted(f.name for f in full.iterdir()) == [".filler"]


def test_disk_full_while_writing_leaves_no_half_written_output(pristine, tmp_path):
    """Room for the probe, not for the figures: one error, and output.dir holds no file, whole or partial."""
    with small_fs(tmp_path / "small", "96k") as small:
        with pytest.raises(EvaluateError) as info:
            evaluate(pristine, small)
        msg = str(info.value)
        assert re.fullmatch(rf"cannot write {re.escape(str(small))}/\S+: the disk is full; no metrics.json was "
                            rf"written \(what {re.escape(str(small))} held before is unchanged\): free space or "
                            r"choose another output.dir", msg), msg
        assert list(small.iterdir()) == []


def test_an_earlier_evaluation_survives_a_failed_overwrite(pristine, tmp_path):
    with small_fs(tmp_path / "small", "96k") as small:
        first = evaluate(pristine, small, "evaluate.figures=false")
        before = {f.name: f.read_bytes() for f in small.iterdir()}
        assert set(before) == {"metrics.json", "report.md"}
        assert json.loads(before["metrics.json"])["created"] == first["created"]
        with pytest.raises(EvaluateError, match="the disk is full"):
            evaluate(pristine, small, "output.overwrite=true")  # the figures do not fit
        assert {f.name: f.read_bytes() for f in small.iterdir()} == before


def test_output_under_a_regular_file(pristine, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EvaluateError, match=rf"output.dir {re.escape(str(tmp_path))}/afile/evaluation: "
                                            rf"{re.escape(str(tmp_path))}/afile is a file, not a directory"):
        evaluate(pristine, tmp_path / "afile" / "evaluation")


# ------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_with_one_line(tmp_path_factory, tmp_path, sig):
    store = tmp_path_factory.getbasetemp() / "sigint64.zarr"
    if not store.exists():  # 2048 members of 64² (32 MiB): a few seconds of evaluation on one thread
        run_generate(compose_cfg("generate", [*GEN[:1], "dataset.size=64", "dataset.samples=64", *GEN[3:],
                                              "sampler.steps=2", "generate.members=2048", "generate.batch_size=512",
                                              f"output.path={store}"]))
    out, run = tmp_path / "out", tmp_path / "run"
    args = cli_args(store, out, run, data=["dataset=grf", "dataset.size=64", "dataset.samples=64"])
    p = subprocess.Popen(args, cwd=tmp_path, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # the evaluation has started
        assert first.startswith("sciencegen-evaluate: 2048 complete members"), first + p.stderr.read()
        time.sleep(1.0)
        p.send_signal(sig)
        t0 = time.perf_counter()
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    stopped = time.perf_counter() - t0
    assert "evaluated 2048 members" not in stdout, "the evaluation finished before the signal: make it larger"
    assert p.returncode == 130, (p.returncode, stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    err = stderr.strip().splitlines()
    assert err == [f"sciencegen-evaluate: interrupted ({sig.name}); the evaluation of {store} stopped before "
                   f"writing {out / 'metrics.json'}: rerun the same command"], stderr
    assert not out.exists()
    assert stopped < 30
