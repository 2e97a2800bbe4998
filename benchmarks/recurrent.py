"""RecurrentTRPO on a partially observed task, beside feed-forward TRPO and sb3-contrib's RecurrentPPO.

CartPoleNoVel-v1 is CartPole-v1 with the cart's and the pole's velocities zeroed in the observation
(rl-zoo's ``MaskVelocityWrapper``): a policy must remember past positions to act well. Three agents,
the same seeds, each (agent, seed) in its own fresh process, one after the other, one torch thread:

- ``trpo_lstm``: ``sb3_trpo.RecurrentTRPO`` with the settings of ``HYPERPARAMS["trpo_lstm"]`` (the ones
  registered for rl-zoo as ``trpo_lstm``), 150k steps;
- ``trpo``: feed-forward ``sb3_trpo.TRPO`` with rl-zoo's CartPole-v1 TRPO settings (observations and
  rewards normalised, as in every NoVel entry of rl-zoo), 150k steps;
- ``ppo_lstm``: ``sb3_contrib.RecurrentPPO`` with rl-zoo's CartPoleNoVel-v1 settings, 100k steps (rl-zoo's budget).

Measured: the return of the deterministic policy on a separate evaluation environment (its
``VecNormalize`` observation statistics copied from the training env, rewards not normalised; LSTM
states carried and reset by ``evaluate_policy``), ``--eval-episodes`` episodes every ``--eval-every``
steps and ``--final-eval-episodes`` at the end; the wall and CPU time of ``learn()`` and of the
updates (``train()``) inside it.

    python benchmarks/recurrent.py                         # 3 seeds x 3 agents, about an hour on one core
    python benchmarks/recurrent.py --report-only           # rebuild the table and plot from the JSON

writes ``results/recurrent.json`` (every run), ``results/recurrent.md`` (the table) and
``results/recurrent_CartPoleNoVel-v1.png`` (the curves).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    DEFAULT_RESULTS_DIR,
    finish_return_plot,
    format_number,
    git_commit,
    mean_std,
    run_worker,
    set_single_thread,
    versions,
    write_json,
    write_text,
)
from hyperparams import TRPO_HYPERPARAMS, linear_schedule, make_training_env

ENV_ID = "CartPoleNoVel-v1"
TARGET_RETURN = 400.0  # the target within 150k steps
EVAL_SEED_OFFSET = 10_000


def _lstm_policy_kwargs() -> dict[str, Any]:
    """rl-zoo's LSTM network for the NoVel tasks (ppo_lstm.yml): one 64-unit LSTM each for actor and critic."""
    from torch import nn

    return {
        "ortho_init": False,
        "activation_fn": nn.ReLU,
        "lstm_hidden_size": 64,
        "enable_critic_lstm": True,
        "net_arch": {"pi": [64], "vf": [64]},
    }


# Laid out like rl-zoo entries: n_envs, n_timesteps, normalize and policy set the run up, the rest goes to the constructor.
HYPERPARAMS: dict[str, dict[str, Any]] = {
    "trpo_lstm": {
        "class": "sb3_trpo:RecurrentTRPO",
        "normalize": True,
        "n_envs": 8,
        "n_timesteps": 150_000,
        "policy": "MlpLstmPolicy",
        "n_steps": 128,
        "batch_size": 256,
        "gamma": 0.98,
        "gae_lambda": 0.9,
        "target_kl": 0.02,
        "cg_damping": 0.01,
        "n_critic_updates": 10,
        "learning_rate": 1e-3,
        "policy_kwargs": "lstm",
    },
    "trpo": {  # rl-zoo's trpo.yml, CartPole-v1, with the recurrent runs' normalisation and budget
        **TRPO_HYPERPARAMS["CartPole-v1"],
        "class": "sb3_trpo:TRPO",
        "normalize": True,
        "n_timesteps": 150_000,
    },
    "ppo_lstm": {  # rl-zoo's ppo_lstm.yml, CartPoleNoVel-v1
        "class": "sb3_contrib:RecurrentPPO",
        "normalize": True,
        "n_envs": 8,
        "n_timesteps": 100_000,
        "policy": "MlpLstmPolicy",
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
        "policy_kwargs": "lstm",
    },
}
LABELS = {"trpo_lstm": "RecurrentTRPO (ours)", "trpo": "TRPO, feed-forward (ours)", "ppo_lstm": "sb3-contrib RecurrentPPO"}
COLORS = {"trpo_lstm": "tab:blue", "trpo": "tab:gray", "ppo_lstm": "tab:green"}
RUN_KEYS = ("class", "normalize", "n_envs", "n_timesteps", "policy")


