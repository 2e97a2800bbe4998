"""The three backends of an update, and the reference implementation of each.

An algorithm runs its update through three backends, chosen once, when its policy is built or
replaced (``TRPO.select_backends``):

- the **actor** backend builds the :class:`~sb3_trpo.common.policy_step.ActorProblem` of a policy step;
- the **critic** backend fits the value function on the rollout;
- the **rollout** backend collects the rollout.

The reference backends here work for any policy, through torch's autograd and SB3's own loop
(:class:`TorchActor`, :class:`TorchCritic`, :class:`SB3Rollouts`). The accelerators of
:mod:`sb3_trpo.accel` compute the same things faster for SB3's standard MLP, and are tested equal
to these.
"""

from __future__ import annotations

import copy
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo.common.analytic_fisher import action_reduced_fisher, analytic_fisher_vector_product
from sb3_trpo.common.fisher import autograd_fisher_vector_product
from sb3_trpo.common.natural_gradient import flat_grad
from sb3_trpo.common.policy_step import ActorProblem, PolicyBatch, PolicyEvaluation, PolicyObjective
from sb3_trpo.common.reduction import batch_mean

DistributionFn = Callable[[PolicyBatch], Distribution]


@dataclass
class CriticFitResult:
    """What a critic fit did: the loss of every applied step, and how many steps it skipped."""

    losses: list[float] = field(default_factory=list)  # ℓ of each applied step, before the step
    n_skipped_steps: int = 0  # minibatches whose loss was not finite (or that were empty): no step taken

    @property
    def n_steps(self) -> int:
        return len(self.losses)


class Backend(ABC):
    """A backend: its name, and why the accelerator of its kind was not used in its place (None if it was)."""

    name: ClassVar[str]
    declined: str | None = None

    def describe(self) -> str:
        return self.name if self.declined is None else f"{self.name} ({self.declined})"


class ActorBackend(Backend):
    """Builds the :class:`ActorProblem` of a policy step; ``params`` is the actor, known before any step."""

    params: list[th.nn.Parameter]

    @abstractmethod
    def problem(self, objective: PolicyObjective, fisher_sub_sampling_factor: int = 1) -> ActorProblem:
        """Gradient, Fisher-vector product and candidate evaluation at the current parameters ``θ_old``."""


class CriticBackend(Backend):
    """Fits the critic on the rollout: ``n_epochs`` passes of minibatch steps; the actor never moves."""

    @abstractmethod
    def fit(self, rollout_buffer: RolloutBuffer, batch_size: int, n_epochs: int) -> CriticFitResult:
        """Run the fit; minibatches with a non-finite loss are skipped and counted."""


