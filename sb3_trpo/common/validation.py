"""Constructor checks that fail early, with a message naming the parameter and what it accepts.

An algorithm declares each hyperparameter's accepted values once, as a :class:`Rule` in a table
(``TRPO.HYPERPARAMETERS``), and :func:`validate` checks them all: the name appears in one place.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class ContribAssertionError(ValueError, AssertionError):
    """A ``ValueError`` that is also the ``AssertionError`` sb3-contrib (or SB3) raises for the same input.

    Code written for ``sb3_contrib.TRPO`` may catch ``AssertionError`` where sb3-contrib asserts (a
    rollout of one transition with advantage normalisation, an unsupported action space); this error
    keeps such code working while being the ``ValueError`` this package raises for bad input.
    """


def require(condition: bool, name: str, accepted: str, value: object, error: type[ValueError] = ValueError) -> None:
    """Raise ``error("<name> must be <accepted>, got <value>")`` (a ``ValueError``) unless ``condition`` holds."""
    if not condition:
        raise error(f"{name} must be {accepted}, got {value!r}")


def is_integer(value: object) -> bool:
    """True for Python and NumPy integers, False for bools and floats."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_boolean(value: object) -> bool:
    """True for ``True``/``False`` and NumPy's booleans; not for 0, 1 or strings."""
    return isinstance(value, (bool, np.bool_))


def is_number(value: object) -> bool:
    """True for finite real numbers (Python, NumPy), False for bools, strings, None, nan and ±inf."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What a hyperparameter accepts: a description for the message and the check."""

    accepted: str
    check: Callable[[Any], bool]


def integer(minimum: int) -> Rule:
    """An integer ``>= minimum``."""
    return Rule(f"an integer >= {minimum}", lambda value: is_integer(value) and value >= minimum)


def boolean() -> Rule:
    """``True`` or ``False``."""
    return Rule("True or False", is_boolean)


def number(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False, open_high: bool = False) -> Rule:
    """A finite number in the interval from ``low`` to ``high`` (closed unless ``open_*``)."""
    if math.isinf(high):
        accepted = f"a finite number {'>' if open_low else '>='} {low:g}"
    else:
        accepted = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def check(value: Any) -> bool:
        return (
            is_number(value) and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        )

    return Rule(accepted, check)


def one_of(options: Sequence[str]) -> Rule:
    """One of ``options``, exactly."""
    return Rule(f"one of {tuple(options)}", lambda value: isinstance(value, str) and value in options)


def validate(rules: Mapping[str, Rule], values: Mapping[str, Any]) -> None:
    """Raise a ValueError naming the first of ``values`` that its rule rejects."""
    for name, rule in rules.items():
        if name in values:
            require(rule.check(values[name]), name, rule.accepted, values[name])


def is_device(value: object) -> bool:
    """``"auto"``, a ``torch.device`` or a name torch parses as one (``"cpu"``, ``"cuda:1"``)."""
    import torch as th

    if isinstance(value, th.device) or value == "auto":
        return True
    if not isinstance(value, str):
        return False
    try:
        th.device(value)
    except (RuntimeError, ValueError):
        return False
    return True
