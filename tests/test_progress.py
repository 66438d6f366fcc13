"""Progress you can trust (issue 18): the sampler reports after every round, generation's bar and log lines
advance per round in fractional members, and the cost of the whole run is estimated early in the first batch.

The truth for the counts is the sampler's own record (``stats["rounds"]``) and a loop written from the
definition (members x accepted steps / steps); the estimate is checked on a fake clock against the arithmetic
done here by hand.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import sciencegen
from sciencegen.config import config_dir, register
from sciencegen.generation import progress as P
from sciencegen.generation.progress import Progress, Tracked, device_label, duration
from sciencegen.pipelines.generate import run_generate
from sciencegen.targets import GaussianRandomField

GRF = GaussianRandomField(16)


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("sampler", ["picard_dpm2m", "dpm2m"])
def test_the_callback_comes_once_per_round(sampler):
    """A Picard sampler calls back after each round, a sequential one after each step (one round each here):
    as many calls as ``stats["rounds"]`` over both batches, members done rising to ``members``, samples unchanged."""
    seen: list[float] = []
    members, batch, steps = 6, 4, 16
    res = sciencegen.sample(GRF.denoiser, (1, 16, 16), members, sampler, steps, seed=3, batch_size=batch,
                            progress=seen.append)
    plain = sciencegen.sample(GRF.denoiser, (1, 16, 16), members, sampler, steps, seed=3, batch_size=batch)
    assert torch.equal(res.samples, plain.samples)
    assert res.stats["rounds"] == plain.stats["rounds"]
    assert len(seen) == res.stats["rounds"], (len(seen), res.stats["rounds"])
    if sampler == "dpm2m":  # one round per step, the same number in each batch
        assert len(seen) == 2 * steps
        expected = [4 * (j + 1) / steps for j in range(steps)] + [4 + 2 * (j + 1) / steps for j in range(steps)]
        np.testing.assert_allclose(seen, expected, rtol=0, atol=1e-12)
    else:  # fewer rounds than steps, and it advanced within the batches
        assert len(seen) < 2 * steps
        assert any(0 < v < 4 or 4 < v < 6 for v in seen)
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1] == members and 4.0 in seen  # the first batch of 4 ends at 4 members


def test_a_sequential_sampler_with_a_predictor_calls_back_per_step():
    """Heun: two rounds per step but one call per step (the docstring's promise)."""
    seen: list[float] = []
    res = sciencegen.sample(GRF.denoiser, (1, 16, 16), 2, "heun", 8, seed=0, progress=seen.append)
    assert len(seen) == 8 and res.stats["rounds"] > 8 and seen[-1] == 2


def test_duration_and_device():
    assert [duration(s) for s in (42, 210, 7560, 3 * 86400)] == ["42 s", "3.5 min", "2.1 h", "3.0 days"]
    torch_threads = torch.get_num_threads()
    assert device_label(torch.device("cpu")) == f"cpu ({torch_threads} thread{'' if torch_threads == 1 else 's'})"
    assert device_label(torch.device("meta")) == "meta"


def test_the_estimate_comes_early_in_a_long_first_batch(caplog):
    """512 members, a first batch of 16 that is slow: after ``ESTIMATE_AFTER`` seconds its partial progress gives
    the estimate, with advice, once."""
    caplog.set_level(logging.INFO, logger="sciencegen")
    clock = Clock()
    p = Progress(512, 512, "cpu", bar=False, clock=clock)
    p.begin(16)
    cb = p.draw_callback(16)
    clock.t = 30.0
    cb(1.0)  # too early
    assert p.estimate is None
    clock.t = 70.0
    cb(4.0)  # 70 s for 4 members: 17.5 s/member, 8960 s for 512
    assert p.estimate == pytest.approx(70.0 / 4 * 512)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")]
    threads = torch.get_num_threads()
    fit = int(512 * 3600 / (70.0 / 4 * 512))  # members that take about an hour at this rate: 205
    assert fit == 205
    assert lines == [f"estimate: about 2.5 h for 512 members on cpu ({threads} thread{'' if threads == 1 else 's'}) "
                     f"(17.5 s/member from the first 4.0 members); a GPU or fewer members "
                     f"(generate.members={fit}: about 1 h) would help"], lines
    clock.t = 500.0
    cb(16.0)
    p.end(10, 20.0)
    assert len([r for r in caplog.records if r.getMessage().startswith("estimate:")]) == 1


def test_the_estimate_from_the_first_batch_and_on_a_gpu(caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    clock = Clock()
    short = Progress(8, 8, "cpu", bar=False, clock=clock)
    short.begin(4)
    short.draw_callback(4)(4.0)
    clock.t = 2.0
    short.end(5, 10.0)  # the first batch: 0.5 s/member, 4 s for 8: no advice
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")][-1]
    assert line.startswith("estimate: about 4 s for 8 members on cpu (") and line.endswith("from the first batch)")
    gpu = Progress(1000, 100, "cuda", bar=False, clock=clock)  # no CUDA here: the device alone
    assert gpu.device == "cuda" or gpu.device.startswith("cuda (")
    assert gpu.estimate_line(36.0).endswith("; fewer members (generate.members=10: about 1 h) or shards on more "
                                            "devices (generate.shard=i/n) would help")


def test_one_unit_only_needs_no_estimate(caplog):
    caplog.set_level(logging.INFO, logger="sciencegen")
    clock = Clock()
    p = Progress(4, 4, "cpu", bar=False, clock=clock)
    p.begin(4)
    clock.t = 1.0
    p.draw_callback(4)(4.0)
    p.end(3, 6.0)
    assert p.estimate == 0.0 and not [r for r in caplog.records if "estimate" in r.getMessage()]


def test_without_a_bar_log_lines_at_a_sane_rate_and_rollouts_in_fractions(caplog):
    """``generate.progress=false``: a line per minute at most; a unit of two draws (lead times) counts each draw as
    half of its members."""
    caplog.set_level(logging.INFO, logger="sciencegen")
    clock = Clock()
    p = Progress(8, 4, "cpu", bar=False, clock=clock, estimate_after=1e9)
    p.begin(4, draws=2)
    first = p.draw_callback(4)
    for t, done, shown in [(10, 2.0, 1.0), (30, 4.0, 2.0)]:
        clock.t = t
        first(done)
        assert p.shown == shown
    second = p.draw_callback(4)
    clock.t = 61.0
    second(2.0)
    assert p.shown == 3.0
    clock.t = 80.0
    second(4.0)
    p.end()
    assert p.shown == 4.0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("members ")]
    # one line (at 61 s: 3 of 8 members in 61 s: 20.3 s/member, 5 left: about 102 s)
    assert lines == ["members 3.0/8 (38 %), 20.3 s/member, about 1.7 min left"], lines


def test_tracked_passes_the_callback_and_reads_the_sampler_through():
    calls = []

    class Fake:
        name, steps = "fake", 3

        def __call__(self, denoiser, shape, members, **kw):
            calls.append(kw)
            kw["progress"](members / 2)
            return "res"

    p = Progress(10, 10, "cpu", bar=False)
    p.begin(4)
    t = Tracked(Fake(), p)
    assert t.name == "fake" and t.steps == 3
    assert t(None, (1, 2), 4, seed=1, progress=False) == "res"
    assert calls[0]["seed"] == 1 and callable(calls[0]["progress"]) and p.shown == 2.0


def _config(tmp_path, *overrides):
    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("generate", overrides=[
            "dataset=grf", "dataset.size=16", "model=oracle", "sampler=picard_sde", "sampler.steps=32",
            "generate.members=8", "generate.batch_size=4", "generate.threads=1",
            f"output.path={tmp_path / 's.zarr'}", *overrides])


def test_generate_advances_per_round_and_estimates(tmp_path, caplog, monkeypatch):
    """The whole command: the progress advances after every round of every chunk (the store's rounds), in
    fractions of members, and the estimate line comes after the first chunk; log lines without a bar."""
    caplog.set_level(logging.INFO, logger="sciencegen")
    seen: list[float] = []
    advance = Progress._advance

    def spy(self, done):
        seen.append(done)
        advance(self, done)

    monkeypatch.setattr(Progress, "_advance", spy)
    monkeypatch.setattr(P, "LOG_EVERY", 0.0)
    s = run_generate(_config(tmp_path, "generate.progress=false"))
    assert s["done"] == 8
    assert len(seen) == s["rounds"] + 2  # every round of both chunks, and each chunk's end
    assert seen[-1] == 8 and all(b >= a for a, b in zip(seen, seen[1:], strict=False))
    assert any(v != int(v) for v in seen)  # fractional members within a chunk
    messages = [r.getMessage() for r in caplog.records]
    estimates = [m for m in messages if m.startswith("estimate:")]
    assert len(estimates) == 1 and "for 8 members on cpu (1 thread)" in estimates[0], estimates
    assert "from the first batch" in estimates[0] and "would help" not in estimates[0]
    lines = [m for m in messages if m.startswith("members ")]
    assert lines and all("s/member" in m and "left" in m for m in lines), lines
    assert any("s/member)" in m for m in messages if m.startswith("generated 8 members"))  # the summary


def test_generate_bar_counts_fractional_members(tmp_path, capsys, monkeypatch):
    """``generate.progress=true``: the bar's count follows every round in fractions of members (tqdm redraws at
    most ten times a second, so its count is read, not its drawing) and ends at the members with s/member."""
    counts: list[tuple[float, float]] = []
    advance = Progress._advance

    def spy(self, done):
        advance(self, done)
        counts.append((self.shown, self.bar.n))

    monkeypatch.setattr(Progress, "_advance", spy)
    s = run_generate(_config(tmp_path, "generate.progress=true", "generate.members=4"))
    err = capsys.readouterr().err.replace("\r", "\n")
    assert s["done"] == 4 and len(counts) == s["rounds"] + 1
    assert all(n == pytest.approx(shown, abs=1e-9) for shown, n in counts)
    assert any(0 < n < 4 for _, n in counts) and counts[-1][1] == pytest.approx(4)
    assert "4.0/4" in err and "s/member" in err, err[-2000:]