def constructor_kwargs(algo: str) -> dict[str, Any]:
    """The table entry's constructor arguments, with rl-zoo's ``lin_<x>`` and the LSTM network resolved."""
    kwargs: dict[str, Any] = {}
    for key, value in HYPERPARAMS[algo].items():
        if key in RUN_KEYS:
            continue
        if isinstance(value, str) and value.startswith("lin_"):
            value = linear_schedule(float(value[4:]))
        elif key == "policy_kwargs" and value == "lstm":
            value = _lstm_policy_kwargs()
        kwargs[key] = value
    return kwargs


# ---------------------------------------------------------------------- one run (worker side)


def train_and_evaluate(
    algo: str, seed: int, n_timesteps: int | None, eval_every: int, eval_episodes: int, final_eval_episodes: int
) -> dict[str, Any]:
    """Train ``algo`` on CartPoleNoVel-v1 and evaluate it along the way; a JSON-friendly result."""
    import importlib

    import rl_zoo3.import_envs  # noqa: F401  (registers the NoVel environments)
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

    entry = HYPERPARAMS[algo]
    n_timesteps = int(entry["n_timesteps"]) if n_timesteps is None else n_timesteps
    kwargs = constructor_kwargs(algo)
    env = make_training_env(ENV_ID, int(entry["n_envs"]), seed, bool(entry["normalize"]), float(kwargs.get("gamma", 0.99)))
    module, name = str(entry["class"]).split(":")
    model = getattr(importlib.import_module(module), name)(entry["policy"], env, seed=seed, device="cpu", **kwargs)

    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=seed + EVAL_SEED_OFFSET)
    if entry["normalize"]:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)

    eval_time = {"wall": 0.0, "cpu": 0.0}

    def evaluate(n_episodes: int) -> list[float]:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        if entry["normalize"]:
            sync_envs_normalization(env, eval_env)
        eval_env.seed(seed + EVAL_SEED_OFFSET)  # the same initial states at every evaluation
        returns, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=n_episodes, deterministic=True, return_episode_rewards=True
        )
        eval_time["wall"] += time.perf_counter() - start_wall
        eval_time["cpu"] += time.process_time() - start_cpu
        return [float(value) for value in returns]

    # Evaluate between updates, at the start of the first rollout after each multiple of eval_every steps.
    curve: list[tuple[int, float]] = []

    class PeriodicEvaluation(BaseCallback):
        next_eval = 0

        def _on_rollout_start(self) -> None:
            if self.num_timesteps >= self.next_eval:
                curve.append((int(self.num_timesteps), float(np.mean(evaluate(eval_episodes)))))
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += eval_every

        def _on_step(self) -> bool:
            return True

    # Time the updates: the wall and CPU time of every train() call.
    train_time = {"wall": 0.0, "cpu": 0.0}
    train = model.train

    def timed_train() -> None:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        train()
        train_time["wall"] += time.perf_counter() - start_wall
        train_time["cpu"] += time.process_time() - start_cpu

    model.train = timed_train  # type: ignore[method-assign]
    callback = PeriodicEvaluation()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    model.learn(n_timesteps, callback=callback)
    learn_wall, learn_cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    # The evaluations ran inside learn(): their time is not the algorithm's.
    learn_wall -= eval_time["wall"]
    learn_cpu -= eval_time["cpu"]
    final_returns = evaluate(final_eval_episodes)
    curve.append((int(model.num_timesteps), float(np.mean(final_returns))))
    return {
        "algo": algo,
        "seed": seed,
        "n_timesteps": int(model.num_timesteps),
        "settings": {key: str(value) for key, value in HYPERPARAMS[algo].items()},
        "eval_timesteps": [point[0] for point in curve],
        "eval_mean": [point[1] for point in curve],
        "final_returns": final_returns,
        "final_mean": float(np.mean(final_returns)),
        "learn_wall_s": learn_wall,
        "learn_cpu_s": learn_cpu,
        "train_wall_s": train_time["wall"],
        "train_cpu_s": train_time["cpu"],
    }


