"""Faults and bad input, tried as a careful user would: nothing lost, nothing poisoned (issue 17).

Atomic saves, non-finite observations stopped at the source, invalid line-search candidates rejected,
the first-order penalty optimiser restoring θ_old, β never frozen, files of other algorithms refused,
sb3-contrib's AssertionError contract, learning-rate schedules that turn non-finite, and the message of
a dead SubprocVecEnv worker.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import stat
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common import save_util
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_trpo import TRPO, RecurrentTRPO, RecurrentTRPOPenalty, TRPOPenalty
from sb3_trpo.common.files import atomic_vec_normalize_saves, atomic_write, save_vec_normalize
from sb3_trpo.common.natural_gradient import backtracking_line_search
from sb3_trpo.common.policy_step import INVALID_EVALUATION, PolicyEvaluation, invalid_candidate
from sb3_trpo.common.validation import ContribAssertionError
from sb3_trpo.common.workers import EnvironmentWorkerError, explain_worker_failures

N_STEPS = 64
SMALL = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2, "policy_kwargs": {"net_arch": [16]}}
LSTM = {"n_steps": N_STEPS, "batch_size": 32, "n_critic_updates": 2}
LSTM_KWARGS = {"policy_kwargs": {"net_arch": [16], "lstm_hidden_size": 8}}


def box_env() -> gym.Env:
    return IdentityEnvBox(ep_length=20)


def make(algo_class: type, env=None, **kwargs) -> TRPO:
    recurrent = issubclass(algo_class, RecurrentTRPO)
    policy = "MlpLstmPolicy" if recurrent else "MlpPolicy"
    settings = {**(LSTM | LSTM_KWARGS if recurrent else SMALL), **kwargs}
    return algo_class(policy, env if env is not None else box_env(), seed=0, **settings)


def parameters(model) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def assert_same(first: dict[str, th.Tensor], second: dict[str, th.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert th.equal(first[name], second[name]), name


def assert_finite(model) -> None:
    for name, param in model.policy.named_parameters():
        assert th.isfinite(param).all(), name


def collect_rollout(model) -> None:
    _, callback = model._setup_learn(model.n_steps, reset_num_timesteps=False)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)


ALGORITHMS = [TRPO, TRPOPenalty, RecurrentTRPO, RecurrentTRPOPenalty]


# ---------------------------------------------------------------------------------------------- atomic saves


class InjectedFault(Exception):
    """The error a test injects; never raised by the library."""


def fail_on_call(n: int, original):
    """``original``, except that its ``n``-th call (1-based) raises :class:`InjectedFault` instead."""
    calls = 0

    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            raise InjectedFault(f"injected on call {n}")
        return original(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("algo_class", ALGORITHMS, ids=lambda c: c.__name__)
def test_a_failed_save_leaves_the_older_model_intact(algo_class, tmp_path, monkeypatch):
    model = make(algo_class)
    model.learn(N_STEPS)
    path = tmp_path / "model.zip"
    model.save(path)
    old_bytes, old_parameters = path.read_bytes(), parameters(model)

    model.learn(N_STEPS, reset_num_timesteps=False)  # the parameters move on
    # Fails while writing the zip, after the archive was opened and its first entries written.
    monkeypatch.setattr(save_util.th, "save", fail_on_call(2, th.save))
    with pytest.raises(InjectedFault):
        model.save(path)
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.zip"]  # no temporary file left behind
    assert_same(parameters(algo_class.load(path)), old_parameters)
    model.save(path)  # and the next save replaces it
    assert_same(parameters(algo_class.load(path)), parameters(model))


def test_save_follows_sb3s_path_rules_and_keeps_permissions(tmp_path):
    model = make(TRPO)
    model.save(tmp_path / "new" / "folder" / "model")  # no suffix: .zip; missing folders created
    saved = tmp_path / "new" / "folder" / "model.zip"
    assert saved.is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask  # as open(path, "wb") would make it

    saved.chmod(0o640)
    model.save(saved)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o640  # replacing a file keeps its permissions

    link = tmp_path / "link.zip"
    link.symlink_to(saved)
    model.save(link)
    assert link.is_symlink()  # the file it points to was replaced, not the link

    buffer = io.BytesIO()
    model.save(buffer)  # a file object is written as SB3 writes it
    buffer.seek(0)
    assert_same(parameters(TRPO.load(buffer)), parameters(model))


def test_atomic_write_keeps_the_old_content_on_any_error(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def write_half() -> None:
        with atomic_write(path) as file:
            file.write(b"half of the new")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_half()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]
    with atomic_write(path) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new"


def test_vec_normalize_statistics_are_saved_atomically(tmp_path, monkeypatch):
    venv = VecNormalize(DummyVecEnv([box_env]))
    venv.reset()
    venv.step(np.zeros((1, 1), dtype=np.float32))
    path = tmp_path / "vecnormalize.pkl"
    save_vec_normalize(venv, path)
    old = path.read_bytes()

    def half_a_pickle(obj, file):
        file.write(pickle.dumps(obj)[:100])
        raise InjectedFault

    with atomic_vec_normalize_saves():
        assert VecNormalize.save is save_vec_normalize  # what rl_zoo3's save calls do inside the zoo
        monkeypatch.setattr(pickle, "dump", half_a_pickle)
        with pytest.raises(InjectedFault):
            venv.save(str(path))
        monkeypatch.undo()
    assert VecNormalize.save is not save_vec_normalize  # put back afterwards
    assert path.read_bytes() == old
    loaded = VecNormalize.load(str(path), DummyVecEnv([box_env]))
    np.testing.assert_array_equal(loaded.obs_rms.mean, venv.obs_rms.mean)


# ---------------------------------------------------------------------------------------------- observations


class NanObservationEnv(gym.Wrapper):
    """Returns a NaN observation at step ``bad_step`` (counted over the whole run), or from reset, or as the
    last observation of a truncated episode; records every action it is sent."""

    def __init__(self, env: gym.Env, bad_step: int | None = None, bad_reset: bool = False, bad_terminal: bool = False):
        super().__init__(env)
        self.bad_step, self.bad_reset, self.bad_terminal = bad_step, bad_reset, bad_terminal
        self.n_steps, self.actions = 0, []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return (obs * np.nan if self.bad_reset else obs), info

    def step(self, action):
        self.actions.append(np.asarray(action, dtype=np.float64))
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.n_steps += 1
        if self.n_steps == self.bad_step or (self.bad_terminal and (terminated or truncated)):
            obs = obs * np.nan
        return obs, reward, terminated, truncated, info


def observation_model(algo_class, rollout_method: str, **wrapper_kwargs):
    envs = [NanObservationEnv(box_env()), NanObservationEnv(box_env(), **wrapper_kwargs)]
    venv = DummyVecEnv([lambda env=env: env for env in envs])
    extra = {} if issubclass(algo_class, RecurrentTRPO) else {"rollout_method": rollout_method}
    return make(algo_class, venv, **extra), envs


OBSERVATION_CASES = [(TRPO, "numpy"), (TRPO, "sb3"), (RecurrentTRPO, "sb3")]
OBSERVATION_IDS = ["numpy-loop", "sb3-loop", "recurrent-loop"]


@pytest.mark.parametrize(("algo_class", "rollout_method"), OBSERVATION_CASES, ids=OBSERVATION_IDS)
def test_a_non_finite_observation_stops_the_rollout_at_once(algo_class, rollout_method):
    model, envs = observation_model(algo_class, rollout_method, bad_step=N_STEPS + 13)
    assert model.backends.rollout.name == rollout_method
    with pytest.raises(ValueError, match="environment 1 returned a non-finite observation") as error:
        model.learn(4 * N_STEPS)
    message = str(error.value)
    assert "at step 13 of this rollout" in message
    assert f"timestep {2 * (N_STEPS + 13)}" in message
    assert "VecCheckNan" in message
    # Nothing non-finite reached an environment or the buffer; the rollout stopped at the bad step.
    for env in envs:
        assert np.isfinite(np.stack(env.actions)).all()
        assert len(env.actions) == N_STEPS + 13
    buffer = model.rollout_buffer
    for array in (buffer.observations, buffer.actions, buffer.values, buffer.log_probs, buffer.rewards):
        assert np.isfinite(array).all()
    assert model.num_timesteps == 2 * (N_STEPS + 12)
    assert "step_wait" not in vars(model.env)  # the check is gone with the rollout
    assert_finite(model)


@pytest.mark.parametrize(("algo_class", "rollout_method"), OBSERVATION_CASES, ids=OBSERVATION_IDS)
def test_a_non_finite_reset_observation_is_stopped_before_the_first_action(algo_class, rollout_method):
    model, envs = observation_model(algo_class, rollout_method, bad_reset=True)
    with pytest.raises(ValueError, match=r"environment 1 returned a non-finite observation .* at the start of a rollout"):
        model.learn(N_STEPS)
    assert envs[0].actions == envs[1].actions == []


@pytest.mark.parametrize(("algo_class", "rollout_method"), OBSERVATION_CASES, ids=OBSERVATION_IDS)
def test_a_non_finite_terminal_observation_is_stopped_before_bootstrapping(algo_class, rollout_method):
    """IdentityEnvBox's episodes are truncated after 20 steps: the value of their last observation is bootstrapped."""
    model, envs = observation_model(algo_class, rollout_method, bad_terminal=True)
    with pytest.raises(ValueError, match="environment 1 returned a non-finite terminal observation") as error:
        model.learn(N_STEPS)
    assert "at step 20 of this rollout" in str(error.value)
    assert np.isfinite(model.rollout_buffer.rewards).all()
    assert len(envs[1].actions) == 20


