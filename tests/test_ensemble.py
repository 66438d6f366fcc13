"""Tests of the ensemble store's public API (:mod:`sciencegen.data.ensemble`) on its own, without sampling:
create from a template, write chunks, completed members, the recorded identity, open for reading, export,
and the CF conventions it shares with the prepared dataset stores."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import xarray as xr

from sciencegen.data import ensemble as E
from sciencegen.data.prepare import prepare
from sciencegen.data.store import CONVENTIONS

VARS, DIMS, SHAPE = ("u", "v"), ("y", "x"), (4, 6)


def _template(members: int = 5, chunk: int = 2, identity: dict | None = None) -> tuple[xr.Dataset, dict]:
    meta = {"format": E.FORMAT_VERSION, "identity": identity or {"seed": 3, "members": members}, "chunk": chunk,
            "batch_size": chunk, "store_id": uuid.uuid4().hex}
    coords = {"y": ("y", np.arange(4.0), {"units": "m"}), "x": ("x", np.arange(6.0), {"units": "m"})}
    t = E.template(meta, VARS, DIMS, SHAPE, members, chunk, coords=coords,
                   var_attrs={"u": {"units": "m s-1"}}, attrs={"title": "test ensemble"})
    return t, meta


def _fields(a: int, b: int) -> dict[str, np.ndarray]:
    """Member m of variable i holds m + i everywhere."""
    return {v: np.broadcast_to(np.arange(a, b, dtype=np.float32)[:, None, None] + i, (b - a, *SHAPE)).copy()
            for i, v in enumerate(VARS)}


def test_create_write_complete_read(tmp_path):
    path = tmp_path / "e.zarr"
    t, meta = _template()
    assert E.create_store(path, t, VARS)
    assert not E.create_store(path, t, VARS)  # another job won: the store is kept
    assert E.completed_members(path).tolist() == [False] * 5
    ranges = E.chunk_ranges(5, 2)
    assert ranges == [(0, 2), (2, 4), (4, 5)]
    for a, b in ranges[:2]:
        n = E.write_chunk(str(path), meta["store_id"], a, b, _fields(a, b), np.ones(b - a), np.full(b - a, 7))
        assert n == 2 * (b - a) * 4 * 6 * 4
    assert E.completed_members(path).tolist() == [True] * 4 + [False]
    assert E.read_identity(path) == meta["identity"]
    assert E.read_identity(tmp_path / "none.zarr") is None
    ds = E.open_store(path)
    assert E.field_variables(ds) == VARS
    assert ds["u"].attrs["units"] == "m s-1" and ds.attrs["title"] == "test ensemble"
    assert json.loads(ds.attrs[E.ATTR])["store_id"] == meta["store_id"]
    np.testing.assert_array_equal(ds["u"].values[:4, 0, 0], [0, 1, 2, 3])
    assert np.isnan(ds["u"].values[4]).all()  # not written: NaN, never zeros
    # the flags read back as plain booleans (a CF _FillValue would mask False as NaN, which is truthy), so the
    # selection the docs give keeps exactly the complete members, with plain xarray too
    for opened in (ds, xr.open_zarr(path)):
        assert opened["complete"].dtype == bool
        assert opened["complete"].values.tolist() == [True] * 4 + [False]
        assert opened.sel(member=opened["complete"].values)["member"].values.tolist() == [0, 1, 2, 3]
    with pytest.raises(E.StoreReplaced, match="deleted or replaced"):
        E.write_chunk(str(path), "another-id", 4, 5, _fields(4, 5), np.ones(1), np.ones(1))
    with pytest.raises(E.StoreError, match="not complete"):
        E.export_netcdf(path, tmp_path / "e.nc")
    E.write_chunk(str(path), meta["store_id"], 4, 5, _fields(4, 5), np.ones(1), np.ones(1))
    out = E.export_netcdf(path, tmp_path / "e.nc")
    with xr.open_dataset(out) as nc:
        np.testing.assert_array_equal(nc["v"].values[:, 0, 0], [1, 2, 3, 4, 5])
        assert nc["member"].attrs["standard_name"] == "realization"


def test_member_coordinate_and_conventions_follow_cf_like_the_prepared_stores(tmp_path):
    path = tmp_path / "e.zarr"
    t, _ = _template()
    E.create_store(path, t, VARS)
    with xr.open_zarr(path) as ds:
        assert ds["member"].attrs == {"standard_name": "realization",
                                      "long_name": "ensemble member (depends only on seed, index)"}
        assert "units" not in ds["member"].attrs  # a realization index is a pure number
        assert ds["member"].values.tolist() == [0, 1, 2, 3, 4]
        conventions = ds.attrs["Conventions"]
    prepared = prepare({"_target_": "sciencegen.physics.datasets.GRFSource", "size": 8, "samples": 4},
                       tmp_path / "grf.zarr")
    with xr.open_zarr(prepared.path) as ds:
        assert ds.attrs["Conventions"] == conventions == CONVENTIONS == E.CONVENTIONS


def test_discard_store_renames_aside_then_deletes(tmp_path):
    path = tmp_path / "e.zarr"
    E.create_store(path, _template()[0], VARS)
    E.discard_store(path)
    assert not path.exists() and not list(tmp_path.glob(".e.zarr.old-*"))
    stale = tmp_path / ".e.zarr.old-host-1"
    stale.mkdir()
    assert E.remove_stale_asides(path) == [stale] and not stale.exists()
