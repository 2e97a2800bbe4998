"""The adaptive coefficient of the KL-penalised objective ``L(θ) − β · KL̄(θ)``."""

from __future__ import annotations

import math


def adapt_kl_coefficient(
    beta: float,
    kl: float,
    target_kl: float,
    tolerance: float,
    factor: float,
    beta_min: float,
    beta_max: float,
) -> float:
    """One step of the adaptive-β rule, clipped to ``[beta_min, beta_max]``::

        KL > target · tolerance   ->  β · factor   (the step went too far: penalise more)
        KL < target / tolerance   ->  β / factor   (the step was timid: penalise less)
        otherwise                 ->  β

    A non-finite ``kl`` counts as too far.
    """
    if not math.isfinite(kl) or kl > target_kl * tolerance:
        beta *= factor
    elif kl < target_kl / tolerance:
        beta /= factor
    return min(max(beta, beta_min), beta_max)
