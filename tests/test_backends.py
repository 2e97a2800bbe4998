"""Backends chosen once: the recogniser, the activation table, the choice and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from sb3_trpo import TRPO, RecurrentTRPO, TRPOPenalty
from sb3_trpo.accel import torch_compat
from sb3_trpo.accel.activations import ACTIVATIONS, activation_from_module
from sb3_trpo.accel.spec import MLPSpec, recognise
from sb3_trpo.common.backends import SB3Rollouts, TorchActor, TorchCritic
from sb3_trpo.common.natural_gradient import flat_concat

SMALL = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 2, "seed": 0}
MODULES = {
    "tanh": nn.Tanh(),
    "relu": nn.ReLU(),
    "sigmoid": nn.Sigmoid(),
    "leaky_relu": nn.LeakyReLU(0.2),
    "elu": nn.ELU(alpha=0.7),
    "silu": nn.SiLU(),
    "gelu": nn.GELU(approximate="tanh"),
}


def test_the_table_covers_every_module_it_names():
    assert set(MODULES) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_kernel_of_the_table_computes_the_module(name):
    module = MODULES[name]
    activation = activation_from_module(module)
    assert activation is not None
    assert activation.name == name
    h = th.linspace(-3.0, 3.0, 41, dtype=th.float64).reshape(41, 1).requires_grad_(True)
    expected = module(h)
    (expected_derivative,) = th.autograd.grad(expected.sum(), h)

    out = th.empty_like(h.detach())
    activation.forward_fn(h.device)(h.detach(), out)
    th.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
    x = h.detach().float().numpy()
    np.testing.assert_allclose(activation.numpy_fn()(x), expected.detach().float().numpy(), rtol=1e-6, atol=1e-6)
    derivative = activation.derivative(h.detach(), expected.detach())
    th.testing.assert_close(derivative, expected_derivative, rtol=1e-12, atol=1e-12)


def test_the_recogniser_describes_sb3s_mlp():
    policy = ActorCriticPolicy(
        spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (2,)), lambda _: 1e-3, net_arch=dict(pi=[8], vf=[5, 4])
    )
    spec = recognise(policy)
    assert isinstance(spec, MLPSpec)
    assert [linear.out_features for linear in spec.actor.linears] == [8, 2]
    assert [linear.out_features for linear in spec.critic.linears] == [5, 4, 1]
    assert [a.name for a in spec.critic.activations] == ["tanh", "tanh"]
    assert spec.distribution == "gaussian"
    assert spec.log_std is policy.log_std
    assert (spec.device.type, spec.dtype, spec.one_hot_size, spec.scale_images) == ("cpu", th.float32, 0, False)


def test_backends_are_chosen_at_construction_and_said_with_verbose(capsys):
    model = TRPO("MlpPolicy", "CartPole-v1", verbose=1, **SMALL)
    assert model.backends.names == {"actor": "mlp", "critic": "flat", "rollout": "numpy"}
    assert "TRPO backends: actor: mlp, critic: flat, rollout: numpy" in capsys.readouterr().out

    model = TRPO("MlpPolicy", "Pendulum-v1", verbose=1, use_sde=True, **SMALL)
    assert model.backends.names == {"actor": "torch", "critic": "flat", "rollout": "sb3"}
    said = capsys.readouterr().out
    assert "actor: torch (mlp: the action distribution is a StateDependentNoiseDistribution" in said
    assert "rollout: sb3 (numpy: the action distribution is a StateDependentNoiseDistribution" in said


@pytest.mark.parametrize(
    ("option", "value", "kind", "name"),
    [
        ("actor_method", "torch", "actor", "torch"),
        ("critic_method", "torch", "critic", "torch"),
        ("rollout_method", "sb3", "rollout", "sb3"),
    ],
)
def test_each_backend_is_selectable(option, value, kind, name):
    model = TRPO("MlpPolicy", "CartPole-v1", **SMALL, **{option: value})
    assert model.backends.names[kind] == name
    assert f'{option}="{value}"' in str(model.backends)
    model.learn(128)


@pytest.mark.parametrize(
    ("option", "value"), [("actor_method", "mlp"), ("critic_method", "flat"), ("rollout_method", "numpy")]
)
def test_forcing_an_accelerator_the_policy_cannot_use_is_a_value_error(option, value):
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        TRPO("MlpPolicy", "CartPole-v1", policy_kwargs={"activation_fn": nn.Softplus}, **SMALL, **{option: value})


def test_the_choice_follows_a_replaced_policy_and_loaded_parameters(tmp_path):
    model = TRPO("MlpPolicy", "CartPole-v1", **SMALL)
    chosen = model.backends
    assert model.backends is chosen  # not re-decided per call
    model.policy = ActorCriticPolicy(
        model.observation_space, model.action_space, lambda _: 1e-3, activation_fn=nn.Softplus
    )  # a new policy object
    assert model.backends.names == {"actor": "torch", "critic": "torch", "rollout": "sb3"}
    assert model.backends.actor.params == [p for n, p in model.policy.named_parameters() if "value" not in n]

    model = TRPO("MlpPolicy", "CartPole-v1", **SMALL).learn(64)
    model.save(tmp_path / "model")
    loaded = TRPO.load(tmp_path / "model")
    assert loaded.backends.names == {"actor": "mlp", "critic": "flat", "rollout": "numpy"}
    assert {id(p) for p in loaded.backends.actor.params} < {id(p) for p in loaded.policy.parameters()}
    before = loaded.backends
    loaded.set_parameters(model.get_parameters())
    assert loaded.backends is not before


def test_a_subclass_changes_a_backend_by_overriding_its_factory():
    class TorchCriticTRPO(TRPO):
        def _make_critic_backend(self, spec, actor_params):
            return TorchCritic(self.policy, self._value_loss, actor_params, declined="flat: not wanted here")

    model = TorchCriticTRPO("MlpPolicy", "CartPole-v1", **SMALL)
    assert model.backends.names == {"actor": "mlp", "critic": "torch", "rollout": "numpy"}
    model.learn(128)


def test_recurrent_models_use_the_reference_backends():
    model = RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", **SMALL)
    assert isinstance(model.backends.actor, TorchActor)
    assert isinstance(model.backends.critic, TorchCritic)
    assert isinstance(model.backends.rollout, SB3Rollouts)
    assert any(p is model.policy.lstm_actor.weight_hh_l0 for p in model.backends.actor.params)
    with pytest.raises(ValueError, match=r"^rollout_method must be"):
        RecurrentTRPO("MlpLstmPolicy", "CartPole-v1", rollout_method="numpy", **SMALL)


@pytest.mark.parametrize("algorithm", [TRPO, TRPOPenalty])
def test_a_torch_outside_the_checked_versions_falls_back_to_the_same_training(monkeypatch, algorithm):
    accelerated = algorithm("MlpPolicy", "CartPole-v1", **SMALL).learn(128)
    monkeypatch.setattr(th, "__version__", "99.0.0")
    assert "torch 99.0.0 is outside" in (torch_compat.private_torch_api_unavailable() or "")
    reference = algorithm("MlpPolicy", "CartPole-v1", **SMALL)
    assert reference.backends.names == {"actor": "torch", "critic": "torch", "rollout": "sb3"}
    assert "torch 99.0.0 is outside" in str(reference.backends)
    reference.learn(128)
    a = flat_concat([p.detach() for p in accelerated.policy.parameters()])
    b = flat_concat([p.detach() for p in reference.policy.parameters()])
    assert not th.equal(
        b, flat_concat([p.detach() for p in algorithm("MlpPolicy", "CartPole-v1", **SMALL).policy.parameters()])
    )
    th.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_missing_private_op_is_a_reason_too(monkeypatch):
    monkeypatch.setattr(torch_compat, "_has_grad_input", lambda op: op != "gelu")
    assert "aten.gelu_backward.grad_input" in (torch_compat.private_torch_api_unavailable() or "")
