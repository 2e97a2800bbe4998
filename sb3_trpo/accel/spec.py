"""The one recogniser: SB3's standard MLP actor-critic as a spec, or the reason a policy is not one.

Every accelerator is built from an :class:`MLPSpec`; none inspects the policy on its own. The spec
names the modules (so the accelerators always read the current parameters), the activations as rows
of the one activation table, the action distribution, how observations become features, and the
device and dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from torch import nn

from sb3_trpo.accel.activations import Activation, activation_from_module
from sb3_trpo.accel.torch_compat import has_module_hooks, private_torch_api_unavailable

GAUSSIAN, CATEGORICAL = "gaussian", "categorical"
_DISTRIBUTIONS = {DiagGaussianDistribution: GAUSSIAN, CategoricalDistribution: CATEGORICAL}


@dataclass(frozen=True)
class MLP:
    """``x -> output(φ_k(… φ_1(x W_1ᵀ + b_1) …))``: hidden ``(nn.Linear, Activation)`` layers, then a linear output."""

    hidden: tuple[tuple[nn.Linear, Activation], ...]
    output: nn.Linear

    @property
    def linears(self) -> list[nn.Linear]:
        return [linear for linear, _ in self.hidden] + [self.output]

    @property
    def activations(self) -> list[Activation]:
        return [activation for _, activation in self.hidden]

    def parameters(self) -> list[nn.Parameter]:
        """``[W_1, b_1, …, W_out, b_out]``."""
        return [p for linear in self.linears for p in (linear.weight, linear.bias)]  # type: ignore[misc]


@dataclass(frozen=True)
class MLPSpec:
    """SB3's standard MLP ``ActorCriticPolicy``, as the accelerators need it.

    :param policy: the policy itself
    :param actor: ``mlp_extractor.policy_net`` then ``action_net``: the mean of a Gaussian, or the logits
    :param critic: ``mlp_extractor.value_net`` then ``value_net``: the value
    :param distribution: ``"gaussian"`` (diagonal, state-independent log-std), ``"categorical"``, or the
        class name of another SB3 distribution (which the actor and rollout accelerators do not cover)
    :param log_std: the Gaussian's log-std parameter, None otherwise
    :param one_hot_size: ``n`` for a ``Discrete(n)`` observation space (features are one-hot), else 0
    :param scale_images: whether image observations are divided by 255 (SB3's ``normalize_images``)
    :param device: where the parameters are
    :param dtype: the dtype all the parameters share, None where they do not
    """

    policy: ActorCriticPolicy
    actor: MLP
    critic: MLP
    distribution: str
    log_std: nn.Parameter | None
    one_hot_size: int
    scale_images: bool
    device: th.device
    dtype: th.dtype | None

    def actor_parameters(self) -> list[nn.Parameter]:
        """What the action distribution depends on: the actor's layers (and the Gaussian's log-std)."""
        return self.actor.parameters() + ([] if self.log_std is None else [self.log_std])


def recognise(policy: nn.Module) -> MLPSpec | str:
    """The :class:`MLPSpec` of ``policy``, or why it is not SB3's standard MLP actor-critic.

    That is: exactly SB3's ``ActorCriticPolicy`` (a subclass may compute anything, so it is not
    recognised), on a ``Box`` or ``Discrete`` observation space read by parameter-free
    ``FlattenExtractor`` s, SB3's ``MlpExtractor`` whose ``policy_net`` and ``value_net`` are
    ``(nn.Linear, activation)`` pairs with an activation of the table, linear ``action_net`` and
    ``value_net`` (with biases), and no module hooks; on a torch whose private APIs the accelerators
    were checked on.
    """
    reason = private_torch_api_unavailable()
    if reason is not None:
        return reason
    if type(policy) is not ActorCriticPolicy:
        return f"the policy is a {type(policy).__name__}, not SB3's ActorCriticPolicy (MlpPolicy) itself"
    observation_space = policy.observation_space
    if not isinstance(observation_space, (spaces.Box, spaces.Discrete)):
        return f"the observation space is a {type(observation_space).__name__}, not a Box or Discrete"
    for extractor in (policy.pi_features_extractor, policy.vf_features_extractor):
        if not _is_plain_flatten(extractor):
            return f"the features extractor is a {type(extractor).__name__}, not a parameter-free FlattenExtractor"
    if type(policy.mlp_extractor) is not MlpExtractor:
        return f"the mlp_extractor is a {type(policy.mlp_extractor).__name__}, not SB3's MlpExtractor"
    actor = _mlp("mlp_extractor.policy_net", policy.mlp_extractor.policy_net, "action_net", policy.action_net)
    critic = _mlp("mlp_extractor.value_net", policy.mlp_extractor.value_net, "value_net", policy.value_net)
    for parsed in (actor, critic):
        if isinstance(parsed, str):
            return parsed
    assert isinstance(actor, MLP)
    assert isinstance(critic, MLP)
    if critic.output.out_features != 1:
        return "value_net does not have one output"
    if has_module_hooks([policy]):
        return "the policy has module hooks"
    distribution = _DISTRIBUTIONS.get(type(policy.action_dist), type(policy.action_dist).__name__)
    dtypes = {p.dtype for p in policy.parameters()}
    return MLPSpec(
        policy=policy,
        actor=actor,
        critic=critic,
        distribution=distribution,
        log_std=policy.log_std if distribution == GAUSSIAN else None,
        one_hot_size=int(observation_space.n) if isinstance(observation_space, spaces.Discrete) else 0,
        scale_images=bool(policy.normalize_images and is_image_space(observation_space)),
        device=policy.device,
        dtype=dtypes.pop() if len(dtypes) == 1 else None,
    )


def _is_plain_flatten(extractor: nn.Module) -> bool:
    """Whether ``extractor`` is SB3's parameter-free ``FlattenExtractor`` (``flatten(start_dim=1)``), exactly."""
    flatten = getattr(extractor, "flatten", None)
    return (
        type(extractor) is FlattenExtractor
        and type(flatten) is nn.Flatten
        and (flatten.start_dim, flatten.end_dim) == (1, -1)
        and not any(True for _ in extractor.parameters())
    )


def _mlp(name: str, sequential: nn.Module, output_name: str, output: nn.Module) -> MLP | str:
    """``sequential`` then ``output`` as an :class:`MLP`, or why they are not one."""
    if type(sequential) is not nn.Sequential:
        return f"{name} is not an nn.Sequential"
    modules = list(sequential)
    linears = [m for m in modules[0::2] if type(m) is nn.Linear and m.bias is not None]
    activations = [activation_from_module(m) for m in modules[1::2]]
    if len(modules) % 2 or len(linears) != len(modules) // 2:
        return f"{name} is not a sequence of (nn.Linear with bias, activation) pairs"
    if any(activation is None for activation in activations):
        return f"{name} has an activation outside the table (tanh, relu, sigmoid, leaky_relu, elu, silu, gelu)"
    if type(output) is not nn.Linear or output.bias is None:
        return f"{output_name} is not an nn.Linear with bias"
    hidden = tuple((linear, activation) for linear, activation in zip(linears, activations, strict=True) if activation)
    return MLP(hidden, output)
