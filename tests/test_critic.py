"""The fast critic fit against autograd + torch.optim.Adam: the pure core, then the SB3 adapter."""

import copy
import itertools
import math
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from sb3_trpo import TRPO
from sb3_trpo.accel.activations import ACTIVATIONS, Activation, activation_from_module
from sb3_trpo.accel.critic import (
    AdamHyperparameters,
    FlatAdam,
    FlatMLPCritic,
    fast_critic_fit,
    fast_critic_fit_unsupported,
    fit_value_function,
    rollout_minibatches,
)

SPECS = {
    "leaky_relu": Activation("leaky_relu", {"slope": 0.2}),
    "elu": Activation("elu", {"alpha": 0.7}),
}
MODULES = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": lambda: nn.ELU(alpha=0.7),
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
TOLERANCE = {th.float64: dict(rtol=1e-10, atol=1e-12), th.float32: dict(rtol=1e-5, atol=1e-6)}
# SB3 policies fitted for several Adam steps in float32: on the CPU the fast path's tanh is NumPy's,
# which rounds differently from torch's by a few ulps.
ADAPTER_TOLERANCE = dict(rtol=1e-4, atol=1e-6)

# ---------------------------------------------------------------------------------------------- the core


def make_net(sizes: list[int], activation: str, dtype: th.dtype, seed: int) -> nn.Sequential:
    """``sizes[0]`` features, hidden layers of ``sizes[1:]`` units, one output."""
    th.manual_seed(seed)
    modules: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        modules += [nn.Linear(n_in, n_out), MODULES[activation]()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], 1)).to(dtype)


def linears(net: nn.Sequential) -> list[tuple[th.Tensor, th.Tensor]]:
    return [(m.weight, m.bias) for m in net if isinstance(m, nn.Linear)]


def minibatches(n_features: int, sizes: list[int], dtype: th.dtype, seed: int) -> list[tuple[th.Tensor, th.Tensor]]:
    gen = th.Generator().manual_seed(seed)
    return [(th.randn(b, n_features, generator=gen, dtype=dtype), 3 * th.randn(b, generator=gen, dtype=dtype)) for b in sizes]


def autograd_fit(net: nn.Module, optimizer: th.optim.Optimizer, batches) -> tuple[list[float], int]:
    """The reference: autograd + torch.optim, skipping non-finite losses."""
    losses, skipped = [], 0
    for x, returns in batches:
        loss = (returns - net(x).flatten()).pow(2).mean()
        if not th.isfinite(loss):
            skipped += 1
            continue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, skipped


def flat(tensors) -> th.Tensor:
    return th.cat([t.detach().reshape(-1) for t in tensors])


def assert_same_fit(net, optimizer, critic: FlatMLPCritic, adam: FlatAdam, dtype: th.dtype) -> None:
    params = list(net.parameters())
    tolerance = TOLERANCE[dtype]
    th.testing.assert_close(critic.params, flat(params), **tolerance)
    th.testing.assert_close(critic.grad, flat(p.grad for p in params), **tolerance)
    th.testing.assert_close(adam.exp_avg, flat(optimizer.state[p]["exp_avg"] for p in params), **tolerance)
    th.testing.assert_close(adam.exp_avg_sq, flat(optimizer.state[p]["exp_avg_sq"] for p in params), **tolerance)
    assert all(optimizer.state[p]["step"].item() == adam.step for p in params)


# A full pass of 100 transitions in minibatches of 32: the last one truncated to 4.
BATCH_SIZES = [32, 32, 32, 4] * 3


@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sizes", [[17, 64, 64], [3, 5], [6, 8, 16, 4], [4]])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fit_matches_autograd_and_adam(dtype, activation, sizes, weight_decay):
    net = make_net(sizes, activation, dtype, seed=len(sizes))
    critic = FlatMLPCritic(linears(net), SPECS.get(activation, Activation(activation)))
    adam = FlatAdam(critic.params, AdamHyperparameters(lr=3e-3, eps=1e-5, weight_decay=weight_decay))
    optimizer = th.optim.Adam(net.parameters(), lr=3e-3, eps=1e-5, weight_decay=weight_decay)
    batches = minibatches(sizes[0], BATCH_SIZES, dtype, seed=1)

    result = fit_value_function(critic, adam, batches)
    losses, skipped = autograd_fit(net, optimizer, batches)

    assert result.n_steps == len(BATCH_SIZES)
    assert result.n_skipped_steps == skipped == 0
    assert result.losses == pytest.approx(losses, rel=1e-5 if dtype == th.float32 else 1e-12)
    assert_same_fit(net, optimizer, critic, adam, dtype)


