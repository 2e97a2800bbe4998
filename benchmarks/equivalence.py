"""Update for update: our TRPO against sb3-contrib's on the same rollouts, from the same state.

sb3-contrib's TRPO collects the rollouts and trains as usual. Before each of its updates, the
state it starts from (policy, optimizer, rollout buffer, NumPy's random state for the critic's
minibatches) is copied into our TRPO, which then runs its own ``train()`` on it. After both have
updated, the script reports the relative difference of the two updates,
``‖Δ_ours − Δ_contrib‖ / ‖Δ_contrib‖``, for the actor and for the critic, and the ratio of their
lengths. Both use rl-zoo's settings from ``hyperparams.py`` (ours with
``kl_action_reduction="mean"`` on MuJoCo, sb3-contrib's trust region). Differences at float32
rounding mean that the two algorithms take the same steps, so any difference in returns comes from
the rollouts or from chance.

    python benchmarks/equivalence.py --env HalfCheetah-v5 --seed 1 --updates 15
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch as th
from common import set_single_thread
from hyperparams import make_model
from stable_baselines3.common.logger import Logger


def relative_difference(ours: th.Tensor, reference: th.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--updates", type=int, default=15)
    args = parser.parse_args()
    set_single_thread()

    contrib = make_model("sb3_contrib", args.env, args.seed)
    ours = make_model("sb3_trpo", args.env, args.seed)
    ours.set_logger(Logger(None, []))
    contrib_train = contrib.train
    rows: list[tuple[float, float, float]] = []

    def train_both() -> None:
        start = copy.deepcopy(contrib.policy.state_dict())
        optimizer = copy.deepcopy(contrib.policy.optimizer.state_dict())
        buffer = copy.deepcopy(contrib.rollout_buffer)
        numpy_state = np.random.get_state()
        contrib_train()
        ours.policy.load_state_dict(start)
        ours.policy.optimizer.load_state_dict(optimizer)
        ours.rollout_buffer = buffer
        np.random.set_state(numpy_state)  # the critic's minibatches: the same permutations
        ours.train()

        def update(model, names: list[str]) -> th.Tensor:
            state = model.policy.state_dict()
            return th.cat([(state[name] - start[name]).flatten() for name in names])

        actor = [name for name in start if "value" not in name]
        critic = [name for name in start if "value" in name]
        actor_ours, actor_contrib = update(ours, actor), update(contrib, actor)
        rows.append(
            (
                relative_difference(actor_ours, actor_contrib),
                float(actor_ours.norm() / actor_contrib.norm()),
                relative_difference(update(ours, critic), update(contrib, critic)),
            )
        )

    contrib.train = train_both  # type: ignore[method-assign]
    n_envs = contrib.get_env().num_envs
    contrib.learn(args.updates * contrib.n_steps * n_envs)

    print(f"{args.env}, seed {args.seed}: ours vs sb3-contrib on the same rollouts, update by update")
    print("| update | actor: relative difference | actor: length ratio | critic: relative difference |")
    print("|---:|---:|---:|---:|")
    for index, (actor_difference, ratio, critic_difference) in enumerate(rows):
        print(f"| {index} | {actor_difference:.2e} | {ratio:.5f} | {critic_difference:.2e} |")


if __name__ == "__main__":
    main()
