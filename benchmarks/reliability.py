"""Faults and bad input, tried on sb3_trpo and on sb3_contrib.TRPO side by side: what each one does.

Each scenario is a small function run twice, once with our algorithm and once with sb3-contrib's
(where it has a counterpart), on a tiny task (``IdentityEnvBox``, 64 steps per rollout, a few
updates). What happened is written down as it came out: the exception's type and the start of its
message, or what the model looks like afterwards (parameters finite or not, the older file loadable or
not, warnings). Nothing in the table is typed by hand.

    python benchmarks/reliability.py

prints the table and writes it to ``results/reliability.md`` (included in the documentation's
Reliability page). It takes about a minute on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import sb3_contrib
import torch as th
from common import DEFAULT_RESULTS_DIR, git_commit, set_single_thread, versions, write_text
from stable_baselines3 import PPO
from stable_baselines3.common import save_util
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.vec_env import SubprocVecEnv

import sb3_trpo
from sb3_trpo.common.workers import explain_worker_failures

N_STEPS = 64
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}, "seed": 0}
MESSAGE_LENGTH = 110

Outcome = Callable[[type], str]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Outcome  # called with the algorithm class: ours, then sb3-contrib's
    contrib: bool = True  # whether sb3_contrib.TRPO has a counterpart (TRPOPenalty's options have none)
    ours: type | None = None  # our class for this scenario, when not TRPO


# ---------------------------------------------------------------------------------------------- helpers


def box_env() -> gym.Env:
    return IdentityEnvBox(ep_length=20)


def make(algo_class: type, env: Any = None, **kwargs: Any) -> Any:
    return algo_class("MlpPolicy", env if env is not None else box_env(), **{**SMALL, **kwargs})


def finite(model: Any) -> bool:
    return all(bool(th.isfinite(param).all()) for param in model.policy.parameters())


def describe_parameters(model: Any) -> str:
    return "parameters finite" if finite(model) else "**parameters NaN/inf**"


def short(error: BaseException) -> str:
    message = " ".join(str(error).split())
    if len(message) > MESSAGE_LENGTH:
        message = message[: MESSAGE_LENGTH - 1] + "…"
    bases = [base.__name__ for base in type(error).__mro__[1:] if base in (ValueError, AssertionError, EOFError)]
    kind = type(error).__name__ + (
        f" (also {', '.join(bases)})" if type(error) not in (ValueError, EOFError) and bases else ""
    )
    return f"{kind}: {message}" if message else f"{kind} with an empty message"


def attempt(function: Callable[[], str]) -> str:
    """``function()``'s own summary, or the exception it raised; RuntimeWarnings it gave are appended."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = function()
        except Exception as error:  # what the user would see
            result = short(error)
    # Each warning up to its first ";" (ours: "<class>: <what> skipped (<why>)"), the same ones counted once.
    runtime = sorted(
        {" ".join(str(w.message).split(";")[0].split()) for w in caught if issubclass(w.category, RuntimeWarning)}
    )
    if runtime:
        result += f"; warned: {runtime[0]}" + (f" (and {len(runtime) - 1} more)" if len(runtime) > 1 else "")
    return result


def construct(**kwargs: Any) -> Outcome:
    def run(algo_class: type) -> str:
        make(algo_class, **kwargs)
        return "accepted"

    return run


# ---------------------------------------------------------------------------------------------- faults


class NanReward(gym.Wrapper):
    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps = getattr(self, "steps", 0) + 1
        return obs, (math.nan if self.steps == 10 else reward), terminated, truncated, info


class NanObservation(gym.Wrapper):
    """A NaN observation at step 70 (the second rollout); records whether a non-finite action came back."""

    bad_action = False

    def step(self, action: Any) -> Any:
        NanObservation.bad_action |= not np.isfinite(action).all()
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps = getattr(self, "steps", 0) + 1
        return (obs * np.nan if self.steps == 70 else obs), reward, terminated, truncated, info


def nan_reward(algo_class: type) -> str:
    model = make(algo_class, NanReward(box_env()))
    model.learn(2 * N_STEPS)
    return f"trained; {describe_parameters(model)}"


