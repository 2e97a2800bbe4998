"""Training one model on many processes and machines, on ``torch.distributed`` under ``torchrun``.

- :mod:`~sb3_trpo.distributed.communicator`: the process group (gloo on CPUs, NCCL on GPUs), with a
  timeout on every collective;
- :mod:`~sb3_trpo.distributed.data_parallel`: synchronous data-parallel TRPO, every rank collecting its
  own rollouts and every rank running the single-process update on their union;
- :mod:`~sb3_trpo.distributed.asynchronous`: one learner and rollout workers that never wait for it,
  the learner correcting their stale behaviour policy with the importance ratio.

``TRPO(..., distributed="auto")`` (the default) trains data-parallel when the script was launched by
``torchrun`` with more than one process, and exactly as before otherwise.
"""

from __future__ import annotations

import torch as th

from sb3_trpo.distributed.communicator import Communicator, launched_by_torchrun
from sb3_trpo.distributed.data_parallel import DataParallel, parameter_checksum

DISTRIBUTED_MODES = ("auto", "off", "sync", "async")


def data_parallel_for(mode: str, device: th.device) -> DataParallel | None:
    """The :class:`DataParallel` side of a model for ``mode``, or None for training on this process alone.

    ``"auto"``: data-parallel when launched by ``torchrun`` with ``WORLD_SIZE > 1``; ``"sync"``: always
    (the process group must be reachable); ``"off"``: never.
    """
    if mode == "off" or (mode == "auto" and not launched_by_torchrun()):
        return None
    return DataParallel(Communicator(device=device), on_gpu=device.type == "cuda")


def rank_device(device: th.device) -> th.device:
    """One GPU per process on a machine: ``cuda`` becomes ``cuda:LOCAL_RANK``; other devices stay."""
    import os

    if device.type == "cuda" and device.index is None:
        return th.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


__all__ = [
    "DISTRIBUTED_MODES",
    "Communicator",
    "DataParallel",
    "data_parallel_for",
    "launched_by_torchrun",
    "parameter_checksum",
    "rank_device",
]