@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("decoupled", [False, True])
def test_fit_continues_from_existing_adam_state(dtype, decoupled):
    """Adam state taken over after k autograd steps: the next steps match, bias corrections included."""
    net = make_net([5, 16, 16], "tanh", dtype, seed=3)
    optimizer_class = th.optim.AdamW if decoupled else th.optim.Adam
    optimizer = optimizer_class(net.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05)
    autograd_fit(net, optimizer, minibatches(5, [16] * 7, dtype, seed=4))

    params = list(net.parameters())
    critic = FlatMLPCritic(linears(net), "tanh")
    adam = FlatAdam(
        critic.params,
        AdamHyperparameters(lr=1e-2, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05, decoupled_weight_decay=decoupled),
        exp_avg=flat(optimizer.state[p]["exp_avg"] for p in params),
        exp_avg_sq=flat(optimizer.state[p]["exp_avg_sq"] for p in params),
        step=int(optimizer.state[params[0]]["step"].item()),
    )
    batches = minibatches(5, [16, 16, 9] * 4, dtype, seed=5)
    fit_value_function(critic, adam, batches)
    autograd_fit(net, optimizer, batches)
    assert adam.step == 7 + 12
    assert_same_fit(net, optimizer, critic, adam, dtype)


def test_non_finite_loss_skips_exactly_that_step():
    net = make_net([4, 8], "relu", th.float64, seed=6)
    batches = minibatches(4, [10, 10, 10, 10, 10, 0, 10], th.float64, seed=7)  # the empty one has a NaN mean
    batches[2][1][3] = math.nan
    batches[4][1][0] = math.inf
    critic = FlatMLPCritic(linears(net), "relu")
    adam = FlatAdam(critic.params, AdamHyperparameters(lr=1e-2, eps=1e-5))
    optimizer = th.optim.Adam(net.parameters(), lr=1e-2, eps=1e-5)

    result = fit_value_function(critic, adam, batches)
    losses, skipped = autograd_fit(net, optimizer, batches)

    assert result.n_skipped_steps == skipped == 3
    assert result.n_steps == adam.step == 4
    assert result.losses == pytest.approx(losses, rel=1e-12)
    assert th.isfinite(critic.params).all()
    assert_same_fit(net, optimizer, critic, adam, th.float64)


def test_forward_is_the_module():
    net = make_net([7, 12, 5], "gelu", th.float64, seed=8)
    critic = FlatMLPCritic(linears(net), "gelu")
    x = th.randn(9, 7, dtype=th.float64)
    th.testing.assert_close(critic.forward(x), net(x), rtol=0, atol=0)
    assert critic.n_params == sum(p.numel() for p in net.parameters())
    for view, param in zip(critic.split(critic.params), net.parameters(), strict=True):
        assert th.equal(view, param.detach())


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="activation must be one of"):
        Activation("softplus")
    with pytest.raises(ValueError, match="one output"):
        FlatMLPCritic([(th.zeros(2, 3), th.zeros(2))], [])
    with pytest.raises(ValueError, match="do not chain"):
        FlatMLPCritic([(th.zeros(4, 3), th.zeros(4)), (th.zeros(1, 5), th.zeros(1))], "tanh")
    with pytest.raises(ValueError, match="need 1 activations"):
        FlatMLPCritic([(th.zeros(4, 3), th.zeros(4)), (th.zeros(1, 4), th.zeros(1))], ["tanh", "relu"])


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.Tanh(), Activation("tanh")),
        (nn.ReLU(inplace=True), Activation("relu")),
        (nn.LeakyReLU(), Activation("leaky_relu", {"slope": 0.01})),
        (nn.LeakyReLU(-0.5), Activation("leaky_relu", {"slope": -0.5})),
        (nn.ELU(alpha=2.0), Activation("elu", {"alpha": 2.0})),
        (nn.SiLU(inplace=True), Activation("silu")),
        (nn.GELU(approximate="tanh"), Activation("gelu", {"approximate": "tanh"})),
        (nn.ELU(inplace=True), None),  # autograd differentiates it from its output: not the same rounding
        (nn.LeakyReLU(-0.5, inplace=True), None),
        (nn.Softplus(), None),
        (nn.Identity(), None),
    ],
)
def test_activation_from_module(module, expected):
    assert activation_from_module(module) == expected


