"""``sciencegen-generate`` attacked as users, disks and clusters do (issue 13): nothing wrong is ever written.

Real processes (the console script), real signals, real filesystems (a tiny tmpfs that fills up, read-only bind
mounts), real chunk files truncated or garbled. The truth is an uninterrupted run of the same config: every
member a faulted-then-resumed store marks complete must be bitwise that run's member.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from fsfaults import read_only, small_fs
from test_generate import cli, config, field, train_tiny

from sciencegen.data import ensemble as E
from sciencegen.pipelines import generate as G
from sciencegen.pipelines.generate import GenerateError, completed_members, run_generate

SLOW = ["sampler.steps=400", "generate.members=24", "generate.batch_size=2"]  # ~0.3 s a chunk: time to act


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_generate(config(f"output.path={path}"))
    return path


def wait_for(path: Path, members: int, proc, timeout: float = 120) -> int:
    """Wait until ``members`` members of the store are complete (or the process ends); the count."""
    deadline = time.time() + timeout
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if (path / "zarr.json").exists():
            try:
                done = int(completed_members(path, 24).sum())
            except Exception:
                done = 0
            if done >= members:
                break
        time.sleep(0.05)
    return done


def one_line_error(out: str, *words: str) -> None:
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if "error:" in ln or "interrupted" in ln]
    assert len(lines) == 1, out
    for w in words:
        assert w in lines[0], out


# ------------------------------------------------------------------------------------------- bug 1


def test_overwrite_is_refused_while_another_job_writes(tmp_path):
    p = tmp_path / "o.zarr"
    a = cli(tmp_path, *SLOW, f"output.path={p}")
    assert wait_for(p, 4, a) >= 4
    with pytest.raises(GenerateError, match="being written by another sciencegen-generate job"):
        run_generate(config(*SLOW, f"output.path={p}", "generate.seed=1", "generate.shard=0/8",
                            "output.overwrite=true"))
    assert a.poll() is None  # the refusal came while the first job was still writing
    out_a, _ = a.communicate(timeout=300)
    assert a.returncode == 0, out_a
    assert completed_members(p).all()
    ref = tmp_path / "ref.zarr"
    run_generate(config(*SLOW, f"output.path={ref}"))
    np.testing.assert_array_equal(field(p), field(ref))


def test_a_store_replaced_under_a_running_job_is_never_written_into(tmp_path, monkeypatch):
    """Where flock is not honoured (some cluster filesystems), the store_id check still stops the old job."""
    p = tmp_path / "r.zarr"
    a = cli(tmp_path, *SLOW, f"output.path={p}")
    assert wait_for(p, 4, a) >= 4
    monkeypatch.setattr(E.StoreLock, "exclusive", lambda self: True)  # a filesystem without flock
    s = run_generate(config(*SLOW, f"output.path={p}", "generate.seed=1", "generate.shard=0/8",
                            "output.overwrite=true"))
    assert s["done"] == 2  # shard 0/8 of 12 chunks: one chunk
    out_a, _ = a.communicate(timeout=300)
    assert a.returncode == 2, out_a
    one_line_error(out_a, "deleted or replaced by another job")
    # the new store claims only what its own job wrote, and finishing it gives exactly a clean seed-1 store
    assert completed_members(p).tolist() == [True] * 2 + [False] * 22
    monkeypatch.undo()
    run_generate(config(*SLOW, f"output.path={p}", "generate.seed=1"))
    clean = tmp_path / "clean.zarr"
    run_generate(config(*SLOW, f"output.path={clean}", "generate.seed=1"))
    np.testing.assert_array_equal(field(p), field(clean))


# ------------------------------------------------------------------------------------------- bug 2


def test_resume_with_another_batch_size_is_bitwise(tmp_path, monkeypatch):
    """A model that is not batch-invariant (as on GPUs): the rerun samples with the store's batch composition."""
    real = G.resolve_denoiser

    def batch_dependent(*args, **kw):
        info = real(*args, **kw)
        inner = info.denoiser
        info.denoiser = lambda x, sigma, *a, **k: inner(x, sigma, *a, **k) * (1 + 1e-6 * (len(x) % 7))
        return info

    monkeypatch.setattr(G, "resolve_denoiser", batch_dependent)
    over = ["generate.members=16", "generate.batch_size=4", "output.chunk=8"]
    ref, p, other = tmp_path / "ref.zarr", tmp_path / "p.zarr", tmp_path / "other.zarr"
    run_generate(config(*over, f"output.path={ref}"))
    run_generate(config(*over, "generate.batch_size=3", f"output.path={other}"))
    assert not np.array_equal(field(ref), field(other))  # the model really depends on the batch
    shutil.copytree(ref, p)
    E.set_flags(str(p), 8, 16, False)  # as if killed before the second chunk was flagged
    zarr.open_array(str(p), path="field", mode="r+")[8:16] = np.float32("nan")
    s = run_generate(config(*over, "generate.batch_size=3", f"output.path={p}"))
    assert s["done"] == 8
    np.testing.assert_array_equal(field(p), field(ref))


