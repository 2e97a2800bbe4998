"""An SB3 on-policy algorithm that trains one model on the ranks of a ``torchrun`` launch.

:class:`DataParallelOnPolicyAlgorithm` is SB3's ``OnPolicyAlgorithm`` with what data-parallel training
changes around the update: rank-offset seeds, rank 0's model on every rank when ``learn()`` starts, the
exchange after each rollout (:class:`~sb3_trpo.distributed.data_parallel.DataParallel`), the union batch
for the update, the lockstep check, and rank 0 alone logging and saving. Without ``torchrun`` (or with
``distributed="off"``) it is ``OnPolicyAlgorithm`` unchanged. The algorithm's update itself knows
nothing of it: it reads its batch from :attr:`_train_buffer`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import get_device

from sb3_trpo.distributed import data_parallel_for, rank_device
from sb3_trpo.distributed.data_parallel import DataParallel


class DataParallelOnPolicyAlgorithm(OnPolicyAlgorithm):
    """``OnPolicyAlgorithm`` that trains data-parallel under ``torchrun`` (see :mod:`sb3_trpo.distributed`).

    :param distributed: ``"auto"`` (data-parallel when launched by ``torchrun`` with more than one
        process), ``"sync"`` (always) or ``"off"``; the other arguments are ``OnPolicyAlgorithm``'s.
    """

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        distributed: str = "auto",
        device: th.device | str = "auto",
        verbose: int = 0,
        tensorboard_log: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.distributed = distributed
        self._data_parallel: DataParallel | None = data_parallel_for(distributed, get_device(device))
        if self._data_parallel is not None:
            device = rank_device(get_device(device))
            if not self._data_parallel.is_main:  # rank 0 logs and saves
                verbose, tensorboard_log = 0, None
            elif verbose >= 1:
                print(f"Data-parallel training on {self._data_parallel.world_size} ranks (sb3_trpo.distributed)")
        super().__init__(policy, env, device=device, verbose=verbose, tensorboard_log=tensorboard_log, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        # The process group belongs to this run, not to the model: a model trained on many ranks loads on one.
        return [*super()._excluded_save_params(), "_data_parallel", "distributed"]

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding; on rank ``r`` of a data-parallel run, ``seed + r · n_envs``: the ranks' environments
        are seeded as one process's ``n_envs × world_size`` environments would be, and no two ranks draw alike."""
        offset = 0 if self._data_parallel is None else self._data_parallel.rank * self.n_envs
        super().set_random_seed(None if seed is None else seed + offset)

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        """SB3's set-up of ``learn()``; data-parallel, every rank first takes rank 0's model (one collective)."""
        if self.distributed == "off":  # e.g. set by load(..., distributed="off") after the constructor's "auto"
            self._data_parallel = None
        if self._data_parallel is not None:
            self._data_parallel.synchronize(self, self._synchronized_attributes())
            progress_bar = progress_bar and self._data_parallel.is_main
            if not self._data_parallel.is_main:  # also after load(), which restores rank 0's saved settings
                self.verbose, self.tensorboard_log = 0, None
        return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)

    def _synchronized_attributes(self) -> list[str]:
        """Algorithm state beside the parameters that every rank takes from rank 0 when ``learn()`` starts."""
        return ["num_timesteps", "_episode_num", "n_skipped_policy_updates", "n_skipped_critic_steps", "_n_updates"]

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        super()._update_info_buffer(infos, dones)
        if self._data_parallel is not None:
            self._data_parallel.record_infos(infos, dones)

    @property
    def _train_buffer(self) -> RolloutBuffer:
        """The batch of the update: this process's rollout, or, data-parallel, the union of every rank's."""
        union = None if self._data_parallel is None else self._data_parallel.buffer
        return self.rollout_buffer if union is None else union

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's ``save()``; data-parallel, rank 0 saves and the other ranks write nothing."""
        if self._data_parallel is None or self._data_parallel.is_main:
            super().save(path, exclude=exclude, include=include)
        elif not getattr(self, "_said_rank_saves", False):
            self._said_rank_saves = True
            print(f"rank {self._data_parallel.rank}: save() writes nothing here; rank 0 saves the model")

    def _exchange_rollouts(
        self, rollout_buffer: RolloutBuffer, steps: int, completed: bool, error: Exception | None = None
    ) -> bool:
        """After this rank's rollout (``steps`` steps, ``completed`` unless a callback stopped it, ``error`` if it
        raised): data-parallel, the exchange that gives every rank the union; False on every rank if any rank
        stopped, and an error on every rank if any rank's rollout raised (the others name it)."""
        if self._data_parallel is None:
            return completed
        return self._data_parallel.after_rollout(self, rollout_buffer, steps, completed, error)

    def _after_update(self) -> None:
        """Data-parallel: this rank's own NumPy stream back, and every ``checksum_interval`` updates an error if the
        ranks' parameters differ."""
        if self._data_parallel is not None:
            self._data_parallel.after_update(self, self._n_updates)
