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
