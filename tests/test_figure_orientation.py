"""Every field panel is drawn north up by coordinate value, with labelled axes (issue 18, contract G3).

A field positive only in the north (negative in the south) on a DESCENDING latitude (60 -> 18, as NCEP and
ERA files store it) and on an ascending one is drawn by each panel function; the figure is rendered with Agg
and the pixels read back: the upper half of each panel has the colour of the positive value, the lower half
that of the negative one. The same with a field positive only in the east (x to the right). Labels name the
coordinates and their units; a missing unit is never shown as ``[1]``; curve figures label their x axis from
the metric coordinate's ``long_name`` / ``units``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sciencegen.analysis import panels as P
from sciencegen.analysis.conditional_figures import (
    plot_condition_panels,
    plot_conditional_spectra,
    plot_scores,
)
from sciencegen.analysis.figures import (
    Legend,
    plot_correlation_comparison,
    plot_histogram_comparison,
    plot_sample_panels,
    plot_samples,
    plot_spectrum_comparison,
)
from sciencegen.analysis.observed_figures import plot_observed
from sciencegen.training.validation import figure_axes

NORTH = 39.0
EAST = 236.0


def _lat(descending: bool) -> xr.DataArray:
    v = np.linspace(60.0, 18.0, 29) if descending else np.linspace(18.0, 60.0, 29)
    return xr.DataArray(v, dims="lat", name="lat", attrs={"units": "degrees_north", "standard_name": "latitude"})


LON = xr.DataArray(np.linspace(200.0, 272.0, 49), dims="lon", name="lon", attrs={"units": "degrees_east"})


def _field(lat: xr.DataArray, east: bool = False) -> np.ndarray:
    """+1 in the north (or the east), -1 elsewhere: ``[lat, lon]``."""
    if east:
        return np.where(LON.values[None, :] > EAST, 1.0, -1.0) * np.ones((lat.size, 1))
    return np.where(lat.values[:, None] > NORTH, 1.0, -1.0) * np.ones((1, LON.size))


@pytest.fixture
def figures(monkeypatch):
    """Every Figure a plot function saves (the PNG is still written)."""
    seen = []
    save = Figure.savefig

    def spy(self, *args, **kwargs):
        seen.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _mappable(ax):
    return ax.images[0] if ax.images else ax.collections[0]


def _field_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and (ax.images or any(
        type(c).__name__ == "QuadMesh" for c in ax.collections))]


def _pixel(buf: np.ndarray, ax, fx: float, fy: float) -> np.ndarray:
    """The rendered colour at fractions ``(fx, fy)`` of the axes box, from its lower-left corner."""
    bb = ax.get_window_extent()
    x, y = bb.x0 + fx * bb.width, bb.y0 + fy * bb.height
    return buf[int(round(buf.shape[0] - y)), int(round(x))]


def _colour(ax, value: float) -> np.ndarray:
    m = _mappable(ax)
    return np.round(np.asarray(m.cmap(m.norm(value))[:3]) * 255)


def _assert_oriented(fig: Figure, east: bool = False, expect: int | None = None) -> None:
    """Each field panel: positive colour in the north (upper half) or the east (right half)."""
    buf = _render(fig)
    axes = _field_axes(fig)
    assert axes and (expect is None or len(axes) == expect), len(axes)
    for ax in axes:
        pos, neg = _colour(ax, 1.0), _colour(ax, -1.0)
        assert np.abs(pos - neg).max() > 60  # the two colours are distinguishable
        for f in (0.1, 0.3):  # north/east quarter and the quarter beyond the middle (both sides of the line)
            hi = _pixel(buf, ax, 0.5, 1 - f) if not east else _pixel(buf, ax, 1 - f, 0.5)
            lo = _pixel(buf, ax, 0.5, f) if not east else _pixel(buf, ax, f, 0.5)
            assert np.abs(hi - pos).max() <= 3, (ax.get_title(), hi, pos)
            assert np.abs(lo - neg).max() <= 3, (ax.get_title(), lo, neg)


def _texts(fig: Figure) -> list[str]:
    out = []
    for ax in fig.axes:
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return out


# ----------------------------------------------------------------------------------------------- the helper


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("east", [False, True])
def test_draw_field_puts_north_up_and_east_right(descending, east):
    lat = _lat(descending)
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    P.draw_field(ax, _field(lat, east), lat, LON, vmin=-1, vmax=1, cmap="RdBu_r", aspect="equal")
    _assert_oriented(fig, east, expect=1)
    assert ax.get_ylabel() == "lat [degrees_north]" and ax.get_xlabel() == "lon [degrees_east]"
    assert ax.get_ylim() == pytest.approx((17.25, 60.75)) and ax.get_xlim() == pytest.approx((199.25, 272.75))
    im = ax.images[0]  # cell-centred extent, vertical coordinate increasing upward
    assert im.origin == "lower" and im.get_extent() == pytest.approx((199.25, 272.75, 17.25, 60.75))
    assert ax.yaxis.get_ticklabels() and ax.xaxis.get_ticklabels()


def test_draw_field_on_a_non_uniform_descending_latitude_uses_cell_edges():
    lat = xr.DataArray(np.array([70.0, 55.0, 45.0, 38.0, 33.0, 20.0, 0.0]), dims="lat", name="lat",
                       attrs={"units": "degrees_north"})
    f = np.where(lat.values[:, None] > NORTH, 1.0, -1.0) * np.ones((1, LON.size))
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    P.draw_field(ax, f, lat, LON, vmin=-1, vmax=1, cmap="RdBu_r")
    assert not ax.images and ax.get_ylim() == pytest.approx((-10.0, 77.5))
    buf = _render(fig)
    for y, want in [(70.0, 1.0), (47.0, 1.0), (43.0, 1.0), (40.0, -1.0), (30.0, -1.0), (5.0, -1.0)]:
        fy = (y + 10.0) / 87.5
        assert np.abs(_pixel(buf, ax, 0.5, fy) - _colour(ax, want)).max() <= 3, y


def test_index_axes_keep_row_zero_at_the_bottom():
    f = np.where(np.arange(10)[:, None] < 5, 1.0, -1.0) * np.ones((1, 7))  # row 0..4 positive
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    P.draw_field(ax, f, vmin=-1, vmax=1, cmap="RdBu_r")
    buf = _render(fig)
    assert np.abs(_pixel(buf, ax, 0.5, 0.2) - _colour(ax, 1.0)).max() <= 3
    assert np.abs(_pixel(buf, ax, 0.5, 0.8) - _colour(ax, -1.0)).max() <= 3
    assert ax.get_ylabel() == "index" and ax.get_xlabel() == "index"


def test_a_coordinate_that_wraps_is_drawn_by_index():
    lon = xr.DataArray(np.r_[np.arange(300.0, 360.0, 10.0), np.arange(0.0, 40.0, 10.0)], dims="lon", name="lon",
                       attrs={"units": "degrees_east"})
    a, flipped = P.drawn_axis(lon, lon.size)
    assert a.index and not flipped and a.label == "lon (index)"
    a, flipped = P.drawn_axis(_lat(True), 29)
    assert flipped and not a.index and a.values[0] == 18.0 and a.label == "lat [degrees_north]"


def test_labels_and_units():
    assert P.units_suffix(None) == "" and P.units_suffix("") == "" and P.units_suffix("m^2") == " [m²]"
    assert P.units_suffix(None, " (units unknown)") == " (units unknown)"
    assert P.axis_label("sst", None) == "sst" and P.axis_label("u", "m/s") == "u [m/s]"
    assert P.panel_axis(np.arange(3.0), "y").label == "y"
    times = xr.DataArray(np.array(["2000-01-01", "2000-02-01"], dtype="datetime64[ns]"), dims="t", name="t")
    assert P.panel_axis(times).index and P.panel_axis(times).label == "t (index)"
    entry = {"distance": [0.0, 100.0], "distance_attrs": {"long_name": "great-circle distance", "units": "km"}}
    assert P.coord_label(entry, "distance", "x") == "great-circle distance [km]"
    as_dict = {"coords": {"wavenumber": {"attrs": {"long_name": "zonal wavenumber"}, "data": [1, 2]}}}
    assert P.coord_label(as_dict, "wavenumber", "x") == "zonal wavenumber"
    assert P.coord_label({"attrs": {"k": {"units": "1/km"}}}, "k", "x") == "k [1/km]"
    da = xr.DataArray([1.0], dims="d", coords={"d": ("d", [0.0], {"long_name": "lag", "units": "days"})})
    assert P.coord_label({"d": da["d"]}, "d", "x") == "lag [days]"
    assert P.coord_label({"wavenumber": [1, 2]}, "wavenumber", "today's") == "today's"
    assert list(P.coord_values({"k": {"data": [1, 2]}}, "k")) == [1.0, 2.0]


# ----------------------------------------------------------------------------------------------- each figure


@pytest.mark.parametrize("descending", [True, False])
def test_training_sample_figure(tmp_path, figures, descending):
    lat = _lat(descending)
    f = torch.as_tensor(_field(lat))[None, None].repeat(3, 1, 1, 1)
    axes = P.panel_axes(xr.Dataset(coords={"lat": lat, "lon": LON}), ["lat", "lon"])
    plot_samples(f, tmp_path / "s.png", data=f.clone(), axes=axes, panels=3)
    _assert_oriented(figures[-1], expect=6)
    fig = figures[-1]
    assert any("lat [degrees_north]" in t for t in _texts(fig)) and any("lon [degrees_east]" in t for t in _texts(fig))
    # without coordinates (plain tensors): index axes, row 0 at the bottom
    rows = torch.where(torch.arange(10)[:, None] < 5, 1.0, -1.0).expand(10, 8)[None, None].repeat(2, 1, 1, 1)
    plot_samples(rows.double(), tmp_path / "i.png")
    buf = _render(figures[-1])
    for ax in _field_axes(figures[-1]):
        assert np.abs(_pixel(buf, ax, 0.5, 0.2) - _colour(ax, 1.0)).max() <= 3


def test_training_figure_axes_come_from_the_prepared_store():
    class Prepared:
        ds = xr.Dataset({"sst": (("time", "lat", "lon"), np.zeros((2, 29, 49)))},
                        coords={"lat": _lat(True), "lon": LON})

        class spec:  # noqa: N801
            field_dims = ("lat", "lon")

    a = figure_axes(Prepared())
    assert [x.label for x in a] == ["lat [degrees_north]", "lon [degrees_east]"] and a[0].values[0] == 60.0
    assert figure_axes(object()) is None  # unreadable: the figure falls back on index axes


@pytest.mark.parametrize("descending", [True, False])
def test_evaluation_sample_panels(tmp_path, figures, descending):
    lat = _lat(descending)
    f = _field(lat)[None].repeat(2, 0)
    plot_sample_panels(tmp_path / "p.png", {"sst": (f, -f[::-1] * -1, np.array([3, 7]))}, "held-out data",
                       {"sst": None}, {"sst": (lat, LON)}, "title")
    fig = figures[-1]
    _assert_oriented(fig, expect=4)
    texts = _texts(fig) + [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert any("lat [degrees_north]" in t for t in texts) and any("lon [degrees_east]" in t for t in texts)
    assert not any("[1]" in t for t in texts) and "sst" in texts  # no units: no bracket on the colour bar
    # bare arrays (today's evaluation) are drawn by value too: north up
    plot_sample_panels(tmp_path / "q.png", {"sst": (f, f, np.array([0, 1]))}, "ref", {"sst": "K"},
                       {"sst": (lat.values, LON.values)}, "title")
    _assert_oriented(figures[-1], expect=4)
    plot_sample_panels(tmp_path / "e.png", {"sst": (_field(lat, True)[None], _field(lat, True)[None], np.zeros(1))},
                       "ref", {"sst": "K"}, {"sst": (lat, LON)}, "title")
    _assert_oriented(figures[-1], east=True, expect=2)


@pytest.mark.parametrize("descending", [True, False])
def test_condition_panels(tmp_path, figures, descending):
    lat = _lat(descending)
    f = _field(lat)
    panel = {"cases": [0, 5], "input_name": "input_sst", "input": np.stack([f, f]), "truth": np.stack([f, f]),
             "members": np.stack([np.stack([f, f])] * 2), "mean": np.stack([f, f]), "count": 2, "lead_time": 1,
             "coords": {"lat": lat, "lon": LON}}
    plot_condition_panels(tmp_path / "c.png", {"sst": panel}, {"sst": "K"}, "t")
    fig = figures[-1]
    _assert_oriented(fig, expect=10)
    texts = _texts(fig)
    assert any("lat [degrees_north]" in t for t in texts) and any("lon [degrees_east]" in t for t in texts)
    # without coordinates: index axes, row 0 at the bottom (row 0 is the first latitude)
    del panel["coords"]
    plot_condition_panels(tmp_path / "d.png", {"sst": panel}, {"sst": None}, "t")
    buf = _render(figures[-1])
    first_is_north = descending
    for ax in _field_axes(figures[-1]):
        bottom = _pixel(buf, ax, 0.5, 0.2)
        assert np.abs(bottom - _colour(ax, 1.0 if first_is_north else -1.0)).max() <= 3
    assert not any("[1]" in t for t in _texts(figures[-1]))


@pytest.mark.parametrize("descending", [True, False])
def test_observed_panels(tmp_path, figures, descending):
    lat = _lat(descending)
    f = _field(lat)
    std = np.where(f > 0, 1.0, 0.2)
    rows, cols = np.meshgrid(np.arange(0, 29, 4), np.arange(0, 49, 6), indexing="ij")
    pts = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(float)
    vals = f[rows.ravel(), cols.ravel()]
    panels = {"cases": [2], "truth": [f], "mean": [f], "std": [std], "exact_mean": [f], "exact_std": [std],
              "observations": [{"points": pts, "values": vals}], "coords": {"lat": lat, "lon": LON}}
    plot_observed(tmp_path / "o.png", panels, "sst", "", "t")
    fig = figures[-1]
    buf = _render(fig)
    field_axes = _field_axes(fig)
    assert len(field_axes) == 5
    for ax in field_axes:
        hi, lo = (1.0, 0.2) if _mappable(ax).cmap.name == "magma" else (1.0, -1.0)
        assert np.abs(_pixel(buf, ax, 0.5, 0.85) - _colour(ax, hi)).max() <= 3
        assert np.abs(_pixel(buf, ax, 0.5, 0.15) - _colour(ax, lo)).max() <= 3
        assert ax.get_xlabel() == "lon [degrees_east]"
    # the observation points: the positive ones are drawn above the negative ones, in latitude
    obs_ax = next(ax for ax in fig.axes if ax.get_title() == "observations")
    xy = obs_ax.collections[0].get_offsets()
    assert xy[vals > 0, 1].min() > NORTH > xy[vals < 0, 1].max()
    assert obs_ax.get_ylim()[0] < obs_ax.get_ylim()[1]
    assert "lat [degrees_north]" in field_axes[0].get_ylabel()
    assert not any("[1]" in t for t in _texts(fig) + [a.get_ylabel() for a in fig.axes])


# ----------------------------------------------------------------------------------------------- curves


def _legend():
    return Legend(members=4, reference="held-out data", reference_count=5, exact=False, title="t")


def test_curve_axes_are_labelled_from_the_metric_coordinate(tmp_path, figures):
    k = [1.0, 2.0, 3.0, 4.0]
    base = {"spectrum": {"wavenumber": k, "sample": [1, 0.5, 0.2, 0.1], "reference": [1, 0.6, 0.2, 0.1]},
            "spectral_shells": [1, 4], "spectral_error": 0.1, "units": None,
            "correlation": {"separation": [0, 1, 2], "sample": [1, 0.5, 0.1], "reference": [1, 0.4, 0.1],
                            "max_abs_diff": 0.1},
            "histogram": {"edges": [-1, 0, 1], "sample": [0.5, 0.5], "reference": [0.4, 0.6]},
            "moments": {}, "w1": 0.1, "w1_normalised": 0.1}
    plot_spectrum_comparison(tmp_path / "a.png", {"v": base}, _legend())
    texts = _texts(figures[-1])
    assert "wavenumber k (shells of 2π/L)" in texts and "power per mode" in texts  # today's label, no "[1]"
    plot_correlation_comparison(tmp_path / "b.png", {"v": base}, _legend())
    assert "separation r [grid points]" in _texts(figures[-1])
    plot_histogram_comparison(tmp_path / "h.png", {"v": base}, _legend())
    assert "v" in _texts(figures[-1]) and not any("[1]" in t for t in _texts(figures[-1]))

    zonal = dict(base, units="m/s")
    zonal["spectrum"] = dict(base["spectrum"], wavenumber_attrs={"long_name": "zonal wavenumber"})
    zonal["correlation"] = {"distance": [0.0, 250.0, 500.0], "distance_units": "km", "sample": [1, 0.5, 0.1],
                            "reference": [1, 0.4, 0.1], "max_abs_diff": 0.1,
                            "distance_attrs": {"long_name": "great-circle distance", "units": "km"}}
    plot_spectrum_comparison(tmp_path / "c.png", {"u": zonal}, _legend())
    assert "zonal wavenumber" in _texts(figures[-1]) and "power per mode [(m/s)²]" in _texts(figures[-1])
    plot_correlation_comparison(tmp_path / "d.png", {"u": zonal}, _legend())
    assert "great-circle distance [km]" in _texts(figures[-1])
    del zonal["correlation"]["distance_attrs"]  # today's metrics.json: the distance units only
    plot_correlation_comparison(tmp_path / "e.png", {"u": zonal}, _legend())
    assert "separation r [km]" in _texts(figures[-1])
    zonal["correlation"]["distance_long_name"] = "great-circle distance"  # metrics.json of a lat-lon grid
    plot_correlation_comparison(tmp_path / "f.png", {"u": zonal}, _legend())
    assert "great-circle distance [km]" in _texts(figures[-1])


def test_conditional_curves_label_axes_and_units(tmp_path, figures):
    spec = {"wavenumber": [1, 2, 3], "forecast": [1, 0.5, 0.2], "truth": [1, 0.6, 0.2]}
    method = {"crps": 0.2, "spread_skill": 0.9, "spectrum": spec, "spectral_shells": [1, 3], "spectral_error": 0.1}
    variables = {"sst": {"units": None, "leads": [{"lead_time": 1, "methods": {"model": method}}]}}
    plot_scores(tmp_path / "s.png", variables, "t")
    assert "CRPS" in _texts(figures[-1]) and not any("[1]" in t for t in _texts(figures[-1]))
    plot_conditional_spectra(tmp_path / "p.png", variables, "t")
    texts = _texts(figures[-1])
    assert "wavenumber k (shells of 2π/L)" in texts and "power per mode" in texts
    spec["wavenumber_attrs"] = {"long_name": "zonal wavenumber", "units": "cycles per circle"}
    variables["sst"]["units"] = "K"
    plot_conditional_spectra(tmp_path / "q.png", variables, "t")
    texts = _texts(figures[-1])
    assert "zonal wavenumber [cycles per circle]" in texts and "power per mode [K²]" in texts