def test_dict_and_integer_observations_are_checked_by_key():
    from sb3_trpo.common.observations import check_observations

    check_observations(np.array([[1, 2]], dtype=np.int64), "here")  # integers are always finite
    good = {"a": np.zeros((2, 3), dtype=np.float32), "b": np.ones((2, 1), dtype=np.int8)}
    check_observations(good, "here")
    bad = {**good, "a": np.array([[0, 0, 0], [0, np.inf, 0]], dtype=np.float32)}
    with pytest.raises(ValueError, match=r"^environment 1 returned a non-finite observation \(NaN or inf\) here"):
        check_observations(bad, "here")


# ---------------------------------------------------------------------------------------------- line search


def test_torch_still_words_its_distribution_validation_as_we_recognise_it():
    """``is_invalid_distribution_error`` reads torch's message: this fails if a torch release changes it."""
    with pytest.raises(ValueError, match=r"^Expected parameter scale") as error:
        th.distributions.Normal(th.zeros(1), th.zeros(1), validate_args=True)
    assert invalid_candidate(error.value) is INVALID_EVALUATION
    with pytest.raises(ValueError, match=r"^Expected parameter logits") as error:
        th.distributions.Categorical(logits=th.tensor([[math.nan, 0.0]]), validate_args=True)
    assert invalid_candidate(error.value) is INVALID_EVALUATION
    assert invalid_candidate(ValueError("something else")) is None
    assert invalid_candidate(RuntimeError("Expected parameter")) is None


