"""The single point through which every mean over the batch goes.

Advantage statistics, the surrogate, the KL, and the critic loss all call :func:`batch_mean`
(gradients and Fisher-vector products inherit it because they are derivatives of those means).
A data-parallel TRPO, where each process collects its own rollouts, only has to replace this
function with one that all-reduces the sum and the count through ``torch.distributed``.
"""

from __future__ import annotations

import torch as th


def batch_mean(values: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """Mean over the batch: ``(1/N) Σ_i values_i``, over the elements where ``mask`` is true if given.

    The mask marks the real entries of a padded batch (recurrent policies pad their sequences).
    """
    return values.mean() if mask is None else values[mask].mean()


def batch_std(values: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """Unbiased standard deviation over the batch (the masked elements only), built from :func:`batch_mean`."""
    n = values.numel() if mask is None else int(mask.sum())
    centred = values - batch_mean(values, mask)
    return th.sqrt(batch_mean(centred.pow(2), mask) * n / max(n - 1, 1))
