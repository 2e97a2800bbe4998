"""Speed and memory: our TRPO against sb3-contrib's at identical settings (rl-zoo's), one process per run.

Runs alternate (ours, sb3-contrib, ours, sb3-contrib, ...), each in a fresh process with one torch
thread, repeat ``i`` of every algorithm on seed ``i``; nothing else should be measuring meanwhile.
Per run:

- ``learn()``: wall-clock time of ``model.learn(steps)``: rollouts (environment steps, the same code
  in both, and policy forward passes: SB3's in sb3-contrib, NumPy's in ours where the policy is
  covered) plus the updates; also its CPU time (``time.process_time``,
  well below the wall time when the machine was busy with other work);
- ``train()``: the time spent inside the model's ``train()`` (the method is wrapped with a timer), the
  part where the two implementations differ; per update too, and its CPU time; also the fastest
  single update, the estimate least disturbed by other work on a shared machine (as ``timeit``'s minimum);
- steps/s: ``steps / learn()``;
- peak RSS: ``getrusage(RUSAGE_SELF).ru_maxrss`` read in the worker at the end, the peak resident
  memory of the whole process (Python, torch and the environment included, not only what learning
  allocates); "RSS growth" subtracts the resident memory just before ``learn()``.

Ratios are ours / sb3-contrib: the median over repeats of the per-repeat ratio (adjacent runs share
the machine's state), with the smallest and largest in brackets.

    python benchmarks/speed.py --envs HalfCheetah-v5 CartPole-v1 --repeats 3 --steps 20480

writes ``results/speed.json`` and ``results/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    DEFAULT_RESULTS_DIR,
    check_single_source,
    format_number,
    git_commit,
    replace_marked_block,
    run_worker,
    set_single_thread,
    source_fingerprint,
    versions,
    write_json,
    write_text,
)
from hyperparams import ALGORITHMS, describe_settings, make_model

DEFAULT_ENVS = ("HalfCheetah-v5", "CartPole-v1")
DEFAULT_ALGOS = ("sb3_trpo", "sb3_contrib")
REFERENCE_ALGO = "sb3_contrib"
DEFAULT_STEPS = 20_480  # 10 updates on HalfCheetah (2 envs × 1024 steps), 20 on CartPole (2 × 512)
TABLE_MARKER = "speed-table"

# (key in a measurement, label, decimals); a ratio below 1 means ours is faster / smaller, except for steps/s.
METRICS = (
    ("learn_s", "learn() wall time (s)", 2),
    ("train_s", "train() time (s)", 2),
    ("train_ms_per_update", "train() per update (ms)", 1),
    ("train_ms_fastest_update", "train(), fastest update (ms)", 1),
    ("rollout_s", "rollouts: learn() − train() (s)", 2),
    ("steps_per_s", "steps/s", 0),
    ("learn_cpu_s", "learn() CPU time (s)", 2),
    ("train_cpu_s", "train() CPU time (s)", 2),
    ("peak_rss_mib", "peak RSS of the process (MiB)", 0),
    ("rss_growth_mib", "RSS growth during learn() (MiB)", 0),
)


# ---------------------------------------------------------------------- one measurement (worker side)


def current_rss_mib() -> float:
    """The resident set size now, from /proc (Linux); NaN elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def measure(algo: str, env_id: str, seed: int, n_timesteps: int) -> dict[str, Any]:
    """Time ``learn()`` and the ``train()`` calls inside it, and read the process's peak memory."""
    set_single_thread()
    model = make_model(algo, env_id, seed)
    source = source_fingerprint()
    train_durations: list[float] = []
    train_cpu_durations: list[float] = []
    original_train = model.train

    def timed_train() -> None:
        cpu_start, start = time.process_time(), time.perf_counter()
        original_train()
        train_durations.append(time.perf_counter() - start)
        train_cpu_durations.append(time.process_time() - cpu_start)

    model.train = timed_train  # type: ignore[method-assign]  # learn() calls self.train()

    rss_before = current_rss_mib()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    model.learn(total_timesteps=n_timesteps)
    learn_s = time.perf_counter() - wall_start
    learn_cpu_s = time.process_time() - cpu_start
    peak = peak_rss_mib()

    train_s = float(sum(train_durations))
    return {
        "env": env_id,
        "algo": algo,
        "seed": seed,
        "n_timesteps": int(model.num_timesteps),
        "n_updates": len(train_durations),
        "settings": describe_settings(algo, env_id),
        "learn_s": learn_s,
        "learn_cpu_s": learn_cpu_s,
        "train_s": train_s,
        "train_cpu_s": float(sum(train_cpu_durations)),
        "train_ms_per_update": 1000 * train_s / max(len(train_durations), 1),
        "train_ms_fastest_update": 1000 * min(train_durations, default=float("nan")),
        "rollout_s": learn_s - train_s,
        "steps_per_s": model.num_timesteps / learn_s,
        "peak_rss_mib": peak,
        "rss_growth_mib": peak - rss_before,
        "source": source,
        "train_durations_s": train_durations,
    }