def test_line_search_rejects_invalid_candidates_and_shrinks():
    """f(θ) = −(θ − 1)², from θ = 0 along Δ = 8: candidates 8, 4, 2 are invalid (as a too-long step is), 1 is accepted."""
    theta = th.zeros(1, dtype=th.float64)
    evaluated = []

    def evaluate() -> PolicyEvaluation:
        evaluated.append(theta.item())
        if theta.item() > 1.5:
            raise ValueError("Expected parameter scale (Tensor of shape (1,)) ... to satisfy the constraint")
        return PolicyEvaluation(-((theta.item() - 1.0) ** 2))

    result = backtracking_line_search(
        [theta], th.tensor([8.0], dtype=th.float64), evaluate, lambda e: e.objective > -1.0, 0.5, 10, invalid_candidate
    )
    assert evaluated == [8.0, 4.0, 2.0, 1.0]
    assert result.accepted
    assert result.step_fraction == 0.125
    assert result.n_backtracks == 3
    assert result.full_step_evaluation is INVALID_EVALUATION
    assert theta.item() == 1.0


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt(), ValueError("Expected parameter x")])
def test_line_search_lets_other_errors_through_and_restores_the_parameters(error):
    theta = th.tensor([0.1, -0.3], dtype=th.float32)
    before = theta.clone()

    def evaluate() -> PolicyEvaluation:
        raise error

    # Without invalid_candidate even the distribution error propagates; with it, only the others do.
    handler = None if isinstance(error, ValueError) else invalid_candidate
    with pytest.raises(type(error)):
        backtracking_line_search([theta], th.tensor([1e-3, 2e-3]), evaluate, lambda e: True, 0.5, 5, handler)
    assert th.equal(theta, before)


