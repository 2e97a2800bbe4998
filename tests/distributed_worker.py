"""One rank of the multi-process tests (``tests/test_distributed.py`` starts it with ``torchrun``).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py MODE OUT_DIR

Each mode trains a little and writes what the test compares into ``OUT_DIR`` (``rank<r>_*.npz``/``.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch as th
from launch import flat_parameters

from sb3_trpo import TRPO, RecurrentTRPO, TRPOPenalty

UPDATE_SETTINGS = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 3, "seed": 3, "target_kl": 0.02}
BUFFER_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


def record_updates(model: TRPO, out: Path, rank: int) -> None:
    """Around each update: the union batch, the parameters and NumPy's stream before it, the results after."""
    train, count = model.train, [0]

    def recorded_train() -> None:
        assert model._data_parallel is not None
        union = model._data_parallel.buffer
        assert union is not None
        record = {f"buffer_{name}": getattr(union, name).copy() for name in BUFFER_ARRAYS}
        record["before"] = flat_parameters(model)
        numpy_state = np.random.get_state()
        train()
        record["after"] = flat_parameters(model)
        logged = {key: float(value) for key, value in model.logger.name_to_value.items() if key.startswith("train/")}
        np.savez(out / f"rank{rank}_update{count[0]}.npz", **record)
        (out / f"rank{rank}_update{count[0]}.json").write_text(
            json.dumps({"logged": logged, "numpy_state": _jsonable(numpy_state)})
        )
        count[0] += 1

    model.train = recorded_train  # type: ignore[method-assign]