# ---------------------------------------------------------------------- the table and the plot


def first_reaching(run: dict[str, Any], target: float) -> int | None:
    """The first evaluation point (steps) whose mean return is at least ``target``; None if none is."""
    for steps, value in zip(run["eval_timesteps"], run["eval_mean"], strict=True):
        if value >= target:
            return int(steps)
    return None


def markdown_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        f"| Agent | Steps | Final return (mean ± std) | Per seed | Steps to ≥ {TARGET_RETURN:g} (per seed) | "
        "learn() wall time (s) | CPU time (s) | of which updates | CPU ms per 1k steps |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for algo in HYPERPARAMS:
        mine = sorted((run for run in runs if run["algo"] == algo), key=lambda run: run["seed"])
        if not mine:
            continue
        mean, std = mean_std([run["final_mean"] for run in mine])
        per_seed = ", ".join(format_number(run["final_mean"]) for run in mine)
        reached = [first_reaching(run, TARGET_RETURN) for run in mine]
        reached_text = ", ".join("never" if steps is None else f"{steps / 1000:.0f}k" for steps in reached)
        wall, cpu = mean_std([run["learn_wall_s"] for run in mine])[0], mean_std([run["learn_cpu_s"] for run in mine])[0]
        train_share = np.mean([run["train_cpu_s"] / run["learn_cpu_s"] for run in mine])
        per_1k = np.mean([1000 * run["learn_cpu_s"] / run["n_timesteps"] * 1000 for run in mine])
        lines.append(
            f"| {LABELS[algo]} | {mine[0]['n_timesteps']:,} | {format_number(mean)} ± {format_number(std)} | {per_seed} | "
            f"{reached_text} | {wall:.0f} | {cpu:.0f} | {100 * train_share:.0f}% | {per_1k:.0f} |"
        )
    return "\n".join(lines) + "\n"


def summary(runs: list[dict[str, Any]]) -> str:
    """How close RecurrentTRPO comes to the target and to RecurrentPPO, and at what cost, in a few sentences."""
    by_algo = {algo: [run for run in runs if run["algo"] == algo] for algo in HYPERPARAMS}
    sentences = []
    for algo, mine in by_algo.items():
        if not mine:
            continue
        mean, std = mean_std([run["final_mean"] for run in mine])
        at_target = sum(run["final_mean"] >= TARGET_RETURN for run in mine)
        reached = [steps for steps in (first_reaching(run, TARGET_RETURN) for run in mine) if steps is not None]
        reach = f"an evaluation reached {TARGET_RETURN:g} on {len(reached)} of {len(mine)} seeds" + (
            f" (first at {np.median(reached) / 1000:.0f}k steps, median over those seeds)" if reached else ""
        )
        sentences.append(
            f"{LABELS[algo]}: final return {mean:.1f} ± {std:.1f} after {mine[0]['n_timesteps'] / 1000:.0f}k steps, "
            f"at least {TARGET_RETURN:g} on {at_target} of {len(mine)} seeds; {reach}."
        )
    ours, ppo = by_algo["trpo_lstm"], by_algo["ppo_lstm"]
    if ours and ppo:
        cpu_ours, cpu_ppo = np.mean([run["learn_cpu_s"] for run in ours]), np.mean([run["learn_cpu_s"] for run in ppo])
        per_step = (cpu_ours / np.mean([run["n_timesteps"] for run in ours])) / (
            cpu_ppo / np.mean([run["n_timesteps"] for run in ppo])
        )
        sentences.append(
            f"Cost: a RecurrentTRPO run took {cpu_ours:.0f} s of CPU time against {cpu_ppo:.0f} s for RecurrentPPO's, "
            f"{cpu_ours / cpu_ppo:.1f}× as long ({per_step:.1f}× per environment step)."
        )
    return " ".join(sentences)


