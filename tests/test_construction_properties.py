"""Property-based construction: every numeric and option parameter, valid values accepted, invalid ones named.

The accepted values are written here a second time, from the class docstrings, independently of the rule
tables of the package (``TRPO.HYPERPARAMETERS``, ``PENALTY_HYPERPARAMETERS``): Hypothesis draws sets of
one to three arguments, each from the parameter's valid values, from its edges or from anything at all
(wrong types, NaN, ±inf, NumPy scalars, strings); a set with an invalid value must raise a ``ValueError``
naming one of the invalid parameters, a valid set must construct and store what it was given.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_trpo import TRPO, RecurrentTRPO, TRPOPenalty

INF = math.inf


# What each parameter accepts, from the docstrings: ("int", minimum), ("number", low, high, open_low, open_high),
# ("bool",), ("option", *choices), ("seed",). Options that force an accelerator (actor_method="mlp", ...) depend
# on the policy and are tested in test_backends.py; here only those valid for every policy are drawn as valid.
TRPO_PARAMETERS: dict[str, tuple] = {
    "learning_rate": ("number", 0, INF, False, False),
    "n_steps": ("int", 1),
    "batch_size": ("int", 1),
    "gamma": ("number", 0, 1, False, False),
    "cg_max_steps": ("int", 1),
    "cg_damping": ("number", 0, INF, False, False),
    "line_search_shrinking_factor": ("number", 0, 1, True, True),
    "line_search_max_iter": ("int", 1),
    "n_critic_updates": ("int", 0),
    "gae_lambda": ("number", 0, 1, False, False),
    "use_sde": ("bool",),
    "sde_sample_freq": ("int", -1),
    "normalize_advantage": ("bool",),
    "target_kl": ("number", 0, INF, True, False),
    "sub_sampling_factor": ("int", 1),
    "stats_window_size": ("int", 1),
    "verbose": ("int", 0),
    "seed": ("seed",),
    "kl_constraint": ("option", "mean", "max"),
    "cg_residual_tol": ("number", 0, INF, False, False),
    "fisher_method": ("option", "auto", "analytic", "autograd"),
    "fisher_sub_sampling_factor": ("int", 1),
    "rollout_method": ("option", "auto", "sb3"),
    "kl_action_reduction": ("option", "sum", "mean"),
    "actor_method": ("option", "auto", "torch"),
    "critic_method": ("option", "auto", "torch"),
}
PENALTY_PARAMETERS: dict[str, tuple] = {
    "beta": ("number", 0, INF, True, False),
    "kl_tolerance": ("number", 1, INF, True, False),
    "beta_factor": ("number", 1, INF, True, False),
    "beta_min": ("number", 0, INF, True, False),
    "beta_max": ("number", 0, INF, True, False),
    "policy_optimizer": ("option", "natural", "first_order"),
    "n_epochs": ("int", 1),
    "policy_learning_rate": ("number", 0, INF, True, False),
    "policy_batch_size": ("int", 1),
}
PENALTY_DEFAULTS = {"beta": 1.0, "beta_min": 1e-4, "beta_max": 1e6}
# Where a parameter is stored when not under its own name.
STORED_AS = {"stats_window_size": "_stats_window_size"}


def is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not is_bool(value)


def is_finite_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not is_bool(value) and math.isfinite(value)


def accepts(spec: tuple, value: Any) -> bool:
    kind = spec[0]
    if kind == "int":
        return is_int(value) and value >= spec[1]
    if kind == "number":
        _, low, high, open_low, open_high = spec
        if not is_finite_real(value):
            return False
        return (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if kind == "bool":
        return is_bool(value)
    if kind == "seed":
        return value is None or (is_int(value) and 0 <= value < 2**32)
    return isinstance(value, str) and value in spec[1:]


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "0.99", "1", "auto", "MEAN", "nan", "True"]),
    st.sampled_from([np.float32(0.5), np.float64(2.0), np.int64(3), np.bool_(True), np.float64("nan"), np.float32("inf")]),
    st.sampled_from([[1], (0.5,), {"a": 1}]),
)


def valid_values(spec: tuple) -> st.SearchStrategy:
    kind = spec[0]
    if kind == "int":
        # Bounded: n_steps and batch_size size the rollout buffer.
        return st.one_of(st.integers(spec[1], spec[1] + 3), st.integers(spec[1], 300), st.integers(spec[1], 300).map(np.int64))
    if kind == "number":
        _, low, high, open_low, open_high = spec
        top = min(high, 1e9)
        floats = st.floats(low, top, exclude_min=open_low, exclude_max=open_high or high == INF)
        edges = [edge for edge, is_open in ((low, open_low), (high, open_high)) if not is_open and math.isfinite(edge)]
        return st.one_of(
            floats, st.sampled_from(edges) if edges else floats, floats.map(np.float32).filter(lambda v: accepts(spec, v))
        )
    if kind == "bool":
        return st.one_of(st.booleans(), st.booleans().map(np.bool_))
    if kind == "seed":
        return st.one_of(st.none(), st.integers(0, 2**32 - 1))
    return st.sampled_from(spec[1:])


def invalid_values(spec: tuple) -> st.SearchStrategy:
    kind = spec[0]
    if kind == "int":
        return st.one_of(st.integers(-5, spec[1] - 1), st.floats(1.0, 10.0), st.just(str(spec[1] + 1)), st.none())
    if kind == "number":
        _, low, high, *_ = spec
        below = st.floats(max_value=low, allow_infinity=True, allow_nan=False).filter(lambda v: not accepts(spec, v))
        above = st.floats(min_value=high, allow_infinity=True, allow_nan=False) if math.isfinite(high) else st.just(INF)
        return st.one_of(below, above.filter(lambda v: not accepts(spec, v)), st.just(math.nan), st.just(str(low + 0.5)))
    if kind == "option":
        return st.sampled_from([choice.upper() for choice in spec[1:]] + ["", None, 0])
    return st.sampled_from(["True", 1, 0, None])


@st.composite
def arguments(draw, table: dict[str, tuple]) -> dict[str, Any]:
    names = draw(st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):  # half of the sets all valid, the others anything
        return {name: draw(valid_values(table[name])) for name in names}
    return {name: draw(st.one_of(valid_values(table[name]), invalid_values(table[name]), ANYTHING)) for name in names}


def invalid_names(table: dict[str, tuple], args: dict[str, Any]) -> set[str]:
    """The parameters of ``args`` that a ``ValueError`` may name (any of them: the order of the checks is free)."""
    invalid = {name for name, value in args.items() if not accepts(table[name], value)}
    if "beta" not in table or invalid & set(PENALTY_DEFAULTS):
        return invalid
    # The penalty's bounds must hold together: beta_max >= beta_min, beta within them.
    values = {**PENALTY_DEFAULTS, **{k: v for k, v in args.items() if k in PENALTY_DEFAULTS}}
    if values["beta_max"] < values["beta_min"]:
        return invalid | {"beta_max"}
    if not values["beta_min"] <= values["beta"] <= values["beta_max"]:
        return invalid | {"beta"}
    return invalid


ENV = DummyVecEnv([lambda: IdentityEnvBox(ep_length=20)] * 2)  # two environments: n_steps=1 is a valid rollout
SMALL = {"policy_kwargs": {"net_arch": [4]}}


def check(algo_class: type, table: dict[str, tuple], args: dict[str, Any], counts: Counter) -> None:
    policy = "MlpLstmPolicy" if issubclass(algo_class, RecurrentTRPO) else "MlpPolicy"
    invalid = invalid_names(table, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # batch sizes that do not divide the rollout
        if invalid:
            with pytest.raises(ValueError, match=r" must be ") as error:
                algo_class(policy, ENV, **SMALL, **args)
            named = str(error.value).split(" must be ")[0]
            assert named in invalid, (args, str(error.value))
            given_value = args[named] if named in args else PENALTY_DEFAULTS[named]
            assert repr(given_value) in str(error.value)  # says what was given
            counts["invalid"] += 1
            return
        model = algo_class(policy, ENV, **SMALL, **args)
    for name, value in args.items():
        assert getattr(model, STORED_AS.get(name, name)) == value, name
    counts["valid"] += 1


PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize(
    ("algo_class", "table", "max_examples", "minimum"),
    [
        (TRPO, TRPO_PARAMETERS, 200, 60),
        (TRPOPenalty, TRPO_PARAMETERS | PENALTY_PARAMETERS, 250, 60),
        (RecurrentTRPO, TRPO_PARAMETERS, 40, 10),
    ],
    ids=["TRPO", "TRPOPenalty", "RecurrentTRPO"],
)
def test_construction_accepts_exactly_the_documented_values(algo_class, table, max_examples, minimum, record_property):
    counts: Counter = Counter()

    @settings(PROPERTY, max_examples=max_examples)
    @given(args=arguments(table))
    def construct(args: dict[str, Any]) -> None:
        check(algo_class, table, args, counts)

    construct()
    print(f"{algo_class.__name__}: {counts['valid']} valid and {counts['invalid']} invalid argument sets tried")
    record_property("argument_sets_tried", dict(counts))
    assert counts["valid"] >= minimum
    assert counts["invalid"] >= minimum
