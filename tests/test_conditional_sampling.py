"""Conditions through every sampler: each item of a round gets its member's condition (contract C2, issue 15)."""

import math

import pytest
import torch

from sciencegen.samplers import SAMPLERS, sample, twin
from sciencegen.samplers.engine import Conditions, call_denoiser
from sciencegen.samplers.noise import condition_seed

VAR = 0.25  # x0 | c ~ N(c, VAR I): the exact conditional law of the denoiser below


def gaussian_given_c(x, sigma, c):
    """Exact E[x0 | x0 + sigma n = x, c] for x0 | c ~ N(c, VAR I)."""
    s2 = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return c + VAR / (VAR + s2) * (x - c)


def conditions(members, shape=(1, 6, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(members, *shape, dtype=torch.float64, generator=gen)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_gives_each_member_its_condition(name):
    cond = conditions(3)
    kw = dict(sampler=name, steps=12, seed=5, dtype=torch.float64)
    together = sample(gaussian_given_c, (1, 6, 6), 3, cond=cond, **kw).samples
    for i in range(3):
        alone = sample(gaussian_given_c, (1, 6, 6), 1, first_member=i, cond=cond[i], **kw).samples[0]
        assert torch.allclose(together[i], alone, rtol=0, atol=1e-10), (name, i)
    # the members follow their own conditions: far apart conditions, each sample near its own
    dist = torch.cdist(together.reshape(3, -1), cond.reshape(3, -1))
    assert torch.equal(dist.argmin(1), torch.arange(3)), name


def test_picard_at_a_tight_tolerance_reproduces_its_sequential_twin_given_conditions():
    cond = conditions(4, (2, 8, 8), seed=1)
    seq_name, seq_opts = twin("picard_dpm2m")
    ref = sample(gaussian_given_c, (2, 8, 8), 4, sampler=seq_name, steps=32, seed=2, dtype=torch.float64,
                 cond=cond, **seq_opts).samples
    got = sample(gaussian_given_c, (2, 8, 8), 4, sampler="picard_dpm2m", steps=32, seed=2, dtype=torch.float64,
                 cond=cond, tol=1e-10).samples
    assert float((got - ref).norm() / ref.norm()) < 1e-8


def test_a_conditional_picard_ensemble_follows_the_exact_conditional_law():
    members, shape = 256, (1, 12, 12)
    c = conditions(1, shape, seed=3)[0]
    out = sample(gaussian_given_c, shape, members, sampler="picard_dpm2m", steps=64, seed=0, cond=c,
                 dtype=torch.float64)
    x = out.samples
    z = (x.mean(0) - c) / math.sqrt(VAR / members)  # per pixel: N(0, 1) if the law is right
    assert abs(float(z.mean())) < 4 / math.sqrt(z.numel())
    assert abs(float(z.pow(2).mean()) - 1) < 4 * math.sqrt(2 / z.numel())
    assert float(z.abs().max()) < 4.5  # 144 pixels: P(max |z| > 4.5) ~ 1e-3
    ratio = x.var(0, unbiased=True) / VAR  # (members-1) ratio ~ chi2(members-1): sd sqrt(2/255) per pixel
    assert abs(float(ratio.mean()) - 1) < 4 * math.sqrt(2 / (members - 1)) / math.sqrt(ratio.numel())


def test_a_shared_condition_is_not_copied_per_item():
    seen = []

    def den(x, sigma, c):
        seen.append((c.shape[0], c.stride(0)))
        return gaussian_given_c(x, sigma, c)

    sample(den, (1, 4, 4), 3, sampler="picard_dpm2m", steps=8, cond=torch.ones(1, 4, 4))
    assert seen and all(stride == 0 for _, stride in seen)  # one condition, expanded: no copy per item
    assert max(n for n, _ in seen) > 3  # a Picard round evaluates several window points per member


def test_call_denoiser_gathers_conditions_by_member_per_micro_batch():
    calls = []

    def den(y, level, c):
        calls.append(c.clone())
        return y + c

    values = torch.arange(3, dtype=torch.float64).reshape(3, 1, 1) * 10
    members = torch.tensor([2, 0, 0, 1, 2])
    y = torch.zeros(5, 1, 1, dtype=torch.float64)
    out = call_denoiser(den, y, torch.ones(5), max_batch=2, cond=Conditions(values), members=members)
    assert out.reshape(-1).tolist() == [20.0, 0.0, 0.0, 10.0, 20.0]
    assert [c.shape[0] for c in calls] == [2, 2, 1]


def test_conditions_of_the_wrong_shape_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"cond must have shape \[C_cond, \*\[6, 6\]\]"):
        sample(gaussian_given_c, (1, 6, 6), 2, steps=4, cond=torch.zeros(1, 5, 6))
    with pytest.raises(ValueError, match="cond holds 3 conditions for 2 members"):
        sample(gaussian_given_c, (1, 6, 6), 2, steps=4, cond=torch.zeros(3, 1, 6, 6))
    with pytest.raises(ValueError, match="cond must be a torch.Tensor"):
        sample(gaussian_given_c, (1, 6, 6), 2, steps=4, cond=[[0.0]])


def test_member_i_of_condition_c_depends_only_on_seed_c_and_i():
    seeds = {condition_seed(7, c, lead) for c in range(4) for lead in range(3)}
    assert len(seeds) == 12 and condition_seed(7, 2, 1) == condition_seed(7, 2, 1)
    assert condition_seed(7, 2) != condition_seed(8, 2)
    c = conditions(1)[0]
    kw = dict(sampler="dpm2m", steps=8, dtype=torch.float64, cond=c)
    many = sample(gaussian_given_c, (1, 6, 6), 5, seed=condition_seed(7, 2), **kw).samples
    some = sample(gaussian_given_c, (1, 6, 6), 2, seed=condition_seed(7, 2), first_member=3, **kw).samples
    assert torch.equal(many[3:], some)
    other = sample(gaussian_given_c, (1, 6, 6), 5, seed=condition_seed(7, 3), **kw).samples
    assert not torch.allclose(many, other)
