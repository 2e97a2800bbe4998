"""What to say when an environment in a ``SubprocVecEnv`` worker process fails.

When an environment raises inside ``step()`` or ``reset()`` in a worker of SB3's ``SubprocVecEnv``, the
worker prints the traceback on its own stderr and exits; the main process, waiting for the answer on
a pipe, gets an ``EOFError`` with an empty message, raised from deep inside ``multiprocessing``.
:func:`explain_worker_failures` turns exactly that error into one that says what happened and what to
do; the entry points that create the environments (``python -m sb3_trpo.zoo``) run inside it.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator

from stable_baselines3.common.vec_env import subproc_vec_env

WORKER_FAILURE = (
    "an environment in a SubprocVecEnv worker process failed: the worker ended without answering, most likely "
    "because the environment raised an exception in step() or reset(). The worker printed its traceback above, "
    "on stderr. To get the error in this process instead, run the environments in it: with the zoo, "
    "--vec-env dummy; in code, DummyVecEnv (make_vec_env(..., vec_env_cls=DummyVecEnv))."
)


class EnvironmentWorkerError(RuntimeError, EOFError):
    """A ``SubprocVecEnv`` worker ended without answering; still an ``EOFError`` for code that catches that."""


def is_worker_failure(error: BaseException) -> bool:
    """Whether ``error`` is the bare ``EOFError`` of a ``SubprocVecEnv`` whose worker died."""
    if not isinstance(error, EOFError) or isinstance(error, EnvironmentWorkerError):
        return False
    source = os.path.realpath(subproc_vec_env.__file__)
    return any(os.path.realpath(frame.filename) == source for frame in traceback.extract_tb(error.__traceback__))


@contextlib.contextmanager
def explain_worker_failures() -> Iterator[None]:
    """Within the block, a ``SubprocVecEnv`` worker's failure raises :class:`EnvironmentWorkerError` (chained)."""
    try:
        yield
    except EOFError as error:
        if not is_worker_failure(error):
            raise
        raise EnvironmentWorkerError(WORKER_FAILURE) from error
