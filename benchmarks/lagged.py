"""TRPO whose batches come from a behaviour policy a fixed number of updates old: asynchronous lag, on one core.

With asynchronous workers the lag of a batch depends on how many workers there are and how fast each
runs; ``max_policy_lag=L`` only bounds it. To measure what lag does to returns, and whether the importance
ratio against β corrects it, the ``lag`` campaign of ``learning.py`` runs the bound itself, every batch
exactly ``policy_lag`` updates old, in one process, so that a run is reproducible and costs one core:

- the batch for update ``k`` is collected with ``θ_{k−L}`` (``θ_0`` while ``k < L``), actor and critic,
  as a worker holding that version would collect it;
- it is then taken exactly as the asynchronous learner takes a worker's batch
  (:meth:`~sb3_trpo.distributed.algorithm.DataParallelOnPolicyAlgorithm._load_batch`): values, the bootstrap
  of truncated episodes and advantages from the current critic, ``log β`` kept for the ratio;
- the update is TRPO's, with ``importance_ratio`` and ``ratio_truncation`` as the model was built.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from typing import Any

from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo import TRPO
from sb3_trpo.distributed.asynchronous import AsyncWorker


class FixedLagTRPO(TRPO):
    """:class:`~sb3_trpo.TRPO` updating on batches collected by the policy of ``policy_lag`` updates before."""

    def __init__(self, *args: Any, policy_lag: int = 1, **kwargs: Any) -> None:
        self.policy_lag = policy_lag
        super().__init__(*args, **kwargs)
        self._history: deque[dict[str, Any]] = deque([copy.deepcopy(self.policy.state_dict())], maxlen=policy_lag + 1)
        self._collector = AsyncWorker(self, mailbox=None, worker=1, incarnation=1)

    def _behaviour_may_lag(self) -> bool:
        return True

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        current = copy.deepcopy(self.policy.state_dict())
        self.policy.load_state_dict(self._history[0])  # θ_{k−L}: the oldest one kept
        self._collector.version = self._n_updates - (len(self._history) - 1)
        self._async_truncations = []
        start, steps = time.perf_counter(), self.num_timesteps
        completed = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        batch = self._collector._payload(self.num_timesteps - steps, time.perf_counter() - start)
        self.policy.load_state_dict(current)
        if completed:
            self._load_batch(batch)
        return completed

    def train(self) -> None:
        super().train()
        self._history.append(copy.deepcopy(self.policy.state_dict()))