# ---------------------------------------------------------------------- the whole benchmark (parent side)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Alternate the algorithms, one fresh process per run, one run at a time."""
    measurements = []
    total = len(args.envs) * args.repeats * len(args.algos)
    done = 0
    for env_id in args.envs:
        for repeat in range(args.repeats):
            for algo in args.algos:
                done += 1
                print(f"[{done}/{total}] {env_id} repeat {repeat} {algo} ...", end=" ", flush=True)
                worker_args = ["--envs", env_id, "--algos", algo, "--seed", str(repeat), "--steps", str(args.steps)]
                result = run_worker(Path(__file__), worker_args)
                result["repeat"] = repeat
                print(f"learn {result['learn_s']:.2f} s, train {result['train_s']:.2f} s", flush=True)
                measurements.append(result)
    return measurements


def summarise(measurements: list[dict[str, Any]], algos: list[str]) -> dict[str, dict[str, Any]]:
    """Per env: the median of every metric per algorithm, and the paired ratios to the reference."""
    summary: dict[str, dict[str, Any]] = {}
    for env_id in dict.fromkeys(m["env"] for m in measurements):
        runs = {
            algo: sorted((m for m in measurements if m["env"] == env_id and m["algo"] == algo), key=lambda m: m["repeat"])
            for algo in algos
        }
        env_summary: dict[str, Any] = {
            "n_timesteps": runs[algos[0]][0]["n_timesteps"],
            "n_updates": runs[algos[0]][0]["n_updates"],
            "repeats": len(runs[algos[0]]),
            "medians": {
                algo: {key: float(np.median([m[key] for m in runs[algo]])) for key, _, _ in METRICS} for algo in algos
            },
            "ratios": {},
        }
        if REFERENCE_ALGO in runs:
            for algo in algos:
                if algo == REFERENCE_ALGO:
                    continue
                env_summary["ratios"][algo] = {}
                for key, _, _ in METRICS:
                    paired = [
                        ours[key] / reference[key]
                        for ours, reference in zip(runs[algo], runs[REFERENCE_ALGO], strict=True)
                        if reference[key]
                    ]
                    env_summary["ratios"][algo][key] = {
                        "median": float(np.median(paired)) if paired else None,
                        "min": float(np.min(paired)) if paired else None,
                        "max": float(np.max(paired)) if paired else None,
                        "per_repeat": paired,
                    }
        summary[env_id] = env_summary
    return summary