@pytest.mark.parametrize("module", [nn.ReLU(inplace=True), nn.LeakyReLU(0.3, inplace=True), nn.SiLU(inplace=True)])
def test_in_place_modules_give_the_same_gradient(module):
    th.manual_seed(9)
    net = nn.Sequential(nn.Linear(5, 7), module, nn.Linear(7, 1)).double()
    activation = activation_from_module(module)
    assert activation is not None
    critic = FlatMLPCritic(linears(net), activation)
    x, returns = th.randn(11, 5, dtype=th.float64), th.randn(11, dtype=th.float64)
    loss = critic.loss_and_gradient(x, returns)
    reference = (returns - net(x).flatten()).pow(2).mean()
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-12)
    th.testing.assert_close(critic.grad, flat(p.grad for p in net.parameters()), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------- the SB3 adapter


def actor_params(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    return [p for name, p in policy.named_parameters() if not name.startswith(("mlp_extractor.value_net.", "value_net."))]


def reference_fit_critic(policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer, n_epochs: int, batch_size: int):
    """``TRPO._fit_critic``'s loop (the autograd path), as the reference."""
    value_losses, skipped = [], 0
    actor = actor_params(policy)
    for _ in range(n_epochs):
        for data in rollout_buffer.get(batch_size):
            values = policy.predict_values(data.observations).flatten()
            value_loss = (data.returns - values).pow(2).mean()
            if not th.isfinite(value_loss):
                skipped += 1
                continue
            policy.optimizer.zero_grad()
            value_loss.backward()
            for param in actor:
                param.grad = None
            policy.optimizer.step()
            value_losses.append(value_loss.item())
    return value_losses, skipped


def fast_fit(policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer, n_epochs: int, batch_size: int):
    batches = ((data.observations, data.returns) for _ in range(n_epochs) for data in rollout_buffer.get(batch_size))
    return fast_critic_fit(policy, policy.optimizer, batches)


def filled_buffer(policy: ActorCriticPolicy, n_steps: int, n_envs: int, seed: int) -> RolloutBuffer:
    """A rollout buffer of random transitions with the values of ``policy`` and GAE returns."""
    rng = np.random.default_rng(seed)
    buffer = RolloutBuffer(n_steps, policy.observation_space, policy.action_space, n_envs=n_envs, gamma=0.9)
    policy.observation_space.seed(seed)
    policy.action_space.seed(seed)
    for _ in range(n_steps):
        obs = np.stack([policy.observation_space.sample() for _ in range(n_envs)])
        actions = np.stack([policy.action_space.sample() for _ in range(n_envs)])
        with th.no_grad():
            values = policy.predict_values(th.as_tensor(obs))
        buffer.add(
            obs,
            actions,
            rng.normal(size=n_envs).astype(np.float32),
            rng.random(n_envs) < 0.1,
            values,
            th.as_tensor(rng.normal(size=n_envs).astype(np.float32)),
        )
    buffer.compute_returns_and_advantage(th.zeros(n_envs), np.zeros(n_envs, dtype=bool))
    return buffer


def assert_same_policy_and_optimizer(fast: ActorCriticPolicy, reference: ActorCriticPolicy) -> None:
    for (name, p), (_, q) in zip(fast.named_parameters(), reference.named_parameters(), strict=True):
        th.testing.assert_close(p, q, **ADAPTER_TOLERANCE, msg=name)
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            th.testing.assert_close(p.grad, q.grad, **ADAPTER_TOLERANCE, msg=name)
    fast_state, reference_state = fast.optimizer.state_dict(), reference.optimizer.state_dict()
    assert fast_state["param_groups"] == reference_state["param_groups"]
    assert fast_state["state"].keys() == reference_state["state"].keys()
    for index, state in reference_state["state"].items():
        assert list(fast_state["state"][index]) == list(state)
        for key, value in state.items():
            assert fast_state["state"][index][key].dtype == value.dtype
            th.testing.assert_close(fast_state["state"][index][key], value, **ADAPTER_TOLERANCE)


def lr_schedule(_: float) -> float:
    return 3e-3


POLICIES = {
    "cartpole": (gym.make("CartPole-v1").observation_space, spaces.Discrete(2), {}),
    "pendulum": (gym.make("Pendulum-v1").observation_space, gym.make("Pendulum-v1").action_space, {}),
    "pi-vf": (gym.make("Pendulum-v1").observation_space, spaces.Discrete(3), dict(net_arch=dict(pi=[8], vf=[16, 8]))),
    "unshared-relu": (
        spaces.Box(-2, 2, shape=(3, 2), dtype=np.float32),  # flattened by the features extractor
        spaces.Box(-1, 1, shape=(2,), dtype=np.float32),
        dict(share_features_extractor=False, activation_fn=nn.ReLU, net_arch=[12]),
    ),
    "no-hidden-weight-decay": (
        spaces.Box(-1, 1, shape=(4,), dtype=np.float32),
        spaces.Discrete(2),
        dict(net_arch=dict(pi=[8], vf=[]), optimizer_kwargs=dict(eps=1e-5, weight_decay=1e-2)),
    ),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_adapter_matches_the_autograd_loop(name):
    observation_space, action_space, kwargs = POLICIES[name]
    th.manual_seed(10)
    policy = ActorCriticPolicy(observation_space, action_space, lr_schedule, **kwargs)
    assert fast_critic_fit_unsupported(policy, policy.optimizer) is None
    buffer = filled_buffer(policy, n_steps=25, n_envs=2, seed=11)  # 50 transitions: minibatches of 16 end with 2
    reference = copy.deepcopy(policy)

    for fit in range(2):  # the second fit continues from the Adam state the first left
        np.random.seed(12 + fit)
        result = fast_fit(policy, buffer, n_epochs=3, batch_size=16)
        np.random.seed(12 + fit)
        losses, skipped = reference_fit_critic(reference, buffer, n_epochs=3, batch_size=16)
        assert result is not None
        assert result.n_skipped_steps == skipped == 0
        assert result.losses == pytest.approx(losses, rel=1e-5)
        assert_same_policy_and_optimizer(policy, reference)

    # A later autograd step carries on from what the fast fit wrote.
    np.random.seed(13)
    reference_fit_critic(policy, buffer, n_epochs=1, batch_size=16)
    np.random.seed(13)
    reference_fit_critic(reference, buffer, n_epochs=1, batch_size=16)
    assert_same_policy_and_optimizer(policy, reference)


def test_adapter_continues_after_an_optimizer_state_round_trip():
    """Parameters and Adam state restored from state dicts (as ``TRPO.load`` does) continue like the original."""
    observation_space, action_space, _ = POLICIES["pendulum"]
    th.manual_seed(14)
    policy = ActorCriticPolicy(observation_space, action_space, lr_schedule)
    buffer = filled_buffer(policy, n_steps=32, n_envs=1, seed=15)
    np.random.seed(16)
    fast_fit(policy, buffer, n_epochs=2, batch_size=8)

    loaded = ActorCriticPolicy(observation_space, action_space, lr_schedule)
    loaded.load_state_dict(policy.state_dict())
    loaded.optimizer.load_state_dict(copy.deepcopy(policy.optimizer.state_dict()))
    for module in (policy, loaded):
        np.random.seed(17)
        result = fast_fit(module, buffer, n_epochs=2, batch_size=8)
        assert result is not None
        assert result.n_steps == 8
    assert_same_policy_and_optimizer(loaded, policy)


def test_adapter_on_a_trpo_model_matches_fit_critic():
    """On a real rollout, after a real update (so the optimizer has state): TRPO's own loop as the reference."""
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=96, batch_size=32, n_critic_updates=3, seed=18)
    model.learn(total_timesteps=96)
    reference = copy.deepcopy(model)
    assert model.policy.optimizer.state  # the first update's critic fit left Adam state

    np.random.seed(19)
    result = fast_fit(model.policy, model.rollout_buffer, n_epochs=3, batch_size=32)
    np.random.seed(19)
    reference.critic_method = "torch"
    assert reference.select_backends().critic.name == "torch"
    losses = reference._fit_critic().losses
    assert result is not None
    assert result.losses == pytest.approx(losses, rel=1e-5)
    assert_same_policy_and_optimizer(model.policy, reference.policy)


def test_adapter_skips_a_minibatch_with_a_non_finite_return():
    observation_space, action_space, _ = POLICIES["cartpole"]
    th.manual_seed(20)
    policy = ActorCriticPolicy(observation_space, action_space, lr_schedule)
    buffer = filled_buffer(policy, n_steps=40, n_envs=1, seed=21)
    reference = copy.deepcopy(policy)

    def batches(target: ActorCriticPolicy) -> Iterator:
        np.random.seed(22)
        for i, data in enumerate(buffer.get(10)):
            returns = data.returns.clone()
            if i == 2:
                returns[5] = math.nan
            yield data.observations, returns

    result = fast_critic_fit(policy, policy.optimizer, batches(policy))
    losses, skipped = autograd_fit(
        lambda obs: reference.predict_values(obs), reference.optimizer, batches(reference)
    )  # the critic alone: the actor takes no part in the loss
    assert result is not None
    assert result.n_skipped_steps == skipped == 1
    assert result.n_steps == 3
    assert result.losses == pytest.approx(losses, rel=1e-5)
    for p, q in zip(policy.parameters(), reference.parameters(), strict=True):
        assert th.isfinite(p).all()
        th.testing.assert_close(p, q, **ADAPTER_TOLERANCE)


def test_adapter_drops_a_fit_that_would_write_non_finite_values():
    """A finite loss with an overflowing gradient: nothing is written, every minibatch counts as skipped."""
    th.manual_seed(23)
    policy = ActorCriticPolicy(
        spaces.Box(1, 1, shape=(1,), dtype=np.float32), spaces.Discrete(2), lr_schedule, net_arch=[2], activation_fn=nn.ReLU
    )
    with th.no_grad():
        hidden = policy.mlp_extractor.value_net[0]
        hidden.weight.fill_(1e30), hidden.bias.zero_()  # a = 1e30
        policy.value_net.weight.fill_(1e-30), policy.value_net.bias.zero_()  # v ≈ 2
    before = copy.deepcopy(policy.state_dict())
    observations, returns = th.ones(4, 1), th.full((4,), 1e10)  # ℓ ≈ 1e20; ∂ℓ/∂W_L ≈ 1e40 overflows float32
    result = fast_critic_fit(policy, policy.optimizer, [(observations, returns)] * 3)
    assert result is not None
    assert result.n_steps == 0
    assert result.n_skipped_steps == 3
    for key, value in policy.state_dict().items():
        assert th.equal(value, before[key]), key
    assert not policy.optimizer.state


@pytest.mark.parametrize(("n_envs", "batch_size"), [(1, 8), (3, 16), (2, 50)])
@pytest.mark.parametrize("flattened", [True, False])
def test_rollout_minibatches_are_those_of_get(n_envs, batch_size, flattened):
    observation_space, action_space, _ = POLICIES["unshared-relu"]
    policy = ActorCriticPolicy(observation_space, action_space, lr_schedule)
    buffer = filled_buffer(policy, n_steps=20, n_envs=n_envs, seed=24)
    if flattened:  # as after TRPO's policy step
        next(iter(buffer.get(batch_size=None)))
    twin = copy.deepcopy(buffer)
    np.random.seed(25)
    expected = [(data.observations, data.returns) for _ in range(3) for data in twin.get(batch_size)]
    after_get = np.random.random()
    np.random.seed(25)
    drawn = list(rollout_minibatches(buffer, batch_size, n_epochs=3))
    assert np.random.random() == after_get
    assert len(drawn) == len(expected) == 3 * -(-20 * n_envs // batch_size)
    for (observations, returns), (expected_observations, expected_returns) in zip(drawn, expected, strict=True):
        assert th.equal(observations, expected_observations)
        assert th.equal(returns, expected_returns)


def test_adapter_with_rollout_minibatches_matches_the_autograd_loop():
    observation_space, action_space, _ = POLICIES["pendulum"]
    th.manual_seed(26)
    policy = ActorCriticPolicy(observation_space, action_space, lr_schedule)
    buffer = filled_buffer(policy, n_steps=30, n_envs=2, seed=27)
    next(iter(buffer.get(batch_size=None)))
    reference = copy.deepcopy(policy)
    np.random.seed(28)
    result = fast_critic_fit(policy, policy.optimizer, rollout_minibatches(buffer, 16, n_epochs=4))
    np.random.seed(28)
    losses, _ = reference_fit_critic(reference, buffer, n_epochs=4, batch_size=16)
    assert result is not None
    assert result.losses == pytest.approx(losses, rel=1e-5)
    assert_same_policy_and_optimizer(policy, reference)


# ---------------------------------------------------------------------------------------------- unsupported


class LinearExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Box):
        super().__init__(observation_space, features_dim=4)
        self.linear = nn.Linear(int(np.prod(observation_space.shape)), 4)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(observations)


def untouched_batches() -> Iterator:
    raise AssertionError("minibatches consumed although the fit is unsupported")
    yield


BOX = spaces.Box(-1, 1, shape=(3,), dtype=np.float32)


def unsupported_cases():
    image = spaces.Box(0, 255, shape=(3, 36, 36), dtype=np.uint8)
    dict_space = spaces.Dict({"a": BOX, "b": spaces.Box(-1, 1, shape=(2,), dtype=np.float32)})
    yield "cnn", ActorCriticCnnPolicy(image, spaces.Discrete(2), lr_schedule), "ActorCriticCnnPolicy"
    yield (
        "extractor with parameters",
        ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule, features_extractor_class=LinearExtractor),
        "FlattenExtractor",
    )
    yield "dict observations", MultiInputActorCriticPolicy(dict_space, spaces.Discrete(2), lr_schedule), "MultiInput"
    yield (
        "rmsprop",
        ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule, optimizer_class=th.optim.RMSprop),
        "not a plain torch.optim.Adam",
    )
    yield (
        "amsgrad",
        ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule, optimizer_kwargs=dict(amsgrad=True)),
        "amsgrad",
    )
    yield (
        "fused",
        ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule, optimizer_kwargs=dict(fused=True)),
        "fused",
    )
    yield (
        "softplus",
        ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule, activation_fn=nn.Softplus),
        "activation outside the table",
    )
    yield "recurrent", RecurrentActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule), "RecurrentActorCriticPolicy"
    frozen = ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule)
    frozen.value_net.bias.requires_grad_(False)
    yield "frozen parameter", frozen, "require a gradient"
    hooked = ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule)
    hooked.value_net.register_forward_hook(lambda module, inputs, output: output * 2)
    yield "forward hook", hooked, "hooks"
    uneven = ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule)
    for p in uneven.value_net.parameters():
        uneven.optimizer.state[p] = {"step": th.tensor(3.0), "exp_avg": th.zeros_like(p), "exp_avg_sq": th.zeros_like(p)}
    yield "uneven Adam state", uneven, "different numbers of Adam steps"
    grouped = ActorCriticPolicy(BOX, spaces.Discrete(2), lr_schedule)
    grouped.optimizer = th.optim.Adam(
        [{"params": grouped.mlp_extractor.value_net.parameters(), "lr": 1e-3}, {"params": grouped.value_net.parameters()}],
        lr=1e-4,
    )
    yield "param groups that differ", grouped, "param groups with different settings"


@pytest.mark.parametrize(
    ("case", "policy", "reason"), list(unsupported_cases()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_unsupported_policies_and_optimizers_are_detected(case, policy, reason):
    message = fast_critic_fit_unsupported(policy, policy.optimizer)
    assert message is not None, case
    assert reason in message, (case, message)
    before = copy.deepcopy(policy.state_dict())
    assert fast_critic_fit(policy, policy.optimizer, untouched_batches()) is None
    for key, value in policy.state_dict().items():
        assert th.equal(value, before[key])
