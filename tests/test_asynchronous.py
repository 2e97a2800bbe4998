"""Asynchronous training: the importance ratio against β, the trust region at π_θk, and the learner's runs.

The math is checked on a policy small enough to write the answer down; the runs start
``tests/async_worker.py`` under ``torchrun`` (learner and workers on localhost) with a timeout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import launch
import numpy as np
import pandas as pd
import pytest
import torch as th
from launch import flat_parameters, set_parameters
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_trpo import TRPO, TRPOPenalty

WORKER = Path(__file__).parent / "async_worker.py"
SETTINGS = {"n_steps": 128, "batch_size": 64, "n_critic_updates": 3, "seed": 7, "target_kl": 0.02}


class ZeroObservation(gym.Env):
    """One state (the observation 0), three actions: a policy with ``net_arch=[]`` is ``softmax(bias)``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):  # type: ignore[no-untyped-def]
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):  # type: ignore[no-untyped-def]
        return np.zeros(1, np.float32), 0.0, False, False, {}


ACTIONS = np.array([0, 1, 2, 1, 0, 2])
ADVANTAGES = np.array([1.0, -0.5, 2.0, 0.25, -1.0, 0.5])
BEHAVIOUR = np.array([0.5, 0.3, 0.2])  # β: a stale policy, far from π_θk
BIAS = np.array([0.2, -0.4, 0.7])  # π_θk = softmax(BIAS)


def tiny_model(actor_method: str, **kwargs) -> TRPO:
    model = TRPO(
        "MlpPolicy",
        make_vec_env(ZeroObservation, n_envs=1),
        n_steps=len(ACTIONS),
        batch_size=len(ACTIONS),
        normalize_advantage=False,
        policy_kwargs={"net_arch": []},
        actor_method=actor_method,
        fisher_method="analytic" if actor_method == "torch" else "auto",
        seed=0,
        **kwargs,
    )
    model.set_logger(configure(None, []))
    with th.no_grad():
        model.policy.action_net.bias.copy_(th.as_tensor(BIAS))
    buffer = model.rollout_buffer
    buffer.reset()
    buffer.observations[:] = 0.0
    buffer.actions[:, 0, 0] = ACTIONS
    buffer.log_probs[:, 0] = np.log(BEHAVIOUR[ACTIONS])
    buffer.advantages[:, 0] = ADVANTAGES
    buffer.returns[:, 0] = ADVANTAGES
    buffer.full, buffer.pos = True, buffer.buffer_size
    return model


def bias_part(flat: th.Tensor, model: TRPO) -> np.ndarray:
    """The entries of a flat actor vector that belong to the action net's bias (its weight sees observation 0)."""
    offset = 0
    for param in model._actor_parameters():
        if param is model.policy.action_net.bias:
            return flat[offset : offset + param.numel()].detach().double().numpy()
        offset += param.numel()
    raise AssertionError("the action net's bias is not an actor parameter")


