"""The single point through which every mean over the batch goes.

Advantage statistics, the surrogate, the KL, and the critic loss all call :func:`batch_mean`
(gradients and Fisher-vector products inherit it because they are derivatives of those means).
A data-parallel TRPO, where each process collects its own rollouts, only has to replace this
function with one that all-reduces the sum and the count through ``torch.distributed``.
"""

from __future__ import annotations

import torch as th


def batch_mean(values: th.Tensor) -> th.Tensor:
    """Mean of ``values`` over every element of the batch: ``(1/N) Σ_i values_i``."""
    return values.mean()


def batch_std(values: th.Tensor) -> th.Tensor:
    """Unbiased standard deviation over the batch, built from :func:`batch_mean`."""
    n = values.numel()
    centred = values - batch_mean(values)
    return th.sqrt(batch_mean(centred.pow(2)) * n / max(n - 1, 1))
