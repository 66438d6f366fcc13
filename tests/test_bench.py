import json
import shutil
import subprocess

import pytest
import torch

from sciencegen.cli import bench
from sciencegen.samplers import noise


def test_bench_runs_side_by_side_and_writes_table_json_and_figure(tmp_path, capsys):
    out, fig = tmp_path / "rows.json", tmp_path / "trade.png"
    rc = bench(["--size", "16", "--steps", "100", "--members", "2", "--repeats", "1",
                "--samplers", "sequential_sde picard_sde:tol=0.003,window=32 paradigms",
                "--json", str(out), "--figure", str(fig)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| sampler |" in text and "picard_sde" in text and "paradigms" in text
    rows = {r["sampler"]: r for r in json.loads(out.read_text())}
    assert rows["sequential_sde"]["rounds"] == 100 and rows["sequential_sde"]["dist_to_sequential"] == 0
    assert rows["picard_sde"]["rounds"] < 100
    assert rows["picard_sde"]["dist_to_sequential"] < 1e-2
    assert "window=32" in rows["picard_sde"]["options"]
    assert fig.stat().st_size > 1000


def test_bench_scaling_mode(capsys):
    assert bench(["--scaling", "8,16", "--steps", "50", "--samplers", "picard_sde"]) == 0
    text = capsys.readouterr().out
    assert "| picard_sde |" in text and "| 64 |" in text and "| 256 |" in text


def test_bench_bad_sampler_is_a_one_line_error(capsys):
    assert bench(["--samplers", "picard_fast", "--size", "8", "--steps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sampler 'picard_fast'" in err[0]


@pytest.mark.skipif(shutil.which("sciencegen-bench") is None, reason="console script not installed")
def test_console_script_is_installed():
    r = subprocess.run(["sciencegen-bench", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--scaling" in r.stdout


def test_noise_is_counter_based():
    a = noise.normal(5, [0, 1, 2], 10, (3, 4), dtype=torch.float64)
    b = noise.normal(5, [2, 1], [10, 10], (3, 4), dtype=torch.float64)
    assert torch.equal(a[2], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])
    c = noise.normal(5, [0], 11, (3, 4), dtype=torch.float64)
    assert not torch.equal(a[0], c[0])
    d = noise.normal(5, [0], 10, (3, 4), tag=noise.INIT, dtype=torch.float64)
    assert not torch.equal(a[0], d[0])
    f32 = noise.normal(5, [0], 10, (3, 4), dtype=torch.float32)
    assert torch.equal(f32[0], a[0].float())  # drawn in float64 then cast: same numbers in any dtype
    assert abs(float(noise.normal(1, list(range(200)), 3, (50,)).std()) - 1) < 0.02


def test_ctrl_c_is_one_line():
    import signal
    import subprocess
    import sys
    import time

    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from sciencegen.cli import bench; raise SystemExit(bench())",
                             "--size", "64", "--steps", "2000", "--repeats", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 60
    first = proc.stdout.readline()  # the header: the benchmark is running
    assert first.startswith("GRF"), first
    assert time.time() < deadline
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("sciencegen-bench: interrupted"), out


# ------------------------------------------------------------------------------ comparisons at equal accuracy


def _row(spec, tol, rounds, nfe, dist, seq=100):
    from sciencegen.pipelines.bench import BenchRow

    return BenchRow(sampler=spec.partition(":")[0], options="", d=64, rounds=rounds, nfe=nfe, nfe_ratio=nfe / seq,
                    wall_s=0.0, spectral_error=None, dist_to_sequential=dist, fallbacks=0, spec=spec, tol=tol,
                    sequential_rounds=seq)


def test_at_distance_picks_the_fewest_rounds_then_the_fewest_nfe():
    from sciencegen.pipelines.bench import at_distance, format_distance_table

    rows = [_row("sequential_sde", None, 100, 100, 0.0),
            _row("picard_sde", 1.0, 5, 300, 1e-2), _row("picard_sde", 0.1, 8, 400, 2e-3),
            _row("picard_sde", 0.05, 8, 350, 3e-3),  # same rounds, fewer NFE, distance exactly at the target
            _row("picard_sde", 0.01, 12, 500, 1e-4), _row("picard_sde", 0.001, 15, 600, 2e-4),
            _row("paradigms", 0.3, 20, 900, 5e-3), _row("paradigms", 0.1, 25, 1000, 1e-3)]
    a = at_distance(rows, 3e-3)
    assert list(a) == ["sequential_sde", "picard_sde", "paradigms"]
    assert a["sequential_sde"].rounds == 100
    assert (a["picard_sde"].tol, a["picard_sde"].nfe) == (0.05, 350)
    assert a["paradigms"].tol == 0.1
    b = at_distance(rows, 3e-4)
    assert b["picard_sde"].tol == 0.01 and b["paradigms"] is None
    assert at_distance(rows, 1e-6)["picard_sde"] is None
    table = format_distance_table(rows, (3e-3, 3e-4)).splitlines()
    assert table[0] == ("| sampler | rounds at 3e-3 | NFE ratio | tol | rounds at 3e-4 | NFE ratio | tol | "
                        "sequential rounds |")
    assert table[3] == "| picard_sde | 8 | 3.50 | 0.05 | 12 | 5.00 | 0.01 | 100 |"
    assert table[4] == "| paradigms | 25 | 10.00 | 0.1 | not reached |  |  | 100 |"


@pytest.fixture(scope="module")
def sweep():
    from sciencegen.pipelines.bench import run_sweep

    torch.set_num_threads(1)
    return run_sweep(16, 60, 2, ["sequential_sde", "picard_sde"], tols=[1.0, 0.1, 0.01, 1e-3, 1e-9], targets=(),
                     log=None)


def test_sweep_distance_falls_with_the_tolerance(sweep):
    from sciencegen import sample
    from sciencegen.targets import GaussianRandomField

    seq, *pic = sweep
    assert (seq.sampler, seq.tol, seq.rounds, seq.dist_to_sequential) == ("sequential_sde", None, 60, 0.0)
    assert [r.tol for r in pic] == [1.0, 0.1, 0.01, 1e-3, 1e-9]
    dist = [r.dist_to_sequential for r in pic]
    assert all(b < a for a, b in zip(dist[:-1], dist[1:], strict=True)), dist
    assert dist[-1] < 1e-6 and dist[0] > 1e-3
    assert all(r.sequential_rounds == 60 and r.spectral_error > 0 for r in pic)
    assert [r.rounds for r in pic] == sorted(r.rounds for r in pic) and pic[-1].rounds <= 60
    # the distance is to the sequential twin with the same seeds, recomputed here
    grf = GaussianRandomField(16)
    want = sample(grf.denoiser, grf.shape, 2, "sequential_sde", 60, 0, dtype=torch.float64).samples
    got = sample(grf.denoiser, grf.shape, 2, "picard_sde", 60, 0, dtype=torch.float64, tol=0.1).samples
    assert pic[1].dist_to_sequential == pytest.approx(float((got - want).norm() / want.norm()), rel=1e-12)


def test_sweep_ladder_stops_past_the_smallest_target_and_takes_any_denoiser():
    from sciencegen.pipelines.bench import format_table, run_sweep, tol_ladder
    from sciencegen.targets import GaussianRandomField

    assert tol_ladder(0.1) == [1.0, 0.32, 0.1, 0.032, 0.01, 0.0032, 0.001, 0.00032]
    grf = GaussianRandomField(8)
    rows = run_sweep(steps=40, members=2, samplers=["picard_sde"], targets=(1e-3, 3e-3), denoiser=grf.denoiser,
                     shape=grf.shape, log=None)
    dist = [r.dist_to_sequential for r in rows]  # stops at the first rung within a tenth of the smallest target
    assert 1 < len(rows) < 8 and dist[-1] <= 1e-4 < min(dist[:-1]), dist
    assert [r.tol for r in rows] == tol_ladder(0.1)[:len(rows)]
    assert all(r.spectral_error is None for r in rows)  # a bare denoiser: no exact law known
    assert "| 64 |" in format_table(rows, 40) and "|  |" in format_table(rows, 40)
    with pytest.raises(ValueError, match="tol= .* or tols="):
        run_sweep(8, 10, 1, ["picard_sde:tol=0.1,tols=1/0.1"], log=None)
    with pytest.raises(ValueError, match="sequential and takes no tols"):
        run_sweep(8, 10, 1, ["sequential_sde:tols=1/0.1"], log=None)


def test_distance_figure_is_a_png(sweep, tmp_path):
    from sciencegen.pipelines.bench import plot_distance

    path = tmp_path / "distance.png"
    plot_distance(sweep, path, (3e-3, 3e-4), steps=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_bench_sweep_from_the_command_line(tmp_path, capsys):
    out, fig = tmp_path / "sweep.json", tmp_path / "sweep.png"
    rc = bench(["--sweep", "--size", "8", "--steps", "50", "--members", "2", "--tols", "1,0.01", "--targets",
                "3e-3,3e-4", "--samplers", "sequential_sde picard_sde paradigms:tol=0.1 picard_wave:tols=0.3/1e-9",
                "--json", str(out), "--figure", str(fig)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| sampler | rounds at 3e-3 | NFE ratio | tol | rounds at 3e-4 |" in text
    data = json.loads(out.read_text())
    runs = [(r["spec"], r["tol"]) for r in data["rows"]]
    assert runs == [("sequential_sde", None), ("picard_sde", 1.0), ("picard_sde", 0.01), ("paradigms:tol=0.1", 0.1),
                    ("picard_wave:tols=0.3/1e-9", 0.3), ("picard_wave:tols=0.3/1e-9", 1e-9)]
    assert set(data["at_distance"]) == {"0.003", "0.0003"}
    best = data["at_distance"]["0.0003"]["picard_wave:tols=0.3/1e-9"]
    assert best is not None and best["dist_to_sequential"] <= 3e-4 and best["sequential_rounds"] == 50
    assert data["at_distance"]["0.003"]["sequential_sde"]["rounds"] == 50
    assert fig.stat().st_size > 10_000


@pytest.mark.parametrize("argv, message", [
    (["--sweep", "--tols", "0.1,x"], "--tols: 'x' is not a number"),
    (["--sweep", "--targets", "-1"], "--targets: '-1' must be a positive number"),
    (["--model", "/nonexistent/run"], "/nonexistent/run"),
])
def test_bench_bad_sweep_and_model_options_are_one_line(argv, message, capsys):
    assert bench([*argv, "--size", "8", "--steps", "10", "--samplers", "picard_sde"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_bench_trained_checkpoint(tmp_path, capsys):
    import numpy as np
    from test_generate import train_tiny

    from sciencegen import sample
    from sciencegen.models.build import load_model
    from sciencegen.targets import GaussianRandomField, spectral_error

    run = train_tiny(tmp_path, 2)
    out = tmp_path / "model.json"
    assert bench(["--model", str(run), "--sweep", "--steps", "20", "--members", "2", "--tols", "0.1,1e-9",
                  "--samplers", "sequential_sde picard_sde", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["sampler"], r["tol"], r["d"]) for r in rows] == [("sequential_sde", None, 256),
                                                               ("picard_sde", 0.1, 256), ("picard_sde", 1e-9, 256)]
    assert rows[2]["dist_to_sequential"] < 1e-6 < rows[1]["dist_to_sequential"]
    # the model's samples, in physical units, against the exact law of the GRF it was trained on
    model, meta = load_model(run)
    x = sample(model, (1, 16, 16), 2, "sequential_sde", 20, 0, dtype=torch.float64).samples
    x = x * float(np.asarray(meta["data"]["std"])[0]) + float(np.asarray(meta["data"]["mean"])[0])
    assert rows[0]["spectral_error"] == pytest.approx(spectral_error(x, GaussianRandomField(16)), rel=1e-9)
    capsys.readouterr()
    assert bench(["--model", str(run), "--steps", "10", "--members", "1", "--repeats", "1",
                  "--samplers", "picard_sde"]) == 0
    assert "| picard_sde |" in capsys.readouterr().out
    assert bench(["--model", str(run), "--size", "32", "--steps", "10"]) == 2
    assert "samples fields of (16, 16)" in capsys.readouterr().err
