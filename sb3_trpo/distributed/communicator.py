"""The processes of one training run and the few collectives they exchange, on ``torch.distributed``.

Launched by ``torchrun`` (``--standalone`` on one machine, a c10d rendezvous across machines), each
process finds its rank and the world size in its environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). The process group uses gloo on the CPU and NCCL
on GPUs. Every collective has a timeout: a rank that dies or hangs makes the others fail with an
error within that time instead of waiting forever.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from datetime import timedelta
from typing import Any

import torch as th
import torch.distributed as dist

TIMEOUT_ENV = "SB3_TRPO_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


EXIT_GRACE_S = 0.2  # how long the process waits at exit, the GIL released, for gloo's threads to let go of the works


def destroy_at_exit() -> None:
    """Tear the process group down before the interpreter does (registered at exit by :class:`Communicator`
    for the group it started).

    Left to the interpreter's final teardown, a gloo group on torch 2.x sometimes aborts the process after a
    run that succeeded ("terminate called without an active exception", SIGABRT), and torchrun then reports
    the run failed, or restarts it under ``--max-restarts``. Two ways, both seen in core dumps of this
    package's tests: the group destroyed during finalisation, and a gloo worker thread that marked the last
    collective complete but had not yet dropped its reference to it. That thread releases the work's tensors
    last, which takes the GIL, and a thread that takes the GIL once finalisation has begun is ended by the
    interpreter, inside a C++ destructor: ``std::terminate``. So the group is destroyed here, while the
    interpreter is whole, after ``EXIT_GRACE_S`` of sleep, during which the GIL is free and a worker thread
    the scheduler had set aside (a loaded machine) finishes with its work. Gloo has no call that waits for
    that (``_wait_for_pending_works`` is NCCL's only). After an uncaught exception (Python has set
    ``sys.last_value``) the group is left alone: the other ranks may still be in a collective, and tearing
    down an NCCL group under them can hang this process.
    """
    if getattr(sys, "last_value", None) is not None:
        return
    if dist.is_available() and dist.is_initialized():
        time.sleep(EXIT_GRACE_S)
        dist.destroy_process_group()


class Communicator:
    """This process's place in the run (``rank`` of ``world_size``) and the collectives the training uses.

    :param timeout_s: how long a collective may wait for the other ranks before failing
        (default: ``$SB3_TRPO_DISTRIBUTED_TIMEOUT`` or 1800 s, torch's own default;
        rank 0's evaluations during a rollout count against it)
    :param device: the training device; CUDA devices communicate with NCCL, the CPU with gloo
    """

    def __init__(self, timeout_s: float | None = None, device: th.device | None = None) -> None:
        if timeout_s is None:
            timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        self.timeout_s = timeout_s
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device is not None and th.device(device).type == "cuda"
        if not dist.is_initialized():
            if cuda:
                th.cuda.set_device(self.local_rank)
            else:
                # Gloo's eager full-mesh connect gives up after a few quick retries when one rank reaches it
                # late (a loaded machine, a restart by torchrun --max-restarts); lazily, it connects on first use.
                os.environ.setdefault("TORCH_GLOO_LAZY_INIT", "1")
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
            atexit.register(destroy_at_exit)  # the group is ours, so is its teardown (a user's group stays theirs)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.n_collectives = 0  # how many collectives this process took part in (the cost to design around)
        self.seconds = 0.0  # and the time it spent in them, waiting for the other ranks included

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and saves."""
        return self.rank == 0

    def all_gather(self, payload: Any) -> list[Any]:
        """Every rank's ``payload`` (any picklable object), in rank order, on every rank: one collective."""
        gathered: list[Any] = [None] * self.world_size
        start = time.perf_counter()
        try:
            dist.all_gather_object(gathered, payload)
        except (RuntimeError, dist.DistBackendError) as error:
            raise self._lost(error) from error
        self._count(start)
        return gathered

    def broadcast(self, payload: Any) -> Any:
        """Rank 0's ``payload`` on every rank (the others' argument is ignored): one collective."""
        box = [payload if self.is_main else None]
        start = time.perf_counter()
        try:
            dist.broadcast_object_list(box, src=0)
        except (RuntimeError, dist.DistBackendError) as error:
            raise self._lost(error) from error
        self._count(start)
        return box[0]

    def _lost(self, error: Exception) -> RuntimeError:
        return RuntimeError(
            f"rank {self.rank} of {self.world_size}: the other ranks stopped answering (a rank died, hung or was "
            f"killed; collectives wait at most {self.timeout_s:g} s, ${TIMEOUT_ENV}). Training stops here; restart it "
            f"from the last checkpoint (torchrun --max-restarts, docs: Training on many processes). Cause: {error}"
        )

    def _count(self, start: float) -> None:
        self.n_collectives += 1
        self.seconds += time.perf_counter() - start
