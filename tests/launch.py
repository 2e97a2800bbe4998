"""What the multi-process tests share: a script started under ``torchrun`` with a timeout (a hang fails the
test instead of stalling the suite), and a model's parameters as one flat array."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

PORT_RACE = ("Address already in use", "EADDRINUSE")


def torchrun(
    script: Path, mode: str, out: Path, timeout: float = 240.0, nproc: int = 2, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``mode`` of ``script`` on ``nproc`` ranks; fail with the ranks' output if it fails or outlives ``timeout``."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "SB3_TRPO_DISTRIBUTED_TIMEOUT": "60", **(env or {})}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        str(script),
        mode,
    ]
    for attempt in range(2):
        result = subprocess.run(
            [*command, str(out)], env=environment, capture_output=True, text=True, timeout=timeout / 2, check=False
        )
        # A port another test took between torchrun's choice and its use: the launch failed, not the code.
        if result.returncode == 0 or not any(sign in result.stderr for sign in PORT_RACE) or attempt == 1:
            break
    assert result.returncode == 0, f"torchrun {mode} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def flat_parameters(model: Any) -> np.ndarray:
    """Every parameter of ``model.policy``, in order, as one array."""
    return np.concatenate([p.detach().numpy().ravel() for p in model.policy.parameters()])


def set_parameters(model: Any, flat: np.ndarray) -> None:
    """The inverse of :func:`flat_parameters`."""
    offset = 0
    with th.no_grad():
        for param in model.policy.parameters():
            param.copy_(th.as_tensor(flat[offset : offset + param.numel()]).view_as(param))
            offset += param.numel()