@pytest.mark.parametrize("actor_method", ["mlp", "torch"])
@pytest.mark.parametrize("truncation", [None, 1.2])
def test_the_ratio_is_against_beta_and_the_trust_region_at_the_current_policy(actor_method, truncation):
    model = tiny_model(actor_method, ratio_truncation=truncation)
    problem = model._natural_gradient_problem(model._policy_batch())
    p = np.exp(BIAS) / np.exp(BIAS).sum()  # π_θk
    rho = p[ACTIONS] / BEHAVIOUR[ACTIONS]  # π_θk / β, far from 1
    weight = rho if truncation is None else np.minimum(truncation, rho)
    # g = mean[w · Â · ∇ log softmax(b)_a] with ∇_b log softmax(b)_a = e_a − p
    expected_gradient = np.mean(
        [w * adv * (np.eye(3)[a] - p) for w, adv, a in zip(weight, ADVANTAGES, ACTIONS, strict=True)], axis=0
    )
    np.testing.assert_allclose(bias_part(problem.gradient, model), expected_gradient, rtol=1e-5, atol=1e-7)
    assert problem.before.objective == pytest.approx(np.mean(weight * ADVANTAGES), rel=1e-5)
    # The Fisher is at π_θk, not at β: F = diag(p) − p pᵀ on the bias.
    vector = th.zeros_like(problem.gradient)
    offset = sum(q.numel() for q in model._actor_parameters()[: _bias_index(model)])
    direction = np.array([1.0, -2.0, 0.5])
    vector[offset : offset + 3] = th.as_tensor(direction, dtype=vector.dtype)
    expected_fvp = (np.diag(p) - np.outer(p, p)) @ direction
    np.testing.assert_allclose(bias_part(problem.fisher_vector_product(vector), model), expected_fvp, rtol=1e-5, atol=1e-7)
    # A candidate's KL is from π_θk: moving the bias by Δ gives KL(softmax(b) ‖ softmax(b + Δ)).
    step = np.array([0.05, -0.02, 0.01])
    with th.no_grad():
        model.policy.action_net.bias.add_(th.as_tensor(step, dtype=th.float32))
    candidate = problem.evaluate()
    moved = model.policy.action_net.bias.detach().double().numpy()  # BIAS + step, as float32 holds it
    p = np.exp(BIAS.astype(np.float32)) / np.exp(BIAS.astype(np.float32)).sum()
    q = np.exp(moved) / np.exp(moved).sum()
    assert candidate.kl_mean == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-3)  # float32 KL of a small step
    assert candidate.objective == pytest.approx(
        float(np.mean(q[ACTIONS] / BEHAVIOUR[ACTIONS] * weight / rho * ADVANTAGES)), rel=1e-5
    )


def _bias_index(model: TRPO) -> int:
    return next(i for i, q in enumerate(model._actor_parameters()) if q is model.policy.action_net.bias)


def test_the_current_policy_ratio_ignores_beta_and_the_statistics_are_logged():
    model = tiny_model("mlp", importance_ratio="current")
    batch = model._policy_batch()
    p = np.exp(BIAS) / np.exp(BIAS).sum()
    actions = batch.actions.numpy()  # get() hands the samples over in a random order
    np.testing.assert_allclose(batch.behaviour_log_prob.numpy(), np.log(p[actions]), rtol=1e-5)
    rho = p[ACTIONS] / BEHAVIOUR[ACTIONS]
    assert model.logger.name_to_value["train/ratio_mean"] == pytest.approx(rho.mean(), rel=1e-5)
    assert model.logger.name_to_value["train/ratio_max"] == pytest.approx(rho.max(), rel=1e-5)
    truncated = tiny_model("mlp", ratio_truncation=1.2)
    truncated._policy_batch()
    assert truncated.logger.name_to_value["train/ratio_truncated_fraction"] == pytest.approx(np.mean(rho > 1.2))


def test_without_lag_or_options_the_batch_is_untouched():
    model = tiny_model("mlp")
    batch = model._policy_batch()
    np.testing.assert_allclose(batch.behaviour_log_prob.numpy(), np.log(BEHAVIOUR[batch.actions.numpy()]), rtol=1e-6)
    assert "train/ratio_mean" not in model.logger.name_to_value  # no extra forward pass in synchronous training


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("max_policy_lag", -1, "an integer >= 0"),
        ("importance_ratio", "beta", "one of ('behaviour', 'current')"),
        ("ratio_truncation", 0.0, "None (no truncation) or a finite number > 0"),
        ("ratio_truncation", math.inf, "None (no truncation) or a finite number > 0"),
        ("distributed", "async", '"async" needs torchrun'),
    ],
)
def test_bad_asynchronous_settings_are_refused_at_construction(name, value, accepted):
    with pytest.raises(ValueError, match=name) as error:
        TRPO("MlpPolicy", "Pendulum-v1", **{name: value})
    assert accepted in str(error.value)


