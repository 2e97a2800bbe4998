"""Trust Region Policy Optimization on Stable-Baselines3."""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo.common.analytic_fisher import analytic_fisher_vector_product, kl_terms_per_state, supports_analytic_fisher
from sb3_trpo.common.critic import fast_critic_fit, rollout_minibatches
from sb3_trpo.common.fisher import KL_ACTION_REDUCTIONS, autograd_fisher_vector_product, kl_per_state
from sb3_trpo.common.mlp_fisher import PolicyMLPActor
from sb3_trpo.common.natural_gradient import (
    LineSearchResult,
    MatrixVectorProduct,
    backtracking_line_search,
    conjugate_gradient,
    flat_concat,
    trust_region_step_scale,
)
from sb3_trpo.common.reduction import batch_mean, batch_std
from sb3_trpo.common.rollout import NumpyActorCritic, collect_rollouts_numpy, numpy_actor_critic_unsupported
from sb3_trpo.common.validation import is_integer, require
from sb3_trpo.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfTRPO = TypeVar("SelfTRPO", bound="TRPO")

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
KL_CONSTRAINTS = ("mean", "max")
FISHER_METHODS = ("auto", "analytic", "autograd")
ROLLOUT_METHODS = ("auto", "numpy", "sb3")


@dataclass
class PolicyBatch:
    """The on-policy batch the policy step works on (the whole rollout, optionally sub-sampled)."""

    observations: th.Tensor | dict[str, th.Tensor]
    actions: th.Tensor
    behaviour_log_prob: th.Tensor  # log β(a|s), stored by the policy that collected the data
    advantages: th.Tensor  # normalised when ``normalize_advantage``
    mask: th.Tensor | None = None  # the real states of a padded batch (recurrent sequences); None: all

    def __len__(self) -> int:
        """The number of items :meth:`subset` picks from: states here, whole sequences in a recurrent batch."""
        return self.actions.shape[0]

    def subset(self, index: th.Tensor) -> PolicyBatch:
        """The states at ``index`` (a minibatch of a feed-forward batch)."""
        observations: th.Tensor | dict[str, th.Tensor]
        if isinstance(self.observations, dict):
            observations = {key: obs[index] for key, obs in self.observations.items()}
        else:
            observations = self.observations[index]
        mask = None if self.mask is None else self.mask[index]
        return PolicyBatch(observations, self.actions[index], self.behaviour_log_prob[index], self.advantages[index], mask)


@dataclass(frozen=True)
class PolicyEvaluation:
    """The surrogate and the KL to ``π_θold`` of the current parameters, on the batch."""

    objective: float
    kl_mean: float
    kl_max: float

    def kl(self, constraint: str) -> float:
        return self.kl_max if constraint == "max" else self.kl_mean

    def is_finite(self) -> bool:
        return math.isfinite(self.objective) and math.isfinite(self.kl_mean) and math.isfinite(self.kl_max)


@dataclass
class NaturalGradientProblem:
    """Everything a policy step needs at ``θ_old``: ``g``, ``v -> F v`` and a way to evaluate candidates."""

    actor_params: list[th.nn.Parameter]
    gradient: th.Tensor  # g = ∇_θ L(θ) at θ_old
    fisher_vector_product: MatrixVectorProduct  # v -> F v (undamped)
    before: PolicyEvaluation  # at θ_old (KL = 0)
    evaluate: Callable[[], PolicyEvaluation]  # at the parameters currently in the policy


@dataclass
class PolicyUpdateStats:
    """Diagnostics of one policy step, logged under ``train/``."""

    objective: float
    kl_mean: float = 0.0
    kl_max: float = 0.0
    expected_improvement: float = 0.0
    actual_improvement: float = 0.0
    line_search_success: bool = False
    line_search_backtracks: int = 0
    cg_iterations: int = 0
    cg_residual: float = math.nan
    step_size: float = 0.0
    skipped: bool = False

    def kl(self, constraint: str) -> float:
        return self.kl_max if constraint == "max" else self.kl_mean


