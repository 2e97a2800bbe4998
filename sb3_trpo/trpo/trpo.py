"""Trust Region Policy Optimization on Stable-Baselines3."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo.accel import (
    FlatCritic,
    MLPActor,
    MLPSpec,
    NumpyRollouts,
    actor_unsupported,
    critic_unsupported,
    recognise,
    rollout_unsupported,
)
from sb3_trpo.common.analytic_fisher import supports_analytic_fisher
from sb3_trpo.common.backends import (
    ActorBackend,
    Backends,
    CriticBackend,
    CriticFitResult,
    RolloutBackend,
    SB3Rollouts,
    TorchActor,
    TorchCritic,
    actor_parameters,
)
from sb3_trpo.common.files import CheckedFilesAlgorithm
from sb3_trpo.common.fisher import KL_ACTION_REDUCTIONS
from sb3_trpo.common.natural_gradient import (
    LineSearchResult,
    backtracking_line_search,
    conjugate_gradient,
    trust_region_step_scale,
)
from sb3_trpo.common.observations import finite_observations
from sb3_trpo.common.policy_step import (
    ActorProblem,
    PolicyBatch,
    PolicyEvaluation,
    PolicyObjective,
    invalid_candidate,
    surrogate_objective,
)
from sb3_trpo.common.reduction import batch_mean, batch_std
from sb3_trpo.common.validation import (
    ContribAssertionError,
    Rule,
    boolean,
    integer,
    is_device,
    is_integer,
    is_number,
    number,
    one_of,
    require,
    validate,
)
from sb3_trpo.distributed import DISTRIBUTED_MODES
from sb3_trpo.distributed.algorithm import DataParallelOnPolicyAlgorithm
from sb3_trpo.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

SelfTRPO = TypeVar("SelfTRPO", bound="TRPO")

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
KL_CONSTRAINTS = ("mean", "max")
FISHER_METHODS = ("auto", "analytic", "autograd")
ROLLOUT_METHODS = ("auto", "numpy", "sb3")
ACTOR_METHODS = ("auto", "mlp", "torch")
CRITIC_METHODS = ("auto", "flat", "torch")
IMPORTANCE_RATIOS = ("behaviour", "current")

HYPERPARAMETERS: dict[str, Rule] = {
    "learning_rate": Rule("a finite number >= 0 or a schedule", lambda v: callable(v) or (is_number(v) and v >= 0)),
    "n_steps": integer(1),
    "batch_size": integer(1),
    "gamma": number(0, 1),
    "cg_max_steps": integer(1),
    "cg_damping": number(0),
    "line_search_shrinking_factor": number(0, 1, open_low=True, open_high=True),
    "line_search_max_iter": integer(1),
    "n_critic_updates": integer(0),
    "gae_lambda": number(0, 1),
    "target_kl": number(0, open_low=True),
    "sub_sampling_factor": integer(1),
    "kl_constraint": one_of(KL_CONSTRAINTS),
    "cg_residual_tol": number(0),
    "fisher_method": one_of(FISHER_METHODS),
    "fisher_sub_sampling_factor": integer(1),
    "rollout_method": one_of(ROLLOUT_METHODS),
    "kl_action_reduction": one_of(KL_ACTION_REDUCTIONS),
    "actor_method": one_of(ACTOR_METHODS),
    "critic_method": one_of(CRITIC_METHODS),
    "distributed": one_of(DISTRIBUTED_MODES),
    "max_policy_lag": integer(0),
    "importance_ratio": one_of(IMPORTANCE_RATIOS),
    "ratio_truncation": Rule("None (no truncation) or a finite number > 0", lambda v: v is None or (is_number(v) and v > 0)),
    "normalize_advantage": boolean(),
    "use_sde": boolean(),
    "sde_sample_freq": integer(-1),
    "stats_window_size": integer(1),
    "verbose": integer(0),
    "seed": Rule("None or an integer in [0, 2**32 - 1]", lambda v: v is None or (is_integer(v) and 0 <= v < 2**32)),
    "policy_kwargs": Rule("None or a dict", lambda v: v is None or isinstance(v, dict)),
    "rollout_buffer_kwargs": Rule("None or a dict", lambda v: v is None or isinstance(v, dict)),
    "tensorboard_log": Rule("None or a path", lambda v: v is None or isinstance(v, (str, os.PathLike))),
    "device": Rule('"auto", a torch device or its name ("cpu", "cuda:0", ...)', is_device),
}
"""What each hyperparameter accepts (TRPO's own and those it passes to SB3): checked at construction, named once."""

__all__ = ["TRPO", "PolicyBatch", "PolicyUpdateStats", "surrogate_objective"]


@dataclass(frozen=True)
class PolicyUpdateStats:
    """Diagnostics of one policy step, logged under ``train/``: before it, and the accepted candidate (if any)."""

    before: PolicyEvaluation
    after: PolicyEvaluation | None = None  # the accepted candidate; None: the parameters did not move
    expected_improvement: float = 0.0  # gᵀΔ of the accepted step
    line_search_backtracks: int = 0
    cg_iterations: int = 0
    cg_residual: float = math.nan
    step_size: float = 0.0  # ‖Δ‖ of the accepted step
    skipped: bool = False  # non-finite numbers: the update was skipped
    full_step: PolicyEvaluation | None = None  # the line search's first candidate, θ_old + Δ (NaN: invalid)

    @property
    def line_search_success(self) -> bool:
        return self.after is not None

    @property
    def measured(self) -> PolicyEvaluation:
        """Where the step landed: the accepted candidate, else ``θ_old`` (KL 0)."""
        return self.before if self.after is None else self.after

    @property
    def objective(self) -> float:
        return self.measured.objective

    @property
    def kl_mean(self) -> float:
        return self.measured.kl_mean

    @property
    def kl_max(self) -> float:
        return self.measured.kl_max

    @property
    def actual_improvement(self) -> float:
        return self.measured.objective - self.before.objective

    @classmethod
    def of_line_search(
        cls,
        problem: ActorProblem,
        result: LineSearchResult[PolicyEvaluation],
        full_step: th.Tensor,
        cg_iterations: int,
        cg_residual: float,
    ) -> PolicyUpdateStats:
        """A line search's diagnostics: where it landed and what the linear model predicted."""
        step = result.step_fraction * full_step
        return cls(
            before=problem.before,
            after=result.evaluation if result.accepted else None,
            expected_improvement=th.dot(problem.gradient, step).item() if result.accepted else 0.0,
            line_search_backtracks=result.n_backtracks,
            cg_iterations=cg_iterations,
            cg_residual=cg_residual,
            step_size=th.linalg.vector_norm(step).item() if result.accepted else 0.0,
            full_step=result.full_step_evaluation,
        )


class TRPO(DataParallelOnPolicyAlgorithm, CheckedFilesAlgorithm):
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
    :param rollout_method: The rollout backend: ``"numpy"``, SB3's MLP actor-critic (diagonal
        Gaussian or categorical actions, on the CPU) evaluated as NumPy products, faster than torch on
        small networks, with the same random draws; ``"sb3"``, SB3's own ``collect_rollouts``; or
        ``"auto"`` (default), ``"numpy"`` where the policy is covered and ``"sb3"`` otherwise (gSDE,
        other distributions, custom networks, a GPU). Both collect the same rollouts (to float32
        rounding), with the same callbacks; on chaotic environments (MuJoCo) rounding differences
        grow along an episode, so the same seed gives another trajectory with each method.
    :param actor_method: The actor backend of the policy step: ``"mlp"``, SB3's MLP actor (diagonal
        Gaussian or categorical actions) with the gradient, the Fisher-vector products and the
        line-search candidates written out by hand; ``"torch"``, autograd through the policy's own
        modules, for any policy; or ``"auto"`` (default), ``"mlp"`` where the policy is covered and
        ``fisher_method`` is not ``"autograd"``, ``"torch"`` otherwise. Both compute the same step
        (to float rounding).
    :param critic_method: The critic backend: ``"flat"``, SB3's MLP critic with a plain Adam fitted
        on one flat buffer with a hand-written backward pass and Adam step; ``"torch"``, autograd and
        the policy's optimizer; or ``"auto"`` (default), ``"flat"`` where covered. Both take the same
        steps (to float rounding).

    :param distributed: Training on several processes (``sb3_trpo.distributed``): ``"auto"`` (default),
        data-parallel when the script runs under ``torchrun`` with more than one process and on this
        process alone otherwise; ``"sync"``, data-parallel (the process group must be reachable); ``"off"``,
        this process alone. Data-parallel, each rank collects ``n_steps × n_envs`` with its own
        environments (seeded ``seed + rank · n_envs``), every rank runs the single-process update on the
        union of the ranks' rollouts, ``num_timesteps`` and ``total_timesteps`` count every rank's steps,
        and rank 0 logs and saves (``docs/guide/distributed.rst``). ``"async"``: rank 0 is the learner and
        every other rank a rollout worker that collects with the newest policy it has received and never
        waits for the learner (``docs/guide/asynchronous.rst``).
    :param max_policy_lag: Asynchronous training: the learner drops a batch whose behaviour policy is more
        than this many updates behind its own (counted in ``async/batches_dropped``); 0 makes every worker
        wait for the update on its last batch, which with one worker is synchronous TRPO (with ``K`` workers,
        the other ``K − 1`` batches collected meanwhile are a version old, and dropped).
    :param importance_ratio: The denominator of the surrogate's importance ratio: ``"behaviour"``
        (default), the stored log-probabilities of the policy β that collected the batch, as in the
        paper; ``"current"``, the policy at the start of the update ``π_θk``, as if the batch were on-policy
        (the control of the asynchronous benchmark; wrong when β lags). The two are the same without lag.
    :param ratio_truncation: ``ρ̄``: truncate the behaviour part of the ratio, ``π_θ/β = (π_θ/π_θk) ·
        (π_θk/β)``, to ``min(ρ̄, π_θk/β)`` as IMPALA truncates its importance weights: bounded variance from
        stale batches, for a bias towards ``π_θk``'s own advantage. ``None`` (default): no truncation.
    :param kl_action_reduction: How the KL of one state adds up over independent action dimensions
        (diagonal Gaussian and Bernoulli actions): ``"sum"`` (default), the KL of the joint action
        distribution, as in the paper; or ``"mean"``, averaged over the dimensions, as
        ``sb3_contrib.TRPO`` does. At the same ``target_kl``, ``"mean"`` lets a ``d``-dimensional
        policy move about ``d`` times as far in joint KL; use it to reproduce sb3-contrib's runs
        and rl-zoo's MuJoCo settings, which were tuned with it. Discrete actions are not affected.

    The backends are chosen when the policy is built or replaced (``load``, ``set_parameters``, a new
    policy object), never during an update: ``model.backends`` says which, and with ``verbose >= 1``
    the choice is printed with the reason each accelerator was not used.
    """

    SAVED_ALGORITHM: ClassVar[str] = "TRPO"
    """What :func:`~sb3_trpo.common.files.saved_algorithm` calls the files this class loads."""

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
        actor_method: str = "auto",
        critic_method: str = "auto",
        distributed: str = "auto",
        max_policy_lag: int = 4,
        importance_ratio: str = "behaviour",
        ratio_truncation: float | None = None,
    ):
        validate(HYPERPARAMETERS, locals())
        if not callable(learning_rate):  # a number (validated): SB3's schedule takes Python's, not NumPy's float32
            learning_rate = float(learning_rate)
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
            distributed=distributed,
            max_policy_lag=max_policy_lag,
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
        self.actor_method = actor_method
        self.critic_method = critic_method
        self.kl_action_reduction = kl_action_reduction
        self.n_critic_updates = n_critic_updates
        self.sub_sampling_factor = sub_sampling_factor
        self.importance_ratio = importance_ratio
        self.ratio_truncation = None if ratio_truncation is None else float(ratio_truncation)
        # Counters of updates skipped because of non-finite numbers; saved with the model.
        self.n_skipped_policy_updates = 0
        self.n_skipped_critic_steps = 0
        self._backends: Backends | None = None  # chosen in _setup_model
        self._backends_policy: BasePolicy | None = None

        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ set-up: the policy, the buffer, the backends

    def _setup_model(self) -> None:
        """SB3's set-up (``OnPolicyAlgorithm._setup_model``), the buffer made by a hook, then the backends."""
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self._maybe_recommend_cpu()
        self.rollout_buffer = self._make_rollout_buffer()
        if self.fisher_method == "analytic":
            require(
                supports_analytic_fisher(self.policy.action_dist),
                "fisher_method",
                '"auto" or "autograd" for this policy: its action distribution has no closed-form Fisher '
                "(only SB3's Gaussian, gSDE, categorical, multi-categorical and Bernoulli have one)",
                self.fisher_method,
            )
        self.select_backends()

    def _make_rollout_buffer(self) -> RolloutBuffer:
        """``rollout_buffer_class`` (SB3's ``RolloutBuffer``, or ``DictRolloutBuffer`` for dict observations)."""
        if self.rollout_buffer_class is None:
            dict_space = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = DictRolloutBuffer if dict_space else RolloutBuffer
        return self.rollout_buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )

    @property
    def backends(self) -> Backends:
        """The actor, critic and rollout backends chosen for the current policy (:meth:`select_backends`)."""
        if self._backends is None or self._backends_policy is not self.policy:
            self.select_backends()
        assert self._backends is not None
        return self._backends

    def select_backends(self) -> Backends:
        """Choose the actor, critic and rollout backends for the policy as it is now; call it after changing it."""
        spec = recognise(self.policy)
        actor = self._make_actor_backend(spec)
        backends = Backends(actor, self._make_critic_backend(spec, actor.params), self._make_rollout_backend(spec))
        if self.verbose >= 1 and str(backends) != str(self._backends):
            print(f"{type(self).__name__} backends: {backends}")
        self._backends, self._backends_policy = backends, self.policy
        return backends

    def _make_actor_backend(self, spec: MLPSpec | str) -> ActorBackend:
        reason = 'fisher_method="autograd"' if self.fisher_method == "autograd" else actor_unsupported(spec)
        if self.actor_method == "torch":
            reason = 'actor_method="torch"'
        if reason is None:
            return MLPActor(spec)  # type: ignore[arg-type]
        _require_reference(self.actor_method, "actor_method", '"auto" or "torch"', reason)
        return TorchActor(self._distribution, self._actor_parameters(), self.fisher_method, declined=f"mlp: {reason}")

    def _make_critic_backend(self, spec: MLPSpec | str, actor_params: list[th.nn.Parameter]) -> CriticBackend:
        reference = TorchCritic(self.policy, self._value_loss, actor_params)
        reason = 'critic_method="torch"' if self.critic_method == "torch" else critic_unsupported(spec, self.policy.optimizer)
        if reason is None:
            return FlatCritic(spec, actor_params, fallback=reference)  # type: ignore[arg-type]
        _require_reference(self.critic_method, "critic_method", '"auto" or "torch"', reason)
        reference.declined = f"flat: {reason}"
        return reference

    def _make_rollout_backend(self, spec: MLPSpec | str) -> RolloutBackend:
        reason = 'rollout_method="sb3"' if self.rollout_method == "sb3" else rollout_unsupported(spec)
        if reason is None:
            return NumpyRollouts(spec)  # type: ignore[arg-type]
        _require_reference(self.rollout_method, "rollout_method", '"auto" or "sb3"', reason)
        return SB3Rollouts(declined=f"numpy: {reason}")

    def _actor_parameters(self) -> list[th.nn.Parameter]:
        """The parameters the action distribution depends on, read from autograd's graph of a probe."""
        with th.enable_grad():
            return actor_parameters(self.policy, self._probe_distribution())

    def _probe_distribution(self) -> Distribution:
        """The action distribution on one observation of the space (draws nothing from the random streams)."""
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
        return self.policy.get_distribution(observation)

    def set_parameters(self, load_path_or_dict: Any, exact_match: bool = True, device: th.device | str = "auto") -> None:
        """SB3's ``set_parameters``; the backends are chosen again for the parameters it loaded."""
        super().set_parameters(load_path_or_dict, exact_match=exact_match, device=device)
        self.select_backends()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_backends", "_backends_policy"]

    def _check_env(self, normalize_advantage: bool, batch_size: int) -> None:
        assert self.env is not None
        require(
            isinstance(self.action_space, SUPPORTED_ACTION_SPACES),
            "env (its action space)",
            "one of Box, Discrete, MultiDiscrete, MultiBinary",
            self.action_space,
            ContribAssertionError,  # SB3 asserts here
        )
        buffer_size = self.env.num_envs * self.n_steps
        if normalize_advantage:
            require(
                buffer_size > 1,
                "n_steps * n_envs",
                f"> 1 when normalize_advantage=True (n_steps={self.n_steps}, n_envs={self.env.num_envs})",
                buffer_size,
                ContribAssertionError,  # sb3_contrib.TRPO asserts here
            )
        if buffer_size % batch_size > 0:
            warnings.warn(
                f"The critic's mini-batch size is {batch_size}, but the rollout buffer holds "
                f"n_steps * n_envs = {buffer_size} transitions: every pass ends with a truncated mini-batch "
                f"of size {buffer_size % batch_size}. A batch_size that divides n_steps * n_envs avoids it.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ rollouts and the update

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """SB3's ``collect_rollouts``, run by the rollout backend; data-parallel, the ranks then exchange their rollouts.

        Whatever the backend, the observations are checked where they enter (:func:`finite_observations`):
        the first non-finite one raises a ``ValueError`` naming the environment and the step, before any
        policy, environment or buffer sees it.
        """
        start = self.num_timesteps
        try:
            with finite_observations(env, self._last_obs, self.num_timesteps):
                completed = self.backends.rollout.collect(self, env, callback, rollout_buffer, n_rollout_steps)
        except Exception as error:  # data-parallel, the other ranks learn of it in the exchange, then all stop
            self._exchange_rollouts(rollout_buffer, self.num_timesteps - start, completed=False, error=error)
            raise
        return self._exchange_rollouts(rollout_buffer, self.num_timesteps - start, completed)

    def train(self) -> None:
        """One TRPO update on the rollout buffer: policy step in the trust region, then the critic fit."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        stats = self._policy_step(self._policy_batch())
        critic = self._fit_critic()
        self._n_updates += 1
        self._log_update(stats, critic)
        self._after_update()

    def _policy_batch(self) -> PolicyBatch:
        """The whole rollout as one batch, every ``sub_sampling_factor``-th item, advantages normalised."""
        batch = self._behaviour_corrected(self._rollout_batch(next(iter(self._train_buffer.get(batch_size=None)))))
        return self._normalize_advantages(batch.every(self.sub_sampling_factor))

    def _behaviour_corrected(self, batch: PolicyBatch) -> PolicyBatch:
        """The batch with the ratio's denominator ``importance_ratio`` and ``ratio_truncation`` ask for.

        ``π_θ/β = (π_θ/π_θk) · (π_θk/β)``: the first factor is what the trust region bounds, the second the
        behaviour correction, fixed during the update. Truncating it to ``min(ρ̄, π_θk/β)`` is a new
        denominator, ``log β' = max(log β, log π_θk − log ρ̄)``; ``"current"`` is ``β' = π_θk``. The ratio
        ``π_θk/β`` is logged (``train/ratio_*``) where it can differ from 1: asynchronous, or with either option.
        """
        if not self._behaviour_may_lag() and self.importance_ratio == "behaviour" and self.ratio_truncation is None:
            return batch  # β is the policy at the start of train(): nothing to correct, nothing to measure
        with th.no_grad():
            current = self._distribution(batch).log_prob(batch.actions)
            ratio = th.exp(current - batch.behaviour_log_prob)
            real = ratio if batch.mask is None else ratio[batch.mask]
            self.logger.record("train/ratio_mean", real.mean().item())
            self.logger.record("train/ratio_max", real.max().item())
            if self.importance_ratio == "current":
                return replace(batch, behaviour_log_prob=current)
            if self.ratio_truncation is None:
                return batch
            self.logger.record("train/ratio_truncated_fraction", (real > self.ratio_truncation).float().mean().item())
            truncated = th.maximum(batch.behaviour_log_prob, current - math.log(self.ratio_truncation))
            return replace(batch, behaviour_log_prob=truncated)

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
        """The current policy's action distribution on the states of ``batch`` (the reference backends' forward pass)."""
        return self.policy.get_distribution(batch.observations)

    def _natural_gradient_problem(self, batch: PolicyBatch) -> ActorProblem:
        """The actor backend's problem at ``θ_old``: ``g``, ``v -> F v`` and the evaluation of candidates."""
        objective = PolicyObjective(batch, self.kl_action_reduction)
        return self.backends.actor.problem(objective, self.fisher_sub_sampling_factor)

    def _policy_step(self, batch: PolicyBatch) -> PolicyUpdateStats:
        """The natural-gradient step: CG direction ``x``, scaled by :meth:`_step_length`, then the line search."""
        problem = self._natural_gradient_problem(batch)
        if not th.isfinite(batch.advantages).all():
            return self._skip_policy_update("non-finite advantages", problem)
        if not th.isfinite(problem.gradient).all():
            return self._skip_policy_update("non-finite policy gradient", problem)

        def damped_fisher_vector_product(vector: th.Tensor) -> th.Tensor:  # (F + λI) v
            return problem.fisher_vector_product(vector) + self.cg_damping * vector

        cg = conjugate_gradient(damped_fisher_vector_product, problem.gradient, self.cg_max_steps, self.cg_residual_tol)
        if cg.iterations == 0:  # ‖g‖² is already below the CG tolerance: there is no ascent direction
            return PolicyUpdateStats(problem.before, cg_residual=cg.residual_norm)
        direction = cg.solution
        if not th.isfinite(direction).all():
            return self._skip_policy_update("non-finite conjugate-gradient direction", problem)
        # The curvature of the damped model the direction solves: x = (F + λI)⁻¹ g maximises gᵀΔ subject
        # to ½ Δᵀ(F + λI)Δ ≤ δ along s·x, as in the reference implementations (and sb3-contrib).
        curvature = th.dot(direction, damped_fisher_vector_product(direction)).item()
        if not (math.isfinite(curvature) and curvature > 0.0):
            reason = f"non-positive or non-finite curvature xᵀ(F + λI)x = {curvature:.3g}"
            return self._skip_policy_update(reason, problem)
        full_step = self._step_length(curvature) * direction

        result = backtracking_line_search(
            problem.params,
            full_step,
            problem.evaluate,
            lambda candidate: self._is_acceptable(candidate, problem.before),
            self.line_search_shrinking_factor,
            self.line_search_max_iter,
            invalid_candidate,  # a candidate whose distribution torch refuses is rejected: the search shrinks
        )
        return PolicyUpdateStats.of_line_search(problem, result, full_step, cg.iterations, cg.residual_norm)

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

    def _skip_policy_update(self, reason: str, problem: ActorProblem) -> PolicyUpdateStats:
        """Leave the actor untouched, warn, and count the skipped update."""
        self.n_skipped_policy_updates += 1
        warnings.warn(
            f"{type(self).__name__}: policy update {self._n_updates} skipped ({reason}); "
            f"the parameters are unchanged ({self.n_skipped_policy_updates} skipped so far).",
            RuntimeWarning,
            stacklevel=3,
        )
        return PolicyUpdateStats(problem.before, skipped=True)

    def _fit_critic(self) -> CriticFitResult:
        """Regress the value function on the GAE returns with the critic backend; the actor never moves.

        The whole fit is skipped (with a warning, counted once in ``n_skipped_critic_steps``) when the returns
        are not finite, or when the learning rate that ``learning_rate``'s schedule gives now is not a finite
        number >= 0: Adam would write it into every parameter of the critic, whichever backend steps.
        """
        learning_rates, buffer = [group["lr"] for group in self.policy.optimizer.param_groups], self._train_buffer
        if not np.isfinite(buffer.returns).all():
            return self._skip_critic_fit("non-finite returns")
        if not all(is_number(lr) and lr >= 0 for lr in learning_rates):
            progress = self._current_progress_remaining
            return self._skip_critic_fit(f"the learning-rate schedule gave {learning_rates[0]!r} at progress {progress:.3g}")
        result = self.backends.critic.fit(buffer, self.batch_size, self.n_critic_updates)
        self.n_skipped_critic_steps += result.n_skipped_steps
        return result

    def _skip_critic_fit(self, reason: str) -> CriticFitResult:
        """Leave the critic untouched, warn, and count the skipped fit."""
        self.n_skipped_critic_steps += 1
        warnings.warn(
            f"{type(self).__name__}: critic fit {self._n_updates} skipped ({reason}); "
            f"the critic is unchanged ({self.n_skipped_critic_steps} skipped so far).",
            RuntimeWarning,
            stacklevel=4,
        )
        return CriticFitResult()

    def _value_loss(self, data: Any) -> th.Tensor:
        """Mean squared error of the critic on a minibatch of the rollout buffer (the reference critic's loss)."""
        values = self.policy.predict_values(data.observations).flatten()
        return batch_mean((data.returns - values).pow(2))

    def _log_update(self, stats: PolicyUpdateStats, critic: CriticFitResult) -> None:
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
        if critic.losses:
            record("train/value_loss", float(np.mean(critic.losses)))
        values, returns = self._train_buffer.values.flatten(), self._train_buffer.returns.flatten()
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


def _require_reference(option: str, name: str, accepted: str, reason: str) -> None:
    """A ``ValueError`` naming ``name`` where its value forces an accelerator that declined (``reason``)."""
    require(option in ("auto", "torch", "sb3"), name, f"{accepted} for this policy ({reason})", option)
