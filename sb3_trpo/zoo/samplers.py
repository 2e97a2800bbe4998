"""Optuna search spaces for ``train -optimize``, one sampler per algorithm, with rl_zoo3's signature.

A sampler draws a trial's hyperparameters and returns them ready for the constructor. Its converter
turns ``trial.params`` (what the Optuna storage keeps) back into the same constructor arguments;
rl_zoo3 uses it for ``--trial-id``, to train with the parameters of a stored trial.
"""

from __future__ import annotations

from typing import Any

import optuna
from rl_zoo3.hyperparams_opt import convert_onpolicy_params

# rl_zoo3's own TRPO search bounds the per-dimension KL that sb3_contrib measures; ours is the KL of
# the joint action distribution, about n_actions times larger for the same step.
_MAX_TARGET_KL_PER_ACTION_DIM = 0.1

_LSTM_KEYS = ("enable_critic_lstm", "lstm_hidden_size")


def sample_trpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of :class:`~sb3_trpo.TRPO`: rl_zoo3's TRPO search, with the trust region in our units.

    As rl_zoo3's ``sample_trpo_params``: rollout length, critic mini-batch, discount, GAE λ, critic
    learning rate and epochs, conjugate-gradient iterations, ``target_kl``, network size and
    activation. Two changes: the critic mini-batch starts at 32 (rl_zoo3's comment says so, its code
    starts at 4, which makes the critic fit crawl), and for ``Box`` actions the upper bound of
    ``target_kl`` grows with the number of action dimensions, because ``target_kl`` bounds the joint
    KL here (see the migration guide).

    :param trial: The Optuna trial to draw from
    :param n_actions: Number of action dimensions for ``Box`` actions, 0 otherwise (rl_zoo3's convention)
    :param n_envs: Number of parallel environments (unused, part of rl_zoo3's signature)
    :param additional_args: rl_zoo3's extra arguments (unused)
    :return: Constructor arguments for the trial
    """
    n_steps_pow = trial.suggest_int("n_steps_pow", 5, 12)  # 32 to 4096 steps per environment
    batch_size_pow = trial.suggest_int("batch_size_pow", 5, 10)  # critic mini-batches of 32 to 1024
    one_minus_gamma = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    one_minus_gae_lambda = trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True)
    learning_rate = trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)
    n_critic_updates = trial.suggest_int("n_critic_updates", 5, 30)
    cg_max_steps = trial.suggest_int("cg_max_steps", 5, 30)
    target_kl = trial.suggest_float("target_kl", 0.001, _MAX_TARGET_KL_PER_ACTION_DIM * max(n_actions, 1), log=True)
    net_arch = trial.suggest_categorical("net_arch", ["small", "medium"])
    activation_fn = trial.suggest_categorical("activation_fn", ["tanh", "relu"])

    # The values the constructor sees, shown beside the sampled exponents in Optuna's tables.
    trial.set_user_attr("gamma", 1 - one_minus_gamma)
    trial.set_user_attr("n_steps", 2**n_steps_pow)
    trial.set_user_attr("batch_size", 2**batch_size_pow)
    return convert_onpolicy_params(
        {
            "n_steps_pow": n_steps_pow,
            "batch_size_pow": batch_size_pow,
            "one_minus_gamma": one_minus_gamma,
            "one_minus_gae_lambda": one_minus_gae_lambda,
            "learning_rate": learning_rate,
            "n_critic_updates": n_critic_updates,
            "cg_max_steps": cg_max_steps,
            "target_kl": target_kl,
            "net_arch": net_arch,
            "activation_fn": activation_fn,
        }
    )


def sample_trpo_penalty_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of :class:`~sb3_trpo.TRPOPenalty`: the TRPO search, plus the penalty's own knobs.

    ``target_kl`` is the KL that ``β`` steers towards. Added: the initial ``beta``, the band
    ``kl_tolerance`` around ``target_kl``, the adaptation factor ``beta_factor`` and the
    ``policy_optimizer`` (``"natural"`` or ``"first_order"``, the latter with its defaults).
    Arguments as :func:`sample_trpo_params`.
    """
    hyperparams = sample_trpo_params(trial, n_actions, n_envs, additional_args)
    hyperparams.update(
        beta=trial.suggest_float("beta", 0.1, 10.0, log=True),
        kl_tolerance=trial.suggest_float("kl_tolerance", 1.2, 3.0),
        beta_factor=trial.suggest_float("beta_factor", 1.2, 4.0),
        policy_optimizer=trial.suggest_categorical("policy_optimizer", ["natural", "first_order"]),
    )
    return hyperparams


def _sample_lstm(trial: optuna.Trial, hyperparams: dict[str, Any]) -> dict[str, Any]:
    """Add the LSTM of sb3_contrib's recurrent policies to ``policy_kwargs``: its width, and whether the critic has its own."""
    hyperparams["policy_kwargs"].update(
        enable_critic_lstm=trial.suggest_categorical("enable_critic_lstm", [False, True]),
        lstm_hidden_size=trial.suggest_categorical("lstm_hidden_size", [16, 32, 64, 128, 256]),
    )
    return hyperparams


def sample_trpo_lstm_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of ``RecurrentTRPO``: the TRPO search, plus the LSTM (``enable_critic_lstm``,
    ``lstm_hidden_size`` in ``policy_kwargs``). Arguments as :func:`sample_trpo_params`.
    """
    return _sample_lstm(trial, sample_trpo_params(trial, n_actions, n_envs, additional_args))


def sample_trpo_penalty_lstm_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Search space of ``RecurrentTRPOPenalty``: the TRPOPenalty search, plus the LSTM as in
    :func:`sample_trpo_lstm_params`. Arguments as :func:`sample_trpo_params`.
    """
    return _sample_lstm(trial, sample_trpo_penalty_params(trial, n_actions, n_envs, additional_args))


def convert_trpo_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """``trial.params`` of :func:`sample_trpo_params` or :func:`sample_trpo_penalty_params` as constructor arguments."""
    return convert_onpolicy_params(sampled_params)


def convert_trpo_lstm_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """``trial.params`` of the ``*_lstm`` samplers as constructor arguments (the LSTM keys go into ``policy_kwargs``)."""
    lstm_kwargs = {key: sampled_params[key] for key in _LSTM_KEYS if key in sampled_params}
    hyperparams = convert_onpolicy_params({key: value for key, value in sampled_params.items() if key not in _LSTM_KEYS})
    hyperparams["policy_kwargs"].update(lstm_kwargs)
    return hyperparams