class RolloutBackend(Backend):
    """Collects ``n_rollout_steps`` per environment into the rollout buffer, as SB3's ``collect_rollouts``."""

    @abstractmethod
    def collect(
        self, algorithm: OnPolicyAlgorithm, env: VecEnv, callback: BaseCallback, buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """False when a callback stopped training."""


# ---------------------------------------------------------------------------------------------- actor


class TorchActor(ActorBackend):
    """The reference actor backend: autograd through the policy's own modules, for any policy.

    ``F v`` in closed form ``Jᵀ M J v`` where the distribution has one and ``fisher_method`` allows it,
    else by Pearlmutter's double backward through the KL.

    :param distribution: the algorithm's ``batch -> π_θ(·|s)`` (with autograd's graph)
    :param params: the actor's parameters
    :param fisher_method: ``"auto"``, ``"analytic"`` or ``"autograd"``
    """

    name = "torch"

    def __init__(
        self, distribution: DistributionFn, params: list[th.nn.Parameter], fisher_method: str, declined: str | None = None
    ) -> None:
        self.distribution, self.params, self.fisher_method, self.declined = distribution, params, fisher_method, declined

    def problem(self, objective: PolicyObjective, fisher_sub_sampling_factor: int = 1) -> ActorProblem:
        return TorchActorProblem(self, objective, fisher_sub_sampling_factor)


class TorchActorProblem(ActorProblem):
    """:class:`ActorProblem` through autograd's graph of one forward pass at ``θ_old``."""

    def __init__(self, actor: TorchActor, objective: PolicyObjective, fisher_sub_sampling_factor: int) -> None:
        self.actor, self.objective, self.params = actor, objective, actor.params
        batch = objective.batch
        with th.no_grad():
            # get_distribution() updates the policy's distribution object in place: keep a shallow copy.
            self.old_distribution = copy.copy(actor.distribution(batch))
        distribution = actor.distribution(batch)
        surrogate = objective.surrogate(distribution)
        self.gradient = flat_grad(surrogate, self.params, retain_graph=True)
        self.before = PolicyEvaluation(surrogate.item())

        # The Fisher may use a sub-sample of the states (the paper used 10%); the gradient uses them all.
        fisher_batch, fisher_old, fisher_distribution = batch, self.old_distribution, distribution
        if fisher_sub_sampling_factor > 1:
            fisher_batch = batch.every(fisher_sub_sampling_factor)
            with th.no_grad():
                fisher_old = copy.copy(actor.distribution(fisher_batch))
            fisher_distribution = actor.distribution(fisher_batch)
        analytic = None
        if actor.fisher_method != "autograd":
            analytic = analytic_fisher_vector_product(fisher_distribution, self.params, fisher_batch.mask)
        if analytic is not None:
            self._product = action_reduced_fisher(analytic, fisher_distribution, objective.kl_action_reduction)
        else:  # the mean KL's graph, differentiated twice on first use (a first-order step never pays for it)

            def mean_kl() -> th.Tensor:
                return batch_mean(objective.kl_per_state(fisher_old, fisher_distribution), fisher_batch.mask)

            build = functools.cache(lambda: autograd_fisher_vector_product(mean_kl(), self.params))
            self._product = lambda vector: build()(vector)

    def fisher_vector_product(self, vector: th.Tensor) -> th.Tensor:
        return self._product(vector)

    def evaluate(self) -> PolicyEvaluation:
        with th.no_grad():
            return self.objective.evaluate(self.actor.distribution(self.objective.batch), self.old_distribution)


def actor_parameters(policy: BasePolicy, probe: Distribution) -> list[th.nn.Parameter]:
    """The parameters the action distribution depends on, in ``policy.parameters()``'s order.

    Read from autograd's graph of ``probe``, a distribution the policy computed on any observation:
    no reliance on parameter names (custom policies, shared features extractors). The log-probability
    of the mode depends on every parameter of the distribution and draws no random number.
    """
    params = [param for param in policy.parameters() if param.requires_grad]
    log_prob = probe.log_prob(probe.mode().detach()).sum()
    grads = th.autograd.grad(log_prob, params, allow_unused=True)
    return [param for param, grad in zip(params, grads, strict=True) if grad is not None]


# ---------------------------------------------------------------------------------------------- critic


class TorchCritic(CriticBackend):
    """The reference critic backend: autograd and the policy's optimizer, one step per minibatch.

    :param policy: the policy whose ``optimizer`` steps
    :param value_loss: the algorithm's ``minibatch -> mean squared error`` of the critic
    :param actor_params: cleared of gradients before every step, so the optimizer leaves them alone
    """

    name = "torch"

    def __init__(
        self,
        policy: BasePolicy,
        value_loss: Callable[[Any], th.Tensor],
        actor_params: list[th.nn.Parameter],
        declined: str | None = None,
    ) -> None:
        self.policy, self.value_loss, self.actor_params, self.declined = policy, value_loss, actor_params, declined

    def fit(self, rollout_buffer: RolloutBuffer, batch_size: int, n_epochs: int) -> CriticFitResult:
        result, optimizer = CriticFitResult(), self.policy.optimizer
        for _ in range(n_epochs):
            for data in rollout_buffer.get(batch_size):
                value_loss = self.value_loss(data)
                if not th.isfinite(value_loss):
                    result.n_skipped_steps += 1
                    continue
                optimizer.zero_grad()
                value_loss.backward()
                # Parameters without a gradient are left alone by the optimiser, whatever its state.
                for param in self.actor_params:
                    param.grad = None
                optimizer.step()
                result.losses.append(value_loss.item())
        return result


# ---------------------------------------------------------------------------------------------- rollouts


class SB3Rollouts(RolloutBackend):
    """The reference rollout backend: SB3's (or sb3-contrib's) own ``collect_rollouts``."""

    name = "sb3"

    def __init__(
        self, collect_rollouts: Callable[..., bool] = OnPolicyAlgorithm.collect_rollouts, declined: str | None = None
    ):
        self.collect_rollouts, self.declined = collect_rollouts, declined

    def collect(
        self, algorithm: OnPolicyAlgorithm, env: VecEnv, callback: BaseCallback, buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        return self.collect_rollouts(algorithm, env, callback, buffer, n_rollout_steps)


# ---------------------------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Backends:
    """The backends an algorithm chose for its policy (``model.backends``)."""

    actor: ActorBackend
    critic: CriticBackend
    rollout: RolloutBackend

    @property
    def names(self) -> dict[str, str]:
        """``{"actor": ..., "critic": ..., "rollout": ...}``."""
        return {"actor": self.actor.name, "critic": self.critic.name, "rollout": self.rollout.name}

    def __str__(self) -> str:
        return ", ".join(f"{kind}: {backend.describe()}" for kind, backend in vars(self).items())