def nan_observation(algo_class: type) -> str:
    NanObservation.bad_action = False
    model = make(algo_class, NanObservation(box_env()))
    try:
        model.learn(4 * N_STEPS)
        outcome = f"trained; {describe_parameters(model)}"
    except Exception as error:
        outcome = short(error)
    return outcome + ("; **a non-finite action reached the environment**" if NanObservation.bad_action else "")


def interrupted_save(algo_class: type) -> str:
    model = make(algo_class)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.zip"
        model.save(path)
        original, calls = th.save, [0]

        def failing_save(*args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] == 2:
                raise OSError(28, "No space left on device")
            original(*args, **kwargs)

        save_util.th.save = failing_save
        try:
            model.save(path)
        except OSError:
            pass
        finally:
            save_util.th.save = original
        try:
            algo_class.load(path)
            return "OSError raised; the older file is intact and loads"
        except Exception as error:
            return f"OSError raised; **the older file is lost**: load() gives {short(error)}"


def long_step(**kwargs: Any) -> Outcome:
    def run(algo_class: type) -> str:
        model = make(algo_class, **kwargs)
        model.learn(4 * N_STEPS)
        return f"trained; {describe_parameters(model)}"

    return run


def schedule_turning_nan(algo_class: type) -> str:
    rate = [1e-3]
    model = make(algo_class, learning_rate=lambda _: rate[0])
    model.learn(N_STEPS)
    rate[0] = math.nan
    model.learn(2 * N_STEPS, reset_num_timesteps=False)
    return f"trained; {describe_parameters(model)}"


def load_other(save: Callable[[Path], None]) -> Outcome:
    def run(algo_class: type) -> str:
        with tempfile.TemporaryDirectory() as folder:
            cwd = os.getcwd()
            os.chdir(folder)  # a relative path: the messages are the same on every run
            try:
                save(Path("other.zip"))
                model = algo_class.load("other.zip", env=box_env())  # a refusal is the outcome
                try:
                    model.learn(N_STEPS)
                except Exception as error:
                    return f"loaded; learn() then fails: {short(error)}"
                return "loaded and trained"
            finally:
                os.chdir(cwd)

    return run


def ppo_zip(path: Path) -> None:
    PPO("MlpPolicy", box_env(), n_steps=N_STEPS, batch_size=32).save(path)


def recurrent_zip(path: Path) -> None:
    sb3_contrib.RecurrentPPO("MlpLstmPolicy", box_env(), n_steps=N_STEPS, batch_size=32).save(path)