def _jsonable(state: tuple) -> list:
    return [state[0], state[1].tolist(), *state[2:]]


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    th.set_num_threads(1)
    if mode in ("update", "penalty", "penalty_first_order"):
        algorithm = TRPO if mode == "update" else TRPOPenalty
        extra = {"policy_optimizer": "first_order", "n_epochs": 2} if mode == "penalty_first_order" else {}
        model = algorithm("MlpPolicy", "CartPole-v1", **UPDATE_SETTINGS, **extra)
        record_updates(model, out, rank)
        model.learn(2 * 64 * 2)  # two rollouts of 64 steps on each of the two ranks
    elif mode == "lockstep":
        model = TRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_critic_updates=2, seed=5)
        assert model._data_parallel is not None
        model._data_parallel.checksum_interval = 1
        model.learn(3 * 64 * 2)
        report = {
            "num_timesteps": model.num_timesteps,
            "n_updates": model._n_updates,
            "episodes": sorted(episode["r"] for episode in model.ep_info_buffer),
            "backends": model.backends.names,
        }
        np.save(out / f"rank{rank}_parameters.npy", flat_parameters(model))
        with th.no_grad():
            if rank == 1:  # a rank that drifts: the check must catch it on every rank
                next(model.policy.parameters()).add_(1e-6)
        try:
            model._data_parallel.check_lockstep(model, model._n_updates, force=True)
        except RuntimeError as error:
            report["divergence"] = str(error)
        (out / f"rank{rank}.json").write_text(json.dumps(report))
        model.save(out / "model")
    elif mode == "resync":  # rank 1 drifts before every resynchronisation: rank 0's state wins each time
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize

        if rank == 1:  # this rank's environment says otherwise: rank 0's choice must hold on every rank
            os.environ["SB3_TRPO_RESYNC"] = "0"
        env = VecNormalize(make_vec_env("CartPole-v1", n_envs=1))
        model = TRPOPenalty("MlpPolicy", env, n_steps=64, batch_size=32, n_critic_updates=2, seed=5)
        parallel = model._data_parallel
        assert parallel is not None
        assert parallel.resync == (rank == 0)  # SB3_TRPO_RESYNC=1 on rank 0, until learn() synchronises
        parallel.checksum_interval = 1
        resynchronize = parallel.resynchronize

        def drift_then_resynchronize(algorithm: TRPO) -> None:
            if rank == 1:
                with th.no_grad():
                    next(algorithm.policy.parameters()).add_(1e-3)
                algorithm.beta *= 1.5  # type: ignore[attr-defined]
                env.obs_rms.mean += 1e-3
            resynchronize(algorithm)

        parallel.resynchronize = drift_then_resynchronize  # type: ignore[method-assign]
        model.learn(3 * 64 * 2)
        np.save(out / f"rank{rank}_parameters.npy", flat_parameters(model))
        report = {"beta": model.beta, "n_updates": model._n_updates, "collectives": parallel.communicator.n_collectives}
        report["resync"] = parallel.resync
        report["obs_mean"] = env.obs_rms.mean.tolist()
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    elif mode in ("vecnormalize", "vecnormalize_rewards_only"):
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import VecNormalize

        norm_obs = mode == "vecnormalize"
        env = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1), gamma=0.9, norm_obs=norm_obs)
        model = TRPO("MlpPolicy", env, n_steps=64, batch_size=32, n_critic_updates=1, seed=7, gamma=0.9)
        model.learn(2 * 64 * 2)
        report = {"ret_count": env.ret_rms.count, "ret_var": env.ret_rms.var.tolist()}
        if norm_obs:
            rms = env.obs_rms
            report |= {"count": rms.count, "mean": rms.mean.tolist(), "var": rms.var.tolist()}
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    elif mode == "recurrent":
        model = RecurrentTRPO(
            "MlpLstmPolicy",
            "CartPole-v1",
            n_steps=32,
            batch_size=32,
            n_critic_updates=1,
            seed=1,
            policy_kwargs={"lstm_hidden_size": 8},
        )
        model.learn(2 * 32 * 2)
        np.save(out / f"rank{rank}_parameters.npy", flat_parameters(model))
        (out / f"rank{rank}.json").write_text(
            json.dumps({"num_timesteps": model.num_timesteps, "n_updates": model._n_updates})
        )
    elif mode == "rank_error":  # rank 1's environment returns NaN: rank 1 raises, rank 0 is told and raises too
        import gymnasium as gym

        class NanAfter(gym.Wrapper):
            def __init__(self, env: gym.Env, bad_step: int) -> None:
                super().__init__(env)
                self.n_steps, self.bad_step = 0, bad_step

            def step(self, action):  # type: ignore[no-untyped-def]
                observation, *rest = self.env.step(action)
                self.n_steps += 1
                return (observation * np.nan if self.n_steps == self.bad_step else observation), *rest

        from stable_baselines3.common.env_util import make_vec_env

        bad_step = 50 if rank == 1 else 10**9
        env = make_vec_env("CartPole-v1", n_envs=1, wrapper_class=NanAfter, wrapper_kwargs={"bad_step": bad_step})
        TRPO("MlpPolicy", env, n_steps=32, batch_size=32, n_critic_updates=1, seed=2).learn(10 * 32 * 2)
    elif mode == "fault":  # rank 1 is killed after the first update; rank 0 must stop with an error, not hang
        import signal

        model = TRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_critic_updates=1, seed=2)
        if rank == 1:
            model.train = lambda: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
        model.learn(10 * 32 * 2)
    elif mode == "resume":  # killed once mid-run; torchrun --max-restarts starts both ranks again from the checkpoint
        import signal

        from stable_baselines3.common.callbacks import CheckpointCallback

        total, checkpoints = 6 * 32 * 2, out / "checkpoints"
        checkpoint = CheckpointCallback(save_freq=64, save_path=str(checkpoints), name_prefix="trpo")
        saved = sorted(checkpoints.glob("trpo_*_steps.zip"), key=lambda path: int(path.stem.split("_")[1]))
        if saved:
            from stable_baselines3.common.env_util import make_vec_env

            model = TRPO.load(saved[-1], env=make_vec_env("CartPole-v1", n_envs=1))
            model.learn(total - model.num_timesteps, callback=checkpoint, reset_num_timesteps=False)
        else:
            model = TRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_critic_updates=1, seed=2)
            if rank == 1:
                train = model.train

                def train_then_die() -> None:
                    train()
                    if model._n_updates == 3:
                        os.kill(os.getpid(), signal.SIGKILL)

                model.train = train_then_die  # type: ignore[method-assign]
            model.learn(total, callback=checkpoint)
        model.save(out / "final")
        (out / f"rank{rank}.json").write_text(json.dumps({"num_timesteps": model.num_timesteps, "resumed": bool(saved)}))
    else:
        raise ValueError(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
