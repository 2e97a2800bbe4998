"""What a policy step works on: the batch, the surrogate and KL it measures, and the problem at ``θ_old``.

The algorithm builds a :class:`PolicyBatch` from the rollout buffer and a :class:`PolicyObjective`
(the surrogate and the KL the trust region bounds); its actor backend turns them into an
:class:`ActorProblem`, everything the natural-gradient step needs at ``θ_old``: the gradient ``g``, the
Fisher-vector product ``v -> F v`` and the evaluation of candidates in the line search. Every backend
computes these from the same two functions of the action distribution, :meth:`PolicyObjective.surrogate`
and :meth:`PolicyObjective.kl_per_state`, so they agree by construction.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch as th
from stable_baselines3.common.distributions import Distribution

from sb3_trpo.common.fisher import kl_per_state
from sb3_trpo.common.reduction import batch_mean


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

    def every(self, factor: int) -> PolicyBatch:
        """Every ``factor``-th item (the whole batch for 1)."""
        return self if factor == 1 else self.subset(th.arange(0, len(self), factor, device=self.actions.device))


@dataclass(frozen=True)
class PolicyEvaluation:
    """The surrogate and the KL to ``π_θold`` of some parameters, on the batch."""

    objective: float
    kl_mean: float = 0.0
    kl_max: float = 0.0

    def kl(self, constraint: str) -> float:
        """The KL the trust region bounds: the maximum over states for ``"max"``, else the mean."""
        return self.kl_max if constraint == "max" else self.kl_mean

    def is_finite(self) -> bool:
        return math.isfinite(self.objective) and math.isfinite(self.kl_mean) and math.isfinite(self.kl_max)


INVALID_EVALUATION = PolicyEvaluation(math.nan, math.nan, math.nan)
"""The evaluation of parameters whose action distribution cannot be built: not finite, never acceptable."""


def is_invalid_distribution_error(error: BaseException) -> bool:
    """Whether ``error`` is torch refusing a distribution's parameters (``validate_args``).

    A step that is far too long gives scales that underflow to 0 or overflow to ``inf``, or NaN means;
    ``torch.distributions`` then raises ``ValueError("Expected parameter <name> ... to satisfy the
    constraint ...")``. ``tests/test_reliability.py`` checks that the installed torch still words it so.
    """
    return isinstance(error, ValueError) and str(error).startswith("Expected parameter ")


def invalid_candidate(error: Exception) -> PolicyEvaluation | None:
    """:data:`INVALID_EVALUATION` where ``error`` means the candidate's distribution is invalid, else None.

    The line search's ``invalid_candidate``: such a candidate is rejected and the search shrinks.
    """
    return INVALID_EVALUATION if is_invalid_distribution_error(error) else None


def surrogate_objective(
    log_prob: th.Tensor, behaviour_log_prob: th.Tensor, advantages: th.Tensor, mask: th.Tensor | None = None
) -> th.Tensor:
    """``L(θ) = mean[ π_θ(a|s) / β(a|s) · Â(s, a) ]``, importance-sampled against the behaviour policy β."""
    return batch_mean(th.exp(log_prob - behaviour_log_prob) * advantages, mask)


@dataclass(frozen=True)
class PolicyObjective:
    """The surrogate ``L`` and the KL to ``π_θold`` on ``batch``, as functions of the action distribution.

    :param batch: the states, actions, behaviour log-probabilities and advantages
    :param kl_action_reduction: how a state's KL adds up over action dimensions (``"sum"`` or ``"mean"``)
    """

    batch: PolicyBatch
    kl_action_reduction: str = "sum"

    def surrogate(self, distribution: Distribution) -> th.Tensor:
        """:func:`surrogate_objective` of ``distribution`` on the batch."""
        batch = self.batch
        return surrogate_objective(
            distribution.log_prob(batch.actions), batch.behaviour_log_prob, batch.advantages, batch.mask
        )

    def kl_per_state(self, old: Distribution, new: Distribution) -> th.Tensor:
        """``KL(π_old(·|s) ‖ π_new(·|s))`` per state."""
        return kl_per_state(old, new, self.kl_action_reduction)

    def evaluate(self, candidate: Distribution, old: Distribution) -> PolicyEvaluation:
        """The surrogate of ``candidate`` and its mean and max KL from ``old``, over the batch's real states."""
        mask = self.batch.mask
        with th.no_grad():
            objective = self.surrogate(candidate)
            # KL ≥ 0; float32 round-off can put a tiny step's value slightly below.
            kl = self.kl_per_state(old, candidate).clamp_min(0.0)
            kl_max = (kl if mask is None else kl[mask]).max()
            return PolicyEvaluation(objective.item(), batch_mean(kl, mask).item(), kl_max.item())


class ActorProblem(ABC):
    """Everything a policy step needs at ``θ_old``, built by an actor backend.

    :ivar params: the actor's parameters ``θ`` (flat vectors are laid out in their order)
    :ivar gradient: ``g = ∇_θ L(θ)`` at ``θ_old``
    :ivar before: the evaluation at ``θ_old`` (KL 0)
    """

    params: list[th.nn.Parameter]
    gradient: th.Tensor
    before: PolicyEvaluation

    @abstractmethod
    def fisher_vector_product(self, vector: th.Tensor) -> th.Tensor:
        """``F v`` at ``θ_old`` (undamped), the Fisher of the KL the objective measures."""

    @abstractmethod
    def evaluate(self) -> PolicyEvaluation:
        """The surrogate and KL of the parameters the policy has now (a line-search candidate)."""