class FailingEnv(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        raise RuntimeError("the simulator crashed")


def subprocess_worker(algo_class: type) -> str:
    """The environments as the zoo entry point (ours) or rl_zoo3 (sb3-contrib's) creates them with ``--vec-env subproc``."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    stderr = os.dup(2)
    os.dup2(devnull, 2)  # the worker's traceback
    try:
        env = SubprocVecEnv([FailingEnv], start_method="fork")
        model = algo_class("MlpPolicy", env, **SMALL)
        context = explain_worker_failures() if algo_class.__module__.startswith("sb3_trpo") else contextlib.nullcontext()
        with context:
            model.learn(N_STEPS)
        return "trained"
    finally:
        os.dup2(stderr, 2)
        os.close(devnull)
        os.close(stderr)


def first_order_huge_rate(algo_class: type) -> str:
    model = make(algo_class, policy_optimizer="first_order", policy_learning_rate=1e30)
    model.learn(2 * N_STEPS)
    return f"trained; {describe_parameters(model)}; {model.n_skipped_policy_updates} updates skipped"


def huge_beta(algo_class: type) -> str:
    model = make(algo_class, beta=1e10, beta_max=1e10, beta_factor=10.0)
    start = [p.detach().clone() for p in model.policy.action_net.parameters()]
    for update in range(1, 9):
        model.learn(N_STEPS, reset_num_timesteps=False)
        if any(not th.equal(a, b) for a, b in zip(start, model.policy.action_net.parameters(), strict=True)):
            return f"the actor moves again at update {update} (β = {model.beta:.3g})"
    return f"**the actor is still frozen after 8 updates** (β = {model.beta:.3g})"


SCENARIOS = [
    Scenario('`gamma="0.99"` (a string)', construct(gamma="0.99")),
    Scenario("`cg_damping=None`", construct(cg_damping=None)),
    Scenario("`gamma=1.5`", construct(gamma=1.5)),
    Scenario("`target_kl=nan`", construct(target_kl=math.nan)),
    Scenario('`normalize_advantage="no"` (a string)', construct(normalize_advantage="no")),
    Scenario("`stats_window_size=0`", construct(stats_window_size=0)),
    Scenario("`n_steps=1` with one environment and advantage normalisation", construct(n_steps=1, batch_size=1)),
    Scenario('`beta="1.0"` (TRPOPenalty)', construct(beta="1.0"), contrib=False, ours=sb3_trpo.TRPOPenalty),
    Scenario(
        "`policy_learning_rate=inf` (TRPOPenalty)",
        construct(policy_optimizer="first_order", policy_learning_rate=math.inf),
        contrib=False,
        ours=sb3_trpo.TRPOPenalty,
    ),
    Scenario("a NaN reward once", nan_reward),
    Scenario("a NaN observation once (step 70)", nan_observation),
    Scenario("a learning-rate schedule that turns NaN", schedule_turning_nan),
    Scenario("an error (disk full) while saving over an older model", interrupted_save),
    Scenario("`target_kl=1e6`: a step far too long for torch's distributions", long_step(target_kl=1e6)),
    Scenario(
        "TRPOPenalty's natural step at `beta=beta_min=1e-4`",
        long_step(beta=1e-4, beta_min=1e-4),
        contrib=False,
        ours=sb3_trpo.TRPOPenalty,
    ),
    Scenario(
        "TRPOPenalty from `beta=beta_max=1e10` (steps below float32's resolution)",
        huge_beta,
        contrib=False,
        ours=sb3_trpo.TRPOPenalty,
    ),
    Scenario(
        "TRPOPenalty's first-order step with `policy_learning_rate=1e30`",
        first_order_huge_rate,
        contrib=False,
        ours=sb3_trpo.TRPOPenalty,
    ),
    Scenario("`load()` of an SB3 PPO model", load_other(ppo_zip)),
    Scenario("`load()` of a RecurrentPPO (LSTM) model", load_other(recurrent_zip)),
    Scenario("a `SubprocVecEnv` worker's environment raises in `step()` (zoo entry point)", subprocess_worker),
]


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="results directory (default: %(default)s)")
    args = parser.parse_args()
    set_single_thread()

    rows = []
    start = time.perf_counter()
    for scenario in SCENARIOS:
        ours = attempt(lambda scenario=scenario: scenario.run(scenario.ours or sb3_trpo.TRPO))
        contrib = attempt(lambda scenario=scenario: scenario.run(sb3_contrib.TRPO)) if scenario.contrib else "(no counterpart)"
        rows.append(f"| {cell(scenario.name)} | {cell(ours)} | {cell(contrib)} |")
        print(f"{scenario.name}\n  sb3_trpo:    {ours}\n  sb3_contrib: {contrib}", flush=True)

    text = (
        "# Reliability: faults and bad input\n\n"
        "Generated by `python benchmarks/reliability.py`: each fault or bad input tried on `sb3_trpo` (`TRPO`, or\n"
        "`TRPOPenalty` where the row says so) and on `sb3_contrib.TRPO`, on `IdentityEnvBox` with 64 steps per rollout.\n"
        "Each cell is what happened: the exception and the start of its message, or the state of the model afterwards.\n\n"
        "| Fault or bad input | sb3_trpo | sb3_contrib.TRPO |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        + ", ".join(f"{name} {version}" for name, version in versions().items())
        + f". Commit: {git_commit()}. {time.perf_counter() - start:.0f} s.\n"
    )  # fmt: skip
    write_text(args.out / "reliability.md", text)
    print(f"wrote {args.out / 'reliability.md'}")


if __name__ == "__main__":
    main()
