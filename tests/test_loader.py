"""Tests of the streaming loader (:mod:`sciencegen.data.loader`) on real Zarr stores written to ``tmp_path``.

Every sample holds its own id (``raw = id + 1000 * channel + pattern``), so batches can be traced back to
the samples they hold and compared with the data read directly with numpy.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
import xarray as xr

from sciencegen.data.loader import FieldStream, from_store, make_loader

FIELD_DIMS = {1: ("x",), 2: ("y", "x"), 3: ("level", "y", "x")}


def make_store(path, *, sample_dims=("sample",), sample_shape=(50,), chunks=(8,), field_shape=(4, 3),
               field_dims=None, variables=("field",), zarr_format=3, dtype="float32", nan_every=0,
               complete=True, stats=True, nonfinite=None):
    """A prepared store: sample ids in the data, attrs JSON, statistics group. Returns (path, raw array)."""
    field_dims = tuple(field_dims or FIELD_DIMS[len(field_shape)])
    n = int(np.prod(sample_shape))
    size = int(np.prod(field_shape))
    pattern = (np.arange(size) / size * 0.5).reshape(field_shape)  # < 0.5: the id is round(first value)
    ids = np.arange(n, dtype=np.float64).reshape(sample_shape + (1,) * len(field_shape))
    data = {}
    for c, v in enumerate(variables):
        a = ids + 1000.0 * c + pattern
        if nan_every:
            flat = a.reshape(n, -1)
            flat[::nan_every, -1] = np.nan  # never the first value (the id)
        data[v] = (sample_dims + field_dims, a.astype(dtype))
    ds = xr.Dataset(data)
    meta = {"format": 1, "name": "test", "variables": list(variables), "sample_dims": list(sample_dims),
            "field_dims": list(field_dims), "periodic": {d: True for d in field_dims}, "complete": complete,
            "nonfinite": nonfinite or ("mask" if nan_every else "error")}
    ds.attrs["sciencegen_dataset"] = json.dumps(meta)
    enc = {v: {"chunks": tuple(chunks) + tuple(field_shape)} for v in variables}
    ds.to_zarr(path, mode="w", encoding=enc, zarr_format=zarr_format, consolidated=False)
    if stats:
        arr = np.stack([ds[v].values.astype(np.float64) for v in variables])
        st = xr.Dataset({
            "mean": ("variable", np.nanmean(arr.reshape(len(variables), -1), axis=1)),
            "std": ("variable", np.nanstd(arr.reshape(len(variables), -1), axis=1)),
            "min": ("variable", np.nanmin(arr.reshape(len(variables), -1), axis=1)),
            "max": ("variable", np.nanmax(arr.reshape(len(variables), -1), axis=1)),
            "count": ("variable", np.isfinite(arr).reshape(len(variables), -1).sum(axis=1)),
        }, coords={"variable": list(variables)})
        with warnings.catch_warnings():  # zarr v3: a string coordinate has no stable spec yet (as in real stores)
            warnings.simplefilter("ignore")
            st.to_zarr(path, group="statistics", mode="a", zarr_format=zarr_format, consolidated=False)
    return path


def reference(path, variables, sample_dims, mean, std, nan_fill=0.0, dtype=np.float32):
    """All samples of the store read directly with numpy, normalised by hand: (N, C, *field)."""
    ds = xr.open_zarr(path, consolidated=False)
    ns = len(sample_dims)
    chans = []
    for c, v in enumerate(variables):
        a = ds[v].values
        a = a.reshape((-1,) + a.shape[ns:]).astype(dtype)
        chans.append((a - dtype(mean[c])) / dtype(std[c]))
    out = np.stack(chans, axis=1)
    out[np.isnan(out)] = nan_fill
    return out


def ids_of(batch: torch.Tensor, mean0: float, std0: float) -> np.ndarray:
    first = batch[:, 0].reshape(len(batch), -1)[:, 0].double().numpy()
    return np.rint(first * std0 + mean0).astype(np.int64)


def collect(iterable, mean0=0.0, std0=1.0):
    batches = [b for b in iterable]
    ids = np.concatenate([ids_of(b, mean0, std0) for b in batches]) if batches else np.zeros(0, np.int64)
    return batches, ids


@pytest.fixture
def store(tmp_path):
    # 50 samples in chunks of 8: 7 chunks, the last one partial (2 samples)
    return make_store(tmp_path / "s.zarr")


# -- coverage, splits, shuffling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 5, 8, 64])
def test_every_sample_once_and_values(store, batch_size):
    ref = reference(store, ["field"], ["sample"], [10.0], [4.0])
    s = FieldStream(store, ["field"], ["sample"], [10.0], [4.0], batch_size=batch_size)
    batches, ids = collect(s, 10.0, 4.0)
    assert sorted(ids.tolist()) == list(range(50))
    assert all(len(b) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]) <= batch_size
    assert len(batches) == len(s) == math.ceil(50 / batch_size)
    x = torch.cat(batches).numpy()
    assert x.dtype == np.float32 and x.shape == (50, 1, 4, 3)
    np.testing.assert_allclose(x, ref[ids], rtol=1e-6, atol=1e-6)


def test_split_disjoint_and_held_out_at_the_end(store):
    kw = dict(batch_size=4, holdout=0.3)
    _, train = collect(FieldStream(store, "field", "sample", 0, 1, split="train", **kw))
    _, val = collect(FieldStream(store, "field", "sample", 0, 1, split="validation", **kw))
    _, everything = collect(FieldStream(store, "field", "sample", 0, 1, split="all", **kw))
    # 7 chunks, ceil(0.3 * 7) = 3 held out: samples 32..49, in store order (not shuffled by default)
    assert val.tolist() == list(range(32, 50))
    assert sorted(train.tolist()) == list(range(32))
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val]).tolist()) == sorted(everything.tolist()) == list(range(50))


def test_holdout_exact_fractions(tmp_path):
    p = make_store(tmp_path / "s.zarr", sample_shape=(80,), chunks=(8,))  # 10 chunks
    for holdout, n_val in [(0.1, 1), (0.3, 3), (0.7, 7), (0.01, 1)]:
        s = FieldStream(p, "field", "sample", 0, 1, batch_size=4, split="validation", holdout=holdout)
        assert s.n_chunks == n_val and s.n_samples == 8 * n_val


def test_shuffle_reproducible_and_changes_with_epoch(store):
    def order(epoch, seed=0, **kw):
        s = FieldStream(store, "field", "sample", 0, 1, batch_size=4, seed=seed, **kw)
        s.set_epoch(epoch)
        return collect(s)[1].tolist()

    a0, a1 = order(0), order(1)
    assert a0 == order(0) and a1 == order(1)
    assert a0 != a1 and sorted(a0) == sorted(a1) == list(range(50))
    assert order(0, seed=1) != a0
    assert order(0, shuffle=False) == list(range(50)) == order(3, shuffle=False)
    # within-chunk shuffling too: not just a permutation of whole chunks
    assert any(a0[i + 1] != a0[i] + 1 for i in range(len(a0) - 1) if a0[i] % 8 != 7)


def test_iterating_twice_same_epoch(store):
    s = FieldStream(store, "field", "sample", 0, 1, batch_size=3)
    assert collect(s)[1].tolist() == collect(s)[1].tolist()


def test_drop_last(store):
    s = FieldStream(store, "field", "sample", 0, 1, batch_size=8, drop_last=True, shuffle=False)
    batches, ids = collect(s)
    assert [len(b) for b in batches] == [8] * 6 and len(s) == 6 and ids.tolist() == list(range(48))


# -- channels, normalisation, shapes ---------------------------------------------------------------------------------


def test_channels_in_order_and_exact_normalisation(tmp_path):
    p = make_store(tmp_path / "s.zarr", variables=("vorticity", "u", "v"))
    mean, std = [-3.0, 1500.0, 2017.5], [2.0, 0.25, 7.0]
    s = FieldStream(p, ["v", "vorticity", "u"], ["sample"], mean, std, batch_size=7)
    batches, ids = collect(s, mean[0], std[0])
    ids -= 2000  # channel 0 is v = id + 2000
    ref = reference(p, ["v", "vorticity", "u"], ["sample"], mean, std)
    x = torch.cat(batches).numpy()
    assert x.shape == (50, 3, 4, 3)
    np.testing.assert_allclose(x, ref[ids], rtol=1e-6, atol=1e-6)
    # raw values by channel: v = id + 2000, vorticity = id, u = id + 1000
    raw = x[:, :, 0, 0] * np.array(std, np.float32) + np.array(mean, np.float32)
    np.testing.assert_allclose(raw, ids[:, None] + np.array([2000, 0, 1000]), atol=1e-3)
    # mapping form of mean/std
    m = FieldStream(p, ["v", "vorticity", "u"], ["sample"], dict(zip(["v", "vorticity", "u"], mean, strict=True)),
                    dict(zip(["v", "vorticity", "u"], std, strict=True)), batch_size=7)
    assert np.array_equal(torch.cat(list(m)).numpy(), x)


@pytest.mark.parametrize("field_shape", [(16,), (6, 5), (3, 4, 5)])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_field_dims_1d_2d_3d(tmp_path, field_shape, zarr_format):
    p = make_store(tmp_path / "s.zarr", sample_shape=(21,), chunks=(4,), field_shape=field_shape,
                   variables=("a", "b"), zarr_format=zarr_format)
    s = FieldStream(p, ["a", "b"], ["sample"], [5.0, 1000.0], [2.0, 3.0], batch_size=4)
    assert s.field_shape == field_shape and s.field_dims == FIELD_DIMS[len(field_shape)]
    batches, ids = collect(s, 5.0, 2.0)
    x = torch.cat(batches).numpy()
    assert x.shape == (21, 2, *field_shape) and sorted(ids.tolist()) == list(range(21))
    np.testing.assert_allclose(x, reference(p, ["a", "b"], ["sample"], [5.0, 1000.0], [2.0, 3.0])[ids],
                               rtol=1e-6, atol=1e-6)


def test_multiple_sample_dims(tmp_path):
    # 5 trajectories x 23 times, chunks (2, 5): grid 3 x 5 = 15 chunks of 10, 6, 5, 3 ... samples
    p = make_store(tmp_path / "s.zarr", sample_dims=("trajectory", "time"), sample_shape=(5, 23), chunks=(2, 5),
                   field_shape=(3, 4), field_dims=("lat", "lon"))
    s = FieldStream(p, "field", ["trajectory", "time"], 0.0, 1.0, batch_size=6)
    assert s.chunk_grid == (3, 5) and s.n_chunks == 15 and s.n_samples == 115
    batches, ids = collect(s)
    assert sorted(ids.tolist()) == list(range(115))  # id = trajectory * 23 + time
    np.testing.assert_allclose(torch.cat(batches).numpy(), reference(p, ["field"], ["trajectory", "time"],
                                                                      [0.0], [1.0])[ids], rtol=1e-6, atol=1e-6)
    # unshuffled: chunk by chunk in store order, each block (n_traj, n_time) flattened row-major
    _, ordered = collect(FieldStream(p, "field", ["trajectory", "time"], 0.0, 1.0, batch_size=6, shuffle=False))
    first = [t * 23 + u for t in (0, 1) for u in range(5)]
    assert ordered[:10].tolist() == first
    # holdout: the last ceil(0.2 * 15) = 3 chunks in store order: last trajectory block, time chunks 2, 3, 4
    v = FieldStream(p, "field", ["trajectory", "time"], 0.0, 1.0, batch_size=6, split="validation", holdout=0.2)
    _, vid = collect(v)
    assert v.n_chunks == 3
    assert vid.tolist() == [4 * 23 + u for u in range(10, 23)]


def test_nan_filled_after_normalisation(tmp_path):
    p = make_store(tmp_path / "s.zarr", nan_every=3)
    s = FieldStream(p, "field", "sample", 10.0, 2.0, batch_size=8, nan_fill=-7.0)
    batches, ids = collect(s, 10.0, 2.0)
    x = torch.cat(batches).numpy()
    assert np.isfinite(x).all()
    last = x.reshape(50, -1)[:, -1]
    assert np.all(last[ids % 3 == 0] == -7.0) and np.all(last[ids % 3 != 0] != -7.0)
    np.testing.assert_allclose(x, reference(p, ["field"], ["sample"], [10.0], [2.0], nan_fill=-7.0)[ids],
                               rtol=1e-6, atol=1e-6)
    # the NaN scan is skipped only for stores prepared with nonfinite=error/drop (which hold none)
    assert s._scan_nan
    assert not FieldStream(make_store(tmp_path / "e.zarr"), "field", "sample", 0, 1, batch_size=2)._scan_nan
    q = make_store(tmp_path / "u.zarr", nan_every=5, nonfinite="unknown")
    assert np.isfinite(torch.cat(list(FieldStream(q, "field", "sample", 0, 1, batch_size=8))).numpy()).all()


def test_dtypes(tmp_path):
    p = make_store(tmp_path / "s.zarr", dtype="float64")
    x = next(iter(FieldStream(p, "field", "sample", 0.5, 3.0, batch_size=4)))
    assert x.dtype == torch.float32
    s = FieldStream(p, "field", "sample", 0.5, 3.0, batch_size=4, dtype=torch.float64, shuffle=False)
    y = torch.cat(list(s)).numpy()
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, reference(p, ["field"], ["sample"], [0.5], [3.0], dtype=np.float64))
    z = next(iter(FieldStream(p, "field", "sample", 0.5, 3.0, batch_size=4, dtype=torch.bfloat16)))
    assert z.dtype == torch.bfloat16


# -- workers, pickling, epochs ---------------------------------------------------------------------------------------


def test_workers_same_samples_as_main_process(tmp_path):
    p = make_store(tmp_path / "s.zarr", sample_shape=(61,), chunks=(5,))  # 13 chunks, last partial
    s = FieldStream(p, "field", "sample", 0.0, 1.0, batch_size=4, seed=3)
    s.set_epoch(2)
    b0, ids0 = collect(make_loader(s, num_workers=0))
    loader = make_loader(s, num_workers=2, persistent_workers=False)
    b2, ids2 = collect(loader)
    assert sorted(ids0.tolist()) == sorted(ids2.tolist()) == list(range(61))
    assert len(loader) == len(b2) and len(b0) == len(s)
    assert np.array_equal(torch.cat(b0).numpy()[np.argsort(ids0)], torch.cat(b2).numpy()[np.argsort(ids2)])


@pytest.mark.parametrize("context,num_workers", [("fork", 2), ("spawn", 1)])
def test_persistent_workers_follow_set_epoch(store, context, num_workers):
    # the epoch lives in shared memory: set_epoch reaches workers started (forked or spawned) earlier
    s = FieldStream(store, "field", "sample", 0.0, 1.0, batch_size=4)
    loader = make_loader(s, num_workers=num_workers, multiprocessing_context=context)  # persistent by default
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(collect(loader)[1].tolist())
    assert orders[0] != orders[1] != orders[2]
    fresh = FieldStream(store, "field", "sample", 0.0, 1.0, batch_size=4)
    fresh.set_epoch(2)
    expected = make_loader(fresh, num_workers=num_workers, persistent_workers=False, multiprocessing_context="fork")
    assert collect(expected)[1].tolist() == orders[2]


def test_pickle_roundtrip(store):
    s = FieldStream(store, "field", "sample", 0.0, 1.0, batch_size=4)
    s.set_epoch(5)
    next(iter(s))  # opens the store in this process
    t = pickle.loads(pickle.dumps(s))
    assert t.epoch == 5 and t._ds is None
    assert collect(t)[1].tolist() == collect(s)[1].tolist()


# -- sharding --------------------------------------------------------------------------------------------------------


def _shard_ids(stream_kw, world_size, num_workers, epoch=0):
    """Per rank: batch sizes and ids, iterating each rank's workers in the main process."""
    out = []
    for rank in range(world_size):
        s = FieldStream(rank=rank, world_size=world_size, **stream_kw)
        s.num_workers = num_workers
        sizes, ids = [], []
        for w in range(num_workers):
            chunks, budget = s._plan(epoch, rank, w, num_workers)
            rng = np.random.default_rng([s.seed, epoch, rank, world_size, w, num_workers])
            for b in s._stream(chunks, budget, rng):
                sizes.append(len(b))
                ids.extend(ids_of(torch.from_numpy(b), 0.0, 1.0).tolist())
        assert len(sizes) == len(s)
        out.append((sorted(sizes), ids))
    return out


