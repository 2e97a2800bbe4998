"""``make demo``: train TRPO on a default task, evaluate it, save the model and a learning curve.

Run as ``python -m sb3_trpo.demo [--env CartPole-v1] [--timesteps 100000] [--output demo_output]``.
The default task is CartPole-v1 with the tuned TRPO hyperparameters of the package's zoo file
(``sb3_trpo/zoo/hyperparams/trpo.yml``, rl-zoo's); it needs no downloads and reaches the maximum
return of 500 in about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_trpo import TRPO

ZOO_FILE = Path(__file__).parent / "zoo" / "hyperparams" / "trpo.yml"
DEMO_ENVS = ("CartPole-v1", "Pendulum-v1")  # their entries need no VecNormalize, schedules or policy_kwargs


def zoo_settings(env_id: str) -> dict[str, Any]:
    """``env_id``'s entry of the zoo file: ``n_envs``, ``n_timesteps``, ``policy`` and the constructor arguments."""
    import yaml

    entry = dict(yaml.safe_load(ZOO_FILE.read_text(encoding="utf-8"))[env_id])
    if entry.get("normalize") or "policy_kwargs" in entry:
        raise ValueError(f"{env_id}: the demo reads plain entries only; run `python -m sb3_trpo.zoo train` for this task")
    return entry


class EpisodeReturns(BaseCallback):
    """Records (timestep, return) of every finished training episode, from the Monitor wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.timesteps: list[int] = []
        self.returns: list[float] = []

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "episode" in info:
                self.timesteps.append(self.num_timesteps)
                self.returns.append(float(info["episode"]["r"]))
        return True


def plot_learning_curve(timesteps: list[int], returns: list[float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(timesteps, returns, ".", alpha=0.25, label="episode return")
    window = max(1, len(returns) // 25)
    if len(returns) >= window:
        smoothed = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(timesteps[window - 1 :], smoothed, linewidth=2, label=f"moving average ({window} episodes)")
    ax.set_xlabel("timesteps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1", choices=DEMO_ENVS)
    parser.add_argument("--timesteps", type=int, default=None, help="default: the zoo file's n_timesteps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    args = parser.parse_args(argv)

    th.set_num_threads(1)
    kwargs = zoo_settings(args.env)
    n_envs, policy, n_timesteps = int(kwargs.pop("n_envs", 1)), kwargs.pop("policy"), int(kwargs.pop("n_timesteps"))
    timesteps = args.timesteps or n_timesteps
    args.output.mkdir(parents=True, exist_ok=True)

    env = make_vec_env(args.env, n_envs=n_envs, seed=args.seed)
    model = TRPO(policy, env, seed=args.seed, **kwargs)
    curve = EpisodeReturns()
    start = time.perf_counter()
    model.learn(timesteps, callback=curve)
    elapsed = time.perf_counter() - start

    eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 1000)
    episode_returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True, return_episode_rewards=True)
    mean_return, std_return = float(np.mean(episode_returns)), float(np.std(episode_returns))

    model_path = args.output / f"trpo_{args.env}"
    model.save(model_path)
    plot_path = args.output / f"learning_curve_{args.env}.png"
    plot_learning_curve(curve.timesteps, curve.returns, f"sb3_trpo.TRPO on {args.env} (seed {args.seed})", plot_path)

    summary = {
        "env": args.env,
        "timesteps": timesteps,
        "seed": args.seed,
        "train_seconds": round(elapsed, 1),
        "eval_mean_return": mean_return,
        "eval_std_return": std_return,
        "model": str(model_path) + ".zip",
        "learning_curve": str(plot_path),
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"Trained TRPO on {args.env} for {timesteps} steps in {elapsed:.0f} s; "
        f"deterministic evaluation over 20 episodes: {mean_return:.1f} ± {std_return:.1f}\n"
        f"Model: {summary['model']}\nLearning curve: {plot_path}"
    )
    return summary


if __name__ == "__main__":
    main()
