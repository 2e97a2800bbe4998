"""Non-finite observations stopped where they enter: at the vectorised environment, before any policy sees them.

A NaN or infinite observation fed to the policy gives non-finite actions (sent to the environments)
and non-finite values and log-probabilities (stored in the rollout buffer); the run then fails much
later, inside ``train()``, with a message that says nothing about the environment. Every rollout
backend (SB3's loop, sb3-contrib's recurrent loop, the NumPy loop) gets its observations in the same
two ways: the observation the rollout starts from (``model._last_obs``, from ``env.reset()`` or the
last step of the previous rollout) and the return value of ``env.step()``. :func:`finite_observations`
checks both, so the loops themselves stay line for line those of SB3 and sb3-contrib.

Design: for the duration of a rollout, the ``step_wait`` of the innermost vectorised environment (under
every ``VecEnvWrapper``: ``VecNormalize``, ``VecFrameStack``, ...) is replaced by a checking one (an
attribute of that instance, removed afterwards). ``VecEnv.step`` is ``step_async`` then ``step_wait``,
and each wrapper's ``step_wait`` calls its inner environment's, so every step of every loop passes
through it, before any wrapper has seen the observations (``VecNormalize``'s statistics included); the
loop, its callbacks and ``callback.locals["env"]`` see the same environment objects as always, which a
wrapper around them would not give them, and the wrapper objects a callback may save (``VecNormalize``
is pickled without its inner environment) carry nothing of the check. The check raises before ``step``
returns: nothing non-finite reaches
the policy, an environment (as an action) or the rollout buffer, and the terminal observations that
truncated episodes are bootstrapped from are checked in the same place. Its cost is one
``np.isfinite(...).all()`` per step (per key for dict observations); integer observations are skipped.
A custom ``VecEnv`` that overrides ``step()`` without going through ``step_wait()`` (none of SB3's does)
gets only the check of the starting observation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

REMEDY = (
    "Nothing non-finite was sent to the environments, stored in the rollout buffer or added to VecNormalize's "
    "statistics. To find where it comes from, wrap the environment in stable_baselines3's VecCheckNan: "
    "env = VecCheckNan(env, raise_exception=True)."
)


def _non_finite(observations: Any) -> str | None:
    """None if every float of ``observations`` (an array, or a dict of them) is finite, else which part is not."""
    if isinstance(observations, dict):
        for key, value in observations.items():
            if _non_finite(value) is not None:
                return f"key {key!r}"
        return None
    array = np.asarray(observations)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        return "values"
    return None


def _bad_environments(observations: Any) -> list[int]:
    """The indices (first axis) of the environments whose observation is not finite."""
    if isinstance(observations, dict):
        return sorted({index for value in observations.values() for index in _bad_environments(value)})
    array = np.asarray(observations)
    if array.dtype.kind not in "fc":
        return []
    return np.flatnonzero(~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)).tolist()


def check_observations(observations: Any, where: str) -> None:
    """Raise a ``ValueError`` naming the environments and ``where`` if an observation is not finite."""
    if _non_finite(observations) is None:
        return
    indices = _bad_environments(observations)
    which = f"environment {indices[0]}" if len(indices) == 1 else f"environments {indices}"
    raise ValueError(f"{which} returned a non-finite observation (NaN or inf) {where}. {REMEDY}")


@contextlib.contextmanager
def finite_observations(env: VecEnv, start_observations: Any, num_timesteps: int) -> Iterator[None]:
    """Within the block, every observation ``env`` returns is checked; first, ``start_observations``.

    :param env: the environment the rollout loop steps
    :param start_observations: the observation the rollout starts from (``model._last_obs``)
    :param num_timesteps: the model's ``num_timesteps`` when the rollout starts, for the message
    :raises ValueError: at the first non-finite observation, naming the environment and the step
    """
    if start_observations is not None:
        where = f"at the start of a rollout (timestep {num_timesteps}: from env.reset() or the previous rollout's last step)"
        check_observations(start_observations, where)
    inner = env
    while isinstance(inner, VecEnvWrapper):  # check where the observations come from, before any wrapper
        inner = inner.venv
    shadowed = vars(inner).get("step_wait")  # someone else's instance attribute, put back afterwards
    step_wait = inner.step_wait
    n_steps = 0

    def checked_step_wait() -> Any:
        nonlocal n_steps
        observations, rewards, dones, infos = step_wait()
        n_steps += 1
        where = f"at step {n_steps} of this rollout (timestep {num_timesteps + n_steps * env.num_envs} of training)"
        check_observations(observations, where)
        for index in np.flatnonzero(dones):
            terminal = infos[index].get("terminal_observation")
            if terminal is not None and _non_finite(terminal) is not None:
                raise ValueError(
                    f"environment {index} returned a non-finite terminal observation (NaN or inf) {where}. {REMEDY}"
                )
        return observations, rewards, dones, infos

    inner.step_wait = checked_step_wait  # type: ignore[method-assign]
    try:
        yield
    finally:
        if shadowed is None:
            del inner.step_wait
        else:
            inner.step_wait = shadowed  # type: ignore[method-assign]
