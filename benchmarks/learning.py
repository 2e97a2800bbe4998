"""Learning curves: our TRPO, sb3-contrib's TRPO and SB3's PPO side by side, with rl-zoo's tuned settings.

Every (environment, seed, algorithm) is trained in its own fresh process, one at a time, with one
torch thread. What is measured is the return of the *deterministic* policy on a separate evaluation
environment (its ``VecNormalize`` statistics copied from the training env, rewards not normalised):
``--eval-episodes`` episodes at ``--eval-points`` evenly spaced moments of training plus the start,
and ``--final-eval-episodes`` episodes at the end. The evaluation env is re-seeded before each
evaluation, so every evaluation of a run (and every algorithm on the same seed) starts from the same
initial states, and evaluating never touches the training's random streams.

    python benchmarks/learning.py --envs CartPole-v1 Pendulum-v1 --seeds 0 1 2

writes ``results/learning.json`` (curves, final returns, settings, diagnostics; runs of environments
not trained this time are kept from the previous file), ``results/learning.md`` (the table) and
``results/learning_<env>.png``; the per-run files, with every logged ``train/`` value, go to
``benchmarks/runs/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    BENCHMARKS_DIR,
    DEFAULT_RESULTS_DIR,
    check_single_source,
    finish_return_plot,
    format_number,
    git_commit,
    mean_std,
    replace_marked_block,
    run_worker,
    set_single_thread,
    source_fingerprint,
    versions,
    write_json,
    write_text,
)
from hyperparams import ALGORITHMS, describe_settings, make_model, run_settings

DEFAULT_ENVS = ("CartPole-v1", "Pendulum-v1")
DEFAULT_ALGOS = ("sb3_trpo", "sb3_contrib", "ppo")
REFERENCE_ALGO = "sb3_contrib"
EVAL_SEED_OFFSET = 10_000  # the evaluation env of seed s is seeded with s + EVAL_SEED_OFFSET
TABLE_MARKER = "learning-table"
ALGO_LABELS = {
    "sb3_trpo": "sb3_trpo (ours)",
    "sb3_trpo_penalty": "sb3_trpo penalty (ours)",
    "sb3_contrib": "sb3_contrib TRPO",
    "ppo": "SB3 PPO",
}
ALGO_COLORS = {"sb3_trpo": "tab:blue", "sb3_trpo_penalty": "tab:purple", "sb3_contrib": "tab:orange", "ppo": "tab:green"}


# ---------------------------------------------------------------------- one training run (worker side)


def train_and_evaluate(
    algo: str,
    env_id: str,
    seed: int,
    n_timesteps: int | None = None,
    eval_points: int = 20,
    eval_episodes: int = 10,
    final_eval_episodes: int = 20,
) -> dict[str, Any]:
    """Train ``algo`` on ``env_id`` with rl-zoo's settings and evaluate it along the way; JSON-friendly result.

    ``eval_points=0`` evaluates only at the end; the final evaluation is the same either way.
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    settings = run_settings(algo, env_id)
    n_timesteps = settings.n_timesteps if n_timesteps is None else n_timesteps
    model = make_model(algo, env_id, seed)
    source = source_fingerprint()

    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    if settings.normalize:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    callback = _evaluation_callback()(
        eval_env,
        eval_interval=n_timesteps / eval_points if eval_points > 0 else None,
        eval_episodes=eval_episodes,
        final_eval_episodes=final_eval_episodes,
        eval_seed=seed + EVAL_SEED_OFFSET,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=n_timesteps, callback=callback)
    wall_s = time.perf_counter() - start

    final_returns = callback.final_returns
    return {
        "env": env_id,
        "algo": algo,
        "seed": seed,
        "n_timesteps": n_timesteps,
        "trained_timesteps": int(model.num_timesteps),
        "eval_episodes": eval_episodes,
        "final_eval_episodes": final_eval_episodes,
        "settings": describe_settings(algo, env_id),
        "eval_timesteps": [point[0] for point in callback.curve],
        "eval_mean": [point[1] for point in callback.curve],
        "eval_std": [point[2] for point in callback.curve],
        "final_returns": final_returns,
        "final_mean": float(np.mean(final_returns)),
        "learn_wall_s": wall_s,
        "source": source,
        "diagnostics": callback.diagnostics,
    }


