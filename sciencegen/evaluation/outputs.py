"""The files of an evaluation, written so that ``output.dir`` never holds a half-written one.

* :func:`prepare_output` probes ``output.dir`` before any work (a read-only or full filesystem, a parent that is
  a file: one line, nothing evaluated);
* :func:`write_evaluation` writes the figures, ``report.md`` and ``metrics.json`` to hidden files and renames
  them into place, ``metrics.json`` last (it marks a finished evaluation); a failure removes the hidden files
  and leaves an earlier evaluation there whole;
* :func:`sigterm_stops` makes SIGTERM stop the evaluation at once, as Ctrl-C does (nothing is written before
  the end, so there is no safe point to wait for).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.figures import (
    Legend,
    plot_correlation_comparison,
    plot_histogram_comparison,
    plot_sample_panels,
    plot_spectrum_comparison,
)
from ..errors import os_error_line
from .common import EvaluateError, Side
from .metrics import panel_arrays
from .report import figure_title, report_markdown

__all__ = ["FIGURES", "Terminated", "figure_writers", "jsonable", "prepare_output", "remove_dirs", "sigterm_stops",
           "write_evaluation", "write_outputs"]

#: the figures of an evaluation (``evaluate.figures=true``)
FIGURES = ("samples.png", "spectrum.png", "histogram.png", "correlation.png")

Writer = Callable[[Path], Any]


def jsonable(x: Any) -> Any:
    """Plain JSON types (numpy arrays and scalars converted, paths as text); non-finite floats become ``null``."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, Path):
        return str(x)
    return x


def _out_line(path: Path, exc: OSError) -> str:
    """``cannot write PATH: the disk is full`` for ``exc`` met while writing ``path`` (or a file in it)."""
    return os_error_line(OSError(exc.errno, exc.strerror, str(path)))


def prepare_output(out_dir: Path, overwrite: bool) -> list[Path]:
    """Check before any work that ``output.dir`` can take the outputs; returns the directories it created.

    The directory is created and a small probe file is written in it and removed, so a read-only or full
    filesystem, a parent that is a file, or a missing permission is one line before anything is computed.

    Raises
    ------
    EvaluateError
        ``output.dir`` holds an evaluation (and ``overwrite`` is false), is (under) a file, or cannot be written.
    """
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise EvaluateError(f"output.dir {out_dir} already holds an evaluation (metrics.json); choose another "
                            "output.dir or set output.overwrite=true")
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluateError(f"output.dir {out_dir} is a file, not a directory")
    missing = []
    for d in (out_dir, *out_dir.parents):
        if d.exists():
            if not d.is_dir():
                raise EvaluateError(f"output.dir {out_dir}: {d} is a file, not a directory; choose another "
                                    "output.dir")
            break
        missing.append(d)
    probe = out_dir / f".probe-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)  # a full filesystem refuses the first block
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        remove_dirs(missing)
        raise EvaluateError(f"output.dir: {_out_line(out_dir, exc)}; nothing was evaluated (choose another "
                            "output.dir)") from None
    probe.unlink()
    return missing


def remove_dirs(dirs: Sequence[Path]) -> None:
    """Remove the directories ``dirs`` (deepest first) where they are still empty."""
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


def write_outputs(out_dir: Path, writers: Mapping[str, Writer]) -> None:
    """Write each output with ``writers[name](tmp_path)`` to a hidden file, then rename all into place.

    ``metrics.json`` (the last name) marks a finished evaluation. A failure (disk full, read-only, an
    interrupt) removes the hidden files: ``output.dir`` never holds a half-written output, and an earlier
    evaluation there stays whole.

    Raises
    ------
    EvaluateError
        An output cannot be written (one line naming it and the reason).
    """
    tmps = {name: out_dir / f".{name}.tmp-{os.getpid()}" for name in writers}
    name = ""
    try:
        for name, write in writers.items():
            write(tmps[name])
        for name in writers:
            os.replace(tmps[name], out_dir / name)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise EvaluateError(f"{_out_line(out_dir / name, exc)}; no metrics.json was written (what {out_dir} "
                            "held before is unchanged): free space or choose another output.dir") from None
    finally:
        for tmp in tmps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()


def figure_writers(result: Mapping[str, Any], samples: Side, ref: Side, panels: dict[str, Any],
                   units: dict[str, str]) -> dict[str, Writer]:
    """The writers of the four figures (:data:`FIGURES`) from the result and the computed panels."""
    metrics = result["variables"]
    legend = Legend(samples.count, ref.label, ref.count, ref.kind == "exact", figure_title(result, ref.label))
    fields, coords = panel_arrays(panels, ref.field_dims)
    label = "exact law" if ref.kind == "exact" else ref.label
    # a metric that could not be computed (its reason is in the report) has no curve: its variable is left out
    spectra = {v: m for v, m in metrics.items() if "spectrum" in m and m.get("spectral_error") is not None}
    curves = {v: m for v, m in metrics.items() if "sample" in m["correlation"]}
    writers = {
        "samples.png": lambda p: plot_sample_panels(p, fields, label, units, coords, legend.title),
        "spectrum.png": lambda p: plot_spectrum_comparison(p, spectra, legend),
        "histogram.png": lambda p: plot_histogram_comparison(p, metrics, legend),
        "correlation.png": lambda p: plot_correlation_comparison(p, curves, legend),
    }
    for name, kept in (("spectrum.png", spectra), ("correlation.png", curves)):
        if not kept:
            del writers[name]
    return writers


def write_evaluation(result: dict[str, Any], out_dir: Path, figures: dict[str, Writer], t0: float,
                     report: Callable[[Mapping[str, Any], Sequence[str]], str] = report_markdown) -> dict[str, Any]:
    """Complete ``result`` (``seconds``, ``figures``, ``output``), write the figures, ``report.md`` and
    ``metrics.json`` atomically (metrics last) and return the content of ``metrics.json``.

    Parameters
    ----------
    result
        :func:`~sciencegen.evaluation.report.build_result`'s dict.
    out_dir
        ``output.dir`` (checked by :func:`prepare_output`).
    figures
        ``{file name: writer(tmp_path)}`` (:func:`figure_writers`; empty: no figures).
    t0
        ``time.perf_counter()`` at the start of the evaluation.
    report
        Renders ``report.md`` from the result and the figure names (the conditional evaluation passes its own).
    """
    names = list(figures)
    result["seconds"] = time.perf_counter() - t0
    result["figures"] = names
    result["output"] = {"dir": str(out_dir), "metrics": str(out_dir / "metrics.json"),
                        "report": str(out_dir / "report.md"), "figures": [str(out_dir / f) for f in names]}
    clean = jsonable(result)
    writers = dict(figures)
    writers["report.md"] = lambda p: p.write_text(report(clean, names))
    writers["metrics.json"] = lambda p: p.write_text(json.dumps(clean, indent=1) + "\n")
    write_outputs(out_dir, writers)
    return clean


class Terminated(KeyboardInterrupt):
    """SIGTERM during an evaluation (SIGINT raises :class:`KeyboardInterrupt` by itself)."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the main thread for the block, as SIGINT does KeyboardInterrupt.

    The evaluation holds no state worth a safe point (nothing is written before the end, atomically), so it
    stops at once: Dask's waiting main thread is interrupted and the tasks in flight are abandoned.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
