"""Doc examples must not rot: every command in the README, docs/ and datasets/ is checked.

* Hydra apps (``sciencegen``, ``sciencegen-data|train|generate|evaluate``, also behind ``torchrun``): the
  command line is composed exactly as the app composes it (groups, keys, types), and a documented error
  (a command followed by ``prog: error: ...``) must produce that one-line message.
* ``sciencegen-bench`` and ``python <script>.py`` lines: the arguments are parsed by the real parser.
* Scripts named in the docs (``workflows/...``, ``benchmarks/...``, ``tools/...``) must exist.
* The README's Python example runs.
* ``-m slow``: every documented Hydra command is *executed*, shrunk (few members, steps, minutes).
"""

from __future__ import annotations

import glob as globmod
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sciencegen import cli
from sciencegen.console import precheck

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "datasets").glob("*.md"))]
APPS = {"sciencegen": "sciencegen", "sciencegen-data": "data", "sciencegen-train": "train",
        "sciencegen-generate": "generate", "sciencegen-evaluate": "evaluate"}
PLACEHOLDERS = {"STORE": "/tmp/sg-doc-store.zarr", "SAMPLES": "/tmp/sg-doc-store.zarr", "DIR": "/tmp/sg-doc-dir",
                "RUN_DIR": "/tmp/sg-doc-run", "$i": "0", "$(which sciencegen-generate)": "sciencegen-generate"}


def blocks(path: Path) -> list[list[str]]:
    """Fenced code blocks (not python), continuation lines joined."""
    out, cur, lang = [], None, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if cur is None:
                cur, lang = [], line[3:].strip()
            else:
                if lang not in ("python", "yaml", "json"):
                    out.append(cur)
                cur = None
            continue
        if cur is not None:
            if cur and cur[-1].endswith("\\"):
                cur[-1] = cur[-1][:-1] + " " + line.strip()
            else:
                cur.append(line)
    return out


def commands() -> list[tuple[str, str, str | None]]:
    """``(where, command, documented error or None)`` for every command line in the docs."""
    found = []
    for path in DOCS:
        for block in blocks(path):
            for i, raw in enumerate(block):
                line = raw.strip()
                if line.startswith("$ "):
                    line = line[2:]
                line = re.split(r"\s+#\s", line)[0].strip()
                if not line or line.startswith("#"):
                    continue
                nxt = block[i + 1].strip() if i + 1 < len(block) else ""
                error = nxt.split(": error: ", 1)[1] if ": error: " in nxt else None
                for seg in re.split(r"&&|;|\|\||(?<![|])\|(?![|])", line):
                    seg = seg.strip().rstrip("&").strip()
                    for k, v in PLACEHOLDERS.items():
                        seg = seg.replace(k, v)
                    found.append((f"{path.relative_to(ROOT)}:{i + 1}", seg, error))
    return found


def split(seg: str) -> list[str]:
    try:
        words = shlex.split(seg)
    except ValueError:  # not a shell command (output shown in a block)
        return []
    while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] in ("time", "do", "for", "done")):
        words = words[1:]
    if words and words[0] == "torchrun":  # torchrun [opts] SCRIPT args
        rest = [w for w in words[1:] if not w.startswith("-")]
        words = rest if rest and rest[0] in APPS else []
    if words[:3] == [sys.executable, "-m", "sciencegen"] or words[:3] == ["python", "-m", "sciencegen"]:
        words = ["sciencegen", *words[3:]]
    return words


ALL = commands()
def overrides(words: list[str]) -> list[str]:
    """The overrides of a Hydra command line; a sweep (``--multirun a=x,y``) is checked at its first point."""
    over = [w for w in words[1:] if not w.startswith("-")]
    if "--multirun" in words or "-m" in words:
        over = [re.sub(r"^([^=]+)=([^\[{(]*?),.*$", r"\1=\2", o) for o in over]
    return over


def _is_command(words: list[str]) -> bool:  # app lines in output tables are not commands
    return bool(words) and words[0] in APPS and all("=" in o or o.startswith("~") for o in overrides(words))


HYDRA = [(w, c, e) for w, c, e in ALL if _is_command(split(c))]


def test_the_docs_have_commands():
    assert len(HYDRA) >= 20
    apps = {split(c)[0] for _, c, _ in HYDRA}
    assert apps == set(APPS), apps


@pytest.mark.parametrize("where, cmd, error", HYDRA, ids=[w for w, _, _ in HYDRA])
def test_hydra_command_composes(where, cmd, error):
    words = split(cmd)
    name, over = APPS[words[0]], overrides(words)
    try:
        precheck.compose(name, over)
        problem = None
    except Exception as exc:  # what the app would print
        problem = precheck.one_line(exc, name, over)
    if error is None:
        assert problem is None, f"{where}: `{cmd}` does not compose: {problem}"
    else:
        assert problem is not None, f"{where}: `{cmd}` is documented to fail but composes"
        assert problem.startswith(error.rstrip("…").rstrip(".").rstrip()), (problem, error)


RUNNERS = ("sciencegen-bench", "python", "python3", "bash", "sbatch", "pip", "pytest")
OTHER = [(w, c) for w, c, _ in ALL if (s := split(c)) and (s[0] in RUNNERS or s[0].startswith("workflows/"))]