def _evaluation_callback() -> type:
    """The callback class, built on first use so that importing this module stays light."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

    class PeriodicEvaluation(BaseCallback):
        """Deterministic evaluation before training, every ``eval_interval`` steps, and at the end of training.

        Evaluations happen between updates (at the start of the first rollout after each multiple of
        ``eval_interval``), so the policy evaluated at ``T`` steps has learnt from all ``T``.

        Also keeps, per update, the ``train/`` values the algorithm logged and the mean training
        episode return (Monitor, stochastic policy): ``diagnostics[i]["timesteps"]`` is the number of
        steps collected before that update.
        """

        def __init__(
            self,
            eval_env: VecEnv,
            eval_interval: float | None,
            eval_episodes: int,
            final_eval_episodes: int,
            eval_seed: int,
        ):
            super().__init__()
            self.eval_env = eval_env
            self.eval_interval = eval_interval
            self.eval_episodes = eval_episodes
            self.final_eval_episodes = final_eval_episodes
            self.eval_seed = eval_seed
            self.next_eval = float("inf")
            self.curve: list[tuple[int, float, float]] = []
            self.final_returns: list[float] = []
            self.diagnostics: list[dict[str, float]] = []

        def _evaluate(self, n_episodes: int) -> list[float]:
            sync_envs_normalization(self.training_env, self.eval_env)
            self.eval_env.seed(self.eval_seed)  # the same initial states at every evaluation
            returns, _ = evaluate_policy(
                self.model, self.eval_env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True
            )
            return [float(value) for value in returns]

        def _record(self, n_episodes: int) -> list[float]:
            returns = self._evaluate(n_episodes)
            self.curve.append((int(self.num_timesteps), float(np.mean(returns)), float(np.std(returns))))
            return returns

        def _record_diagnostics(self) -> None:
            # Between a rollout's start and the next log dump, the logger still holds the last update's values.
            values = {
                key: float(value)
                for key, value in self.logger.name_to_value.items()
                if key.startswith("train/") and isinstance(value, int | float | np.number)
            }
            if not values:
                return
            episodes = self.model.ep_info_buffer
            if episodes:
                values["rollout/ep_rew_mean"] = float(np.mean([info["r"] for info in episodes]))
            self.diagnostics.append({"timesteps": int(self.num_timesteps), **values})

        def _on_training_start(self) -> None:
            self.next_eval = 0.0 if self.eval_interval is not None else float("inf")

        def _on_rollout_start(self) -> None:
            # Here the policy has been updated on every step collected so far (``num_timesteps``).
            self._record_diagnostics()
            if self.num_timesteps >= self.next_eval:
                self._record(self.eval_episodes)
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += self.eval_interval

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self._record_diagnostics()
            self.final_returns = self._record(self.final_eval_episodes)

    return PeriodicEvaluation


# ---------------------------------------------------------------------- the whole benchmark (parent side)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (env, seed, algo) in its own process, one after the other; algorithms interleaved per seed."""
    runs = []
    total = len(args.envs) * len(args.seeds) * len(args.algos)
    done = 0
    for env_id in args.envs:
        for seed in args.seeds:
            for algo in args.algos:
                done += 1
                run_file = args.runs_dir / env_id / f"{algo}_seed{seed}.json"
                worker_args = [
                    *("--envs", env_id, "--seeds", str(seed), "--algos", algo),
                    *("--eval-points", str(args.eval_points), "--eval-episodes", str(args.eval_episodes)),
                    *("--final-eval-episodes", str(args.final_eval_episodes)),
                    *(("--steps", str(args.steps)) if args.steps is not None else ()),
                ]
                print(f"[{done}/{total}] {env_id} seed {seed} {algo} ...", end=" ", flush=True)
                run = run_worker(Path(__file__), worker_args)
                write_json(run_file, run)
                print(f"final {run['final_mean']:.1f} in {run['process_wall_s']:.0f} s", flush=True)
                runs.append(run)
    return runs


