"""What the benchmark scripts share: fresh worker processes, statistics, and the marked blocks of README/docs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BENCHMARKS_DIR = Path(__file__).resolve().parent
DEFAULT_RESULTS_DIR = BENCHMARKS_DIR / "results"


def run_worker(script: Path, args: Sequence[str], pythonpath: Path | None = None) -> dict[str, Any]:
    """Run ``script args --worker-output FILE`` in a fresh Python process, wait for it, return the JSON it wrote.

    One process per measurement: no state (imports, caches, allocator pools, RNG) leaks between runs,
    and the process's peak memory is its own. BLAS/OpenMP are limited to one thread, as torch is in the worker.
    ``pythonpath`` goes first on the worker's ``PYTHONPATH`` (another ``sb3_trpo`` source, say).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "result.json"
        command = [sys.executable, str(script), *args, "--worker-output", str(output)]
        start = time.perf_counter()
        completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if completed.returncode != 0 or not output.exists():
            sys.stderr.write(completed.stdout + completed.stderr)
            raise RuntimeError(f"worker failed (exit code {completed.returncode}): {' '.join(command)}")
        result = json.loads(output.read_text(encoding="utf-8"))
    result["process_wall_s"] = elapsed
    return result


def set_single_thread() -> None:
    """One torch thread: small networks run fastest so, and measurements do not fight over the shared cores."""
    import torch as th

    th.set_num_threads(1)


def versions() -> dict[str, str]:
    """Versions of what was measured, stored beside every result."""
    import gymnasium
    import sb3_contrib
    import stable_baselines3
    import torch

    import sb3_trpo

    return {
        "sb3_trpo": sb3_trpo.__version__,
        "sb3_contrib": sb3_contrib.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
    }


def cpu_model() -> str:
    """The processor's name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sb3_trpo_root() -> Path:
    """The directory the ``sb3_trpo`` package is imported from."""
    import sb3_trpo

    return Path(sb3_trpo.__file__).resolve().parent


def git_commit() -> str | None:
    """The commit of the repository sb3_trpo is imported from (``-dirty`` if it has changes), when git is available."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=sb3_trpo_root(), capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit or None


def source_fingerprint() -> str:
    """A hash of sb3_trpo's source files, stored with every run: runs of one table share it, or ``sources.py``
    shows that their sources compute the same updates on a probe of their settings.

    The commit alone does not tell uncommitted edits apart; this does, also for a tree that changes
    while a long benchmark runs.
    """
    root = sb3_trpo_root()
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def check_single_source(results: Sequence[dict[str, Any]]) -> list[str]:
    """The distinct source fingerprints of ``results``, with a warning on stderr when there are several."""
    fingerprints = sorted({result["source"] for result in results if result.get("source")})
    if len(fingerprints) > 1:
        sys.stderr.write(
            f"WARNING: sb3_trpo's source changed during the benchmark (fingerprints {fingerprints}); "
            "the runs do not all measure the same code. Rerun on a tree nobody edits meanwhile.\n"
        )
    return fingerprints


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std())


def format_number(value: float, digits: int = 1) -> str:
    """Fixed-point with ``digits`` decimals, or ``n/a`` for a missing/non-finite value."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def write_text(path: Path, text: str) -> None:
    """Write ``path`` atomically (a temporary file, then ``os.replace``): an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(text)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


def replace_marked_block(path: Path, name: str, content: str) -> None:
    """Replace what lies between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` in ``path`` by ``content``.

    The markers stay; a file without them is an error (nothing is appended silently).
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), flags=re.DOTALL)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{path} must contain exactly one {start} ... {end} block")
    block = f"{start}\n{content.strip()}\n{end}"
    write_text(path, pattern.sub(lambda _: block, text))


def commit_files(paths: Sequence[Path], message: str, attempts: int = 5) -> None:
    """``git add`` and commit exactly ``paths`` (whatever else is staged stays out of the commit).

    Someone else's git command may hold the repository's lock for a moment: retried, and a commit that
    still fails only warns (the file is on disk; the next commit of the campaign can take it along).
    """
    import time
    import warnings

    names, repository = [str(Path(path).resolve()) for path in paths], Path(paths[0]).resolve().parent
    for attempt in range(attempts):
        try:
            subprocess.run(["git", "add", "--", *names], cwd=repository, check=True, capture_output=True)
            subprocess.run(["git", "commit", "-q", "-m", message, "--", *names], cwd=repository, check=True)
            return
        except subprocess.CalledProcessError as error:
            if attempt == attempts - 1:
                warnings.warn(f"could not commit {names}: {error}", stacklevel=2)
            time.sleep(2.0 * (attempt + 1))


def finish_return_plot(figure: Any, axes: Any, title: str, path: Path) -> None:
    """Label a returns-over-training plot the same way in every benchmark, save it as ``path``, close it."""
    import matplotlib.ticker

    axes.set_title(title)
    axes.set_xlabel("training steps")
    axes.set_ylabel("episode return")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    figure.clf()
