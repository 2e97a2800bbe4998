"""TRPO with the KL penalty of its theory instead of the constraint, and an adaptive coefficient."""

from __future__ import annotations

import copy
import math
from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv

from sb3_trpo.common.backends import CriticFitResult
from sb3_trpo.common.kl_penalty import adapt_kl_coefficient
from sb3_trpo.common.natural_gradient import restore_params
from sb3_trpo.common.policy_step import PolicyBatch, PolicyEvaluation, PolicyObjective, is_invalid_distribution_error
from sb3_trpo.common.reduction import batch_mean
from sb3_trpo.common.validation import Rule, integer, number, one_of, require, validate
from sb3_trpo.trpo.trpo import TRPO, PolicyUpdateStats

POLICY_OPTIMIZERS = ("natural", "first_order")
PENALTY_HYPERPARAMETERS: dict[str, Rule] = {
    "beta": number(0, open_low=True),
    "kl_tolerance": number(1, open_low=True),
    "beta_factor": number(1, open_low=True),
    "beta_min": number(0, open_low=True),
    "beta_max": number(0, open_low=True),
    "policy_optimizer": one_of(POLICY_OPTIMIZERS),
    "n_epochs": integer(1),
    "policy_learning_rate": number(0, open_low=True),
    "policy_batch_size": integer(1),
}
"""What each of the penalty's own hyperparameters accepts (TRPO's are checked by TRPO)."""