def test_nothing_accepted_restores_bit_for_bit_after_invalid_candidates():
    theta = th.tensor([0.1, -0.3], dtype=th.float32)
    before = theta.clone()

    def evaluate() -> PolicyEvaluation:
        raise ValueError("Expected parameter loc ...")

    result = backtracking_line_search([theta], th.tensor([1.0, 1.0]), evaluate, lambda e: True, 0.5, 4, invalid_candidate)
    assert not result.accepted
    assert result.n_backtracks == 4
    assert th.equal(theta, before)


LONG_STEPS = [
    (TRPO, {"target_kl": 1e6}),
    (TRPOPenalty, {"beta": 1e-4, "beta_min": 1e-4}),  # the natural step x / β at beta_min
]


@pytest.mark.parametrize("actor_method", ["mlp", "torch"])
@pytest.mark.parametrize(("algo_class", "kwargs"), LONG_STEPS, ids=["trpo-huge-target-kl", "penalty-beta-min"])
def test_a_step_too_long_for_torch_is_rejected_and_training_goes_on(algo_class, kwargs, actor_method):
    model = make(algo_class, actor_method=actor_method, **kwargs)
    model.learn(4 * N_STEPS)
    assert model._n_updates == 4
    assert model.n_skipped_policy_updates == 0
    assert_finite(model)


# ---------------------------------------------------------------------------------------------- first-order penalty


def adam_state(model) -> dict:
    import copy

    return copy.deepcopy(model.policy_adam.state_dict())


def assert_same_adam(first: dict, second: dict) -> None:
    assert first["param_groups"] == second["param_groups"]
    assert first["state"].keys() == second["state"].keys()
    for key, state in first["state"].items():
        for name, value in state.items():
            assert th.equal(value, second["state"][key][name]), (key, name)


def first_order_model(**kwargs) -> TRPOPenalty:
    return make(TRPOPenalty, policy_optimizer="first_order", n_epochs=2, policy_batch_size=32, **kwargs)


@pytest.mark.filterwarnings("ignore:.*policy update .* skipped:RuntimeWarning")
def test_a_huge_policy_learning_rate_never_leaves_the_actor_poisoned(tmp_path):
    model = first_order_model()
    model.learn(N_STEPS)  # one update: Adam has state
    assert model.n_skipped_policy_updates == 0
    collect_rollout(model)
    before, adam_before = parameters(model), adam_state(model)
    model.policy_learning_rate = 1e30
    for group in model.policy_adam.param_groups:
        group["lr"] = 1e30

    with pytest.warns(RuntimeWarning, match="skipped"):
        model.train()

    after = parameters(model)
    actor = {name for name in before if "value" not in name}
    for name in actor:
        assert th.equal(before[name], after[name]), name
    adam_after = adam_state(model)
    assert_same_adam({**adam_before, "param_groups": []}, {**adam_after, "param_groups": []})
    assert model.n_skipped_policy_updates == 1
    model.save(tmp_path / "model.zip")
    assert_finite(TRPOPenalty.load(tmp_path / "model.zip"))


