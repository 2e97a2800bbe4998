"""Micro-benchmark: one TRPO critic fit, the autograd loop against the flat-buffer fast path.

One update fits the critic for ``--epochs`` passes over a rollout buffer of ``--transitions`` in
minibatches of ``--batch-size`` (Adam, SB3's ``eps=1e-5``). Timed, per repeat:

- ``autograd``: the loop of ``TRPO._fit_critic`` (``predict_values``, MSE, ``backward()``, actor grads
  set to None, ``torch.optim.Adam.step()``), minibatches drawn from ``rollout_buffer.get()``;
- ``fast``: :func:`sb3_trpo.accel.critic.fast_critic_fit` on the same minibatches, including its
  support checks, the copies into and out of the flat buffers and the write-back of the Adam state;
- ``fast-indexed``: the same, with the minibatches cut by :func:`sb3_trpo.accel.critic.rollout_minibatches`
  (the same minibatches as ``get()``, without its per-minibatch copies of six arrays);
- ``autograd-ready`` / ``fast-ready``: ``autograd`` and ``fast`` on minibatches drawn beforehand, which
  leaves out the sampling and shows the cost of the fit alone.

Defaults are HalfCheetah's sizes: observations 17, actions 6, SB3's default MlpPolicy (64-64 tanh),
2048 transitions, minibatches of 128, 20 epochs (320 Adam steps), one torch thread. The variants
alternate within each repeat, each on its own copy of the policy; times are medians over repeats and
the ratio is autograd / fast (> 1: faster than autograd). Before timing, one update from the same
state by each path must agree.

    python benchmarks/critic_speed.py [--net-arch 256 256] [--batch-size 64] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo.accel.critic import fast_critic_fit, fast_critic_fit_unsupported, rollout_minibatches

Minibatches = Iterable[tuple[th.Tensor, th.Tensor]]


def autograd_fit(policy: ActorCriticPolicy, minibatches: Minibatches) -> list[float]:
    """The loop of ``TRPO._fit_critic``."""
    actor_params = [
        p for name, p in policy.named_parameters() if not name.startswith(("mlp_extractor.value_net.", "value_net."))
    ]
    value_losses = []
    for observations, returns in minibatches:
        values = policy.predict_values(observations).flatten()
        value_loss = (returns - values).pow(2).mean()
        if not th.isfinite(value_loss):
            continue
        policy.optimizer.zero_grad()
        value_loss.backward()
        for param in actor_params:
            param.grad = None
        policy.optimizer.step()
        value_losses.append(value_loss.item())
    return value_losses


def fast_fit(policy: ActorCriticPolicy, minibatches: Minibatches) -> list[float]:
    result = fast_critic_fit(policy, policy.optimizer, minibatches)
    assert result is not None
    return result.losses


def filled_buffer(policy: ActorCriticPolicy, n_transitions: int) -> RolloutBuffer:
    """A rollout buffer of random transitions, with the policy's values and GAE returns."""
    rng = np.random.default_rng(0)
    buffer = RolloutBuffer(n_transitions, policy.observation_space, policy.action_space, n_envs=1)
    obs_dim = policy.observation_space.shape[0]  # type: ignore[index]
    action_dim = policy.action_space.shape[0]  # type: ignore[index]
    for _ in range(n_transitions):
        obs = rng.normal(size=(1, obs_dim)).astype(np.float32)
        with th.no_grad():
            values = policy.predict_values(th.as_tensor(obs))
        buffer.add(
            obs,
            rng.normal(size=(1, action_dim)).astype(np.float32),
            rng.normal(size=1).astype(np.float32),
            rng.random(1) < 0.01,
            values,
            th.as_tensor(rng.normal(size=1).astype(np.float32)),
        )
    buffer.compute_returns_and_advantage(th.zeros(1), np.zeros(1, dtype=bool))
    return buffer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20, help="n_critic_updates")
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--net-arch", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    th.set_num_threads(1)
    th.manual_seed(0)
    observation_space = spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)
    action_space = spaces.Box(-1.0, 1.0, (args.action_dim,), np.float32)
    policy = ActorCriticPolicy(observation_space, action_space, lambda _: 1e-3, net_arch=args.net_arch)
    assert fast_critic_fit_unsupported(policy, policy.optimizer) is None
    buffer = filled_buffer(policy, args.transitions)
    next(iter(buffer.get(batch_size=None)))  # flattened, as after TRPO's policy step

    def from_buffer() -> Minibatches:
        return ((data.observations, data.returns) for _ in range(args.epochs) for data in buffer.get(args.batch_size))

    def indexed() -> Minibatches:
        return rollout_minibatches(buffer, args.batch_size, args.epochs)

    # One update from the same state by each path: the same parameters and Adam state.
    reference, candidate = copy.deepcopy(policy), copy.deepcopy(policy)
    np.random.seed(1)
    autograd_fit(reference, from_buffer())
    np.random.seed(1)
    fast_fit(candidate, from_buffer())
    for (name, p), q in zip(reference.named_parameters(), candidate.parameters(), strict=True):
        th.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=f"the fast path disagrees with autograd on {name}")
    identical = all(th.equal(p, q) for p, q in zip(reference.parameters(), candidate.parameters(), strict=True))

    Fit = Callable[[ActorCriticPolicy, Minibatches], list[float]]
    variants: dict[str, tuple[Fit, Callable[[], Minibatches] | None]] = {
        "autograd": (autograd_fit, from_buffer),
        "fast": (fast_fit, from_buffer),
        "fast-indexed": (fast_fit, indexed),
        "autograd-ready": (autograd_fit, None),
        "fast-ready": (fast_fit, None),
    }
    policies = {name: copy.deepcopy(policy) for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        np.random.seed(100 + repeat)
        ready = list(from_buffer())
        for name, (fit, source) in variants.items():
            np.random.seed(100 + repeat)
            minibatches = ready if source is None else source()
            start = time.perf_counter()
            fit(policies[name], minibatches)
            times[name].append(time.perf_counter() - start)

    n_steps = args.epochs * -(-args.transitions // args.batch_size)
    print(
        f"{args.transitions} transitions, obs {args.obs_dim}, net_arch {args.net_arch} tanh, batch {args.batch_size}, "
        f"{args.epochs} epochs = {n_steps} Adam steps per update, {args.repeats} repeats, 1 thread, torch {th.__version__}"
    )
    print(f"one update from the same state: parameters {'bit-identical' if identical else 'equal to tolerance'}")
    print(f"{'variant':<16}{'update (ms)':>12}{'per step (µs)':>15}{'autograd / it':>15}")
    for name in variants:
        baseline = statistics.median(times["autograd-ready" if name.endswith("-ready") else "autograd"])
        median = statistics.median(times[name])
        print(f"{name:<16}{1e3 * median:>12.1f}{1e6 * median / n_steps:>15.1f}{baseline / median:>15.2f}")


if __name__ == "__main__":
    main()
