"""One rank of the asynchronous tests (``tests/test_asynchronous.py`` starts it with ``torchrun``).

    python -m torch.distributed.run --standalone --nproc-per-node N tests/async_worker.py MODE OUT_DIR

Rank 0 is the learner and writes what the test checks into ``OUT_DIR``; the other ranks are workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from launch import flat_parameters
from stable_baselines3.common.logger import configure

from sb3_trpo import TRPO, TRPOPenalty
from sb3_trpo.distributed.asynchronous import AsyncLearner

# Pendulum's episodes are truncated at 200 steps: the learner's bootstrap of truncated episodes is exercised.
sources: list[tuple[int, int]] = []  # (worker, incarnation) of every batch the learner received
SETTINGS = {"n_steps": 128, "batch_size": 64, "n_critic_updates": 3, "seed": 7, "target_kl": 0.02}


def record_updates(model: TRPO, out: Path, lags: list[int]) -> None:
    """After each of the learner's updates: its parameters; for every batch received: its lag and its source."""
    sources.clear()
    model.set_logger(configure(str(out), ["csv"]))  # progress.csv: what a user's logs show
    train = model.train

    def recorded_train() -> None:
        train()
        np.save(out / f"learner_update{model._n_updates - 1}.npy", flat_parameters(model))

    model.train = recorded_train  # type: ignore[method-assign]
    lag, next_batch = AsyncLearner.lag, AsyncLearner.next_batch  # each learn() makes a new learner: patch the class

    def recorded_lag(self: AsyncLearner, algorithm: TRPO, payload: dict) -> int:
        value = lag(self, algorithm, payload)
        lags.append(value)
        return value

    def recorded_next_batch(self: AsyncLearner) -> tuple[int, int, dict]:
        worker, index, payload = next_batch(self)
        sources.append((worker, payload["incarnation"]))
        return worker, index, payload

    AsyncLearner.lag = recorded_lag  # type: ignore[method-assign]
    AsyncLearner.next_batch = recorded_next_batch  # type: ignore[method-assign]