def test_recurrent_trpo_refuses_async(monkeypatch):
    from sb3_trpo import RecurrentTRPO

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"distributed.*RecurrentTRPO"):
        RecurrentTRPO("MlpLstmPolicy", "Pendulum-v1", distributed="async")


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("mode", "algorithm"), [("lag_zero", TRPO), ("lag_zero_penalty", TRPOPenalty)])
def test_with_lag_zero_the_learner_takes_synchronous_trpos_updates(tmp_path, mode, algorithm):
    launch.torchrun(WORKER, mode, tmp_path)
    report = json.loads((tmp_path / "learner.json").read_text())
    assert report["lags"] == [0, 0, 0, 0]
    assert report["dropped"] == 0
    # One process that collects as the worker (rank 1: environment and torch seeded 7 + 1) and updates as the
    # learner (NumPy's stream, which orders the critic's minibatches, seeded 7), from the learner's start.
    reference = algorithm("MlpPolicy", "Pendulum-v1", **{**SETTINGS, "seed": 8})
    set_parameters(reference, np.load(tmp_path / "learner_initial.npy"))
    np.random.seed(7)
    after = []
    train = reference.train

    def recorded_train() -> None:
        train()
        after.append(flat_parameters(reference))

    reference.train = recorded_train  # type: ignore[method-assign]
    reference.learn(4 * 128)
    assert len(after) == report["n_updates"] == 4
    for update, expected in enumerate(after):
        learner = np.load(tmp_path / f"learner_update{update}.npy")
        np.testing.assert_allclose(learner, expected, rtol=1e-4, atol=1e-5, err_msg=f"update {update}")
    assert not np.allclose(after[0], after[-1])  # the updates moved the parameters
    assert report["num_timesteps"] == 4 * 128
    assert report["logged"]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # no lag: β is π_θk


@pytest.mark.timeout(300)
def test_batches_older_than_max_policy_lag_are_dropped(tmp_path):
    launch.torchrun(WORKER, "drop", tmp_path)
    report = json.loads((tmp_path / "learner.json").read_text())
    lags = report["lags"]
    assert report["dropped"] == sum(lag > 1 for lag in lags) > 0  # dropped exactly when more than 1 update old
    assert report["n_updates"] == sum(lag <= 1 for lag in lags)
    assert report["received"] == len(lags)
    assert report["num_timesteps"] == 128 * len(lags)  # every step received counts, dropped ones too
    logs = pd.read_csv(tmp_path / "progress.csv")
    assert logs["async/batches_dropped"].is_monotonic_increasing
    assert logs["async/batches_dropped"].iloc[-1] > 0
    assert logs["async/policy_lag_max"].max() >= 2  # the lags of every batch received, dropped ones included
    assert (logs["async/policy_lag_mean"] <= logs["async/policy_lag_max"]).all()
    assert (logs["async/learner_idle_fraction"].between(0, 1)).all()
    assert (logs["async/worker1_fps"] > 0).all()


@pytest.mark.timeout(300)
def test_a_killed_worker_is_restarted_and_the_learner_carries_on(tmp_path):
    launch.torchrun(WORKER, "kill", tmp_path)
    report = json.loads((tmp_path / "learner.json").read_text())
    messages = json.loads((tmp_path / "warnings.json").read_text())
    assert report["failures"] == 1
    assert any("exited with signal SIGKILL; restarted (1 of 3)" in message for message in messages), messages
    assert report["num_timesteps"] >= 10 * 128  # learn() ran to its end on the restarted worker's batches
    assert [1, 2] in report["sources"]  # batches of worker 1's second incarnation: it rejoined


@pytest.mark.timeout(300)
def test_the_learner_merges_each_workers_vecnormalize_moments_once(tmp_path):
    launch.torchrun(WORKER, "vecnormalize", tmp_path)
    report = json.loads((tmp_path / "learner.json").read_text())
    statistics = json.loads((tmp_path / "statistics.json").read_text())
    received = report["received"]
    # RunningMeanStd starts at count 1e-4; the learner's own reset when learn() starts adds 1; then every batch
    # adds its 128 observations and returns, merged as the worker's deltas, once.
    assert statistics["obs_count"] == pytest.approx(1e-4 + 1 + 128 * received)
    assert statistics["ret_count"] == pytest.approx(1e-4 + 128 * received)
    assert np.isfinite(statistics["obs_mean"]).all()
    # The learner's callbacks saw each received episode's end (Pendulum's are truncated at 200 steps) at its step.
    assert len(statistics["episodes"]) >= 1
    assert statistics["callback_episodes"] == statistics["episodes"]
    assert statistics["callback_truncated"] == [True] * len(statistics["episodes"])
    assert statistics["callback_at_dones"] is True