def surrogate_objective(
    log_prob: th.Tensor, behaviour_log_prob: th.Tensor, advantages: th.Tensor, mask: th.Tensor | None = None
) -> th.Tensor:
    """``L(θ) = mean[ π_θ(a|s) / β(a|s) · Â(s, a) ]``, importance-sampled against the behaviour policy β."""
    return batch_mean(th.exp(log_prob - behaviour_log_prob) * advantages, mask)


class TRPO(OnPolicyAlgorithm):
    """
    Trust Region Policy Optimization (TRPO), a drop-in replacement for ``sb3_contrib.TRPO``.

    Paper: https://arxiv.org/abs/1502.05477 (Schulman et al., 2015)

    Each update maximises the importance-sampled surrogate ``L(θ) = E[π_θ(a|s)/β(a|s) · Â(s,a)]``
    subject to ``KL(π_θold ‖ π_θ) <= target_kl`` on the states of the batch: the natural gradient
    ``x ≈ (F + λI)⁻¹ g`` by conjugate gradient on Fisher-vector products, scaled to the boundary of
    the (damped) quadratic trust region ``Δ = sqrt(2 δ / xᵀ(F + λI)x) · x``, then a backtracking line
    search that accepts only a step that improves ``L`` and stays in the region (the parameters are
    restored exactly otherwise).
    The critic is then fitted by regression on the GAE returns; its updates never move the actor's
    parameters, also when a features extractor is shared.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy, or a subclass
        of SB3's ``ActorCriticPolicy``)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the critic's optimiser, a float or a schedule of the
        remaining progress (1 to 0). The policy step has no learning rate: ``target_kl`` sets its size.
    :param n_steps: The number of steps to run for each environment per update
        (the rollout buffer holds ``n_steps * n_envs`` transitions, which must be > 1 when
        ``normalize_advantage`` is on)
    :param batch_size: Minibatch size of the critic's regression, ``>= 1``
    :param gamma: Discount factor, in [0, 1]
    :param cg_max_steps: Maximum number of conjugate-gradient iterations (Fisher-vector products)
        for the natural gradient, ``>= 1``
    :param cg_damping: Damping ``λ >= 0`` added to the Fisher matrix in the conjugate-gradient solve
    :param line_search_shrinking_factor: Step reduction factor of the backtracking line search, in (0, 1)
        (candidates are ``θ_old + factor^k · Δ``)
    :param line_search_max_iter: Maximum number of line-search candidates, ``>= 1``
    :param n_critic_updates: Number of passes (epochs) of the critic over the rollout per update, ``>= 0``
    :param gae_lambda: Factor for trade-off of bias vs variance for the Generalized Advantage
        Estimator, in [0, 1]
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param normalize_advantage: Whether to normalise the advantages over the batch
    :param target_kl: The trust-region radius ``δ > 0``: the largest KL divergence
        ``KL(π_θold ‖ π_θ)`` a policy update may reach. Values like 0.01, 0.05.
    :param sub_sampling_factor: Use every ``k``-th transition of the rollout for the policy step
        (surrogate, gradient, KL), to make it faster; ``>= 1``. See p. 40-42 of John Schulman's thesis.
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    :param kl_constraint: Which KL over the states of the batch the trust region bounds: ``"mean"``
        (default, the practical algorithm of the paper) or ``"max"`` (the bound of the paper's
        theory, enforced by the line search; the step is still scaled with the mean-KL Fisher)
    :param cg_residual_tol: Stop conjugate gradient once the squared residual norm is at most
        this, ``>= 0``
    :param fisher_method: How Fisher-vector products are computed: ``"analytic"``, the closed form
        ``F v = Jᵀ M J v`` for SB3's Gaussian (also gSDE), categorical, multi-categorical and
        Bernoulli distributions; ``"autograd"``, Pearlmutter's double backward through the KL,
        for any distribution; or ``"auto"`` (default), analytic where the distribution has a
        closed form and autograd otherwise. Both give the same products (to float64 precision).
    :param fisher_sub_sampling_factor: Compute the Fisher-vector products on every ``k``-th item of the
        policy batch (states; whole sequences for recurrent policies), ``>= 1``. The paper used 10%
        (``k = 10``). Unlike ``sub_sampling_factor``, the gradient and the line search keep the
        whole batch: only the curvature estimate gets cheaper (and noisier).
    :param rollout_method: How the policy is evaluated while collecting rollouts: ``"numpy"``, SB3's
        MLP actor-critic (diagonal Gaussian or categorical actions, on the CPU) as NumPy products,
        faster than torch on small networks (``benchmarks/speed.py`` measures the rollouts), with
        the same random draws;
        ``"sb3"``, SB3's own ``collect_rollouts``; or ``"auto"`` (default), ``"numpy"`` where the
        policy is covered and ``"sb3"`` otherwise (gSDE, other distributions, custom networks, a GPU).
        Both collect the same rollouts (to float32 rounding), with the same callbacks; on chaotic
        environments (MuJoCo) rounding differences grow along an episode, so the same seed gives
        another trajectory with each method.
    :param kl_action_reduction: How the KL of one state adds up over independent action dimensions
        (diagonal Gaussian and Bernoulli actions): ``"sum"`` (default), the KL of the joint action
        distribution, as in the paper; or ``"mean"``, averaged over the dimensions, as
        ``sb3_contrib.TRPO`` does. At the same ``target_kl``, ``"mean"`` lets a ``d``-dimensional
        policy move about ``d`` times as far in joint KL; use it to reproduce sb3-contrib's runs
        and rl-zoo's MuJoCo settings, which were tuned with it. Discrete actions are not affected.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        n_critic_updates: int = 10,
        gae_lambda: float = 0.95,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = True,
        target_kl: float = 0.01,
        sub_sampling_factor: int = 1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        kl_constraint: str = "mean",
        cg_residual_tol: float = 1e-10,
        fisher_method: str = "auto",
        fisher_sub_sampling_factor: int = 1,
        rollout_method: str = "auto",
        kl_action_reduction: str = "sum",
    ):
        self._check_hyperparameters(
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            gae_lambda=gae_lambda,
            cg_max_steps=cg_max_steps,
            cg_damping=cg_damping,
            line_search_shrinking_factor=line_search_shrinking_factor,
            line_search_max_iter=line_search_max_iter,
            n_critic_updates=n_critic_updates,
            target_kl=target_kl,
            sub_sampling_factor=sub_sampling_factor,
            kl_constraint=kl_constraint,
            cg_residual_tol=cg_residual_tol,
            fisher_method=fisher_method,
            fisher_sub_sampling_factor=fisher_sub_sampling_factor,
            rollout_method=rollout_method,
            kl_action_reduction=kl_action_reduction,
        )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # TRPO has no entropy bonus
            vf_coef=0.0,  # the critic is fitted separately
            max_grad_norm=0.0,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=None,  # checked below, with a ValueError
        )
        if self.env is not None:
            self._check_env(normalize_advantage, batch_size)

        self.normalize_advantage = normalize_advantage
        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.cg_residual_tol = cg_residual_tol
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.target_kl = target_kl
        self.kl_constraint = kl_constraint
        self.fisher_method = fisher_method
        self.fisher_sub_sampling_factor = fisher_sub_sampling_factor
        self.rollout_method = rollout_method
        self.kl_action_reduction = kl_action_reduction
        self.n_critic_updates = n_critic_updates
        self.sub_sampling_factor = sub_sampling_factor
        # Counters of updates skipped because of non-finite numbers; saved with the model.
        self.n_skipped_policy_updates = 0
        self.n_skipped_critic_steps = 0

        if _init_setup_model:
            self._setup_model()

    @staticmethod
    def _check_hyperparameters(**params: Any) -> None:
        """Raise a ValueError naming the first hyperparameter outside its accepted range."""
        p = params
        require(is_integer(p["n_steps"]) and p["n_steps"] >= 1, "n_steps", "an integer >= 1", p["n_steps"])
        require(is_integer(p["batch_size"]) and p["batch_size"] >= 1, "batch_size", "an integer >= 1", p["batch_size"])
        require(0.0 <= p["gamma"] <= 1.0, "gamma", "in [0, 1]", p["gamma"])
        require(0.0 <= p["gae_lambda"] <= 1.0, "gae_lambda", "in [0, 1]", p["gae_lambda"])
        require(is_integer(p["cg_max_steps"]) and p["cg_max_steps"] >= 1, "cg_max_steps", "an integer >= 1", p["cg_max_steps"])
        require(p["cg_damping"] >= 0.0, "cg_damping", ">= 0", p["cg_damping"])
        require(
            0.0 < p["line_search_shrinking_factor"] < 1.0,
            "line_search_shrinking_factor",
            "in the open interval (0, 1)",
            p["line_search_shrinking_factor"],
        )
        require(
            is_integer(p["line_search_max_iter"]) and p["line_search_max_iter"] >= 1,
            "line_search_max_iter",
            "an integer >= 1",
            p["line_search_max_iter"],
        )
        require(
            is_integer(p["n_critic_updates"]) and p["n_critic_updates"] >= 0,
            "n_critic_updates",
            "an integer >= 0",
            p["n_critic_updates"],
        )
        require(p["target_kl"] > 0.0 and math.isfinite(p["target_kl"]), "target_kl", "a finite number > 0", p["target_kl"])
        require(
            is_integer(p["sub_sampling_factor"]) and p["sub_sampling_factor"] >= 1,
            "sub_sampling_factor",
            "an integer >= 1",
            p["sub_sampling_factor"],
        )
        require(p["kl_constraint"] in KL_CONSTRAINTS, "kl_constraint", f"one of {KL_CONSTRAINTS}", p["kl_constraint"])
        require(p["cg_residual_tol"] >= 0.0, "cg_residual_tol", ">= 0", p["cg_residual_tol"])
        require(p["fisher_method"] in FISHER_METHODS, "fisher_method", f"one of {FISHER_METHODS}", p["fisher_method"])
        require(
            is_integer(p["fisher_sub_sampling_factor"]) and p["fisher_sub_sampling_factor"] >= 1,
            "fisher_sub_sampling_factor",
            "an integer >= 1",
            p["fisher_sub_sampling_factor"],
        )
        require(
            p["kl_action_reduction"] in KL_ACTION_REDUCTIONS,
            "kl_action_reduction",
            f"one of {KL_ACTION_REDUCTIONS}",
            p["kl_action_reduction"],
        )
        require(p["rollout_method"] in ROLLOUT_METHODS, "rollout_method", f"one of {ROLLOUT_METHODS}", p["rollout_method"])

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.fisher_method == "analytic":
            require(
                supports_analytic_fisher(self.policy.action_dist),
                "fisher_method",
                '"auto" or "autograd" for this policy: its action distribution has no closed-form Fisher '
                "(only SB3's Gaussian, gSDE, categorical, multi-categorical and Bernoulli have one)",
                self.fisher_method,
            )
        if self.rollout_method == "numpy":
            reason = numpy_actor_critic_unsupported(self.policy)
            require(reason is None, "rollout_method", f'"auto" or "sb3" for this policy: {reason}', self.rollout_method)

    def _check_env(self, normalize_advantage: bool, batch_size: int) -> None:
        assert self.env is not None
        require(
            isinstance(self.action_space, SUPPORTED_ACTION_SPACES),
            "env (its action space)",
            "one of Box, Discrete, MultiDiscrete, MultiBinary",
            self.action_space,
        )
        buffer_size = self.env.num_envs * self.n_steps
        if normalize_advantage:
            require(
                buffer_size > 1,
                "n_steps * n_envs",
                f"> 1 when normalize_advantage=True (n_steps={self.n_steps}, n_envs={self.env.num_envs})",
                buffer_size,
            )
        if buffer_size % batch_size > 0:
            warnings.warn(
                f"The critic's mini-batch size is {batch_size}, but the rollout buffer holds "
                f"n_steps * n_envs = {buffer_size} transitions: every pass ends with a truncated mini-batch "
                f"of size {buffer_size % batch_size}. A batch_size that divides n_steps * n_envs avoids it.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ rollouts

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's ``collect_rollouts``, with the policy evaluated by NumPy where ``rollout_method`` allows it."""
        actor_critic = None if self.rollout_method == "sb3" else NumpyActorCritic.from_policy(self.policy)
        if actor_critic is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return collect_rollouts_numpy(self, actor_critic, env, callback, rollout_buffer, n_rollout_steps)

    # ------------------------------------------------------------------ the update

    def train(self) -> None:
        """One TRPO update on the rollout buffer: policy step in the trust region, then the critic fit."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        batch = self._policy_batch()
        stats, actor_params = self._policy_step(batch)
        value_losses = self._fit_critic(actor_params)

        self._n_updates += 1
        self._log_update(stats, value_losses)

    def _policy_batch(self) -> PolicyBatch:
        """The whole rollout as one batch, every ``sub_sampling_factor``-th item, advantages normalised."""
        batch = self._rollout_batch(next(iter(self.rollout_buffer.get(batch_size=None))))
        if self.sub_sampling_factor > 1:
            batch = batch.subset(th.arange(0, len(batch), self.sub_sampling_factor, device=batch.actions.device))
        return self._normalize_advantages(batch)

    def _rollout_batch(self, data: Any) -> PolicyBatch:
        """The rollout buffer's samples as a :class:`PolicyBatch` (discrete actions as integer indices)."""
        actions = data.actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else data.actions
        return PolicyBatch(data.observations, actions, data.old_log_prob, data.advantages)

    def _normalize_advantages(self, batch: PolicyBatch) -> PolicyBatch:
        """Advantages to zero mean and unit variance over the (real states of the) batch."""
        n_states = batch.advantages.numel() if batch.mask is None else int(batch.mask.sum())
        if self.normalize_advantage and n_states > 1:
            mean, std = batch_mean(batch.advantages, batch.mask), batch_std(batch.advantages, batch.mask)
            batch.advantages = (batch.advantages - mean) / (std + 1e-8)
        return batch

    def _distribution(self, batch: PolicyBatch) -> Distribution:
        """The current policy's action distribution on the states of ``batch``."""
        return self.policy.get_distribution(batch.observations)

    def _natural_gradient_problem(self, batch: PolicyBatch) -> NaturalGradientProblem:
        """Surrogate, gradient, KL and Fisher-vector product at ``θ_old``, shared by every policy step."""
        actor = self._mlp_actor(batch)
        if actor is not None:
            return self._mlp_natural_gradient_problem(actor, batch)
        with th.no_grad():
            # get_distribution() updates the policy's distribution object in place: keep a shallow copy.
            old_distribution = copy.copy(self._distribution(batch))
        distribution = self._distribution(batch)
        objective = self._surrogate(distribution, batch)

        # The actor is whatever the action distribution depends on: no reliance on parameter names.
        params = [param for param in self.policy.parameters() if param.requires_grad]
        grads = th.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
        actor_params = [param for param, grad in zip(params, grads, strict=True) if grad is not None]
        gradient = flat_concat([grad for grad in grads if grad is not None])

        # The Fisher may use a sub-sample of the states (the paper used 10%); the gradient uses them all.
        fisher_batch, fisher_old, fisher_distribution = batch, old_distribution, distribution
        if self.fisher_sub_sampling_factor > 1:
            fisher_batch = batch.subset(self._fisher_index(batch))
            with th.no_grad():
                fisher_old = copy.copy(self._distribution(fisher_batch))
            fisher_distribution = self._distribution(fisher_batch)

        def kl() -> th.Tensor:  # the mean KL with its graph: only the autograd product needs it
            return batch_mean(self._kl_per_state(fisher_old, fisher_distribution), fisher_batch.mask)

        fisher_vector_product = self._fisher_vector_product(fisher_distribution, kl, actor_params, fisher_batch)

        def evaluate() -> PolicyEvaluation:
            with th.no_grad():
                candidate = self._distribution(batch)
                return self._evaluate(candidate, old_distribution, batch)

        before = PolicyEvaluation(objective.item(), 0.0, 0.0)
        return NaturalGradientProblem(actor_params, gradient, fisher_vector_product, before, evaluate)

    def _fisher_index(self, batch: PolicyBatch) -> th.Tensor:
        """The states the Fisher-vector products use: every ``fisher_sub_sampling_factor``-th."""
        return th.arange(0, len(batch), self.fisher_sub_sampling_factor, device=batch.actions.device)

    def _mlp_actor(self, batch: PolicyBatch) -> PolicyMLPActor | None:
        """SB3's MLP actor by hand on ``batch`` (no autograd through the network), where it applies, else None.

        Where ``_distribution`` is the policy's own and Fisher products are closed-form (``fisher_method``
        not ``"autograd"``), for the policies :func:`~sb3_trpo.common.mlp_fisher.mlp_actor_unsupported` covers.
        """
        if self.fisher_method == "autograd" or type(self)._distribution is not TRPO._distribution:
            return None
        return PolicyMLPActor.from_policy(self.policy, batch.observations, mask=batch.mask)

    def _mlp_natural_gradient_problem(self, actor: PolicyMLPActor, batch: PolicyBatch) -> NaturalGradientProblem:
        """:meth:`_natural_gradient_problem` for SB3's MLP actor: one forward pass at ``θ_old`` serves all.

        The same quantities as the autograd path (to float rounding, ``tests/test_mlp_fisher.py``):
        ``g = Jᵀ ∂L/∂η`` and ``F v = Jᵀ M J v`` by hand, the distributions SB3's own, built from ``η``.
        """
        old_distribution = actor.distribution(actor.outputs_old)
        objective, gradient = actor.gradient(lambda distribution: self._surrogate(distribution, batch))
        fisher_actor = actor.subset(self._fisher_index(batch)) if self.fisher_sub_sampling_factor > 1 else actor
        fisher_vector_product = self._reduced_fisher(fisher_actor.fisher_vector_product(), old_distribution)

        def evaluate() -> PolicyEvaluation:
            with th.no_grad():
                return self._evaluate(actor.distribution(actor.outputs()), old_distribution, batch)

        before = PolicyEvaluation(objective.item(), 0.0, 0.0)
        actor_params = cast(list[th.nn.Parameter], actor.params)  # the policy's own parameters
        return NaturalGradientProblem(actor_params, gradient, fisher_vector_product, before, evaluate)

    def _fisher_vector_product(
        self,
        distribution: Distribution,
        kl: Callable[[], th.Tensor],
        actor_params: list[th.nn.Parameter],
        batch: PolicyBatch,
    ) -> MatrixVectorProduct:
        """``v -> F v`` at ``θ_old``: closed form ``Jᵀ M J v`` when the distribution has one, else autograd.

        The closed form goes through autograd's graph of the network (SB3's MLP actor has its own,
        hand-written path, :meth:`_mlp_natural_gradient_problem`); ``kl`` gives the mean KL with its
        graph, for the double-backward product of any other distribution. Both are built on first
        use (before the parameters move), so a step that never needs ``F`` never pays for it.
        """
        if self.fisher_method != "autograd":
            analytic = analytic_fisher_vector_product(distribution, actor_params, batch.mask)
            if analytic is not None:
                return self._reduced_fisher(analytic, distribution)
        build_autograd = functools.cache(lambda: autograd_fisher_vector_product(kl(), actor_params))
        return lambda vector: build_autograd()(vector)

    def _reduced_fisher(self, joint: MatrixVectorProduct, distribution: Distribution) -> MatrixVectorProduct:
        """The Fisher of the KL as ``kl_action_reduction`` says, from the joint KL's ``joint``.

        The KL averaged over its terms (``"mean"``) has the Fisher of the joint KL divided by their number.
        """
        if self.kl_action_reduction != "mean":
            return joint
        scale = 1.0 / kl_terms_per_state(distribution)
        return lambda vector: joint(vector) * scale

    def _kl_per_state(self, old: Distribution, new: Distribution) -> th.Tensor:
        """``KL(π_old(·|s) ‖ π_new(·|s))`` per state, over the action dimensions as ``kl_action_reduction`` says."""
        return kl_per_state(old, new, self.kl_action_reduction)

    @staticmethod
    def _surrogate(distribution: Distribution, batch: PolicyBatch) -> th.Tensor:
        """:func:`surrogate_objective` of ``distribution`` on ``batch``'s actions, behaviour log-probs and advantages."""
        return surrogate_objective(
            distribution.log_prob(batch.actions), batch.behaviour_log_prob, batch.advantages, batch.mask
        )

    def _evaluate(self, candidate: Distribution, old_distribution: Distribution, batch: PolicyBatch) -> PolicyEvaluation:
        objective = self._surrogate(candidate, batch)
        # KL ≥ 0; float32 round-off can put a tiny step's value slightly below.
        kl = self._kl_per_state(old_distribution, candidate).clamp_min(0.0)
        kl_max = (kl if batch.mask is None else kl[batch.mask]).max()
        return PolicyEvaluation(objective.item(), batch_mean(kl, batch.mask).item(), kl_max.item())

    def _policy_step(self, batch: PolicyBatch) -> tuple[PolicyUpdateStats, list[th.nn.Parameter]]:
        """The natural-gradient step: CG direction ``x``, scaled by :meth:`_step_length`, then the line search."""
        problem = self._natural_gradient_problem(batch)
        if not th.isfinite(batch.advantages).all():
            return self._skip_policy_update("non-finite advantages", problem), problem.actor_params
        if not th.isfinite(problem.gradient).all():
            return self._skip_policy_update("non-finite policy gradient", problem), problem.actor_params

        def damped_fisher_vector_product(vector: th.Tensor) -> th.Tensor:  # (F + λI) v
            return problem.fisher_vector_product(vector) + self.cg_damping * vector

        cg = conjugate_gradient(
            damped_fisher_vector_product,
            problem.gradient,
            max_steps=self.cg_max_steps,
            residual_tol=self.cg_residual_tol,
        )
        if cg.iterations == 0:  # ‖g‖² is already below the CG tolerance: there is no ascent direction
            return PolicyUpdateStats(objective=problem.before.objective, cg_residual=cg.residual_norm), problem.actor_params
        direction = cg.solution
        if not th.isfinite(direction).all():
            return self._skip_policy_update("non-finite conjugate-gradient direction", problem), problem.actor_params
        # The curvature of the damped model the direction solves: x = (F + λI)⁻¹ g maximises gᵀΔ subject
        # to ½ Δᵀ(F + λI)Δ ≤ δ along s·x, as in the reference implementations (and sb3-contrib).
        curvature = th.dot(direction, damped_fisher_vector_product(direction)).item()
        if not (math.isfinite(curvature) and curvature > 0.0):
            reason = f"non-positive or non-finite curvature xᵀ(F + λI)x = {curvature:.3g}"
            return self._skip_policy_update(reason, problem), problem.actor_params
        full_step = self._step_length(curvature) * direction

        result = backtracking_line_search(
            problem.actor_params,
            full_step,
            problem.evaluate,
            lambda candidate: self._is_acceptable(candidate, problem.before),
            self.line_search_shrinking_factor,
            self.line_search_max_iter,
        )
        stats = self._step_stats(problem, result, full_step)
        stats.cg_iterations, stats.cg_residual = cg.iterations, cg.residual_norm
        return stats, problem.actor_params

    def _step_length(self, curvature: float) -> float:
        """TRPO's step length: ``sqrt(2δ / xᵀ(F + λI)x)``, the boundary of the damped quadratic trust region."""
        return trust_region_step_scale(curvature, self.target_kl)

    def _is_acceptable(self, candidate: PolicyEvaluation, before: PolicyEvaluation) -> bool:
        """TRPO's acceptance test: the surrogate improves and the KL stays inside the trust region."""
        return (
            candidate.is_finite()
            and candidate.objective > before.objective
            and candidate.kl(self.kl_constraint) <= self.target_kl
        )

    @staticmethod
    def _step_stats(
        problem: NaturalGradientProblem, result: LineSearchResult[PolicyEvaluation], full_step: th.Tensor
    ) -> PolicyUpdateStats:
        """Diagnostics of a line search: where it landed and what the linear model predicted."""
        stats = PolicyUpdateStats(
            objective=problem.before.objective,
            line_search_success=result.accepted,
            line_search_backtracks=result.n_backtracks,
        )
        if result.accepted and result.evaluation is not None:
            step = result.step_fraction * full_step
            stats.objective = result.evaluation.objective
            stats.kl_mean, stats.kl_max = result.evaluation.kl_mean, result.evaluation.kl_max
            stats.expected_improvement = th.dot(problem.gradient, step).item()
            stats.actual_improvement = result.evaluation.objective - problem.before.objective
            stats.step_size = th.linalg.vector_norm(step).item()
        return stats

    def _skip_policy_update(self, reason: str, problem: NaturalGradientProblem) -> PolicyUpdateStats:
        """Leave the actor untouched, warn, and count the skipped update."""
        self.n_skipped_policy_updates += 1
        warnings.warn(
            f"{type(self).__name__}: policy update {self._n_updates} skipped ({reason}); "
            f"the parameters are unchanged ({self.n_skipped_policy_updates} skipped so far).",
            RuntimeWarning,
            stacklevel=3,
        )
        return PolicyUpdateStats(objective=problem.before.objective, skipped=True)

    def _fit_critic(self, actor_params: list[th.nn.Parameter]) -> list[float]:
        """Regress the value function on the GAE returns; the actor's parameters never move."""
        value_losses: list[float] = []
        if not np.isfinite(self.rollout_buffer.returns).all():
            self.n_skipped_critic_steps += 1
            warnings.warn(
                f"{type(self).__name__}: critic fit {self._n_updates} skipped, non-finite returns.",
                RuntimeWarning,
                stacklevel=3,
            )
            return value_losses
        if type(self)._value_loss is TRPO._value_loss:
            # SB3's standard MLP critic with Adam: the same steps (to float32 rounding), without autograd's overhead.
            minibatches = rollout_minibatches(self.rollout_buffer, self.batch_size, self.n_critic_updates)
            result = fast_critic_fit(self.policy, self.policy.optimizer, minibatches)
            if result is not None:
                for param in actor_params:
                    param.grad = None
                self.n_skipped_critic_steps += result.n_skipped_steps
                return result.losses
        for _ in range(self.n_critic_updates):
            for data in self.rollout_buffer.get(self.batch_size):
                value_loss = self._value_loss(data)
                if not th.isfinite(value_loss):
                    self.n_skipped_critic_steps += 1
                    continue
                self.policy.optimizer.zero_grad()
                value_loss.backward()
                # Parameters without a gradient are left alone by the optimiser, whatever its state.
                for param in actor_params:
                    param.grad = None
                self.policy.optimizer.step()
                value_losses.append(value_loss.item())
        return value_losses

    def _value_loss(self, data: Any) -> th.Tensor:
        """Mean squared error of the critic on a minibatch of the rollout buffer."""
        values = self.policy.predict_values(data.observations).flatten()
        return batch_mean((data.returns - values).pow(2))

    def _log_update(self, stats: PolicyUpdateStats, value_losses: list[float]) -> None:
        record = self.logger.record
        record("train/policy_objective", stats.objective)
        record("train/kl_divergence", stats.kl_mean)
        record("train/kl_divergence_max", stats.kl_max)
        record("train/expected_improvement", stats.expected_improvement)
        record("train/actual_improvement", stats.actual_improvement)
        record("train/is_line_search_success", float(stats.line_search_success))
        record("train/line_search_backtracks", stats.line_search_backtracks)
        record("train/cg_iterations", stats.cg_iterations)
        record("train/cg_residual", stats.cg_residual)
        record("train/step_size", stats.step_size)
        record("train/skipped_policy_updates", self.n_skipped_policy_updates)
        record("train/skipped_critic_steps", self.n_skipped_critic_steps)
        if value_losses:
            record("train/value_loss", float(np.mean(value_losses)))
        values, returns = self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        record("train/explained_variance", explained_variance(values, returns))
        if hasattr(self.policy, "log_std"):
            record("train/std", th.exp(self.policy.log_std).mean().item())
        record("train/n_updates", self._n_updates, exclude="tensorboard")

    def learn(
        self: SelfTRPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfTRPO:
        """SB3's ``learn()``; TensorBoard runs are named after the class (``TRPO_1``, ``TRPOPenalty_1``, ...)."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
