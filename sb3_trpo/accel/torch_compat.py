"""The private torch APIs the accelerators rely on, and the guard that keeps them to tested torch versions.

- ``torch.ops.aten.<activation>_backward.grad_input``: the derivative ops autograd calls, so that the
  hand-written backward passes equal autograd's (:mod:`~sb3_trpo.accel.activations`);
- ``torch.nn.modules.module._global_*_hooks`` and ``torch.optim.optimizer._global_optimizer_*_hooks``:
  the only way to see hooks registered for every module or optimizer, which would change what a
  forward pass or an Adam step computes (:func:`has_module_hooks`, :mod:`~sb3_trpo.accel.critic`).

None of these is public. On a torch outside the versions they were checked on, or where one is
missing, :func:`private_torch_api_unavailable` gives the reason and every accelerator declines: the
algorithm runs its reference (autograd and SB3) backends instead, which compute the same update.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch as th
from torch import nn

TESTED_TORCH_VERSIONS = ((2, 3), (2, 13))
"""The oldest and newest ``(major, minor)`` torch versions whose private APIs the accelerators were checked on."""

_BACKWARD_OPS = ("tanh", "threshold", "sigmoid", "leaky_relu", "elu", "silu", "gelu")
_MODULE_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
_OPTIMIZER_HOOKS = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")


def torch_version(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of a torch version string (default: the installed torch's)."""
    match = re.match(r"(\d+)\.(\d+)", str(th.__version__ if version is None else version))
    if match is None:
        return (0, 0)
    return int(match.group(1)), int(match.group(2))


def private_torch_api_unavailable() -> str | None:
    """Why the accelerators cannot rely on torch's private APIs here, or None where they can."""
    oldest, newest = TESTED_TORCH_VERSIONS
    if not oldest <= torch_version() <= newest:
        return (
            f"torch {th.__version__} is outside the versions whose private APIs the accelerators were checked on "
            f"({oldest[0]}.{oldest[1]} to {newest[0]}.{newest[1]})"
        )
    from torch.optim import optimizer as torch_optimizer

    missing = [f"aten.{op}_backward.grad_input" for op in _BACKWARD_OPS if not _has_grad_input(op)]
    missing += [f"torch.nn.modules.module.{name}" for name in _MODULE_HOOKS if not hasattr(nn.modules.module, name)]
    missing += [f"torch.optim.optimizer.{name}" for name in _OPTIMIZER_HOOKS if not hasattr(torch_optimizer, name)]
    return f"torch {th.__version__} lacks {', '.join(missing)}" if missing else None


def _has_grad_input(op: str) -> bool:
    try:
        return hasattr(getattr(th.ops.aten, f"{op}_backward"), "grad_input")
    except (AttributeError, RuntimeError):
        return False


def has_module_hooks(modules: Iterable[nn.Module]) -> bool:
    """Whether a module hook, global or on one of ``modules``, could change what they compute."""
    if any(getattr(nn.modules.module, name) for name in _MODULE_HOOKS):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for module in modules
        for m in module.modules()
    )


def has_optimizer_hooks(optimizer: th.optim.Optimizer) -> bool:
    """Whether a step hook, global or on ``optimizer``, runs around its steps."""
    from torch.optim import optimizer as torch_optimizer

    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or any(getattr(torch_optimizer, name) for name in _OPTIMIZER_HOOKS)
    )