def summarise_run(run: dict[str, Any]) -> dict[str, Any]:
    """What learning.json keeps of a run: everything but the per-update diagnostics, plus their means."""
    summary = {key: value for key, value in run.items() if key != "diagnostics"}
    diagnostics = run.get("diagnostics", [])
    keys = sorted({key for row in diagnostics for key in row if key.startswith("train/")})
    summary["train_means"] = {key: float(np.mean([row[key] for row in diagnostics if key in row])) for key in keys}
    return summary


def merge_runs(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New runs replace previous ones of the same (env, algo, seed); the others are kept."""
    replaced = {(run["env"], run["algo"], run["seed"]) for run in new}
    kept = [run for run in previous if (run["env"], run["algo"], run["seed"]) not in replaced]
    return kept + new


def group_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{env: {algo: [runs sorted by seed]}}``, envs and algorithms in first-seen order."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(run["env"], {}).setdefault(run["algo"], []).append(run)
    for by_algo in grouped.values():
        for algo_runs in by_algo.values():
            algo_runs.sort(key=lambda run: run["seed"])
    return grouped


def summary_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per env and algorithm: final returns over seeds, their ratio to sb3_contrib, the mean over the curve."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for env_id, by_algo in group_runs(runs).items():
        table[env_id] = {}
        for algo, algo_runs in by_algo.items():
            finals = [run["final_mean"] for run in algo_runs]
            curve_means = [float(np.mean(run["eval_mean"])) for run in algo_runs]
            mean, std = mean_std(finals)
            curve_mean, curve_std = mean_std(curve_means)
            table[env_id][algo] = {
                "seeds": [run["seed"] for run in algo_runs],
                "n_timesteps": algo_runs[0]["n_timesteps"],
                "final_per_seed": finals,
                "final_mean": mean,
                "final_std": std,
                "final_median": float(np.median(finals)),
                "curve_mean": curve_mean,
                "curve_std": curve_std,
                "learn_wall_s_median": float(np.median([run["learn_wall_s"] for run in algo_runs])),
            }
        reference = table[env_id].get(REFERENCE_ALGO)
        for row in table[env_id].values():
            row.update(compare_to_reference(row, reference))
    return table


def compare_to_reference(row: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """Ratio and difference of the mean final returns, on the seeds both have, with a bootstrap interval.

    The interval is the 2.5-97.5 percentile range of the difference of means when each algorithm's
    seeds are resampled with replacement (10,000 times, a fixed generator): it contains 0 when these
    seeds cannot tell the two apart.
    """
    empty = {"common_seeds": 0, "ratio_to_reference": None, "difference_to_reference": None, "difference_interval": None}
    if reference is None:
        return empty
    common = sorted(set(row["seeds"]) & set(reference["seeds"]))
    if not common:
        return empty
    ours = np.array([value for seed, value in zip(row["seeds"], row["final_per_seed"], strict=True) if seed in common])
    theirs = np.array(
        [value for seed, value in zip(reference["seeds"], reference["final_per_seed"], strict=True) if seed in common]
    )
    generator = np.random.default_rng(0)
    resampled = generator.choice(ours, size=(10_000, ours.size)).mean(axis=1) - generator.choice(
        theirs, size=(10_000, theirs.size)
    ).mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "common_seeds": len(common),
        "ratio_to_reference": float(ours.mean() / theirs.mean()) if theirs.mean() else None,
        "difference_to_reference": float(ours.mean() - theirs.mean()),
        "difference_interval": [float(low), float(high)],
    }


def markdown_table(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The table of final returns, with the protocol in a few lines below it."""
    lines = [
        f"| Environment | Algorithm | Steps | Final return (mean ± std) | Median | Per seed | "
        f"Ratio to {REFERENCE_ALGO} | Δ to {REFERENCE_ALGO} [95% interval] (seeds) | Mean over training |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    negative_envs = [env_id for env_id, by_algo in table.items() if any(row["final_mean"] < 0 for row in by_algo.values())]
    for env_id, by_algo in table.items():
        for algo, row in by_algo.items():
            per_seed = ", ".join(format_number(value) for value in row["final_per_seed"])
            ratio = row["ratio_to_reference"]
            difference = row["difference_to_reference"]
            if difference is not None and algo != REFERENCE_ALGO:
                low, high = row["difference_interval"]
                difference_text = f"{difference:+.1f} [{low:+.1f}, {high:+.1f}] ({row['common_seeds']})"
            else:
                difference_text = "n/a" if difference is None else f"{difference:+.1f}"
            lines.append(
                f"| {env_id} | {algo} | {row['n_timesteps']:,} | "
                f"{format_number(row['final_mean'])} ± {format_number(row['final_std'])} | "
                f"{format_number(row['final_median'])} | {per_seed} | "
                f"{'n/a' if ratio is None else format_number(ratio, 2)} | "
                f"{difference_text} | "
                f"{format_number(row['curve_mean'])} ± {format_number(row['curve_std'])} |"
            )
    notes = [
        "",
        "Final return: mean return of the deterministic policy over the final evaluation episodes, "
        "one value per seed; mean ± std and median over seeds. Mean over training: the same evaluation "
        "averaged over the evaluation points of the curve (a measure of learning speed). "
        f"Ratio and Δ compare the mean final return with {REFERENCE_ALGO}'s on the seeds both ran (their number "
        "in brackets); the interval is a 95% bootstrap interval of Δ, resampling each algorithm's seeds: "
        "where it contains 0, these seeds cannot tell the two apart. The same seed does not pair two runs: "
        "on chaotic tasks float rounding soon sends them along unrelated trajectories (`equivalence.py` "
        "shows where), so each algorithm's seeds are resampled on their own.",
    ]
    if negative_envs:
        notes.append(
            f"Where returns are negative ({', '.join(negative_envs)}), "
            "a ratio below 1 means a return closer to 0, i.e. better."
        )
    return "\n".join(lines + notes) + "\n"


def markdown_report(data: dict[str, Any], table_md: str) -> str:
    runs = data["runs"]
    eval_episodes = "/".join(str(n) for n in sorted({run["eval_episodes"] for run in runs}))
    final_episodes = "/".join(str(n) for n in sorted({run["final_eval_episodes"] for run in runs}))
    settings_lines = []
    for env_id, by_algo in group_runs(runs).items():
        for algo, algo_runs in by_algo.items():
            described = ", ".join(f"{key}={value}" for key, value in algo_runs[0]["settings"].items() if key != "class")
            settings_lines.append(f"- {env_id}, {algo} ({algo_runs[0]['settings']['class']}): {described}")
    version_text = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    sources = []
    for env_id, by_algo in group_runs(runs).items():
        # Only our algorithms run sb3_trpo's code; the others' runs carry whatever tree was checked out.
        ours = [run for algo, algo_runs in by_algo.items() if algo.startswith("sb3_trpo") for run in algo_runs]
        fingerprints = sorted({run.get("source") or "unknown" for run in ours})
        per_run = ""
        if len(fingerprints) > 1:
            counts = {fp: sum(run.get("source") == fp for run in ours) for fp in fingerprints}
            per_run = " (MIXED: " + ", ".join(f"{fp} in {n} run(s)" for fp, n in counts.items()) + ")"
        sources.append(f"{env_id} {', '.join(fingerprints)}{per_run}")
    return "\n".join(
        [
            "# Learning benchmark",
            "",
            "Generated by `benchmarks/learning.py`; do not edit by hand.",
            "",
            table_md,
            f"Evaluation: {final_episodes} deterministic episodes at the end, {eval_episodes} at each point of "
            "the curves, on a separate environment whose VecNormalize statistics are synced from the training env.",
            "",
            "Settings (rl-baselines3-zoo; the Steps column of the table is what was run):",
            "",
            *settings_lines,
            "",
            f"Versions: {version_text}. Commit: {data.get('commit')}.",
            "",
            "sb3_trpo source fingerprint (sha256 of its .py files) of our algorithms' runs, per environment: "
            f"{'; '.join(sources)}.",
            "",
        ]
    )


def plot_env(env_id: str, by_algo: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean ± std over seeds of the evaluation return against training steps, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    n_seeds = set()
    for algo, algo_runs in by_algo.items():
        timesteps = np.asarray(algo_runs[0]["eval_timesteps"], dtype=float)
        # Evaluations fall on the same steps for every seed; interpolate in case a run differs.
        curves = np.array([np.interp(timesteps, run["eval_timesteps"], run["eval_mean"]) for run in algo_runs])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        color = ALGO_COLORS.get(algo)
        axes.plot(timesteps, mean, label=f"{ALGO_LABELS.get(algo, algo)} ({len(algo_runs)} seeds)", color=color, lw=2)
        axes.fill_between(timesteps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        n_seeds.add(len(algo_runs))
    finish_return_plot(figure, axes, f"{env_id}: deterministic evaluation return, mean ± std over seeds", path)
    plt.close(figure)


def write_reports(data: dict[str, Any], out: Path, update_readme: list[Path]) -> str:
    table = summary_table(data["runs"])
    data["summary"] = table
    write_json(out / "learning.json", data)
    table_md = markdown_table(table)
    write_text(out / "learning.md", markdown_report(data, table_md))
    for env_id, by_algo in group_runs(data["runs"]).items():
        plot_env(env_id, by_algo, out / f"learning_{env_id}.png")
    for path in update_readme:
        replace_marked_block(path, TABLE_MARKER, table_md)
        print(f"updated the {TABLE_MARKER} block of {path}")
    return table_md


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="environment ids (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: %(default)s)")
    parser.add_argument(
        "--algos", nargs="+", default=list(DEFAULT_ALGOS), choices=sorted(ALGORITHMS), help="(default: %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps, for every env (default: rl-zoo's)")
    parser.add_argument("--eval-points", type=int, default=20, help="evaluations along training (default: %(default)s)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default: %(default)s)")
    parser.add_argument(
        "--final-eval-episodes", type=int, default=20, help="episodes of the final evaluation (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="results directory (default: %(default)s)")
    parser.add_argument(
        "--runs-dir", type=Path, default=BENCHMARKS_DIR / "runs", help="per-run JSON files (default: %(default)s)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: rebuild the table and plots from <out>/learning.json"
    )
    parser.add_argument(
        "--update-readme",
        type=Path,
        nargs="*",
        default=[],
        metavar="PATH",
        help=f"replace the <!-- {TABLE_MARKER}:start/end --> block of these files with the table",
    )
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_output is not None:
        set_single_thread()
        run = train_and_evaluate(
            args.algos[0],
            args.envs[0],
            args.seeds[0],
            n_timesteps=args.steps,
            eval_points=args.eval_points,
            eval_episodes=args.eval_episodes,
            final_eval_episodes=args.final_eval_episodes,
        )
        write_json(args.worker_output, run)
        return

    previous_file = args.out / "learning.json"
    previous = json.loads(previous_file.read_text(encoding="utf-8")) if previous_file.exists() else {"runs": []}
    if args.report_only:
        data = previous
    else:
        start = time.perf_counter()
        new_runs = [summarise_run(run) for run in run_all(args)]
        check_single_source(new_runs)
        data = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "versions": versions(),
            "runs": merge_runs(previous["runs"], new_runs),
        }
        print(f"all runs: {time.perf_counter() - start:.0f} s")
    print(write_reports(data, args.out, args.update_readme))


if __name__ == "__main__":
    sys.exit(main())
