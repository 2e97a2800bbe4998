"""Faults injected at random points of ``learn()``: afterwards the model is finite, saves, loads and trains on.

An exception is raised at a point drawn at random (seeded) inside the rollout (an environment's
``step``), the policy step (a Fisher-vector product of conjugate gradient), the line search (a
candidate's evaluation), the critic fit (a minibatch) or a save made by a callback (a write inside the
zip). After it, the parameters are finite, the model saves and loads with the same parameters and
counters, the counters say what was done (``num_timesteps``: the environment steps that returned;
``_n_updates``: the ``train()`` calls that returned), and training resumes from there, counting on.
"""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common import save_util
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.vec_env import DummyVecEnv

import sb3_trpo.accel.critic as flat_critic
import sb3_trpo.trpo.trpo as trpo_module
from sb3_trpo import TRPO, TRPOPenalty

N_STEPS, N_ENVS = 64, 2
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}}
REFERENCE = {"actor_method": "torch", "critic_method": "torch", "rollout_method": "sb3"}


class InjectedFault(Exception):
    """The error injected; never raised by the library."""


class Countdown:
    """Raises :class:`InjectedFault` on the ``at``-th call of :meth:`tick` (1-based), counting them all."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise InjectedFault(f"injected at call {self.at}")

    def wrap(self, function):
        def wrapped(*args, **kwargs):
            self.tick()
            return function(*args, **kwargs)

        return wrapped


class StepCounter(gym.Wrapper):
    """Counts the steps that returned; the fault's countdown, if any, ticks before each step."""

    def __init__(self, env: gym.Env, countdown: Countdown | None = None):
        super().__init__(env)
        self.countdown, self.n_steps = countdown, 0

    def step(self, action):
        if self.countdown is not None:
            self.countdown.tick()
        result = self.env.step(action)
        self.n_steps += 1
        return result


class SaveEachRollout(BaseCallback):
    """Saves the model over the same file at the end of every rollout, as a checkpointing user would."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.save(self.path)


# point -> the range the fault's call number is drawn from (every point is reached at least that often in learn())
POINTS = {"rollout": (1, 3 * N_STEPS), "policy step": (1, 8), "line search": (1, 4), "critic fit": (1, 24), "save": (1, 9)}


def inject(point: str, countdown: Countdown, model: TRPO, monkeypatch) -> None:
    if point == "policy step":  # a Fisher-vector product inside conjugate gradient (or the curvature after it)
        conjugate_gradient = trpo_module.conjugate_gradient
        monkeypatch.setattr(
            trpo_module, "conjugate_gradient", lambda mvp, *args: conjugate_gradient(countdown.wrap(mvp), *args)
        )
    elif point == "line search":  # a candidate's evaluation
        search = trpo_module.backtracking_line_search

        def line_search(params, full_step, evaluate, *args):
            return search(params, full_step, countdown.wrap(evaluate), *args)

        monkeypatch.setattr(trpo_module, "backtracking_line_search", line_search)
    elif point == "critic fit" and model.backends.critic.name == "flat":  # a minibatch of the flat fit
        minibatches = flat_critic.rollout_minibatches

        def failing_minibatches(*args):
            for minibatch in minibatches(*args):
                countdown.tick()
                yield minibatch

        monkeypatch.setattr(flat_critic, "rollout_minibatches", failing_minibatches)
    elif point == "critic fit":  # a minibatch's loss in the autograd fit
        monkeypatch.setattr(model.backends.critic, "value_loss", countdown.wrap(model.backends.critic.value_loss))
    elif point == "save":  # a write inside the zip
        monkeypatch.setattr(save_util.th, "save", countdown.wrap(th.save))


def make_env(countdown: Countdown | None = None) -> tuple[DummyVecEnv, StepCounter]:
    """Two environments; the fault (if any) in the first, the count of completed steps from the last."""
    first = StepCounter(IdentityEnvBox(ep_length=20), countdown)
    last = StepCounter(IdentityEnvBox(ep_length=20))
    return DummyVecEnv([lambda: first, lambda: last]), last


def assert_finite(model) -> None:
    for name, param in model.policy.named_parameters():
        assert th.isfinite(param).all(), name


def state(model) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


CASES = [(TRPO, point, backends, seed) for seed, point in enumerate(POINTS) for backends in ("default", "reference")] + [
    (TRPOPenalty, "line search", "default", 7),
    (TRPOPenalty, "critic fit", "reference", 8),
]


@pytest.mark.parametrize(
    ("algo_class", "point", "backends", "seed"),
    CASES,
    ids=[f"{c.__name__}-{p.replace(' ', '-')}-{b}" for c, p, b, _ in CASES],
)
def test_a_fault_anywhere_in_learn_leaves_a_model_that_saves_loads_and_resumes(
    algo_class, point, backends, seed, tmp_path, monkeypatch
):
    low, high = POINTS[point]
    countdown = Countdown(random.Random(seed).randint(low, high))
    env, last = make_env(countdown if point == "rollout" else None)
    model = algo_class("MlpPolicy", env, seed=seed, **SMALL, **(REFERENCE if backends == "reference" else {}))
    completed = [0]
    train = model.train

    def counted_train() -> None:
        train()
        completed[0] += 1

    model.train = counted_train
    inject(point, countdown, model, monkeypatch)
    checkpoint = tmp_path / "checkpoint.zip"

    with pytest.raises(InjectedFault):
        model.learn(4 * N_STEPS * N_ENVS, callback=SaveEachRollout(checkpoint))
    monkeypatch.undo()
    del model.train

    assert_finite(model)
    assert model.num_timesteps == N_ENVS * last.n_steps
    assert model._n_updates == completed[0]
    if checkpoint.exists():  # the last complete checkpoint, whatever the fault interrupted
        assert_finite(algo_class.load(checkpoint))

    model.save(tmp_path / "after_fault.zip")
    loaded = algo_class.load(tmp_path / "after_fault.zip", env=make_env()[0])
    saved = state(model)
    for name, value in state(loaded).items():
        assert th.equal(value, saved[name]), name
    assert (loaded.num_timesteps, loaded._n_updates) == (model.num_timesteps, model._n_updates)

    for resumed in (model, loaded):
        timesteps, updates = resumed.num_timesteps, resumed._n_updates
        resumed.learn(2 * N_STEPS * N_ENVS, reset_num_timesteps=False)
        assert resumed.num_timesteps == timesteps + 2 * N_STEPS * N_ENVS
        assert resumed._n_updates == updates + 2
        assert_finite(resumed)