@pytest.mark.timeout(300)
def test_learn_twice_and_load_with_async_each_start_a_session_of_their_own(tmp_path):
    launch.torchrun(WORKER, "twice", tmp_path)
    report = json.loads((tmp_path / "learner.json").read_text())
    assert json.loads((tmp_path / "first.json").read_text())["first"] >= 3 * 128
    assert report["num_timesteps"] >= 6 * 128  # the loaded model went on from the first run's count
    assert report["received"] == len(report["lags"]) >= 3  # the second learn() took batches from its own session


@pytest.mark.timeout(300)
def test_a_stalled_worker_is_reported_and_the_learner_goes_on_with_the_others(tmp_path):
    launch.torchrun(WORKER, "stall", tmp_path, nproc=3, env={"SB3_TRPO_WORKER_STALL_TIMEOUT": "1"})
    report = json.loads((tmp_path / "learner.json").read_text())
    messages = json.loads((tmp_path / "warnings.json").read_text())
    assert report["num_timesteps"] >= 48 * 128  # learn() finished on worker 1's batches
    assert 2 in report["stalled"]
    assert any("worker 2 has not stepped its environments" in message for message in messages), messages
    assert {worker for worker, _ in report["sources"]} == {1, 2}  # worker 2 sent batches before it hung


@pytest.mark.timeout(300)
@pytest.mark.parametrize("algo", ["trpo", "trpo_penalty"])
def test_the_zoo_trains_asynchronously_when_its_hyperparameters_say_so(tmp_path, algo):
    import os
    import subprocess
    import sys

    from sb3_trpo.zoo import REGISTERED

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sb3_trpo.zoo"]
    command += ["train", "--algo", algo, "--env", "CartPole-v1", "-f", str(tmp_path / "logs"), "-n", "512", "--seed", "0"]
    command += ["--eval-freq", "64", "--eval-episodes", "2", "--save-freq", "128", "--num-threads", "1"]
    command += ["-params", "n_steps:32", "batch_size:32", "n_critic_updates:1", "distributed:'async'", "max_policy_lag:2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SB3_TRPO_DISTRIBUTED_TIMEOUT": "60"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    runs = list((tmp_path / "logs" / algo).iterdir())
    assert [run.name for run in runs] == ["CartPole-v1_1"]  # the learner wrote; the worker wrote nothing here
    model = getattr(__import__("sb3_trpo"), REGISTERED[algo].class_name).load(runs[0] / "CartPole-v1.zip", device="cpu")
    assert model._async is None
    assert model.max_policy_lag == 2
    assert model.num_timesteps >= 512
    evaluations = np.load(runs[0] / "evaluations.npz")
    assert len(evaluations["timesteps"]) >= 512 // (64 * 2) - 1  # the learner evaluated every 64 steps of 2 envs
    assert list(runs[0].glob("rl_model_*_steps.zip"))  # and saved checkpoints


def test_the_learner_recomputes_values_and_truncation_bootstraps_with_its_own_critic():
    """A batch collected by an older critic: the learner's values and bootstraps are its own, not the worker's."""
    from sb3_trpo.distributed.asynchronous import AsyncWorker

    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=256, batch_size=64, seed=3)  # episodes truncated at 200 steps
    model.set_logger(configure(None, []))
    model._setup_learn(256, None)
    collector = AsyncWorker(model, mailbox=None, worker=1, incarnation=1)  # type: ignore[arg-type]
    model._async_truncations = []
    callback = model._init_callback(None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, 256)
    bootstrapped = model.rollout_buffer.rewards.copy()  # with the old critic's bootstrap
    truncations = list(model._async_truncations)
    assert len(truncations) == 1
    assert truncations[0][0] == 199
    batch = collector._payload(256, 1.0)
    old_terminal = model.policy.predict_values(th.as_tensor(truncations[0][2])[None]).item()
    with th.no_grad():  # a newer critic
        for param in model.policy.value_net.parameters():
            param.add_(0.5)
    model._load_batch(batch)
    buffer = model.rollout_buffer
    new_terminal = model.policy.predict_values(th.as_tensor(truncations[0][2])[None]).item()
    expected = bootstrapped.copy()
    expected[199, 0] += model.gamma * (new_terminal - old_terminal)
    np.testing.assert_allclose(buffer.rewards, expected, rtol=1e-5, atol=1e-4)
    assert abs(new_terminal - old_terminal) > 0.1  # the critics differ, so the two bootstraps do
    with th.no_grad():
        values = model.policy.predict_values(th.as_tensor(buffer.observations.reshape(256, -1))).numpy().reshape(256, 1)
    np.testing.assert_allclose(buffer.values, values, rtol=1e-5, atol=1e-5)
    # GAE on the learner's values, computed here by hand (λ-returns backwards over the rollout).
    last = model.policy.predict_values(th.as_tensor(batch["last_obs"])).item()
    advantages, running = np.zeros(256), 0.0
    starts = buffer.episode_starts[:, 0]
    for t in reversed(range(256)):
        next_value, next_start = (last, batch["last_episode_starts"][0]) if t == 255 else (values[t + 1, 0], starts[t + 1])
        delta = buffer.rewards[t, 0] + model.gamma * next_value * (1 - next_start) - values[t, 0]
        running = delta + model.gamma * model.gae_lambda * (1 - next_start) * running
        advantages[t] = running
    np.testing.assert_allclose(buffer.advantages[:, 0], advantages, rtol=1e-4, atol=1e-4)