def learn_keeping_warnings(model: TRPO, steps: int, out: Path, rank: int) -> None:
    """``learn(steps)``; the learner writes what it warned of the workers into ``warnings.json``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(steps)
    if rank == 0:
        messages = [str(warning.message) for warning in caught if "async learner" in str(warning.message)]
        (out / "warnings.json").write_text(json.dumps(messages))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    th.set_num_threads(1)
    lags: list[int] = []
    if mode in ("lag_zero", "lag_zero_penalty"):  # workers wait for each update: synchronous TRPO's updates
        algorithm = TRPO if mode == "lag_zero" else TRPOPenalty
        model = algorithm("MlpPolicy", "Pendulum-v1", **SETTINGS, distributed="async", max_policy_lag=0)
        if rank == 0:
            np.save(out / "learner_initial.npy", flat_parameters(model))
            record_updates(model, out, lags)
        model.learn(4 * 128)
    elif mode == "drop":  # a slow learner: batches pile up and those too old are dropped
        model = TRPO("MlpPolicy", "Pendulum-v1", **SETTINGS, distributed="async", max_policy_lag=1)
        if rank == 0:
            record_updates(model, out, lags)
            train = model.train

            def slow_train() -> None:
                time.sleep(0.6)  # the worker collects 128 steps in far less
                train()

            model.train = slow_train  # type: ignore[method-assign]
        model.learn(40 * 128)
    elif mode == "kill":  # the worker's process is killed mid-run: its rank restarts it, the learner carries on
        model = TRPO("MlpPolicy", "Pendulum-v1", **SETTINGS, distributed="async", max_policy_lag=4)
        if rank == 0:
            record_updates(model, out, lags)
            train, killed = model.train, []

            def train_then_kill() -> None:
                train()
                if model._n_updates == 2 and not killed:
                    assert model._async is not None
                    pid = int(model._async.mailbox.store.get("pid/1"))
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            model.train = train_then_kill  # type: ignore[method-assign]
        learn_keeping_warnings(model, 10 * 128, out, rank)
    elif mode == "vecnormalize":  # the workers' VecNormalize moments reach the learner once each
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize

        class FinishedEpisodes(BaseCallback):  # what the learner's callbacks see of the workers' episodes
            def __init__(self) -> None:
                super().__init__()
                self.infos: list[dict] = []
                self.at_dones = True

            def _on_step(self) -> bool:
                for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
                    if info:
                        self.infos.append(info)
                        self.at_dones = self.at_dones and bool(done)
                return True

        env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=0.9)
        model = TRPO("MlpPolicy", env, **SETTINGS, gamma=0.9, distributed="async", max_policy_lag=0)
        finished = FinishedEpisodes()
        if rank == 0:
            record_updates(model, out, lags)
        model.learn(4 * 128, callback=finished)
        if rank == 0:
            (out / "statistics.json").write_text(
                json.dumps(
                    {
                        "obs_count": env.obs_rms.count,
                        "ret_count": env.ret_rms.count,
                        "obs_mean": env.obs_rms.mean.tolist(),
                        "episodes": [episode["r"] for episode in model.ep_info_buffer],
                        "callback_episodes": [info["episode"]["r"] for info in finished.infos],
                        "callback_truncated": [info.get("TimeLimit.truncated") for info in finished.infos],
                        "callback_at_dones": finished.at_dones,
                    }
                )
            )
    elif mode == "twice":  # two learn() calls, the second on a model loaded with distributed="async"
        model = TRPO("MlpPolicy", "Pendulum-v1", **SETTINGS, distributed="async", max_policy_lag=8)
        model.learn(3 * 128)
        first = model.num_timesteps
        path = out / "first.zip"
        if rank == 0:
            model.save(path)
        while not path.exists():  # the workers load the learner's file
            time.sleep(0.05)
        time.sleep(0.2)
        model = TRPO.load(path, env=model.env, distributed="async", device="cpu")
        assert model._async is None  # the constructor under torchrun saw "auto"; learn() takes the role
        if rank == 0:
            record_updates(model, out, lags)
        model.learn(3 * 128, reset_num_timesteps=False)
        if rank == 0:
            (out / "first.json").write_text(json.dumps({"first": first}))
    elif mode == "stall":  # worker 2's environment hangs in step(): the learner goes on with worker 1
        from stable_baselines3.common.env_util import make_vec_env

        class Hang(gym.Wrapper):
            def __init__(self, env: gym.Env) -> None:
                super().__init__(env)
                self.steps = 0

            def step(self, action):  # type: ignore[no-untyped-def]
                self.steps += 1
                if self.steps > 300:
                    time.sleep(3600)
                return self.env.step(action)

        class Slow(gym.Wrapper):  # worker 1 slowed down, so that the learner outlives the stall timeout
            def step(self, action):  # type: ignore[no-untyped-def]
                time.sleep(0.001)
                return self.env.step(action)

        wrapper = {1: Slow, 2: Hang}.get(rank)
        env = make_vec_env("Pendulum-v1", n_envs=1, wrapper_class=wrapper)
        model = TRPO("MlpPolicy", env, **SETTINGS, distributed="async", max_policy_lag=8)
        if rank == 0:
            record_updates(model, out, lags)
        learn_keeping_warnings(model, 48 * 128, out, rank)
    else:
        raise ValueError(f"unknown mode {mode}")
    if rank == 0:
        assert model._async is not None
        assert model._async.learner is not None
        learner = model._async.learner
        report = {
            "num_timesteps": model.num_timesteps,
            "n_updates": model._n_updates,
            "lags": lags,
            "received": learner.n_received,
            "dropped": learner.n_dropped,
            "failures": learner.n_worker_failures,
            "sources": sources,
            "stalled": sorted(learner.stalled),
            "logged": {key: float(value) for key, value in model.logger.name_to_value.items()},
        }
        (out / "learner.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
