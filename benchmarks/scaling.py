"""Scaling: steps/s of our TRPO on 1 process, on N data-parallel processes (torchrun), and asynchronous.

``async``: a learner and ``N − 1`` rollout workers (``distributed="async"``, the zoo's ``n_envs`` on each
worker, so an update's batch is one process's), beside the others in the same run; its steps/s count the
steps the learner received, and the report gives the share it dropped, the lag and the learner's idle time.

For each task, with its zoo settings (``hyperparams.py``), one process with the entry's ``n_envs``
environments runs beside ``N`` processes with ``n_envs / N`` each (so the batch of an update is the same),
alternating, ``--repeats`` times, one torch thread per process. Per run: ``learn()`` wall time, steps/s,
the time of its updates (``train()``, collectives inside it left out), and for the N-process runs the number
of collectives per update and the time spent in them (rank 0's, waiting for the other ranks included). From
these, what the same global batch can gain at best (:func:`same_batch_bounds`). ``--report-only`` rebuilds the
report from ``results/scaling.json``.

The report then extrapolates, from these measured figures, to 8–256 processes for the two designs of
``docs/guide/distributed.rst``: gathering the batch once per update (what ``TRPO(distributed=...)``
does) and all-reducing every mean of the update.

    python benchmarks/scaling.py --envs HalfCheetah-v5 CartPole-v1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    DEFAULT_RESULTS_DIR,
    format_number,
    git_commit,
    replace_marked_block,
    set_single_thread,
    source_fingerprint,
    versions,
    write_json,
    write_text,
)

TABLE_MARKER = "scaling-table"
DEFAULT_STEPS = 20_480
TARGET_SPEEDUP = 1.6  # the target for 2 processes with the same global batch


def worker(env_id: str, steps: int, n_envs: int, out: Path, distributed: str = "auto") -> None:
    """One rank (or the single process): train, write the figures as JSON (rank 0 only)."""
    set_single_thread()
    from hyperparams import make_model

    # The zoo entry, with this rank's share of its environments.
    model = make_model("sb3_trpo", env_id, seed=0, n_envs=n_envs, distributed=distributed)
    parallel = model._data_parallel
    train, train_s = model.train, [0.0]

    def timed_train() -> None:  # the update's own time: collectives inside it (the periodic checksum) left out
        waited = 0.0 if parallel is None else parallel.communicator.seconds
        begin = time.perf_counter()
        train()
        waited = 0.0 if parallel is None else parallel.communicator.seconds - waited
        train_s[0] += time.perf_counter() - begin - waited

    model.train = timed_train  # type: ignore[method-assign]
    start = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - start
    if model._async is not None:
        learner = model._async.learner
        if learner is not None:  # rank 0; the workers have returned when it has
            figures = {"learn_s": seconds, "steps": model.num_timesteps, "updates": model._n_updates}
            figures |= {"received": learner.n_received, "dropped": learner.n_dropped, "idle_s": learner.idle_s}
            out.write_text(json.dumps(figures))
        return
    latency = None
    if parallel is not None:  # one small all-reduce, the ranks lined up by a barrier first: the cost of a collective
        import torch as th
        import torch.distributed as dist

        token, times = th.zeros(1), []
        for _ in range(30):
            dist.barrier()
            begin = time.perf_counter()
            dist.all_reduce(token)
            times.append(time.perf_counter() - begin)
        latency = float(np.median(times))
    if parallel is None or parallel.is_main:
        figures = {"learn_s": seconds, "train_s": train_s[0], "steps": model.num_timesteps, "updates": model._n_updates}
        if parallel is not None:
            figures |= {"collectives": parallel.communicator.n_collectives, "collective_s": parallel.communicator.seconds}
            figures["latency_s"] = latency
        out.write_text(json.dumps(figures))


def run(env_id: str, steps: int, processes: int, n_envs: int, distributed: str = "auto") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        arguments = ["--worker", env_id, str(steps), str(n_envs), str(out), distributed]
        if processes == 1:
            command = [sys.executable, __file__, *arguments]
        else:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={processes}",
                __file__,
            ]
            command += arguments
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
        return json.loads(out.read_text())


def measure(envs: list[str], processes: int, steps: int, repeats: int) -> dict[str, Any]:
    from hyperparams import run_settings

    results: dict[str, Any] = {}
    for env_id in envs:
        n_envs = run_settings("sb3_trpo", env_id).n_envs
        if n_envs % processes:
            raise SystemExit(f"{env_id}: n_envs={n_envs} does not split over {processes} processes")
        # "N": the same global batch (n_envs / N per rank); "N×": the same batch per rank (N times the global batch).
        configurations = {
            "1": (1, n_envs, "auto"),
            str(processes): (processes, n_envs // processes, "auto"),
            f"{processes}x": (processes, n_envs, "auto"),
            "async": (processes, n_envs, "async"),  # a learner and N − 1 workers, each with one process's batch
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configurations}
        for repeat in range(repeats):
            for name, (count, envs_per_rank, distributed) in configurations.items():
                figures = run(env_id, steps, count, envs_per_rank, distributed)
                runs[name].append(figures)
                print(f"{env_id} repeat {repeat}, {name}: {count} process(es) x {envs_per_rank} env(s): {figures}", flush=True)
        results[env_id] = {"n_envs": n_envs, "runs": runs}
    return results


# ---------------------------------------------------------------------------------------------- report


def predicted_speedups(single: dict[str, float], parallel: dict[str, float], processes: int) -> dict[str, list[float]]:
    """Speed-ups at 8–256 processes, from the measured split of one process's time and the measured collective cost.

    One process spends ``R`` collecting and ``U`` updating per update; ``c`` is the measured latency of one
    small collective between 2 ranks, taken as the cost per doubling of a tree or ring collective (bytes
    ignored: the payloads here are small). Gathering: ``R/N + U + c·log₂N`` (``U`` stays: every rank
    computes the whole update). All-reducing: ``R/N + U/N + k·c·log₂N`` with ``k`` the collectives of one
    update (gradient, the CG products, the line search, and one per critic minibatch).
    """
    rollout, update = single["rollout_s"], single["update_s"]
    per_doubling = parallel["latency_s"] / max(np.log2(processes), 1.0)
    collectives_all_reduce = single["collectives_all_reduce"]
    counts = [1, 2, 8, 32, 128, 256]
    gather = [(rollout + update) / (rollout / n + update + per_doubling * np.log2(n)) for n in counts]
    reduce = [
        (rollout + update) / (rollout / n + update / n + collectives_all_reduce * per_doubling * np.log2(n)) for n in counts
    ]
    return {"processes": counts, "gather": gather, "all_reduce": reduce}


def same_batch_bounds(
    single: list[dict[str, Any]],
    parallel: list[dict[str, Any]],
    processes: int,
    n_envs: int,
    target: float = TARGET_SPEEDUP,
) -> dict[str, float]:
    """What the same global batch can gain at best, from runs that timed their update (``train_s``).

    Per update, one process spends ``R₁`` collecting and ``U`` updating; a rank of the ``N``-process run with
    ``n_envs / N`` environments spends ``R_N`` collecting (its ``learn()`` less its update and its
    collectives). Pair by pair (the runs alternate), medians of:

    - ``rollout_share``: ``R_N / R₁``, which is ``1/N`` only if a rollout's cost is all in its environments;
    - ``if_rollout_split``: ``(R₁ + U) / (R₁/N + U)``, the speed-up with the update whole and communication free
      if the rollout did split (the arithmetic behind a target of 1.6× at 2 processes with ``R₁ ≈ 3U``);
    - ``update_whole``: ``(R₁ + U) / (R_N + U)``, with the rollout measured, the update whole (the gather
      design) and communication free;
    - ``update_divided``: ``(R₁ + U) / (R_N + U/N)``, the same with the update divided by ``N`` (any all-reducing
      design, its collectives free): no design of the update does better with this rollout;
    - ``share_for_target``: ``((R₁ + U) / target − U/N) / R₁``, the largest ``rollout_share`` with which even
      ``update_divided`` reaches ``target``: what a rank's rollout would have to shrink to.

    And why the rollout does not split: a step of the loop (``n_steps`` of them per rollout, ``n_envs`` environments
    for one process) costs ``O + n·E``, a fixed part ``O`` (policy evaluation, the vectorised environment's
    machinery, the buffer, and any slowdown from two processes sharing the machine) and ``E`` per environment. From
    ``R₁`` and ``R_N``, two points of that line, in µs:

    - ``env_us``: ``E = (R₁ − R_N) / (n_steps · (n_envs − n_envs/N))``;
    - ``step_us``: ``O = R_N / n_steps − E · n_envs/N``;
    - ``step_for_target_us``: the ``O`` with which ``update_divided`` would reach ``target``, if one process and
      every rank had that fixed cost: ``(1 − target/N)(n_steps · n_envs · E + U) / (n_steps (target − 1))``;
    - ``step_for_target_whole_us``: the same for ``update_whole``,
      ``((1 − target/N) n_steps · n_envs · E − (target − 1) U) / (n_steps (target − 1))``.

    Below 0, not even a loop that cost nothing would reach ``target``.
    """
    figures: dict[str, list[float]] = {key: [] for key in ("rollout_ms", "update_ms", "rank_rollout_ms")}
    figures |= {key: [] for key in ("rollout_share", "if_rollout_split", "update_whole", "update_divided", "share_for_target")}
    figures |= {key: [] for key in ("step_us", "env_us", "step_for_target_us", "step_for_target_whole_us")}
    rank_envs = n_envs / processes
    for one, many in zip(single, parallel, strict=True):
        update = one["train_s"] / one["updates"]
        rollout = one["learn_s"] / one["updates"] - update
        rank_rollout = (many["learn_s"] - many["train_s"] - many["collective_s"]) / many["updates"]
        figures["rollout_ms"].append(1000 * rollout)
        figures["update_ms"].append(1000 * update)
        figures["rank_rollout_ms"].append(1000 * rank_rollout)
        figures["rollout_share"].append(rank_rollout / rollout)
        figures["if_rollout_split"].append((rollout + update) / (rollout / processes + update))
        figures["update_whole"].append((rollout + update) / (rank_rollout + update))
        figures["update_divided"].append((rollout + update) / (rank_rollout + update / processes))
        share_for_target = ((rollout + update) / target - update / processes) / rollout
        figures["share_for_target"].append(share_for_target)
        n_steps = one["steps"] / (one["updates"] * n_envs)  # steps of the loop per rollout
        env = (rollout - rank_rollout) / (n_steps * (n_envs - rank_envs))
        figures["env_us"].append(1e6 * env)
        figures["step_us"].append(1e6 * (rank_rollout / n_steps - env * rank_envs))
        environments = (1 - target / processes) * n_steps * n_envs * env  # what splitting the environments gains
        figures["step_for_target_us"].append(
            1e6 * (environments + (1 - target / processes) * update) / (n_steps * (target - 1))
        )
        figures["step_for_target_whole_us"].append(1e6 * (environments - (target - 1) * update) / (n_steps * (target - 1)))
    return {key: float(np.median(values)) for key, values in figures.items()}


def _fixed_cost(microseconds: float) -> str:
    return "none" if microseconds < 0 else str(round(microseconds))


def bounds_report(results: dict[str, Any], processes: int) -> str:
    """The table of :func:`same_batch_bounds`, for the tasks whose runs timed their update ("" if none did)."""
    rows = []
    for env_id, result in results.items():
        single, parallel = result["runs"]["1"], result["runs"][str(processes)]
        if not all("train_s" in run for run in single + parallel):
            continue
        b = same_batch_bounds(single, parallel, processes, result["n_envs"])
        rows.append(
            f"| {env_id} | {b['rollout_ms']:.0f} / {b['update_ms']:.0f} | {b['rank_rollout_ms']:.0f} "
            f"| {b['rollout_share']:.2f} | {b['share_for_target']:.2f} | {b['if_rollout_split']:.2f} "
            f"| {b['update_whole']:.2f} | {b['update_divided']:.2f} "
            f"| {round(b['step_us'])} / {round(b['env_us'])} "
            f"| {_fixed_cost(b['step_for_target_whole_us'])} / {_fixed_cost(b['step_for_target_us'])} |"
        )
    if not rows:
        return ""
    return (
        f"The same global batch at {processes} processes, at best (communication free; per update, medians of the pairs "
        f"above; `same_batch_bounds` in `benchmarks/scaling.py`):\n\n"
        f"| Task | one process: rollout / update (ms) | a rank's rollout, n_envs / {processes} (ms) "
        f"| rank's rollout / one process's (1/{processes} if it split) "
        f"| rank's rollout / one process's that {TARGET_SPEEDUP}× needs, update divided by {processes} "
        "| speed-up if the rollout split, update whole "
        f"| speed-up with the rollout measured, update whole | the same, update divided by {processes} "
        "| a step of the loop: fixed cost / per environment (µs) "
        f"| the fixed cost {TARGET_SPEEDUP}× would need, update whole / divided by {processes} (µs; none: not even 0) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )


def report(results: dict[str, Any], processes: int) -> str:
    lines = [
        f"| Task | 1 process: steps/s (learn()) | {processes} processes, the same global batch: steps/s (learn()) "
        f"| speed-up (median [min, max]) | {processes} processes, {processes}× the batch: steps/s (learn()) | speed-up "
        "| collectives per update "
        "| time in collectives per update (ms, waiting for the other rank included) | one collective (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    predictions = []
    for env_id, result in results.items():
        single, parallel = result["runs"]["1"], result["runs"][str(processes)]
        rate = [run["steps"] / run["learn_s"] for run in single]
        rate_n = [run["steps"] / run["learn_s"] for run in parallel]
        speedups = [b / a for a, b in zip(rate, rate_n, strict=True)]
        wide = [run["steps"] / run["learn_s"] for run in result["runs"].get(f"{processes}x", [])]
        wide_cells = "— | —"
        if wide:
            wide_speedups = [b / a for a, b in zip(rate, wide, strict=True)]
            wide_s = np.median([run["learn_s"] for run in result["runs"][f"{processes}x"]])
            wide_cells = (
                f"{np.median(wide):.0f} ({wide_s:.1f} s) | {np.median(wide_speedups):.2f} "
                f"[{min(wide_speedups):.2f}, {max(wide_speedups):.2f}]"
            )
        collectives = np.median([run["collectives"] / run["updates"] for run in parallel])
        collective_ms = np.median([1000 * run["collective_s"] / run["updates"] for run in parallel])
        latency_ms = 1000 * np.median([run["latency_s"] for run in parallel])
        lines.append(
            f"| {env_id} | {np.median(rate):.0f} ({np.median([run['learn_s'] for run in single]):.1f} s) "
            f"| {np.median(rate_n):.0f} ({np.median([run['learn_s'] for run in parallel]):.1f} s) | {np.median(speedups):.2f} "
            f"[{min(speedups):.2f}, {max(speedups):.2f}] | {wide_cells} | {collectives:.1f} "
            f"| {format_number(collective_ms, 2)} | {format_number(latency_ms, 2)} |"
        )
        if "split" in result:
            split = result["split"]
            figures = {"latency_s": float(np.median([run["latency_s"] for run in parallel]))}
            prediction = predicted_speedups(split, figures, processes)
            cells = " | ".join(
                f"{g:.1f}× / {r:.1f}×" for g, r in zip(prediction["gather"], prediction["all_reduce"], strict=True)
            )
            predictions.append(f"| {env_id} | {cells} |")
    text = "\n".join(lines)
    bounds = bounds_report(results, processes)
    if bounds:
        text += "\n\n" + bounds
    if any("async" in result["runs"] for result in results.values()):
        text += "\n\n" + async_report(results, processes)
    if predictions:
        header = " | ".join(f"N = {n}" for n in [1, 2, 8, 32, 128, 256])
        text += (
            "\n\nPredicted speed-up, gather / all-reduce, from the measured split of one process's time into "
            "rollouts and update and the measured cost of a collective, taking a rank's rollout to shrink as 1/N "
            "(true when environment steps dominate or each rank keeps its environments; not in the same-batch "
            "runs above, where the per-step cost stays): `docs/guide/distributed.rst`.\n\n"
            f"| Task | {header} |\n|---|" + "---:|" * 6 + "\n" + "\n".join(predictions)
        )
    return text


def async_report(results: dict[str, Any], processes: int) -> str:
    """Asynchronous (learner + ``N − 1`` workers) beside one process and ``N`` data-parallel ranks, the same run."""
    lines = [
        f"| Task | 1 process: steps/s | {processes} data-parallel ranks, the same global batch | "
        f"learner + {processes - 1} worker(s): steps/s received | speed-up (median [min, max]) | steps used "
        "(not dropped) | learner idle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for env_id, result in results.items():
        runs = result["runs"]
        if "async" not in runs:
            continue
        rate = [run["steps"] / run["learn_s"] for run in runs["1"]]
        parallel = [run["steps"] / run["learn_s"] for run in runs[str(processes)]]
        asynchronous = [run["steps"] / run["learn_s"] for run in runs["async"]]
        speedups = [b / a for a, b in zip(rate, asynchronous, strict=True)]
        used = np.median([1 - run["dropped"] / max(run["received"], 1) for run in runs["async"]])
        idle = np.median([run["idle_s"] / run["learn_s"] for run in runs["async"]])
        lines.append(
            f"| {env_id} | {np.median(rate):.0f} | {np.median(parallel):.0f} | {np.median(asynchronous):.0f} | "
            f"{np.median(speedups):.2f} [{min(speedups):.2f}, {max(speedups):.2f}] | {100 * used:.0f}% | {100 * idle:.0f}% |"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        env_id, steps, n_envs, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        worker(env_id, steps, n_envs, out, sys.argv[6] if len(sys.argv) > 6 else "auto")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "CartPole-v1"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--update-readme", nargs="*", type=Path, default=[])
    args = parser.parse_args()
    path = args.out / "scaling.json"
    if args.report_only:
        data = json.loads(path.read_text())
    else:
        data = {
            "processes": args.processes,
            "steps": args.steps,
            "repeats": args.repeats,
            "commit": git_commit(),
            "source": source_fingerprint(),
            "versions": versions(),
            "results": measure(args.envs, args.processes, args.steps, args.repeats),
        }
        speed = args.out / "speed.json"  # one process's split into rollouts and update, from the speed benchmark
        if speed.exists():
            _attach_split(data["results"], json.loads(speed.read_text()))
        write_json(path, data)
    table = report(data["results"], data["processes"])
    header = (
        f"Generated by `benchmarks/scaling.py`: {data['steps']:,} steps per run, {data['repeats']} repeats, the "
        "configurations alternating; medians over the repeats."
    )
    write_text(args.out / "scaling.md", f"# Data-parallel scaling\n\n{header}\n\n{table}\n")
    for readme in args.update_readme:
        replace_marked_block(readme, TABLE_MARKER, table)
    print(table)
    return 0


def _attach_split(results: dict[str, Any], speed: dict[str, Any]) -> None:
    """Per task, the median rollout and update time per update of our TRPO in ``speed.json``, and the
    number of collectives an all-reducing update would take (gradient, CG products, line search, critic minibatches)."""
    from hyperparams import run_settings

    for env_id, result in results.items():
        runs = [run for run in speed.get("measurements", []) if run.get("env") == env_id and run.get("algo") == "sb3_trpo"]
        if not runs:
            continue
        updates = np.median([run["n_updates"] for run in runs])
        kwargs = run_settings("sb3_trpo", env_id).algo_kwargs
        batch = result["n_envs"] * kwargs.get("n_steps", 2048)
        minibatches = kwargs.get("n_critic_updates", 10) * -(-batch // kwargs.get("batch_size", 128))
        result["split"] = {
            "rollout_s": float(np.median([run["learn_s"] - run["train_s"] for run in runs]) / updates),
            "update_s": float(np.median([run["train_s"] for run in runs]) / updates),
            "collectives_all_reduce": 1 + kwargs.get("cg_max_steps", 15) + 2 + minibatches,
        }


if __name__ == "__main__":
    sys.exit(main())
