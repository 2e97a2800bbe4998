"""Micro-benchmark: the Fisher-vector products of one TRPO update, autograd against closed form.

One policy update at θ_old builds a product ``v -> F v`` and calls it ``--calls`` times (conjugate
gradient plus the curvature ``xᵀFx``). Timed, per repeat, from the forward pass that builds it to
the last call, for:

- ``autograd``: Pearlmutter's double backward through the mean KL (``autograd_fisher_vector_product``);
- ``analytic``: ``Jᵀ M J v`` with ``J v`` by the double-vjp trick (``analytic_fisher_vector_product``);
- ``mlp``: the same product written out by hand for SB3's MLP actor (``PolicyMLPActor``), what TRPO
  runs for these policies;
- ``func-linearize`` and ``func-jvp``: the same ``Jᵀ M J v`` with ``J v`` from ``torch.func.linearize``
  (traced once per update) or from a fresh ``torch.func.jvp`` per call, ``Jᵀ w`` from ``torch.func.vjp``:
  the alternatives the library does not ship, kept here so the choice can be re-measured.

Defaults are HalfCheetah's sizes: observations 17, actions 6, SB3's default MlpPolicy (64-64 tanh),
2048 states, 25 products, one torch thread. The variants alternate within each repeat; times are
medians over repeats (the build and one call are also shown, as medians of their own), and the ratio
is autograd / variant (> 1: faster than autograd). All variants must agree on ``F v``.

    python benchmarks/fvp_speed.py [--discrete] [--net-arch 256 256] [--states 2048] [--calls 25]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.func import functional_call, jvp, linearize, vjp

from sb3_trpo.accel.actor import PolicyMLPActor
from sb3_trpo.common.analytic_fisher import (
    analytic_fisher_vector_product,
    distribution_parameters,
    fisher_metric,
)
from sb3_trpo.common.fisher import autograd_fisher_vector_product, kl_per_state
from sb3_trpo.common.natural_gradient import MatrixVectorProduct, flat_concat

Builder = Callable[[], MatrixVectorProduct]


def autograd_builder(policy: ActorCriticPolicy, obs: th.Tensor, params: list[th.nn.Parameter]) -> Builder:
    def build() -> MatrixVectorProduct:
        with th.no_grad():
            old = copy.copy(policy.get_distribution(obs))
        kl = kl_per_state(old, policy.get_distribution(obs)).mean()
        return autograd_fisher_vector_product(kl, params)

    return build


def analytic_builder(policy: ActorCriticPolicy, obs: th.Tensor, params: list[th.nn.Parameter]) -> Builder:
    def build() -> MatrixVectorProduct:
        product = analytic_fisher_vector_product(policy.get_distribution(obs), params)
        assert product is not None
        return product

    return build


def mlp_builder(policy: ActorCriticPolicy, obs: th.Tensor, params: list[th.nn.Parameter]) -> Builder:
    def build() -> MatrixVectorProduct:
        actor = PolicyMLPActor.from_policy(policy, obs, params)
        assert actor is not None
        return actor.fisher_vector_product()

    return build


class _Actor(th.nn.Module):
    """``obs -> η``, for ``functional_call``."""

    def __init__(self, policy: ActorCriticPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: th.Tensor) -> tuple[th.Tensor, ...]:
        return distribution_parameters(self.policy.get_distribution(obs))


def torch_func_builder(policy: ActorCriticPolicy, obs: th.Tensor, params: list[th.nn.Parameter], mode: str) -> Builder:
    actor = _Actor(policy)
    names_by_id = {id(param): name for name, param in actor.named_parameters()}
    names = [names_by_id[id(param)] for param in params]
    metric = fisher_metric(policy.get_distribution(obs[:1]))

    def parameters_fn(*theta: th.Tensor) -> tuple[th.Tensor, ...]:
        return functional_call(actor, dict(zip(names, theta, strict=True)), (obs,))

    def build() -> MatrixVectorProduct:
        primals = tuple(param.detach() for param in params)
        with th.no_grad():
            values, pullback = vjp(parameters_fn, *primals)
            if mode == "linearize":
                # make_fx cannot trace the data-dependent argument checks of torch.distributions.
                validate = th.distributions.Distribution._validate_args
                th.distributions.Distribution.set_default_validate_args(False)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)  # const-folding chatter of torch.fx
                        _, pushforward = linearize(parameters_fn, *primals)
                finally:
                    th.distributions.Distribution.set_default_validate_args(validate)
            else:

                def pushforward(*tangents: th.Tensor) -> tuple[th.Tensor, ...]:
                    return jvp(parameters_fn, primals, tangents)[1]

        sizes = [primal.numel() for primal in primals]

        def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
            with th.no_grad():
                tangents = tuple(c.view_as(p) for c, p in zip(th.split(vector, sizes), primals, strict=True))
                weighted = tuple(m / values[0].shape[0] for m in metric(values, pushforward(*tangents)))
                return flat_concat(pullback(weighted))

        return fisher_vector_product

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=2048)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--net-arch", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--discrete", action="store_true", help="a categorical policy (Discrete(action-dim))")
    parser.add_argument("--calls", type=int, default=25, help="Fisher-vector products per update")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--variants", nargs="+", default=["autograd", "analytic", "mlp", "func-linearize", "func-jvp"])
    args = parser.parse_args()

    th.set_num_threads(1)
    th.manual_seed(0)
    observation_space = spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)
    if args.discrete:
        action_space: spaces.Space = spaces.Discrete(args.action_dim)
    else:
        action_space = spaces.Box(-1.0, 1.0, (args.action_dim,), np.float32)
    policy = ActorCriticPolicy(observation_space, action_space, lambda _: 3e-4, net_arch=args.net_arch)
    obs = th.randn(args.states, args.obs_dim)
    dist = policy.get_distribution(obs)
    all_params = list(policy.parameters())
    grads = th.autograd.grad(dist.log_prob(dist.sample()).sum(), all_params, allow_unused=True)
    params = [p for p, g in zip(all_params, grads, strict=True) if g is not None]
    vectors = [th.randn(sum(p.numel() for p in params)) for _ in range(args.calls)]

    builders = {
        "autograd": autograd_builder(policy, obs, params),
        "analytic": analytic_builder(policy, obs, params),
        "mlp": mlp_builder(policy, obs, params),
        "func-linearize": torch_func_builder(policy, obs, params, "linearize"),
        "func-jvp": torch_func_builder(policy, obs, params, "jvp"),
    }
    builders = {name: builders[name] for name in args.variants}

    reference = builders["autograd"]()(vectors[0])
    for name, build in builders.items():
        error = ((build()(vectors[0]) - reference).norm() / reference.norm()).item()
        assert error < 1e-4, f"{name} disagrees with autograd: relative error {error:.2e}"

    totals: dict[str, list[float]] = {name: [] for name in builders}
    build_times: dict[str, list[float]] = {name: [] for name in builders}
    call_times: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(args.repeats):
        for name, build in builders.items():
            start = time.perf_counter()
            product = build()
            built = time.perf_counter()
            for vector in vectors:
                product(vector)
            end = time.perf_counter()
            totals[name].append(end - start)
            build_times[name].append(built - start)
            call_times[name].append((end - built) / len(vectors))

    kind = "Discrete" if args.discrete else "Box"
    print(
        f"{args.states} states, obs {args.obs_dim}, {kind}({args.action_dim}), net_arch {args.net_arch}, "
        f"{len(vectors)} products per update, {args.repeats} repeats, 1 thread, torch {th.__version__}"
    )
    autograd_total = statistics.median(totals["autograd"]) if "autograd" in totals else float("nan")
    print(f"{'variant':<16}{'update (ms)':>12}{'build (ms)':>12}{'per call (ms)':>15}{'autograd / it':>15}")
    for name in builders:
        total = statistics.median(totals[name])
        print(
            f"{name:<16}{1e3 * total:>12.1f}{1e3 * statistics.median(build_times[name]):>12.2f}"
            f"{1e3 * statistics.median(call_times[name]):>15.3f}{autograd_total / total:>15.2f}"
        )


if __name__ == "__main__":
    main()
