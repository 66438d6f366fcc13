"""The ``counter`` noise stream (:mod:`sciencegen.samplers.noise`): bit for bit a pure-Python SplittableRandom
written here from its definition (Steele et al. 2014) and Box-Muller with ``math``; its statistics; the same law
as the ``cpu`` stream on the exact GRF; Picard on its sequential twin with it; and ``sciencegen-generate``
recording the stream of a store and resuming a store with the stream it was written with (real Zarr stores).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir, register
from sciencegen.generation.plan import STREAM_ATTR
from sciencegen.models import Oracle
from sciencegen.pipelines.generate import GenerateError, run_generate
from sciencegen.samplers import SAMPLERS, noise, twin
from sciencegen.targets import GaussianRandomField

M64 = (1 << 64) - 1
COUNTER = noise.NoiseSeed(11, "counter")


# ------------------------------------------------------------------------------------ the reference generator


def ref_mix64(z: int) -> int:
    """SplitMix64's output function (Stafford's variant 13), as in splitmix64.c and Java's SplittableRandom."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_mix_gamma(z: int) -> int:
    """Java SplittableRandom.mixGamma."""
    z = ((z ^ (z >> 33)) * 0xFF51AFD7ED558CCD) & M64
    z = ((z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53) & M64
    z = (z ^ (z >> 33)) | 1
    return z ^ 0xAAAAAAAAAAAAAAAA if bin(z ^ (z >> 1)).count("1") < 24 else z


def ref_words(key: int, count: int) -> list[int]:
    """The first ``count`` outputs of a SplittableRandom with seed ``key`` and gamma ``mixGamma(key)``."""
    gamma, state, out = ref_mix_gamma(key), key, []
    for _ in range(count):
        state = (state + gamma) & M64  # nextSeed()
        out.append(ref_mix64(state))
    return out


def ref_normals(key: int, n: int) -> list[float]:
    """Box-Muller on uniforms ``(2 (w >> 12) + 1) / 2**53`` of consecutive word pairs."""
    words = ref_words(key, n + n % 2)
    out = []
    for a, b in zip(words[0::2], words[1::2], strict=True):
        u1, u2 = (2 * (a >> 12) + 1) / 2**53, (2 * (b >> 12) + 1) / 2**53
        r, t = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
        out += [r * math.cos(t), r * math.sin(t)]
    return out[:n]


def as_words(t: torch.Tensor) -> list[int]:
    """``[count, 2]`` (high, low) 32-bit halves to 64-bit ints."""
    return [(int(h) << 32) | int(lo) for h, lo in t.tolist()]


@pytest.mark.parametrize("method", ["numpy", "tensor"])
def test_words_are_the_reference_bit_for_bit(method):
    members, steps = [0, 1, 5, 2**20], [0, 7, 7, 999]
    for tag, count in ((noise.STEP, 1), (noise.INIT, 37), (noise.corrector_tag(2), 300)):
        got = noise.counter_words(3, members, steps, count, tag=tag, method=method)
        assert got.dtype == torch.int64 and got.shape == (4, count, 2)
        for i, (m, j) in enumerate(zip(members, steps, strict=True)):
            assert as_words(got[i]) == ref_words(noise.stream_key(3, m, j, tag), count)


@pytest.mark.parametrize("shape", [(7,), (5, 6), (2, 3, 5), (1, 4, 4, 3)])
def test_normals_are_the_reference(shape):
    members, steps = [0, 3, 3], [2, 2, 9]
    got = noise.normal(COUNTER, members, steps, shape, dtype=torch.float64)
    assert got.shape == (3, *shape) and got.dtype == torch.float64
    n = math.prod(shape)
    for i, (m, j) in enumerate(zip(members, steps, strict=True)):
        want = torch.tensor(ref_normals(noise.stream_key(11, m, j, noise.STEP), n), dtype=torch.float64)
        torch.testing.assert_close(got[i].flatten(), want, rtol=0, atol=1e-15)
    f32 = noise.normal(COUNTER, members, steps, shape, dtype=torch.float32)
    assert f32.dtype == torch.float32 and torch.equal(f32, got.float())
    # the chain a GPU runs (int64 tensor ops, no NumPy), here on the CPU: the same numbers
    tensor = noise._counter_normal(11, members, steps, tuple(shape), noise.STEP, torch.float64, torch.device("cpu"),
                                   method="tensor")
    assert torch.equal(tensor, got)


def test_cache_blocks_and_call_composition_do_not_change_the_numbers():
    # 2 x 257 x 257 (odd, over one block of 65536 words): the CPU splits it in blocks of counters
    big = noise.normal(COUNTER, [0, 1], [4, 4], (257, 257), dtype=torch.float64)
    key = noise.stream_key(11, 1, 4, noise.STEP)
    want = ref_normals(key, 257 * 257)
    flat = big[1].flatten()
    for lo, hi in ((0, 4), (65530, 65542), (257 * 257 - 5, 257 * 257)):
        torch.testing.assert_close(flat[lo:hi], torch.tensor(want[lo:hi], dtype=torch.float64), rtol=0, atol=1e-15)
    # one key alone, or with others, in any order: the same numbers (40 keys of 2000 words: two blocks of keys)
    many = noise.normal(COUNTER, list(range(40)), 3, (40, 50), dtype=torch.float64)
    assert torch.equal(many[17:18], noise.normal(COUNTER, [17], 3, (40, 50), dtype=torch.float64))
    assert torch.equal(many[[5, 2]], noise.normal(COUNTER, [5, 2], [3, 3], (40, 50), dtype=torch.float64))
    assert noise.normal(COUNTER, [], 3, (4,)).shape == (0, 4)


def test_seed_objects_and_errors():
    assert noise.with_stream(5, None) == 5 and noise.seed_stream(5) == noise.DEFAULT_STREAM == "cpu"
    assert noise.with_stream(5, "counter") == noise.NoiseSeed(5, "counter")
    assert noise.with_stream(noise.NoiseSeed(5, "counter"), "counter") == noise.NoiseSeed(5, "counter")
    assert noise.NoiseSeed(np.int64(4)).value == 4 and set(noise.STREAMS) == {"cpu", "counter"}
    with pytest.raises(ValueError, match="conflicts"):
        noise.with_stream(noise.NoiseSeed(5, "counter"), "cpu")
    with pytest.raises(ValueError, match="noise_stream"):
        noise.with_stream(5, "gpu")
    with pytest.raises(ValueError, match="stream"):
        noise.NoiseSeed(5, "philox")
    with pytest.raises(ValueError, match="integer"):
        noise.NoiseSeed(1.5, "counter")
    # an int and NoiseSeed(int, "cpu") are today's stream; counter differs from it
    a = noise.normal(5, [0, 1], 3, (8, 8))
    assert torch.equal(a, noise.normal(noise.NoiseSeed(5, "cpu"), [0, 1], 3, (8, 8)))
    assert not torch.allclose(a, noise.normal(noise.NoiseSeed(5, "counter"), [0, 1], 3, (8, 8)))
    # condition seeds keep their stream
    assert noise.condition_seed(noise.NoiseSeed(5, "counter"), 2, 1) == noise.NoiseSeed(
        noise.condition_seed(5, 2, 1), "counter")
    with pytest.raises(ValueError, match="noise_stream"):
        sciencegen.sample(GaussianRandomField(8).denoiser, (1, 8, 8), 1, "dpm2m", 4, noise_stream="philox")


# ------------------------------------------------------------------------------------------------ statistics


def test_moments_and_quantiles():
    z = noise.normal(COUNTER, list(range(25)), 0, (4000,), tag=noise.INIT, dtype=torch.float64).flatten()
    n = z.numel()  # 1e5
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)
    assert abs(float((z**4).mean()) - 3) < 4 * math.sqrt(96 / n)
    # a KS-like check: the empirical CDF at 41 points against Phi, within 4 binomial standard deviations
    for x in np.linspace(-3, 3, 41):
        p = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        assert abs(float((z <= x).double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-12, x
    # the two normals of one Box-Muller pair and neighbours across pairs are uncorrelated
    pairs = z.reshape(-1, 2)
    assert abs(float((pairs[:, 0] * pairs[:, 1]).mean())) < 4 / math.sqrt(n / 2)
    assert abs(float((z[1:-1:2] * z[2::2]).mean())) < 4 / math.sqrt(n / 2)


@pytest.mark.parametrize("shape", [(50000,), (250, 200), (40, 50, 25)])
def test_neighbouring_keys_are_independent(shape):
    n = math.prod(shape)
    base = noise.normal(COUNTER, [6], 6, shape, dtype=torch.float64).flatten()
    others = {
        "member+1": noise.normal(COUNTER, [7], 6, shape, dtype=torch.float64),
        "step+1": noise.normal(COUNTER, [6], 7, shape, dtype=torch.float64),
        "tag": noise.normal(COUNTER, [6], 6, shape, tag=noise.INIT, dtype=torch.float64),
        "seed+1": noise.normal(noise.NoiseSeed(12, "counter"), [6], 6, shape, dtype=torch.float64),
    }
    for what, other in others.items():
        r = float(torch.corrcoef(torch.stack([base, other.flatten()]))[0, 1])
        assert abs(r) < 4 / math.sqrt(n), what
        # nor shifted copies of each other (a stream that re-used another's counters would correlate at a lag)
        for lag in (1, 2, 7):
            r = float(torch.corrcoef(torch.stack([base[lag:], other.flatten()[:-lag]]))[0, 1])
            assert abs(r) < 4 / math.sqrt(n), (what, lag)


# -------------------------------------------------------------------------------------------- through sample()


def mode_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per Fourier mode (orthonormal real FFT) the member mean and variance of the real and imaginary parts."""
    f = torch.fft.rfftn(x.double(), dim=(-2, -1), norm="ortho")
    parts = torch.stack([f.real, f.imag])
    return parts.mean(1), parts.var(1)


def test_both_streams_draw_the_same_law_on_the_exact_grf():
    grf, members = GaussianRandomField(8), 1024
    v = grf.variance[..., : 8 // 2 + 1]
    # a real mode's variance is v (imaginary part 0), a complex one's parts v / 2 each
    real = torch.zeros_like(v, dtype=torch.bool)
    for i in (0, 4):
        for j in (0, 4):
            real[i, j] = True
    want = torch.stack([torch.where(real, v, v / 2), torch.where(real, 0 * v, v / 2)])
    keep = want > 0
    bias = {}
    for stream in noise.STREAMS:
        x = sciencegen.sample(grf.denoiser, grf.shape, members, "dpm2m_sde", 64, seed=3, dtype=torch.float64,
                              noise_stream=stream).samples[:, 0]
        mean, var = mode_moments(x)
        z_mean = mean[keep] / (want[keep] / members).sqrt()
        z_var = (var[keep] / want[keep] - 1) / math.sqrt(2 / (members - 1))
        assert float(z_mean.abs().max()) < 4.5, stream  # 4.5 sigma over 76 independent parts of modes
        assert float(z_var.abs().max()) < 4.5, stream
        bias[stream] = float(z_var.mean())  # the sampler's discretisation bias (64 steps) plus Monte Carlo noise
    # the same bias with either stream: the mean of 76 independent z-scores of each, 4 sigma
    assert abs(bias["cpu"] - bias["counter"]) < 4 * math.sqrt(2 / int(keep.sum())), bias


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s["kind"] != "sequential"))
def test_picard_reproduces_its_twin_with_the_counter_stream(name):
    grf = GaussianRandomField(16)
    seq_name, opts = twin(name)

    def den(x, s):  # batch-invariant (batched FFTs round differently from single ones)
        return torch.cat([grf.denoiser(x[i:i + 1], s[i:i + 1]) for i in range(x.shape[0])])

    kw = dict(members=2, steps=60, seed=7, dtype=torch.float64, noise_stream="counter")
    ref = sciencegen.sample(den, grf.shape, sampler=seq_name, **kw, **opts).samples
    got = sciencegen.sample(den, grf.shape, sampler=name, tol=1e-8, **kw).samples
    assert float((got - ref).norm() / ref.norm()) <= 1e-5
    cpu = sciencegen.sample(den, grf.shape, sampler=seq_name, **{**kw, "noise_stream": "cpu"}, **opts).samples
    assert float((cpu - ref).norm() / ref.norm()) > 0.1  # the streams are different numbers


# ------------------------------------------------------------------------------------- sciencegen-generate


SMALL = ["dataset=grf", "dataset.size=8", "dataset.samples=16", "model=oracle", "sampler=dpm2m_sde",
         "sampler.steps=12", "generate.members=6", "generate.batch_size=2", "generate.progress=false",
         "generate.threads=1"]


def config(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("generate", overrides=[*SMALL, *overrides])


def direct(stream: str) -> np.ndarray:
    res = sciencegen.sample(Oracle(GaussianRandomField(8)), (1, 8, 8), 6, "dpm2m_sde", 12, seed=0, batch_size=2,
                            noise_stream=stream)
    return res.samples[:, 0].numpy().astype(np.float32)


def stored(path) -> tuple[np.ndarray, str | None]:
    with xr.open_zarr(path) as ds:
        field = ds["field"].values
    return field, zarr.open_group(str(path), mode="r", use_consolidated=False).attrs.get(STREAM_ATTR)


def test_a_new_store_records_the_counter_stream(tmp_path):
    s = run_generate(config(f"output.path={tmp_path / 'new.zarr'}"))
    field, stream = stored(tmp_path / "new.zarr")
    assert stream == "counter" and s["noise_stream"] == "counter"
    np.testing.assert_array_equal(field, direct("counter"))
    # an explicit cpu store records cpu and holds the cpu stream's members
    run_generate(config(f"output.path={tmp_path / 'cpu.zarr'}", "generate.noise_stream=cpu"))
    field, stream = stored(tmp_path / "cpu.zarr")
    assert stream == "cpu"
    np.testing.assert_array_equal(field, direct("cpu"))
    # resuming (here: nothing to do) keeps the recorded stream; an explicit other one is refused, naming the store
    assert run_generate(config(f"output.path={tmp_path / 'cpu.zarr'}"))["noise_stream"] == "cpu"
    with pytest.raises(GenerateError, match=r"generate.noise_stream=counter: the store .*cpu.zarr records the cpu"):
        run_generate(config(f"output.path={tmp_path / 'cpu.zarr'}", "generate.noise_stream=counter"))
    with pytest.raises(GenerateError, match="generate.noise_stream must be"):
        run_generate(config(f"output.path={tmp_path / 'bad.zarr'}", "generate.noise_stream=gpu"))


def test_a_store_without_a_record_resumes_with_the_cpu_stream(tmp_path):
    path = tmp_path / "old.zarr"
    # an interrupted run of before the change: the first of three chunks written with the cpu stream, no record
    first = run_generate(config(f"output.path={path}", "generate.noise_stream=cpu", "generate.shard=0/3"))
    assert first["done"] == 2
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    del group.attrs[STREAM_ATTR]
    zarr.consolidate_metadata(str(path))
    assert stored(path)[1] is None
    with pytest.raises(GenerateError, match="was written before streams were recorded, so it uses the cpu"):
        run_generate(config(f"output.path={path}", "generate.noise_stream=counter"))
    rest = run_generate(config(f"output.path={path}"))  # auto: the cpu stream its members were drawn with
    assert rest["done"] == 4 and rest["skipped"] == 2 and rest["noise_stream"] == "cpu"
    field, _ = stored(path)
    np.testing.assert_array_equal(field, direct("cpu"))
