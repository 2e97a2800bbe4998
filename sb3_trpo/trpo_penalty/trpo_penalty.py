"""TRPO with the KL penalty of its theory instead of the constraint, and an adaptive coefficient."""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule

from sb3_trpo.common.kl_penalty import adapt_kl_coefficient
from sb3_trpo.common.natural_gradient import restore_params
from sb3_trpo.common.reduction import batch_mean
from sb3_trpo.common.validation import is_integer, require
from sb3_trpo.trpo.trpo import (
    TRPO,
    PolicyBatch,
    PolicyEvaluation,
    PolicyUpdateStats,
)

POLICY_OPTIMIZERS = ("natural", "first_order")


class TRPOPenalty(TRPO):
    """
    TRPO with a KL penalty: maximise ``L(θ) − β · KL̄(θ)`` and adapt ``β`` after every update.

    The theory behind TRPO (Schulman et al., 2015, Theorem 1) guarantees improvement for the
    penalised problem; the constrained TRPO exists because no fixed ``β`` suits every problem, or
    even one whole run. Here ``β`` adapts to the measured KL: above ``target_kl · kl_tolerance``
    it is multiplied by ``beta_factor``, below ``target_kl / kl_tolerance`` divided by it, and it is
    clipped to ``[beta_min, beta_max]``. A natural step whose backtracking safeguard rejects every
    candidate counts as a step that went too far (``β`` grows).

    Everything else is TRPO's: rollouts, advantages, the critic fit, the Fisher-vector products and
    the diagnostics. Every TRPO parameter keeps its meaning, except that ``target_kl`` is the KL
    that ``β`` steers towards rather than a hard bound. See :class:`~sb3_trpo.TRPO` for those.

    :param beta: Initial penalty coefficient ``β > 0``, within ``[beta_min, beta_max]``. The current
        value is the attribute ``beta``, logged as ``train/beta`` and saved with the model.
    :param kl_tolerance: Width of the band around ``target_kl`` inside which ``β`` stays, ``> 1``
    :param beta_factor: Multiplicative change of ``β`` when the KL leaves the band, ``> 1``
    :param beta_min: Lower bound of ``β``, ``> 0``
    :param beta_max: Upper bound of ``β``, ``>= beta_min``
    :param policy_optimizer: How the penalised objective is maximised:

        - ``"natural"`` (default): one conjugate-gradient solve ``x ≈ (F + λI)⁻¹ g`` and the step
          ``Δ = x / β``, the exact maximiser of the quadratic model ``gᵀΔ − (β/2) ΔᵀFΔ``, with a
          backtracking safeguard that accepts only a step that improves ``L − β · KL̄``;
        - ``"first_order"``: ``n_epochs`` passes of minibatch Adam on ``−(L − β · KL̄)``, the
          adaptive-KL variant of the PPO paper, on the same machinery.
    :param n_epochs: Passes over the batch of the first-order optimiser, ``>= 1``
    :param policy_learning_rate: Adam learning rate of the first-order optimiser, ``> 0``
    :param policy_batch_size: Minibatch size of the first-order optimiser, ``>= 1``
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = TRPO.policy_aliases

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
        beta: float = 1.0,
        kl_tolerance: float = 1.5,
        beta_factor: float = 2.0,
        beta_min: float = 1e-4,
        beta_max: float = 1e6,
        policy_optimizer: str = "natural",
        n_epochs: int = 10,
        policy_learning_rate: float = 3e-4,
        policy_batch_size: int = 64,
    ):
        require(math.isfinite(beta) and beta > 0.0, "beta", "a finite number > 0", beta)
        require(kl_tolerance > 1.0, "kl_tolerance", "> 1", kl_tolerance)
        require(beta_factor > 1.0, "beta_factor", "> 1", beta_factor)
        require(beta_min > 0.0, "beta_min", "> 0", beta_min)
        require(beta_max >= beta_min, "beta_max", f">= beta_min ({beta_min})", beta_max)
        require(beta_min <= beta <= beta_max, "beta", f"within [beta_min, beta_max] = [{beta_min}, {beta_max}]", beta)
        require(policy_optimizer in POLICY_OPTIMIZERS, "policy_optimizer", f"one of {POLICY_OPTIMIZERS}", policy_optimizer)
        require(is_integer(n_epochs) and n_epochs >= 1, "n_epochs", "an integer >= 1", n_epochs)
        require(policy_learning_rate > 0.0, "policy_learning_rate", "> 0", policy_learning_rate)
        require(
            is_integer(policy_batch_size) and policy_batch_size >= 1, "policy_batch_size", "an integer >= 1", policy_batch_size
        )
        self.beta = float(beta)
        self.kl_tolerance = kl_tolerance
        self.beta_factor = beta_factor
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.policy_optimizer = policy_optimizer
        self.n_epochs = n_epochs
        self.policy_learning_rate = policy_learning_rate
        self.policy_batch_size = policy_batch_size
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            gamma=gamma,
            cg_max_steps=cg_max_steps,
            cg_damping=cg_damping,
            line_search_shrinking_factor=line_search_shrinking_factor,
            line_search_max_iter=line_search_max_iter,
            n_critic_updates=n_critic_updates,
            gae_lambda=gae_lambda,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            normalize_advantage=normalize_advantage,
            target_kl=target_kl,
            sub_sampling_factor=sub_sampling_factor,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
            kl_constraint=kl_constraint,
            cg_residual_tol=cg_residual_tol,
            fisher_method=fisher_method,
            fisher_sub_sampling_factor=fisher_sub_sampling_factor,
            rollout_method=rollout_method,
            kl_action_reduction=kl_action_reduction,
        )

    def _setup_model(self) -> None:
        super()._setup_model()
        # The first-order optimiser's moments are algorithm state: created here, saved with the model.
        # Over all parameters: the critic's have no gradient during policy steps, so Adam leaves them.
        self.policy_adam = th.optim.Adam(self.policy.parameters(), lr=self.policy_learning_rate)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()
        return [*state_dicts, "policy_adam"], variables

    # ------------------------------------------------------------------ the penalised step

    def _step_length(self, curvature: float) -> float:
        """``Δ = x / β`` maximises the quadratic model ``gᵀΔ − (β/2) ΔᵀFΔ`` of ``L − β · KL̄``."""
        return 1.0 / self.beta

    def _penalized(self, evaluation: PolicyEvaluation) -> float:
        return evaluation.objective - self.beta * evaluation.kl(self.kl_constraint)

    def _is_acceptable(self, candidate: PolicyEvaluation, before: PolicyEvaluation) -> bool:
        """The backtracking safeguard: the penalised objective ``L − β · KL̄`` must improve."""
        return candidate.is_finite() and self._penalized(candidate) > self._penalized(before)

    def _policy_step(self, batch: PolicyBatch) -> tuple[PolicyUpdateStats, list[th.nn.Parameter]]:
        if self.policy_optimizer == "natural":
            stats, actor_params = super()._policy_step(batch)
        else:
            stats, actor_params = self._first_order_step(batch)
        if not stats.skipped:
            # A natural step rejected by the safeguard went too far for the quadratic model: count it as such.
            measured_kl = stats.kl(self.kl_constraint) if stats.line_search_success else math.inf
            self.beta = adapt_kl_coefficient(
                self.beta, measured_kl, self.target_kl, self.kl_tolerance, self.beta_factor, self.beta_min, self.beta_max
            )
        return stats, actor_params

    def _first_order_step(self, batch: PolicyBatch) -> tuple[PolicyUpdateStats, list[th.nn.Parameter]]:
        """``n_epochs`` of minibatch Adam on ``−(L − β · KL̄)``, the KL measured against ``π_θold``."""
        problem = self._natural_gradient_problem(batch)
        if not th.isfinite(batch.advantages).all():
            return self._skip_policy_update("non-finite advantages", problem), problem.actor_params
        n_samples = len(batch)  # states; whole sequences in a recurrent batch
        minibatches = [
            permutation[start : start + self.policy_batch_size]
            for permutation in (th.randperm(n_samples, device=self.device) for _ in range(self.n_epochs))
            for start in range(0, n_samples, self.policy_batch_size)
        ]
        with th.no_grad():  # π_θold on every minibatch, before the first step moves θ
            old_distributions = [copy.copy(self._distribution(batch.subset(index))) for index in minibatches]
        saved = [param.detach().clone() for param in problem.actor_params]

        for index, old_distribution in zip(minibatches, old_distributions, strict=True):
            minibatch = batch.subset(index)
            distribution = self._distribution(minibatch)
            objective = self._surrogate(distribution, minibatch)
            loss = -(objective - self.beta * batch_mean(self._kl_per_state(old_distribution, distribution), minibatch.mask))
            self.policy_adam.zero_grad()
            loss.backward()
            gradients = [param.grad for param in problem.actor_params if param.grad is not None]
            if not (th.isfinite(loss) and all(th.isfinite(grad).all() for grad in gradients)):
                self.policy_adam.zero_grad()
                restore_params(problem.actor_params, saved)
                return self._skip_policy_update("non-finite penalised loss or gradient", problem), problem.actor_params
            self.policy_adam.step()
        self.policy_adam.zero_grad()

        after = problem.evaluate()
        return (
            PolicyUpdateStats(
                objective=after.objective,
                kl_mean=after.kl_mean,
                kl_max=after.kl_max,
                actual_improvement=after.objective - problem.before.objective,
                line_search_success=True,
            ),
            problem.actor_params,
        )

    def _log_update(self, stats: PolicyUpdateStats, value_losses: list[float]) -> None:
        super()._log_update(stats, value_losses)
        self.logger.record("train/beta", self.beta)