class TRPOPenalty(TRPO):
    """
    TRPO with a KL penalty: maximise ``L(θ) − β · KL̄(θ)`` and adapt ``β`` after every update.

    The theory behind TRPO (Schulman et al., 2015, Theorem 1) guarantees improvement for the
    penalised problem; the constrained TRPO exists because no fixed ``β`` suits every problem, or
    even one whole run. Here ``β`` adapts to the measured KL: above ``target_kl · kl_tolerance``
    it is multiplied by ``beta_factor``, below ``target_kl / kl_tolerance`` divided by it, and it is
    clipped to ``[beta_min, beta_max]``. When the natural step's backtracking safeguard rejects every
    candidate, ``β`` follows the KL of the full step ``x / β`` (see :meth:`_measured_kl`): a failed
    search by itself is not counted as a step that went too far.

    Everything else is TRPO's: rollouts, advantages, the critic fit, the Fisher-vector products, the
    backends and the diagnostics. The constructor takes TRPO's parameters (positional ones in TRPO's
    order, keywords by name) with their meanings, except that ``target_kl`` is the KL that ``β``
    steers towards rather than a hard bound; see :class:`~sb3_trpo.TRPO` for those. The penalty's
    own parameters are keyword-only:

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

    SAVED_ALGORITHM: ClassVar[str] = "TRPOPenalty"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = TRPO.policy_aliases

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        *args: Any,
        beta: float = 1.0,
        kl_tolerance: float = 1.5,
        beta_factor: float = 2.0,
        beta_min: float = 1e-4,
        beta_max: float = 1e6,
        policy_optimizer: str = "natural",
        n_epochs: int = 10,
        policy_learning_rate: float = 3e-4,
        policy_batch_size: int = 64,
        **kwargs: Any,
    ):
        validate(PENALTY_HYPERPARAMETERS, locals())
        require(beta_max >= beta_min, "beta_max", f">= beta_min ({beta_min})", beta_max)
        require(beta_min <= beta <= beta_max, "beta", f"within [beta_min, beta_max] = [{beta_min}, {beta_max}]", beta)
        self.beta = float(beta)
        self.kl_tolerance = kl_tolerance
        self.beta_factor = beta_factor
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.policy_optimizer = policy_optimizer
        self.n_epochs = n_epochs
        self.policy_learning_rate = policy_learning_rate
        self.policy_batch_size = policy_batch_size
        super().__init__(policy, env, *args, **kwargs)

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

    def _policy_step(self, batch: PolicyBatch) -> PolicyUpdateStats:
        stats = super()._policy_step(batch) if self.policy_optimizer == "natural" else self._first_order_step(batch)
        if not stats.skipped:
            self.beta = adapt_kl_coefficient(
                self.beta,
                self._measured_kl(stats),
                self.target_kl,
                self.kl_tolerance,
                self.beta_factor,
                self.beta_min,
                self.beta_max,
            )
        return stats

    def _measured_kl(self, stats: PolicyUpdateStats) -> float:
        """The KL that steers ``β``: what the step reached, or what the full step would have reached.

        - A step was accepted: its KL.
        - The safeguard accepted nothing: the KL of the full step ``Δ = x / β``, the line search's first
          candidate (``inf`` where torch refused its distribution). A failed search is no evidence of a large
          KL by itself: with a very large ``β`` the step is so short that its gain is lost in rounding, and
          counting that as "too far" would raise ``β`` for ever and freeze the actor. Measured, a timid full
          step lowers ``β`` and a long one raises it, as an accepted step would.
        - No step was tried (a zero gradient): ``target_kl``, which leaves ``β`` unchanged.
        """
        if stats.line_search_success:
            return stats.measured.kl(self.kl_constraint)
        if stats.full_step is not None:
            kl = stats.full_step.kl(self.kl_constraint)
            return kl if math.isfinite(kl) else math.inf
        return self.target_kl

    def _first_order_step(self, batch: PolicyBatch) -> PolicyUpdateStats:
        """``n_epochs`` of minibatch Adam on ``−(L − β · KL̄)``, the KL measured against ``π_θold``.

        Nothing half-done is kept: if a loss, a gradient, the parameters after the last step or their
        evaluation is not finite, or a step gives a distribution torch refuses, the actor and Adam's state go
        back to ``θ_old`` and the update is skipped (warned and counted); any other exception restores them
        too before it propagates.
        """
        problem = self._natural_gradient_problem(batch)
        if not th.isfinite(batch.advantages).all():
            return self._skip_policy_update("non-finite advantages", problem)
        n_samples = len(batch)  # states; whole sequences in a recurrent batch
        # The minibatch order comes from NumPy's global stream, as the critic's does (the same on every rank).
        minibatches = [
            permutation[start : start + self.policy_batch_size]
            for permutation in (
                th.as_tensor(np.random.permutation(n_samples), device=self.device) for _ in range(self.n_epochs)
            )
            for start in range(0, n_samples, self.policy_batch_size)
        ]
        with th.no_grad():  # π_θold on every minibatch, before the first step moves θ
            old_distributions = [copy.copy(self._distribution(batch.subset(index))) for index in minibatches]
        saved_params = [param.detach().clone() for param in problem.params]
        saved_adam = copy.deepcopy(self.policy_adam.state_dict())

        def restore() -> None:
            self.policy_adam.zero_grad()
            restore_params(problem.params, saved_params)
            self.policy_adam.load_state_dict(saved_adam)

        after: PolicyEvaluation | None = None
        try:
            failure = self._first_order_epochs(batch, minibatches, old_distributions, problem.params)
            if failure is None:
                after = problem.evaluate()
                failure = None if after.is_finite() else "non-finite surrogate or KL after the epochs"
        except BaseException as error:
            restore()
            if not is_invalid_distribution_error(error):
                raise
            failure = "a step gave an action distribution that torch refuses"
        if failure is not None:
            restore()
            return self._skip_policy_update(failure, problem)
        self.policy_adam.zero_grad()
        return PolicyUpdateStats(problem.before, after=after)

    def _first_order_epochs(
        self,
        batch: PolicyBatch,
        minibatches: list[th.Tensor],
        old_distributions: list[Distribution],
        params: list[th.nn.Parameter],
    ) -> str | None:
        """The Adam steps of :meth:`_first_order_step`; the reason to give up, or None when all were taken."""
        for index, old_distribution in zip(minibatches, old_distributions, strict=True):
            objective = PolicyObjective(batch.subset(index), self.kl_action_reduction)
            distribution = self._distribution(objective.batch)
            kl = batch_mean(objective.kl_per_state(old_distribution, distribution), objective.batch.mask)
            loss = -(objective.surrogate(distribution) - self.beta * kl)
            self.policy_adam.zero_grad()
            loss.backward()
            gradients = [param.grad for param in params if param.grad is not None]
            if not (th.isfinite(loss) and all(th.isfinite(grad).all() for grad in gradients)):
                return "non-finite penalised loss or gradient"
            self.policy_adam.step()
        if not all(th.isfinite(param).all() for param in params):
            return "non-finite parameters after the epochs"
        return None

    def _synchronized_attributes(self) -> list[str]:
        return [*super()._synchronized_attributes(), "beta"]

    def _log_update(self, stats: PolicyUpdateStats, critic: CriticFitResult) -> None:
        super()._log_update(stats, critic)
        self.logger.record("train/beta", self.beta)