def test_learner_callbacks_see_each_received_steps_dones_rewards_and_finished_episodes():
    """The learner calls ``on_step`` once per ``n_envs`` steps of a batch, with that step's dones and rewards, and
    the infos the worker kept of the episodes that ended there."""
    from stable_baselines3.common.callbacks import BaseCallback, StopTrainingOnMaxEpisodes

    class Record(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[list[bool], list[float]]] = []

            self.infos: list[list[dict]] = []

        def _on_step(self) -> bool:
            self.seen.append((self.locals["dones"].tolist(), self.locals["rewards"].tolist()))
            self.infos.append(self.locals["infos"])
            return True

    model = TRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2), n_steps=4, batch_size=8)
    model._setup_learn(100, None)
    starts = np.array([[1, 0], [0, 0], [0, 1], [1, 0]], dtype=np.float32)  # episodes start at these steps
    rewards = np.arange(8, dtype=np.float32).reshape(4, 2)
    batch = {
        "steps": 8,
        "episodes": [{"r": 1.0, "l": 2}],
        "successes": [],
        "arrays": {"episode_starts": starts, "rewards": rewards},
        "last_episode_starts": np.array([0.0, 1.0]),
        "infos": [(1, 1, {"episode": {"r": 1.0, "l": 2}, "TimeLimit.truncated": True})],  # as the worker kept it
    }
    record = Record()
    record.init_callback(model)
    assert model._count_batch(batch, record)
    assert [dones for dones, _ in record.seen] == [[False, False], [False, True], [True, False], [False, True]]
    assert [step_rewards for _, step_rewards in record.seen] == rewards.tolist()
    # The kept info of the episode that ended at step 1 in environment 1, there only.
    assert record.infos == [[{}, {}], [{}, {"episode": {"r": 1.0, "l": 2}, "TimeLimit.truncated": True}], [{}, {}], [{}, {}]]
    assert model.num_timesteps == 8
    stop = StopTrainingOnMaxEpisodes(max_episodes=1)  # SB3's own, which reads locals["dones"]
    stop.init_callback(model)
    assert not model._count_batch(batch, stop)  # 3 episodes end in the batch: more than 1 per environment