@pytest.mark.parametrize("where, cmd", OTHER, ids=[w for w, _ in OTHER])
def test_other_command(where, cmd):
    words = split(cmd)
    prog = words[0]
    if prog == "sciencegen-bench":
        with pytest.raises(SystemExit) as exc:
            cli.bench([*words[1:], "--help"])
        assert exc.value.code == 0, f"{where}: {cmd}"
        return
    if prog in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.exists(), f"{where}: {words[1]} does not exist"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, str(script), *words[2:], "--help"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{where}: {cmd}\n{out.stderr[-2000:]}"
        return
    for w in words:  # scripts of the repository named in the command must exist
        if re.match(r"^(workflows|benchmarks|tools|datasets)/", w):
            assert (ROOT / w).exists(), f"{where}: {w} does not exist"


def test_readme_python_example():
    text = (ROOT / "README.md").read_text()
    blocks_ = re.findall(r"```python\n(.*?)```", text, flags=re.S)[:2]  # the unconditional, then the conditional
    namespace: dict = {}
    for code in blocks_:
        exec(compile(code, "README.md", "exec"), namespace)
    res = namespace["result"]
    assert tuple(res.samples.shape) == (16, 1, 64, 64) and res.stats["rounds"] < 64
    post, law, coarse = namespace["post"], namespace["law"], namespace["coarse"]
    assert tuple(post.samples.shape) == (16, 1, 64, 64) and post.stats["rounds"] < 64
    # every member keeps the condition's block means (the exact posterior fixes them)
    assert float((law.coarsen(post.samples.double()) - coarse).abs().max()) < 1e-3


SHRINK = {"generate.members": "4", "generate.batch_size": "2", "sampler.steps": "8", "train.max_minutes": "0.05",
          "train.max_steps": "2", "train.batch_size": "4", "train.figure_members": "0", "train.val_every": "0",
          "dataset.samples": "64", "dataset.chunk": "16", "dataset.trajectories": "4", "dataset.snapshots": "2",
          "dataset.spinup": "1.0", "dataset.chunk_trajectories": "1", "evaluate.figures": "false",
          "generate.conditions": "2"}


def _shrunk(words: list[str], tmp: Path) -> list[str]:
    name = APPS[words[0]]
    cfg = precheck.compose(name, overrides(words))
    over = [o for o in overrides(words) if o.split("=")[0] not in SHRINK]
    names_dataset = any(o.split("=")[0].lstrip("+~").startswith("dataset") for o in overrides(words))
    for k, v in SHRINK.items():
        if k.startswith("dataset.") and name == "evaluate" and not names_dataset:   # the dataset is the store's
            continue
        parent, _, leaf = k.rpartition(".")
        node = cfg.get(parent) if parent else cfg
        if node is not None and hasattr(node, "keys") and leaf in node:
            over.append(f"{k}={v}")
    if cfg.get("dataset") is not None and str(cfg.dataset.get("_target_", "")).endswith("KolmogorovSource"):
        over = [o for o in over if not o.startswith("dataset.chunk=")] + ["dataset.chunk=1"]
    return [words[0], *over]


def _inputs_missing(words: list[str], cwd: Path) -> str | None:
    for o in overrides(words):
        key, _, val = o.partition("=")
        if key in ("model.checkpoint", "samples.path") and not (cwd / val).exists():
            return f"{key}={val} is made by an earlier command of another page"
        if key == "dataset.path" and not globmod.glob(val if os.path.isabs(val) else str(cwd / val)):
            return f"{key}={val}: the user's own files (placeholder)"
    return None


BY_PAGE: dict[str, list[tuple[str, str]]] = {}
for _w, _c, _e in HYDRA:
    if _e is None and "--multirun" not in _c and "torchrun" not in _c:
        BY_PAGE.setdefault(_w.split(":")[0], []).append((_w, _c))


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(BY_PAGE))
def test_hydra_commands_of_a_page_run_shrunk(page, tmp_path):
    """Every documented command of a page runs, in the page's order, in one directory, shrunk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCIENCEGEN_DATA_ROOT": str(tmp_path / "data")}
    (tmp_path / "datasets").symlink_to(ROOT / "datasets")  # the shipped samples, by their documented paths
    ran, skipped = 0, []
    for where, cmd in BY_PAGE[page]:
        words = [w.replace("/tmp/sg-doc-", f"{tmp_path}/sg-doc-") for w in split(cmd)]
        words = [re.sub(r"=/tmp/", f"={tmp_path}/tmp-", w) for w in words]
        why = _inputs_missing(words, tmp_path)
        if any(w.endswith("device=cuda") for w in words) and not torch.cuda.is_available():
            why = "needs CUDA"
        if why:
            skipped.append(f"{where}: {why}")
            continue
        cmd_line = _shrunk(words, tmp_path)  # Hydra's default run dirs, under tmp_path: as a user would
        out = subprocess.run(cmd_line, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{where}: {' '.join(cmd_line)}\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}"
        ran += 1
    assert ran >= 1, skipped