@pytest.mark.parametrize("fail_at", [1, 3])
def test_an_exception_mid_epoch_restores_the_actor_and_adam(fail_at):
    model = first_order_model()
    model.learn(N_STEPS)
    collect_rollout(model)
    before, adam_before = parameters(model), adam_state(model)
    model.policy_adam.step = fail_on_call(fail_at, model.policy_adam.step)

    with pytest.raises(InjectedFault):
        model.train()

    assert_same(parameters(model), before)  # the critic had not moved yet either
    assert_same_adam(adam_state(model), adam_before)
    assert model._n_updates == 1


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0.0, "3e-4", None])
def test_policy_learning_rate_must_be_a_finite_positive_number(value):
    with pytest.raises(ValueError, match=r"^policy_learning_rate must be a finite number > 0"):
        first_order_model(policy_learning_rate=value)


# ---------------------------------------------------------------------------------------------- beta


@pytest.mark.parametrize("actor_method", ["mlp", "torch"])
def test_a_huge_beta_does_not_freeze_the_actor(actor_method):
    """From β = beta_max = 1e10 the step x / β is below float32's resolution of θ: the parameters do not change, so
    no candidate improves and every search fails. Counted as KL = ∞ that kept β at beta_max for ever; measured, the
    full step's KL is 0, β falls by beta_factor after every update, and the actor moves again within a few."""
    model = make(TRPOPenalty, beta=1e10, beta_max=1e10, beta_factor=10.0, actor_method=actor_method)
    betas, moved = [], []
    for _ in range(8):
        before = parameters(model)
        model.learn(N_STEPS, reset_num_timesteps=False)
        after = parameters(model)
        betas.append(model.beta)
        moved.append(any(not th.equal(before[name], after[name]) for name in before if "value" not in name))
    assert not moved[0]  # the situation of the issue: the first search fails
    assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    first_move = moved.index(True)  # a ValueError here: the actor stayed frozen
    # Until then, β fell by beta_factor with every failed search.
    assert betas[: first_move + 1] == pytest.approx([1e10 / 10 ** (k + 1) for k in range(first_move + 1)])
    assert all(moved[first_move:])


def penalty_stats(**kwargs):
    from sb3_trpo.trpo.trpo import PolicyUpdateStats

    return PolicyUpdateStats(PolicyEvaluation(0.0), **kwargs)


@pytest.mark.parametrize(
    ("stats", "expected_beta"),
    [
        ({"after": PolicyEvaluation(1.0, kl_mean=0.1)}, 20.0),  # accepted, KL far above the band: β grows
        ({"after": PolicyEvaluation(1.0, kl_mean=0.01)}, 10.0),  # accepted, inside the band
        ({"full_step": PolicyEvaluation(-1.0, kl_mean=0.1)}, 20.0),  # nothing accepted, the full step went far
        ({"full_step": PolicyEvaluation(-1.0, kl_mean=1e-6)}, 5.0),  # nothing accepted, the full step was timid
        ({"full_step": INVALID_EVALUATION}, 20.0),  # the full step's distribution was refused: far too long
        ({}, 10.0),  # no step tried (zero gradient): no evidence either way
    ],
    ids=["accepted-far", "accepted-in-band", "failed-far", "failed-timid", "failed-invalid", "no-step"],
)
def test_what_a_policy_step_tells_beta(stats, expected_beta):
    model = make(TRPOPenalty, beta=10.0, target_kl=0.01)
    kl = model._measured_kl(penalty_stats(**stats))
    from sb3_trpo.common.kl_penalty import adapt_kl_coefficient

    assert adapt_kl_coefficient(10.0, kl, 0.01, 1.5, 2.0, 1e-4, 1e6) == expected_beta


