"""Penalty vs constraint: β and the KL of every update, TRPOPenalty beside the constrained TRPO.

Runs ``sb3_trpo.TRPO`` and ``sb3_trpo.TRPOPenalty`` (natural and first-order) with the same
hyperparameters and seeds, one process at a time, records the KL(π_old ‖ π_new) of each update
and β after it, evaluates the final policies, and writes::

    results/penalty.json   per run: KL and β per update, final deterministic return
    results/penalty.md     final return and median KL / target once β has settled (second half)
    results/penalty_<env>.png

Usage: ``python benchmarks/penalty.py [--env CartPole-v1] [--seeds 0 1 2] [--timesteps N]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
VARIANTS = {
    "TRPO": {},
    "TRPOPenalty (natural)": {"policy_optimizer": "natural"},
    "TRPOPenalty (first_order)": {"policy_optimizer": "first_order"},
}


def run_one(env_id: str, variant: str, seed: int, timesteps: int | None) -> dict[str, Any]:
    """Train one model in this process and return its per-update trace."""
    import torch as th
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_trpo import TRPO, TRPOPenalty
    from sb3_trpo.demo import DEFAULT_TASKS

    th.set_num_threads(1)
    task = DEFAULT_TASKS[env_id]
    cls = TRPO if variant == "TRPO" else TRPOPenalty
    model = cls(
        "MlpPolicy", make_vec_env(env_id, n_envs=task["n_envs"], seed=seed), seed=seed, **task["kwargs"], **VARIANTS[variant]
    )
    trace: dict[str, list[float]] = {"kl": [], "beta": [], "timesteps": []}
    log_update = model._log_update

    def record(stats: Any, value_losses: list[float]) -> None:
        log_update(stats, value_losses)
        trace["kl"].append(stats.kl(model.kl_constraint))
        trace["beta"].append(getattr(model, "beta", float("nan")))
        trace["timesteps"].append(model.num_timesteps)

    model._log_update = record  # type: ignore[method-assign]
    model.learn(timesteps or task["timesteps"])
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True, return_episode_rewards=True)
    return {
        "env": env_id,
        "variant": variant,
        "seed": seed,
        "target_kl": model.target_kl,
        "final_return": float(np.mean(returns)),
        **trace,
    }


def settled_median_kl(run: dict[str, Any]) -> float:
    """Median KL over the second half of the updates, once β has had time to settle."""
    kl = np.asarray(run["kl"])
    return float(np.median(kl[len(kl) // 2 :]))


def plot(runs: list[dict[str, Any]], env_id: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_beta) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    colors = dict(zip(VARIANTS, ["tab:blue", "tab:orange", "tab:green"], strict=True))
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        for i, run in enumerate(mine):
            label = variant if i == 0 else None
            ax_kl.plot(run["timesteps"], run["kl"], color=colors[variant], alpha=0.6, linewidth=1, label=label)
            if variant != "TRPO":
                ax_beta.plot(run["timesteps"], run["beta"], color=colors[variant], alpha=0.7, label=label)
    target = runs[0]["target_kl"]
    ax_kl.axhline(target, color="black", linestyle="--", label="target_kl")
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("KL(π_old ‖ π_new) of the update")
    ax_kl.legend(fontsize=8)
    ax_kl.set_title(f"{env_id}: KL per update, constraint vs adaptive penalty ({len(runs) // len(VARIANTS)} seeds)")
    ax_beta.set_yscale("log")
    ax_beta.set_ylabel("β after the update")
    ax_beta.set_xlabel("timesteps")
    ax_beta.legend(fontsize=8)
    for ax in (ax_kl, ax_beta):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| env | algorithm | final return (mean ± std over seeds) | median KL / target_kl, second half (per seed) |",
        "|---|---|---|---|",
    ]
    for env_id in sorted({r["env"] for r in runs}):
        for variant in VARIANTS:
            mine = [r for r in runs if r["env"] == env_id and r["variant"] == variant]
            if not mine:
                continue
            returns = [r["final_return"] for r in mine]
            ratios = ", ".join(f"{settled_median_kl(r) / r['target_kl']:.2f}" for r in mine)
            lines.append(f"| {env_id} | {variant} | {np.mean(returns):.1f} ± {np.std(returns):.1f} | {ratios} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "SEED", "OUTFILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # one training run, in its own process
        variant, seed, outfile = args.worker
        Path(outfile).write_text(json.dumps(run_one(args.env, variant, int(seed), args.timesteps)))
        return

    runs = []
    scratch = Path(tempfile.mkdtemp(prefix="penalty_"))
    for seed in args.seeds:
        for variant in VARIANTS:  # one at a time: the machine is shared, and runs must not compete
            outfile = scratch / f"{len(runs)}.json"
            command = [sys.executable, __file__, "--env", args.env, "--worker", variant, str(seed), str(outfile)]
            if args.timesteps:
                command += ["--timesteps", str(args.timesteps)]
            subprocess.run(command, check=True)
            runs.append(json.loads(outfile.read_text()))
            outfile.unlink()
            print(
                f"{variant} seed {seed}: return {runs[-1]['final_return']:.1f}, settled median KL "
                f"{settled_median_kl(runs[-1]):.4f}",
                flush=True,
            )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "penalty.json").write_text(json.dumps(runs, indent=1) + "\n")
    (args.out / "penalty.md").write_text(table(runs))
    plot(runs, args.env, args.out / f"penalty_{args.env}.png")
    print(table(runs))


if __name__ == "__main__":
    main()
