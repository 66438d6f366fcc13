import math

import pytest
import torch

from sciencegen.diffusion import alpha_sigma, block_ends, edm_sigma_to_t, make_grid, step_table


@pytest.mark.parametrize("grid", ["geometric", "karras", "logsnr", "uniform"])
def test_grid_is_decreasing_and_hits_the_noise_levels(grid):
    t = make_grid(50, grid, sigma_min=0.01, sigma_max=40.0)
    assert t.shape == (51,)
    assert bool((t[1:] < t[:-1]).all()) and float(t[-1]) == 0.0
    a, s = alpha_sigma(t)
    edm = s / a
    assert math.isclose(float(edm[0]), 40.0, rel_tol=1e-12)
    assert math.isclose(float(edm[-2]), 0.01, rel_tol=1e-12)


def test_geometric_grid_is_geometric_in_ou_time():
    t = make_grid(20, "geometric")[:-1]
    ratios = t[1:] / t[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios), rtol=1e-12)


def test_vp_identities():
    t = torch.linspace(0.01, 5, 7, dtype=torch.float64)
    a, s = alpha_sigma(t)
    assert torch.allclose(a**2 + s**2, torch.ones_like(t))
    assert torch.allclose(edm_sigma_to_t(s / a), t)


@pytest.mark.parametrize("form", ["data", "score"])
def test_ode_table_is_exact_for_a_point_mass(form):
    # For x0 = c the probability-flow ODE solution is x_t = alpha_t c + sigma_t z exactly;
    # the exponential integrator freezes D = c (data form) and the score form freezes
    # (alpha c - x)/sigma^2 which is not constant, so only the data form is exact on a coarse grid.
    t = make_grid(12, "geometric", sigma_max=20.0)
    tab = step_table(t, "ode", form)
    a, s = alpha_sigma(t)
    c, z = 0.7, -1.3
    x = float(a[0]) * c + float(s[0]) * z
    for j in range(tab.steps):
        x = float(tab.A[j] + tab.E[j]) * x + float(tab.B[j]) * c
        exact = float(a[j + 1]) * c + float(s[j + 1]) * z
        if form == "data":
            assert math.isclose(x, exact, rel_tol=1e-10, abs_tol=1e-12)
    assert math.isclose(x, c, rel_tol=1e-12)  # the last step lands on the data


def test_fine_score_form_ode_converges_to_the_data_form():
    c, z = 0.7, -1.3
    out = {}
    for form in ["data", "score"]:
        t = make_grid(4000, "geometric", sigma_max=20.0, sigma_min=0.05)
        tab = step_table(t, "ode", form)
        a, s = alpha_sigma(t)
        x = float(a[0]) * c + float(s[0]) * z
        for j in range(tab.steps - 1):
            x = float(tab.A[j] + tab.E[j]) * x + float(tab.B[j]) * c
        out[form] = x
    assert math.isclose(out["data"], out["score"], rel_tol=1e-3)


def test_lag_split_does_not_change_the_recurrence():
    t = make_grid(30)
    for method in ["sde", "ode"]:
        for form in ["data", "score"]:
            f, st = step_table(t, method, form, "F"), step_table(t, method, form, "step")
            assert torch.allclose(f.A + f.E, st.A + st.E)
            assert torch.equal(f.B, st.B) and torch.equal(f.C, st.C)
            assert bool((st.A == 1).all())


def test_sde_noise_matches_marginal_variance():
    # with D = 0 (data at 0), the SDE keeps x_t ~ N(0, sigma_t^2): check the variance recursion
    t = make_grid(40)
    tab = step_table(t, "sde", "data")
    a, s = alpha_sigma(t)
    var = float(s[0]) ** 2
    for j in range(tab.steps - 1):
        var = float(tab.A[j] + tab.E[j]) ** 2 * var + float(tab.C[j]) ** 2
        # exact posterior-free marginal of a point mass at 0 is sigma^2
        assert math.isclose(var, float(s[j + 1]) ** 2, rel_tol=1e-10)


def test_last_step_has_zero_decay_and_unit_denoiser_weight():
    for method in ["sde", "ode"]:
        for form in ["data", "score"]:
            tab = step_table(make_grid(10), method, form)
            assert float(tab.A[-1] + tab.E[-1]) == 0.0
            assert float(tab.B[-1]) == 1.0 and float(tab.C[-1]) == 0.0


def test_blocks_have_equal_logsnr_length():
    tab = step_table(make_grid(1000))
    ends = block_ends(tab, 4)
    assert len(ends) == 4 and ends[-1] == 1000
    lam = tab.logsnr[:1000]
    starts = [0] + ends[:-1]
    lengths = [float(lam[min(e, 999)] - lam[s]) for s, e in zip(starts, ends, strict=False)]
    total = float(lam[-1] - lam[0])
    for length in lengths[:-1]:
        assert abs(length - total / 4) < 0.05 * total / 4
    assert block_ends(tab, 1) == [1000]
    assert block_ends(step_table(make_grid(3)), 10) == [1, 2, 3]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_grid(0), "steps"),
        (lambda: make_grid(10, "cosine"), "unknown grid"),
        (lambda: make_grid(10, sigma_min=1, sigma_max=0.5), "sigma_min"),
        (lambda: step_table(make_grid(10), "euler"), "method"),
        (lambda: step_table(make_grid(10), form="eps"), "form"),
        (lambda: step_table(torch.tensor([0.0, 1.0])), "decreasing"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
