"""Fisher-vector products against explicit Fisher matrices (float64, tiny SB3 policies)."""

import copy
import itertools

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo.common.fisher import autograd_fisher_vector_product, kl_per_state
from sb3_trpo.common.natural_gradient import flat_grad

N_STATES = 4
OBS_SPACE = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
ACTION_SPACES = {
    "gaussian": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
    "categorical": spaces.Discrete(3),
    "multi_categorical": spaces.MultiDiscrete([2, 3]),
    "bernoulli": spaces.MultiBinary(3),
}


def tiny_policy(action_space: spaces.Space, seed: int = 0) -> ActorCriticPolicy:
    th.manual_seed(seed)
    policy = ActorCriticPolicy(
        OBS_SPACE, action_space, lambda _: 1e-3, net_arch=[4], log_std_init=-0.3, ortho_init=False
    ).double()
    with th.no_grad():  # move away from the symmetric initial point so every term of F matters
        for param in policy.parameters():
            param.add_(0.3 * th.randn_like(param))
    return policy


def states(seed: int = 0) -> th.Tensor:
    return 2.0 * th.rand(N_STATES, 3, generator=th.Generator().manual_seed(seed), dtype=th.float64) - 1.0


def distribution(policy: ActorCriticPolicy, obs: th.Tensor):
    """The policy's action distribution, in float64 (SB3's own preprocessing casts to float32)."""
    return policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(obs))


def actor_parameters(policy: ActorCriticPolicy, obs: th.Tensor) -> list[th.nn.Parameter]:
    dist = distribution(policy, obs)
    params = list(policy.parameters())
    sample = dist.sample()
    grads = th.autograd.grad(dist.log_prob(sample).sum(), params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def all_actions(action_space: spaces.Space) -> list[np.ndarray]:
    if isinstance(action_space, spaces.Discrete):
        return [np.array(a) for a in range(action_space.n)]
    if isinstance(action_space, spaces.MultiDiscrete):
        return [np.array(a) for a in itertools.product(*[range(n) for n in action_space.nvec])]
    assert isinstance(action_space, spaces.MultiBinary)
    return [np.array(a, dtype=np.float64) for a in itertools.product([0, 1], repeat=action_space.n)]


def explicit_fisher(policy: ActorCriticPolicy, obs: th.Tensor, params: list[th.nn.Parameter]) -> th.Tensor:
    """F = mean_s E_{a~π(·|s)} [∇ log π(a|s) ∇ log π(a|s)ᵀ], enumerated or in closed form."""
    n = sum(p.numel() for p in params)
    fisher = th.zeros(n, n, dtype=th.float64)
    action_space = policy.action_space
    for state in obs:
        state = state.unsqueeze(0)
        if isinstance(action_space, spaces.Box):
            # Diagonal Gaussian: F = J_μᵀ diag(1/σ²) J_μ + 2 J_logσᵀ J_logσ (the Fisher of (μ, log σ)).
            dist = distribution(policy, state).distribution
            mean, log_std = dist.mean[0], th.log(dist.stddev[0])
            for j in range(mean.numel()):
                grad_mean = flat_grad(mean[j], params, retain_graph=True)
                grad_log_std = flat_grad(log_std[j], params, retain_graph=True)
                fisher += th.outer(grad_mean, grad_mean) / dist.stddev[0, j].item() ** 2
                fisher += 2.0 * th.outer(grad_log_std, grad_log_std)
        else:
            for action in all_actions(action_space):
                dist = distribution(policy, state)
                log_prob = dist.log_prob(th.as_tensor(action[None]))
                score = flat_grad(log_prob.sum(), params)
                fisher += log_prob.exp().item() * th.outer(score, score)
    return fisher / obs.shape[0]


@pytest.mark.parametrize("name", list(ACTION_SPACES))
def test_autograd_fisher_vector_product_equals_explicit_fisher(name):
    policy = tiny_policy(ACTION_SPACES[name])
    obs = states()
    params = actor_parameters(policy, obs)
    with th.no_grad():
        old = copy.copy(distribution(policy, obs))
    kl = kl_per_state(old, distribution(policy, obs)).mean()
    fvp = autograd_fisher_vector_product(kl, params)

    n = sum(p.numel() for p in params)
    fisher_from_products = th.stack([fvp(e) for e in th.eye(n, dtype=th.float64)], dim=1)
    expected = explicit_fisher(policy, obs, params)
    assert expected.abs().max() > 1e-3  # a meaningful matrix, not zeros
    assert th.allclose(fisher_from_products, expected, rtol=1e-10, atol=1e-12)


def test_kl_per_state_sums_independent_dimensions():
    policy = tiny_policy(ACTION_SPACES["gaussian"])
    obs = states()
    with th.no_grad():
        old = copy.copy(distribution(policy, obs))
        policy.log_std.add_(0.1)
        new = distribution(policy, obs)
        kl = kl_per_state(old, new)
    # KL of two Gaussians with the same mean and log-std differing by 0.1 in each of 2 dims.
    per_dim = 0.5 * (np.exp(-0.2) + 0.2 - 1.0)
    assert kl.shape == (N_STATES,)
    assert th.allclose(kl, th.full((N_STATES,), 2 * per_dim, dtype=th.float64), rtol=1e-12)


def test_fisher_vector_product_is_hessian_of_mean_kl():
    # A second route, independent of SB3: the dense Hessian of KL̄ at θ_old for a hand-written
    # two-layer categorical policy, by torch.autograd.functional.hessian on the flat parameters.
    gen = th.Generator().manual_seed(3)
    obs = th.randn(N_STATES, 3, generator=gen, dtype=th.float64)
    shapes = [(4, 3), (4,), (3, 4), (3,)]
    theta0 = th.randn(sum(int(np.prod(s)) for s in shapes), generator=gen, dtype=th.float64)

    def logits(theta: th.Tensor) -> th.Tensor:
        w1, b1, w2, b2 = (c.view(s) for c, s in zip(th.split(theta, [int(np.prod(s)) for s in shapes]), shapes, strict=False))
        return th.tanh(obs @ w1.T + b1) @ w2.T + b2

    old = th.distributions.Categorical(logits=logits(theta0))

    def mean_kl(theta: th.Tensor) -> th.Tensor:
        return th.distributions.kl_divergence(old, th.distributions.Categorical(logits=logits(theta))).mean()

    hessian = th.autograd.functional.hessian(mean_kl, theta0)
    theta = theta0.clone().requires_grad_(True)
    fvp = autograd_fisher_vector_product(mean_kl(theta), [theta])
    v = th.randn(theta0.numel(), generator=gen, dtype=th.float64)
    assert th.allclose(fvp(v), hessian @ v, rtol=1e-10, atol=1e-12)
