"""The spectral Newton terms of the Picard walk, against exact linear denoisers and the sequential twin."""

from __future__ import annotations

import math

import pytest
import torch

import sciencegen
from sciencegen.samplers.newton import SpectralGain
from sciencegen.samplers.picard import resolve_newton


def _shell_of(grid: tuple[int, ...]) -> torch.Tensor:
    """Integer wavenumber shell of every mode of the FULL spectrum (written here from the definition)."""
    axes = [torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64) for n in grid]
    k = torch.sqrt(sum(a**2 for a in torch.meshgrid(*axes, indexing="ij")))
    return torch.round(k).long()


class ShellFilter:
    """A linear denoiser ``D(y, s) = F^-1 [c / (c + s^2)] F y`` with ``c`` constant on each integer shell."""

    def __init__(self, shape: tuple[int, ...], slope: float = 3.0):
        self.shape = shape
        self.grid = shape[1:] if len(shape) >= 2 else shape
        shell = _shell_of(self.grid).double()
        self.c = 4.0 / (1.0 + shell) ** slope
        self.dims = tuple(range(-len(self.grid), 0))

    def gain(self, s: float) -> torch.Tensor:
        return self.c / (self.c + s * s)

    def __call__(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        g = self.c / (self.c + s.reshape(-1, *([1] * (y.ndim - 1))).double() ** 2)
        return torch.fft.ifftn(torch.fft.fftn(y.double(), dim=self.dims) * g, dim=self.dims).real.to(y.dtype)


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 12, 10), (1, 6, 8, 5), (40,)])
def test_gain_of_a_shell_constant_filter_is_recovered_exactly(shape):
    f = ShellFilter(shape)
    spec = SpectralGain(shape, torch.device("cpu"))
    y = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    got = spec.estimate(f(y, s), y)
    for i in range(3):
        want = torch.fft.rfftn(torch.ones(f.grid, dtype=torch.float64) * f.gain(float(s[i])), dim=f.dims)
        # the expected gain on the half spectrum: the full-spectrum gain restricted to the rfft modes
        full = f.gain(float(s[i]))
        half = full[..., : f.grid[-1] // 2 + 1]
        assert want.shape[-1] == half.shape[-1]
        expect = half.expand_as(got[i])
        assert torch.allclose(got[i], expect, rtol=0, atol=1e-12)


def test_gain_is_clipped_to_the_unit_interval_and_zero_without_signal():
    spec = SpectralGain((1, 8, 8), torch.device("cpu"))
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert float(spec.estimate(3.0 * y, y).max()) == 1.0
    assert float(spec.estimate(-y, y).min()) == 0.0
    assert float(spec.estimate(y, torch.zeros_like(y)).abs().max()) == 0.0


def test_lone_inverse_transform_equals_its_batched_self():
    spec = SpectralGain((1, 64, 64), torch.device("cpu"))
    x = torch.randn(5, 1, 64, 64)
    xh = spec.fft(x)
    alone = torch.stack([spec.ifft(xh[i : i + 1])[0] for i in range(5)])
    assert torch.equal(alone, spec.ifft(xh))
    assert torch.allclose(alone, x, atol=1e-5)


@pytest.mark.parametrize("sampler,steps", [("picard_dpm2m", 64), ("picard_sde", 200)])
def test_newton_with_the_exact_gain_solves_a_window_in_two_rounds(sampler, steps):
    # a linear denoiser that IS a shell multiplier: Newton's model is exact, so one scan after the first
    # evaluation gives the sequential trajectory and the next round confirms it
    shape = (1, 16, 16)
    f = ShellFilter(shape)
    seq, seq_opts = sciencegen.samplers.twin(sampler, {})
    ref = sciencegen.sample(f, shape, 2, seq, steps, seed=4, dtype=torch.float64, **seq_opts)
    res = sciencegen.sample(f, shape, 2, sampler, steps, seed=4, dtype=torch.float64, newton="spectral",
                            window=steps, blocks=1, tol=1e-6)
    rel = float((res.samples - ref.samples).norm() / ref.samples.norm())
    assert rel < 1e-9, rel
    assert res.stats["rounds"] <= 3, res.stats["rounds"]
    picard = sciencegen.sample(f, shape, 2, sampler, steps, seed=4, dtype=torch.float64, newton="none",
                               window=steps, blocks=1, tol=1e-6)
    assert picard.stats["rounds"] >= 3 * res.stats["rounds"], (picard.stats["rounds"], res.stats["rounds"])


def test_newton_converges_to_the_sequential_trajectory_on_a_nonlinear_denoiser():
    # a Gaussian mixture's denoiser is not a Fourier multiplier: Newton only preconditions, the fixed point
    # (the sequential trajectory) is the same
    target = sciencegen.targets.GaussianMixture.random((1, 8, 8), components=3, seed=2)
    ref = sciencegen.sample(target.denoiser, (1, 8, 8), 3, "dpm2m", 48, seed=1, dtype=torch.float64)
    res = sciencegen.sample(target.denoiser, (1, 8, 8), 3, "picard_dpm2m", 48, seed=1, dtype=torch.float64,
                            newton="spectral", tol=1e-8)
    rel = float((res.samples - ref.samples).norm() / ref.samples.norm())
    assert rel < 1e-8, rel
    assert math.isfinite(res.stats["nfe"])


def test_auto_follows_the_denoiser_and_a_declined_newton_is_plain_picard():
    class Local:
        spectral_jacobian = False

        def __init__(self, f):
            self.f = f

        def __call__(self, y, s):
            return self.f(y, s)

    f = ShellFilter((1, 16, 16))
    assert resolve_newton("auto", f) == "spectral"
    assert resolve_newton("auto", Local(f)) == "none"
    assert resolve_newton("none", f) == "none"
    a = sciencegen.sample(Local(f), (1, 16, 16), 2, "picard_dpm2m", 32, seed=0, dtype=torch.float64)
    b = sciencegen.sample(f, (1, 16, 16), 2, "picard_dpm2m", 32, seed=0, dtype=torch.float64, newton="none")
    assert torch.equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="newton"):
        sciencegen.sample(f, (1, 16, 16), 1, "picard_dpm2m", 32, newton="secant")


def test_every_registry_option_is_a_key_of_the_sampler_config():
    # an option the registry knows but the Hydra schema does not cannot be set as sampler.KEY=VALUE
    from dataclasses import fields

    from sciencegen.config import SamplerConfig
    from sciencegen.samplers import OPTIONS

    assert set(OPTIONS) <= {f.name for f in fields(SamplerConfig)}