# ---------------------------------------------------------------------------------------------- loading other algorithms


def saved(model, tmp_path, name: str):
    path = tmp_path / f"{name}.zip"
    model.save(path)
    return path


def other_models(tmp_path) -> dict[str, object]:
    return {
        "PPO": saved(PPO("MlpPolicy", box_env(), n_steps=N_STEPS, batch_size=32, seed=0), tmp_path, "ppo"),
        "RecurrentPPO": saved(
            RecurrentPPO("MlpLstmPolicy", box_env(), n_steps=N_STEPS, batch_size=32, seed=0), tmp_path, "rppo"
        ),
        "TRPO": saved(make(TRPO), tmp_path, "trpo"),
        "TRPOPenalty": saved(make(TRPOPenalty), tmp_path, "penalty"),
        "RecurrentTRPO": saved(make(RecurrentTRPO), tmp_path, "rtrpo"),
        "RecurrentTRPOPenalty": saved(make(RecurrentTRPOPenalty), tmp_path, "rpenalty"),
    }


def test_a_zip_of_another_algorithm_is_refused_at_load(tmp_path):
    files = other_models(tmp_path)
    for algo_class in ALGORITHMS:
        for holds, path in files.items():
            if holds == algo_class.__name__:
                assert type(algo_class.load(path)) is algo_class
                continue
            with pytest.raises(ValueError, match=rf"holds a {holds} model, which {algo_class.__name__}.load\(\) cannot"):
                algo_class.load(path)


def test_the_check_reads_file_objects_and_leaves_them_where_they_were(tmp_path):
    path = saved(make(TRPO), tmp_path, "trpo")
    with open(path, "rb") as file:
        assert type(TRPO.load(file)) is TRPO
    buffer = io.BytesIO(saved(make(TRPOPenalty), tmp_path, "penalty").read_bytes())
    with pytest.raises(ValueError, match="holds a TRPOPenalty model"):
        TRPO.load(buffer)
    assert buffer.tell() == 0
    assert type(TRPOPenalty.load(buffer)) is TRPOPenalty


def test_a_file_that_is_no_model_is_left_to_sb3s_message(tmp_path):
    path = tmp_path / "not_a_model.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="wasn't a zip-file"):
        TRPO.load(path)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("something", "else")
    with pytest.raises(AssertionError, match="No data found"):
        TRPO.load(tmp_path / "empty.zip")


# ---------------------------------------------------------------------------------------------- sb3-contrib's contract


def test_one_transition_with_normalisation_is_both_a_value_error_and_an_assertion_error():
    for expected in (ValueError, AssertionError):
        with pytest.raises(expected, match=r"n_steps \* n_envs must be > 1"):
            make(TRPO, n_steps=1, batch_size=1)
    with pytest.raises(ContribAssertionError):
        make(TRPOPenalty, n_steps=1, batch_size=1)


def test_an_unsupported_action_space_is_both_errors_as_in_sb3():
    class TupleActions(gym.Env):
        observation_space = spaces.Box(-1, 1, (2,))
        action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))

    with pytest.raises(AssertionError, match="action space"):
        make(TRPO, TupleActions())


# ---------------------------------------------------------------------------------------------- learning-rate schedules


@pytest.mark.parametrize("critic_method", ["flat", "torch"])
def test_a_schedule_turning_non_finite_skips_the_critic_with_a_warning(critic_method):
    learning_rate = [1e-3]  # what the schedule gives; set to NaN half-way
    model = make(TRPO, env=IdentityEnv(3, ep_length=20), learning_rate=lambda _: learning_rate[0], critic_method=critic_method)
    assert model.backends.critic.name == critic_method
    model.learn(2 * N_STEPS)
    assert model.n_skipped_critic_steps == 0
    before = parameters(model)
    learning_rate[0] = math.nan

    with pytest.warns(RuntimeWarning, match=r"critic fit [23] skipped \(the learning-rate schedule gave nan"):
        model.learn(2 * N_STEPS, reset_num_timesteps=False)

    critic = {name for name in before if "value" in name}
    after = parameters(model)
    for name in critic:
        assert th.equal(before[name], after[name]), name
    assert any(not th.equal(before[name], after[name]) for name in before if name not in critic)  # the actor moved on
    assert model.n_skipped_critic_steps == 2
    assert model.logger.name_to_value["train/skipped_critic_steps"] == 2
    assert model.n_skipped_policy_updates == 0  # the policy step has no learning rate
    assert_finite(model)


