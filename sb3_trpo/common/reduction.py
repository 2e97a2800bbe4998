"""The single point through which every mean over the batch goes.

Advantage statistics, the surrogate, the KL, and the critic loss all call :func:`batch_mean`
(gradients and Fisher-vector products inherit it because they are derivatives of those means).
Products written out by hand take the weight of each state in that mean from :func:`mean_weights`
(the MLP actor's Fisher product, which differentiates :func:`batch_mean` itself), or ``1/N`` from
:func:`mean_scale` and the sum over processes from :func:`sum_across` (the flat critic fit).

In one process these are the plain means. The data-parallel training of :mod:`sb3_trpo.distributed`
gathers the ranks' batches once per rollout and runs this same update on the union, so it needs nothing
here; an all-reducing design (each rank updating on its own batch, for large batches and many ranks)
would replace these functions with ones that all-reduce the sums and the counts, and nothing else in
the update would change (``docs/guide/distributed.rst`` compares the two).
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


def mean_weights(like: th.Tensor, mask: th.Tensor | None = None) -> th.Tensor:
    """``∂ batch_mean(x) / ∂x_s`` (``1/N`` each, 0 where masked): the weight of each state in the mean.

    :param like: a tensor whose first dimension indexes the states (its dtype and device are used)
    :param mask: the states that count in the mean (None: all)
    """
    per_state = th.zeros(like.shape[0], dtype=like.dtype, device=like.device, requires_grad=True)
    with th.enable_grad():
        (weights,) = th.autograd.grad(batch_mean(per_state, mask), per_state)
    return weights


def mean_scale(count: int, like: th.Tensor) -> th.Tensor:
    """``1/N`` of a mean over ``count`` items, 0-dim in ``like``'s dtype and device, as torch's mean backward forms it."""
    return th.ones((), dtype=like.dtype, device=like.device) / count


def sum_across(tensor: th.Tensor) -> th.Tensor:
    """``tensor`` summed over the processes that share the batch, in place: here ``tensor`` itself (one process,
    or every rank holding the whole gathered batch); the hook of an all-reducing design."""
    return tensor