def markdown_table(summary: dict[str, dict[str, Any]], algos: list[str]) -> str:
    """One table per environment: medians per algorithm, and ratios to sb3_contrib."""
    others = [algo for algo in algos if algo != REFERENCE_ALGO]
    blocks = []
    for env_id, env_summary in summary.items():
        header = ["Metric", *(f"{algo} (median)" for algo in algos)]
        header += [f"{algo} / {REFERENCE_ALGO} (median [min, max])" for algo in others if algo in env_summary["ratios"]]
        lines = [
            f"**{env_id}**, {env_summary['n_timesteps']:,} steps ({env_summary['n_updates']} updates), "
            f"{env_summary['repeats']} repeat(s)",
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
        ]
        for key, label, digits in METRICS:
            cells = [label, *(format_number(env_summary["medians"][algo][key], digits) for algo in algos)]
            for algo in others:
                ratio = env_summary["ratios"].get(algo, {}).get(key)
                if ratio is None:
                    continue
                cells.append(
                    f"{format_number(ratio['median'], 2)} [{format_number(ratio['min'], 2)}, {format_number(ratio['max'], 2)}]"
                )
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    notes = (
        "Ratios are per repeat (runs alternate, one fresh process each), then the median over repeats; "
        "below 1 is faster or smaller, except for steps/s. The rollouts step the same environments in both; "
        "ours evaluates the policy with NumPy (`rollout_method`), sb3-contrib with torch. "
        "The fastest update is the figure least disturbed by other work. "
        "Peak RSS is the whole worker process (`ru_maxrss`: Python, torch and the environment included); "
        "RSS growth subtracts the RSS before `learn()`."
    )
    return "\n\n".join([*blocks, notes]) + "\n"


def markdown_report(data: dict[str, Any], table_md: str) -> str:
    settings_lines = []
    for env_id in data["summary"]:
        measurement = next(m for m in data["measurements"] if m["env"] == env_id)
        described = ", ".join(f"{key}={value}" for key, value in measurement["settings"].items() if key != "class")
        settings_lines.append(f"- {env_id}: {described}")
    version_text = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    return "\n".join(
        [
            "# Speed benchmark",
            "",
            "Generated by `benchmarks/speed.py`; do not edit by hand. One torch thread per process, CPU.",
            "",
            table_md,
            "Settings (rl-baselines3-zoo's, identical for both; the number of steps is the table's):",
            "",
            *settings_lines,
            "",
            f"Versions: {version_text}. Commit: {data.get('commit')}.",
            "",
            f"sb3_trpo source fingerprint (sha256 of its .py files): {', '.join(data['sources'])}"
            + (" (MIXED: the runs did not all measure the same code)" if len(data["sources"]) > 1 else "")
            + ".",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="environment ids (default: %(default)s)")
    parser.add_argument(
        "--algos", nargs="+", default=list(DEFAULT_ALGOS), choices=sorted(ALGORITHMS), help="(default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per algorithm and env (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of every learn() (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="results directory (default: %(default)s)")
    parser.add_argument("--report-only", action="store_true", help="measure nothing: rebuild the table from <out>/speed.json")
    parser.add_argument(
        "--update-readme",
        type=Path,
        nargs="*",
        default=[],
        metavar="PATH",
        help=f"replace the <!-- {TABLE_MARKER}:start/end --> block of these files with the table",
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_output is not None:
        write_json(args.worker_output, measure(args.algos[0], args.envs[0], args.seed, args.steps))
        return

    start = time.perf_counter()
    if args.report_only:
        data = json.loads((args.out / "speed.json").read_text(encoding="utf-8"))
        data["summary"] = summarise(data["measurements"], data["config"]["algos"])
    else:
        measurements = run_all(args)
        data = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "versions": versions(),
            "sources": check_single_source(measurements),
            "config": {"envs": args.envs, "algos": args.algos, "repeats": args.repeats, "steps": args.steps},
            "summary": summarise(measurements, args.algos),
            "measurements": measurements,
        }
    table_md = markdown_table(data["summary"], data["config"]["algos"])
    write_json(args.out / "speed.json", data)
    write_text(args.out / "speed.md", markdown_report(data, table_md))
    for path in args.update_readme:
        replace_marked_block(path, TABLE_MARKER, table_md)
        print(f"updated the {TABLE_MARKER} block of {path}")
    print(table_md)
    if not args.report_only:
        print(f"all runs: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