# ------------------------------------------------------------------------------------------- bugs 3, 4


def test_missing_complete_array_is_rebuilt(reference, tmp_path):
    p = tmp_path / "m.zarr"
    shutil.copytree(reference, p)
    shutil.rmtree(p / "complete")
    assert completed_members(p, 12).sum() == 0
    s = run_generate(config(f"output.path={p}"))
    assert s["done"] == 12 and s["complete"] == 12
    np.testing.assert_array_equal(field(p), field(reference))
    assert bool(xr.open_zarr(p)["complete"].all())


def test_missing_field_array_regenerates_every_member(reference, tmp_path):
    p = tmp_path / "f.zarr"
    shutil.copytree(reference, p)
    shutil.rmtree(p / "field")
    s = run_generate(config(f"output.path={p}"))
    assert s["done"] == 12
    np.testing.assert_array_equal(field(p), field(reference))


def test_corrupt_chunks_are_found_and_regenerated_with_verify(reference, tmp_path, caplog):
    p = tmp_path / "c.zarr"
    shutil.copytree(reference, p)
    chunk1 = p / "field" / "c" / "1" / "0" / "0"
    chunk1.write_bytes(chunk1.read_bytes()[:20])  # truncated
    (p / "nfe" / "c" / "2").write_bytes(b"garbage!" * 5)  # garbled
    chunk0 = p / "field" / "c" / "0" / "0" / "0"
    flipped = bytearray(chunk0.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit: decodes fine without a checksum
    chunk0.write_bytes(bytes(flipped))
    s = run_generate(config(f"output.path={p}"))
    assert s["done"] == 0  # without verify a rerun trusts the flags (documented)
    with caplog.at_level(logging.WARNING, logger="sciencegen.pipelines.generate"):
        s = run_generate(config(f"output.path={p}", "generate.verify=true"))
    assert s["done"] == 12 and s["complete"] == 12
    assert "members 0..3 flagged complete but unreadable" in caplog.text
    assert "members 4..7 flagged complete but unreadable" in caplog.text
    assert "members 8..11 flagged complete but unreadable" in caplog.text
    np.testing.assert_array_equal(field(p), field(reference))
    np.testing.assert_array_equal(xr.open_zarr(p)["nfe"].values, xr.open_zarr(reference)["nfe"].values)


def test_truncated_root_metadata_is_called_corrupt(reference, tmp_path):
    p = tmp_path / "t.zarr"
    shutil.copytree(reference, p)
    root = p / "zarr.json"
    root.write_bytes(root.read_bytes()[:100])
    proc = cli(tmp_path, f"output.path={p}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    one_line_error(out, str(p), "is corrupt", "zarr.json")


# ------------------------------------------------------------------------------------------- bugs 5, 6


def test_finished_store_on_a_read_only_filesystem(reference, tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    shutil.copytree(reference, d / "s.zarr")
    partial = d / "p.zarr"
    shutil.copytree(reference, partial)
    E.set_flags(str(partial), 8, 12, False)
    with read_only(d):
        s = run_generate(config(f"output.path={d / 's.zarr'}"))
        assert s["done"] == 0 and s["complete"] == 12
        with pytest.raises(GenerateError, match=r"read-only; 1 chunk\(s\) to write, 8/12 members complete"):
            run_generate(config(f"output.path={partial}"))


def test_netcdf_target_is_checked_before_any_work(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(GenerateError, match="output.netcdf .* is a directory"):
        run_generate(config(f"output.path={tmp_path / 'n.zarr'}", f"output.netcdf={d}"))
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(GenerateError, match="a parent of it is a file"):
        run_generate(config(f"output.path={tmp_path / 'n.zarr'}", f"output.netcdf={f / 'sub' / 'e.nc'}"))
    assert not (tmp_path / "n.zarr").exists()  # nothing generated
    s = run_generate(config(f"output.path={tmp_path / 'n.zarr'}", f"output.netcdf={tmp_path / 'new' / 'e.nc'}"))
    assert s["complete"] == 12 and (tmp_path / "new" / "e.nc").is_file()


def test_output_path_under_a_regular_file(tmp_path):
    f = tmp_path / "plain"
    f.write_text("x")
    with pytest.raises(GenerateError, match="a parent of it is a file"):
        run_generate(config(f"output.path={f / 's.zarr'}"))


# ------------------------------------------------------------------------------------------- disk full, signals


def test_disk_full_is_one_line_and_keeps_complete_members(reference, tmp_path):
    ref = tmp_path / "ref.zarr"
    over = ["dataset.size=32", "generate.members=40", "generate.batch_size=4"]
    run_generate(config(*over, f"output.path={ref}"))
    with small_fs(tmp_path / "small", "120k") as d:
        proc = cli(tmp_path, *over, f"output.path={d / 's.zarr'}")
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 2, out
        one_line_error(out, str(d / "s.zarr"), "the disk is full", "members complete", "are kept")
        flags = completed_members(d / "s.zarr", 40)
        assert 0 < flags.sum() < 40, out
        with xr.open_zarr(d / "s.zarr") as ds:
            got = ds["field"].values
        np.testing.assert_array_equal(got[flags], field(ref)[flags])
        assert not list(Path(d).glob(".s.zarr.tmp-*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_chunk_in_flight(tmp_path, sig):
    p = tmp_path / "s.zarr"
    proc = cli(tmp_path, *SLOW, f"output.path={p}")
    assert wait_for(p, 2, proc) >= 2
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    one_line_error(out, f"interrupted ({signal.Signals(sig).name})", "rerun the same command to resume")
    kept = int(completed_members(p, 24).sum())
    assert 2 <= kept < 24
    proc = cli(tmp_path, *SLOW, f"output.path={p}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and f"{kept} already written" in out, out
    ref = tmp_path / "ref.zarr"
    run_generate(config(*SLOW, f"output.path={ref}"))
    np.testing.assert_array_equal(field(p), field(ref))


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_from_another_dataset_configuration_warns(tmp_path, caplog):
    train_tiny(tmp_path, 1)
    over = ["model=unet", f"model.checkpoint={tmp_path / 'run'}", "sampler=picard_dpm2m", "sampler.steps=4",
            "generate.members=2", "generate.batch_size=2"]
    with caplog.at_level(logging.WARNING, logger="sciencegen.pipelines.generate"):
        run_generate(config(*over, f"output.path={tmp_path / 'a.zarr'}"))
    assert "another dataset configuration" not in caplog.text  # storage keys (chunk) do not count
    with caplog.at_level(logging.WARNING, logger="sciencegen.pipelines.generate"):
        run_generate(config(*over, "dataset.slope=2.0", "dataset.k0=3.0", f"output.path={tmp_path / 'b.zarr'}"))
    assert "another dataset configuration" in caplog.text
    assert "dataset.slope" in caplog.text and "dataset.k0" in caplog.text


def test_dataset_differences_names_each_key():
    got = G.dataset_differences({"name": "grf", "slope": 3.0, "chunk": 8, "path": "a.nc"},
                                {"name": "grf", "slope": 2.0, "chunk": 16, "path": "b.nc"})
    assert got == ['dataset.path: "a.nc" in training, "b.nc" now', "dataset.slope: 3.0 in training, 2.0 now"]


def test_store_records_its_identity_token_and_batch(reference):
    meta = json.loads(xr.open_zarr(reference).attrs[G.ATTR])
    assert len(meta["store_id"]) == 32 and meta["batch_size"] == 4
    flags = zarr.open_array(str(reference), path="complete", mode="r")
    assert flags.metadata.fill_value is not None and not bool(flags.metadata.fill_value)  # unwritten = incomplete
    assert os.path.exists(reference.parent / ".ref.zarr.lock")


def test_read_only_working_directory_is_one_line_before_hydra(tmp_path):
    """Hydra logs into its run directory before the job starts: a read-only one must not be a traceback."""
    d = tmp_path / "ro"
    d.mkdir()
    with read_only(d):
        proc = cli(d, f"output.path={tmp_path / 'elsewhere.zarr'}")
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    one_line_error(out, "cannot write the run directory", "read-only", "hydra.run.dir")
    assert not (tmp_path / "elsewhere.zarr").exists()


def test_an_overwrite_killed_while_deleting_leaves_no_store_claiming_lost_members(reference, tmp_path, monkeypatch):
    from sciencegen.data import ensemble

    p = tmp_path / "o.zarr"
    shutil.copytree(reference, p)

    real = shutil.rmtree

    def killed(path, *a, **k):  # the process dies half-way through deleting the old store
        real(Path(path) / "nfe")
        raise SystemExit(137)

    monkeypatch.setattr(ensemble.shutil, "rmtree", killed)
    with pytest.raises(SystemExit):
        run_generate(config(f"output.path={p}", "generate.seed=1", "output.overwrite=true"))
    monkeypatch.undo()
    assert not p.exists()  # the old store was renamed aside first: nothing at the path claims anything
    assert len(list(tmp_path.glob(".o.zarr.old-*"))) == 1
    s = run_generate(config(f"output.path={p}", "generate.seed=1"))
    assert s["complete"] == 12 and not list(tmp_path.glob(".o.zarr.old-*"))  # the leftover is cleaned


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_starting_is_one_line(tmp_path, sig):
    proc = cli(tmp_path, f"output.path={tmp_path / 's.zarr'}")
    time.sleep(0.6)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out.strip().splitlines()[-1], out