@pytest.mark.parametrize("world_size,num_workers", [(2, 1), (2, 2), (3, 1), (3, 2), (4, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_equal_batches_and_cover(tmp_path, world_size, num_workers, drop_last):
    # 5 x 13 samples, chunks (2, 4): 3 x 4 = 12 chunks of 8, 8, 8, 2, ... , 4, 4, 4, 1 samples
    p = make_store(tmp_path / "s.zarr", sample_dims=("trajectory", "time"), sample_shape=(5, 13), chunks=(2, 4),
                   field_shape=(3,))
    kw = dict(path=p, variables=["field"], sample_dims=["trajectory", "time"], mean=0.0, std=1.0, batch_size=3,
              drop_last=drop_last)
    for epoch in (0, 1):
        shards = _shard_ids(kw, world_size, num_workers, epoch)
        assert all(sizes == shards[0][0] for sizes, _ in shards), "ranks must yield the same batches"
        counts = Counter(i for _, ids in shards for i in ids)
        if drop_last:
            assert all(c == 1 for c in counts.values())  # nothing twice
            assert all(n == 3 for n in shards[0][0])
        else:
            assert set(counts) == set(range(65))  # everything at least once
            # the documented budget: worker k of every rank yields the samples of the m_k largest chunks
            per_rank = math.ceil(12 / world_size)
            largest = sorted([8, 8, 8, 2] * 2 + [4, 4, 4, 1], reverse=True)
            budget = sum(sum(largest[: len(range(k, per_rank, num_workers))]) for k in range(num_workers))
            assert all(len(ids) == budget for _, ids in shards)


def test_uniform_chunks_shard_exactly(tmp_path):
    p = make_store(tmp_path / "s.zarr", sample_shape=(48,), chunks=(4,))  # 12 chunks of 4
    kw = dict(path=p, variables=["field"], sample_dims=["sample"], mean=0.0, std=1.0, batch_size=5)
    for world_size in (2, 3, 4):
        shards = _shard_ids(kw, world_size, 2)
        ids = [i for _, s in shards for i in s]
        assert sorted(ids) == list(range(48))  # disjoint, complete, no padding


def _ddp_rank(rank, world_size, init, path, results):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        out = {}
        for drop_last in (False, True):
            s = FieldStream(path, ["field"], ["sample"], 0.0, 1.0, batch_size=4, drop_last=drop_last)
            assert (s.rank, s.world_size) == (rank, world_size)
            s.set_epoch(1)
            batches, ids = collect(make_loader(s, num_workers=0))
            n = torch.tensor([len(batches)])
            dist.all_reduce(n)  # hangs if a rank had no batches to match
            for b in batches:
                dist.all_reduce(b.sum().reshape(1))  # one collective per batch: must match across ranks
            out[drop_last] = ([len(b) for b in batches], ids.tolist(), len(s))
        np.save(f"{results}/rank{rank}.npy", np.array(out, dtype=object), allow_pickle=True)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("start_method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_ddp_gloo_two_ranks(tmp_path, start_method):
    # fork: the ranks start in a blink; spawn (as torchrun-like launchers do): each rank imports torch anew
    import torch.multiprocessing as mp

    p = make_store(tmp_path / "s.zarr", sample_shape=(45,), chunks=(4,))  # 12 chunks, last holds 1 sample
    mp.start_processes(_ddp_rank, args=(2, f"file://{tmp_path}/pg", str(p), str(tmp_path)), nprocs=2, join=True,
                       start_method=start_method)
    res = [np.load(tmp_path / f"rank{r}.npy", allow_pickle=True).item() for r in range(2)]
    for drop_last in (False, True):
        (s0, i0, n0), (s1, i1, n1) = res[0][drop_last], res[1][drop_last]
        assert s0 == s1 and n0 == n1 == len(s0)
        if drop_last:
            assert not set(i0) & set(i1) and len(i0) == len(i1) == 20  # 5 full batches of 4 each
        else:
            assert set(i0) | set(i1) == set(range(45))
            # 6 chunks per rank: the rank holding the 1-sample chunk tops up 3 samples from its own chunks
            assert len(i0) == len(i1) == 24 and len(i0) + len(i1) - 45 == 3
            assert len(set(i0)) + len(set(i1)) == 45 and not set(i0) & set(i1)


# -- memory bound ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer_chunks", [1, 2, 3])
def test_bounded_read_ahead(tmp_path, monkeypatch, buffer_chunks):
    p = make_store(tmp_path / "s.zarr", sample_shape=(200,), chunks=(8,))
    reads = []
    real = FieldStream._read_chunk

    def counting(self, ds, chunk):
        out = real(self, ds, chunk)
        reads.append(len(out[0]))
        return out

    monkeypatch.setattr(FieldStream, "_read_chunk", counting)
    s = FieldStream(p, "field", "sample", 0.0, 1.0, batch_size=5, buffer_chunks=buffer_chunks)
    yielded = 0
    worst = 0
    for b in s:
        yielded += len(b)
        worst = max(worst, sum(reads) - yielded)  # samples read but not yet handed out
    assert yielded == 200 and len(reads) == 25
    assert worst <= buffer_chunks * 8 + 5
    assert worst > (buffer_chunks - 1) * 8  # and the buffer is used


def test_never_reads_the_whole_store(tmp_path, monkeypatch):
    import xarray

    p = make_store(tmp_path / "s.zarr", sample_shape=(64,), chunks=(8,))
    calls = []
    real = xarray.DataArray.isel

    def spy(self, *a, **k):
        calls.append(a[0] if a else k)
        return real(self, *a, **k)

    monkeypatch.setattr(xarray.DataArray, "isel", spy)
    s = FieldStream(p, "field", "sample", 0.0, 1.0, batch_size=4)
    assert len(list(s)) == 16
    assert len(calls) == 8
    assert all(k["sample"].stop - k["sample"].start == 8 and k["sample"].start % 8 == 0 for k in calls)


# -- from_store and errors -------------------------------------------------------------------------------------------


def test_from_store_reads_metadata_and_statistics(tmp_path):
    p = make_store(tmp_path / "s.zarr", variables=("t2m", "u10"), zarr_format=2)
    s = from_store(p, batch_size=4)
    assert s.variables == ("t2m", "u10") and s.sample_dims == ("sample",) and s.split == "train"
    st = xr.open_zarr(p, group="statistics", consolidated=False)
    np.testing.assert_allclose(s.mean, st["mean"].values)
    np.testing.assert_allclose(s.std, st["std"].values)
    assert s.n_chunks == 6  # 7 chunks, holdout 0.1 -> 1 held out
    x = torch.cat(list(s))
    assert abs(float(x.mean())) < 0.5
    sub = from_store(p, batch_size=4, variables=["u10"], split="validation")
    assert sub.variables == ("u10",) and sub.mean[0] == pytest.approx(float(st["mean"].values[1]))
    assert not sub.shuffle


def test_from_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        from_store(tmp_path / "missing.zarr", batch_size=2)
    p = make_store(tmp_path / "inc.zarr", complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        from_store(p, batch_size=2)
    q = make_store(tmp_path / "q.zarr")
    with pytest.raises(ValueError, match="unknown variable"):
        from_store(q, batch_size=2, variables=["nope"])
    r = make_store(tmp_path / "r.zarr", stats=False)
    with pytest.raises(ValueError, match="statistics"):
        from_store(r, batch_size=2)
    xr.Dataset({"a": ("s", np.zeros(3))}).to_zarr(tmp_path / "foreign.zarr")
    with pytest.raises(ValueError, match="not a prepared"):
        from_store(tmp_path / "foreign.zarr", batch_size=2)


def test_errors(store, tmp_path):
    kw = dict(batch_size=4)
    with pytest.raises(ValueError, match="unknown variable"):
        FieldStream(store, ["field", "zeta"], ["sample"], [0, 0], [1, 1], **kw)
    with pytest.raises(ValueError, match="leading dims"):
        FieldStream(store, ["field"], ["time"], 0, 1, **kw)
    with pytest.raises(ValueError, match="leading dims"):
        FieldStream(store, ["field"], ["y"], 0, 1, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        FieldStream(store, ["field"], ["sample"], 0, 1, batch_size=0)
    with pytest.raises(ValueError, match="std must be > 0"):
        FieldStream(store, ["field"], ["sample"], 0, 0.0, **kw)
    with pytest.raises(ValueError, match="2 values for 1 variables"):
        FieldStream(store, ["field"], ["sample"], [0, 1], 1, **kw)
    with pytest.raises(ValueError, match="holdout > 0"):
        FieldStream(store, ["field"], ["sample"], 0, 1, split="validation", **kw)
    with pytest.raises(ValueError, match="split must be"):
        FieldStream(store, ["field"], ["sample"], 0, 1, split="test", **kw)
    with pytest.raises(ValueError, match="holdout must be"):
        FieldStream(store, ["field"], ["sample"], 0, 1, holdout=1.0, **kw)
    with pytest.raises(ValueError, match="has 0 chunk"):  # 7 chunks, all held out
        FieldStream(store, ["field"], ["sample"], 0, 1, split="train", holdout=0.95, **kw)
    with pytest.raises(ValueError, match="world_size=8"):
        FieldStream(store, ["field"], ["sample"], 0, 1, rank=0, world_size=8, **kw)
    with pytest.raises(ValueError, match="both rank and world_size"):
        FieldStream(store, ["field"], ["sample"], 0, 1, rank=1, **kw)
    with pytest.raises(FileNotFoundError):
        FieldStream(tmp_path / "nothing.zarr", ["field"], ["sample"], 0, 1, **kw)
    with pytest.raises(ValueError, match="need num_workers > 0"):
        make_loader(FieldStream(store, ["field"], ["sample"], 0, 1, **kw), persistent_workers=True)