def markdown_report(data: dict[str, Any]) -> str:
    runs = data["runs"]
    settings = []
    for algo in HYPERPARAMS:
        mine = [run for run in runs if run["algo"] == algo]
        if mine:
            described = ", ".join(f"{key}={value}" for key, value in mine[0]["settings"].items() if key != "class")
            settings.append(f"- {LABELS[algo]} (`{mine[0]['settings']['class']}`): {described}")
    version_text = ", ".join(f"{name} {version}" for name, version in data["versions"].items())
    return "\n".join(
        [
            f"# Recurrent TRPO on {ENV_ID}",
            "",
            "Generated by `benchmarks/recurrent.py`; do not edit by hand.",
            "",
            markdown_table(runs),
            summary(runs),
            "",
            f"Final return: {data['final_eval_episodes']} episodes of the deterministic policy at the end of training, "
            f"mean per seed, then mean ± std over seeds. Steps to ≥ {TARGET_RETURN:g}: the first evaluation "
            f"({data['eval_episodes']} episodes, every {data['eval_every']:,} steps) whose mean return reaches it. "
            "Times are per run, mean over seeds, one torch thread, on a machine shared with other jobs: the CPU "
            "time is the steadier measure. *Of which updates*: the share of the CPU time spent in `train()`; the "
            "rest is collecting rollouts.",
            "",
            "Settings (`lstm` is rl-zoo's LSTM network of the NoVel tasks: `ortho_init=False, activation_fn=ReLU, "
            "lstm_hidden_size=64, enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])`):",
            "",
            *settings,
            "",
            f"Versions: {version_text}. Commit: {data.get('commit')}.",
            "",
        ]
    )


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for algo in HYPERPARAMS:
        mine = [run for run in runs if run["algo"] == algo]
        if not mine:
            continue
        timesteps = np.asarray(mine[0]["eval_timesteps"], dtype=float)
        curves = np.array([np.interp(timesteps, run["eval_timesteps"], run["eval_mean"]) for run in mine])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        axes.plot(timesteps, mean, label=f"{LABELS[algo]} ({len(mine)} seeds)", color=COLORS[algo], lw=2)
        axes.fill_between(timesteps, mean - std, mean + std, color=COLORS[algo], alpha=0.2, lw=0)
    axes.axhline(TARGET_RETURN, color="black", linestyle="--", lw=1, label=f"target {TARGET_RETURN:g}")
    finish_return_plot(figure, axes, f"{ENV_ID}: deterministic evaluation return, mean ± std over seeds", path)
    plt.close(figure)


def write_reports(data: dict[str, Any], out: Path) -> None:
    write_json(out / "recurrent.json", data)
    write_text(out / "recurrent.md", markdown_report(data))
    plot(data["runs"], out / f"recurrent_{ENV_ID}.png")


# ---------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(HYPERPARAMS), choices=list(HYPERPARAMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps for every agent (default: its entry's)")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--final-eval-episodes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--report-only", action="store_true", help="train nothing: rebuild from <out>/recurrent.json")
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_output is not None:  # one run, in this fresh process
        set_single_thread()
        result = train_and_evaluate(
            args.algos[0], args.seeds[0], args.steps, args.eval_every, args.eval_episodes, args.final_eval_episodes
        )
        write_json(args.worker_output, result)
        return

    if args.report_only:
        data = json.loads((args.out / "recurrent.json").read_text(encoding="utf-8"))
    else:
        runs = []
        for seed in args.seeds:
            for algo in args.algos:  # one at a time: the machine is shared, and runs must not compete
                worker_args = [
                    *("--algos", algo, "--seeds", str(seed), "--eval-every", str(args.eval_every)),
                    *("--eval-episodes", str(args.eval_episodes), "--final-eval-episodes", str(args.final_eval_episodes)),
                    *(("--steps", str(args.steps)) if args.steps is not None else ()),
                ]
                print(f"{algo} seed {seed} ...", end=" ", flush=True)
                run = run_worker(Path(__file__), worker_args)
                print(f"final {run['final_mean']:.1f}, learn() {run['learn_wall_s']:.0f} s", flush=True)
                runs.append(run)
        data = {
            "env": ENV_ID,
            "eval_every": args.eval_every,
            "eval_episodes": args.eval_episodes,
            "final_eval_episodes": args.final_eval_episodes,
            "versions": versions(),
            "commit": git_commit(),
            "runs": runs,
        }
    write_reports(data, args.out)
    print(markdown_table(data["runs"]))


if __name__ == "__main__":
    main()
