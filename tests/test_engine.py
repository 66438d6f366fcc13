"""The engine's pieces used directly: the one denoiser call, the walks on a step table, the Picard member state."""

import pytest
import torch

from sciencegen.diffusion import make_grid, step_table
from sciencegen.samplers import call_denoiser, picard_walk, sequential_walk
from sciencegen.samplers.walk_state import MemberState
from sciencegen.targets import GaussianRandomField


def test_call_denoiser_splits_into_micro_batches_and_checks_shapes():
    sizes = []

    def den(y, level):
        sizes.append(y.shape[0])
        return y * level.reshape(-1, 1)

    y, level = torch.randn(7, 3, dtype=torch.float64), torch.arange(7, dtype=torch.float64)
    assert torch.equal(call_denoiser(den, y, level, max_batch=3), y * level[:, None])
    assert sizes == [3, 3, 1]
    assert call_denoiser(den, y[:0], level[:0]).shape == (0, 3) and sizes == [3, 3, 1]
    with pytest.raises(ValueError, match=r"denoiser returned shape \(2, 2\) for input of shape \(2, 3\)"):
        call_denoiser(lambda y, s: y[:, :2], y[:2], level[:2])


def test_member_state_starts_at_the_first_point():
    x = torch.randn(3, 1, 4, dtype=torch.float64)
    st = MemberState.start(x, window=5, keep_d=False)
    assert st.points.shape == (3, 6, 1, 4) and torch.equal(st.points[:, 0], x) and st.d_points is None
    assert st.noise.shape == (3, 5, 1, 4) and int(st.accepted.sum()) == 0
    assert bool(torch.isinf(st.last_residual).all()) and st.rounds.device.type == "cpu"
    assert MemberState.start(x, window=2, keep_d=True).d_points.shape == (3, 3, 1, 4)


@pytest.mark.parametrize("method, order", [("sde", 1), ("ode", 2), ("heun", 1)])
def test_picard_walk_at_a_tight_tolerance_is_the_sequential_walk(method, order):
    g = GaussianRandomField(8)
    table = step_table(make_grid(30, "karras"), method, lag="step", order=order)
    gen = torch.Generator().manual_seed(0)
    x = float(table.sigma[0]) * torch.randn(2, *g.shape, dtype=torch.float64, generator=gen)
    ref, st_ref = sequential_walk(g.denoiser, table, x, [0, 1], seed=3)
    got, st = picard_walk(g.denoiser, table, x, [0, 1], seed=3, tol=1e-10, window=8, ends=[10, 30])
    assert float((got - ref).norm() / ref.norm()) <= 1e-8
    assert st.rounds <= st_ref.rounds and int(st.rounds_per_member.max()) == st.rounds
    assert bool((st.nfe_per_member >= st_ref.nfe_per_member).all())


def test_picard_walk_refuses_unknown_norm_and_accept():
    table = step_table(make_grid(4))
    x = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="norm must be one of"):
        picard_walk(lambda y, s: y, table, x, [0], 0, tol=0.1, window=2, norm="l1")
    with pytest.raises(ValueError, match="accept must be 'prefix' or 'block'"):
        picard_walk(lambda y, s: y, table, x, [0], 0, tol=0.1, window=2, accept="all")