# ---------------------------------------------------------------------------------------------- SubprocVecEnv


class FailingEnv(gym.Env):
    observation_space = spaces.Box(-1, 1, (2,))
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action):
        raise RuntimeError("the simulator crashed")


def test_a_dead_subprocess_worker_is_named(capfd):
    venv = SubprocVecEnv([FailingEnv, FailingEnv], start_method="fork")
    try:
        venv.reset()
        with (
            pytest.raises(EnvironmentWorkerError, match="SubprocVecEnv worker process failed") as error,
            explain_worker_failures(),
        ):
            venv.step(np.array([0, 1]))
        assert isinstance(error.value, EOFError)  # code that catches EOFError still does
        assert isinstance(error.value.__cause__, EOFError)
        assert "--vec-env dummy" in str(error.value)
    finally:
        for process in venv.processes:
            process.join(timeout=10)
    assert "the simulator crashed" in capfd.readouterr().err  # the worker's own traceback

    with pytest.raises(EOFError) as other, explain_worker_failures():
        raise EOFError  # an EOFError of anything else is left alone
    assert type(other.value) is EOFError


def test_the_zoo_entry_point_names_a_dead_worker_and_saves_vec_normalize_atomically(monkeypatch):
    from sb3_trpo.zoo import __main__ as zoo_main

    def cli_main():
        assert VecNormalize.save is save_vec_normalize
        venv = SubprocVecEnv([FailingEnv], start_method="fork")
        venv.reset()
        try:
            venv.step(np.array([0]))
        finally:
            venv.processes[0].join(timeout=10)

    monkeypatch.setattr(zoo_main.cli, "main", cli_main)
    monkeypatch.setattr("sys.argv", ["sb3-trpo-zoo", "train", "--algo", "ppo"])
    with pytest.raises(EnvironmentWorkerError):
        zoo_main.main()
    assert VecNormalize.save is not save_vec_normalize


def test_vec_env_step_wait_is_left_as_it_was_after_each_rollout():
    model = make(TRPO)
    sentinel = model.env.step_wait
    model.env.step_wait = sentinel  # someone else's instance attribute
    model.learn(N_STEPS)
    assert vars(model.env)["step_wait"] is sentinel


def test_the_observation_check_sits_under_vec_normalize(tmp_path):
    """Checked before VecNormalize sees the observations (its statistics stay finite), and never pickled with it:
    a callback that saves VecNormalize during the rollout (rl_zoo3's evaluations, CheckpointCallback) works."""
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.vec_env import VecNormalize

    envs = [NanObservationEnv(box_env()), NanObservationEnv(box_env(), bad_step=N_STEPS + 5)]
    venv = VecNormalize(DummyVecEnv([lambda env=env: env for env in envs]))
    model = make(TRPO, venv)
    checkpoints = CheckpointCallback(save_freq=1, save_path=str(tmp_path), save_vecnormalize=True)
    with pytest.raises(ValueError, match="environment 1 returned a non-finite observation"):
        model.learn(4 * N_STEPS, callback=checkpoints)
    assert list(tmp_path.glob("*vecnormalize*.pkl"))  # saved during the rollouts
    assert np.isfinite(venv.obs_rms.mean).all()
    assert np.isfinite(venv.obs_rms.var).all()
    assert "step_wait" not in vars(venv.venv)
