"""Constructor checks that fail early, with a message naming the parameter and what it accepts."""

from __future__ import annotations


def require(condition: bool, name: str, accepted: str, value: object) -> None:
    """Raise ``ValueError("<name> must be <accepted>, got <value>")`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def is_integer(value: object) -> bool:
    """True for Python and NumPy integers, False for bools and floats."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
