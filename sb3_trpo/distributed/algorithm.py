"""An SB3 on-policy algorithm that trains one model on the ranks of a ``torchrun`` launch.

Two ways (``distributed=``): ``"sync"`` (data-parallel, below) and ``"async"`` (one learner and rollout
workers, :mod:`~sb3_trpo.distributed.asynchronous`; the learner's loop and its use of a worker's batch
are here, where the buffer and the critic are).

:class:`DataParallelOnPolicyAlgorithm` is SB3's ``OnPolicyAlgorithm`` with what data-parallel training
changes around the update: rank-offset seeds, rank 0's model on every rank when ``learn()`` starts, the
exchange after each rollout (:class:`~sb3_trpo.distributed.data_parallel.DataParallel`), the union batch
for the update, the lockstep check, and rank 0 alone logging and saving. Without ``torchrun`` (or with
``distributed="off"``) it is ``OnPolicyAlgorithm`` unchanged. The algorithm's update itself knows
nothing of it: it reads its batch from :attr:`_train_buffer`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import MaybeCallback
from stable_baselines3.common.utils import get_device, obs_as_tensor

from sb3_trpo.common.validation import require
from sb3_trpo.distributed import data_parallel_for, launched_by_torchrun, rank_device
from sb3_trpo.distributed.asynchronous import AsyncRole, AsyncWorker, WorkerSupervisor, run_child, stack_observations
from sb3_trpo.distributed.data_parallel import DataParallel

SelfAlgorithm = TypeVar("SelfAlgorithm", bound="DataParallelOnPolicyAlgorithm")


# What a worker keeps of the info of an environment whose episode ended, for the learner's callbacks.
ASYNC_INFO_KEYS = ("episode", "is_success", "TimeLimit.truncated")


class DataParallelOnPolicyAlgorithm(OnPolicyAlgorithm):
    """``OnPolicyAlgorithm`` that trains data-parallel under ``torchrun`` (see :mod:`sb3_trpo.distributed`).

    :param distributed: ``"auto"`` (data-parallel when launched by ``torchrun`` with more than one
        process), ``"sync"`` (always), ``"async"`` (rank 0 learns, the other ranks collect rollouts)
        or ``"off"``
    :param max_policy_lag: asynchronous training: the learner drops batches whose behaviour policy is
        more than this many versions (updates) behind its own; 0 makes each worker wait for the update
        on its last batch (with one worker, synchronous TRPO). The other arguments are ``OnPolicyAlgorithm``'s.
    """

    ASYNC_SUPPORTED: ClassVar[bool] = True
    """Whether the learner can take a worker's batch (``distributed="async"``)."""

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        distributed: str = "auto",
        max_policy_lag: int = 4,
        device: th.device | str = "auto",
        verbose: int = 0,
        tensorboard_log: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.distributed, self.max_policy_lag = distributed, max_policy_lag
        self._async: AsyncRole | None = None
        self._async_truncations: list[tuple[int, int, Any]] | None = None  # a worker's rollout: what to bootstrap
        self._async_episodes: list[dict[str, Any]] = []
        self._async_successes: list[Any] = []
        self._async_infos: list[tuple[int, int, dict[str, Any]]] = []  # a worker's finished episodes' infos, by step
        self._data_parallel: DataParallel | None = None
        if distributed == "async":
            require(
                type(self).ASYNC_SUPPORTED,
                "distributed",
                f'"auto", "sync" or "off" for {type(self).__name__} (its learner cannot take a worker\'s batch)',
                distributed,
            )
            require(
                launched_by_torchrun(),
                "distributed",
                '"auto", "sync" or "off" here: "async" needs torchrun with 2 or more processes '
                "(rank 0 learns, the others collect)",
                distributed,
            )
            self._async = AsyncRole.from_environment()
            role = f"learner (rank 0) with {self._async.world_size - 1} rollout worker(s)"
        else:
            self._data_parallel = data_parallel_for(distributed, get_device(device))
            role = f"data-parallel training on {self._data_parallel.world_size} ranks" if self._data_parallel else ""
        if self._async is not None and not self._async.is_main:
            # A worker's rollouts run in a forked child, and CUDA cannot be used after a fork: workers act on the CPU.
            device = "cpu"
        elif self._async is not None or self._data_parallel is not None:
            device = rank_device(get_device(device))
            if not self._is_main:  # rank 0 logs and saves
                verbose, tensorboard_log = 0, None
            elif verbose >= 1:
                print(f"{role[0].upper()}{role[1:]} (sb3_trpo.distributed, distributed={distributed!r})")
        super().__init__(policy, env, device=device, verbose=verbose, tensorboard_log=tensorboard_log, **kwargs)

    @property
    def _rank(self) -> int:
        """This process's rank (0 when training alone)."""
        if self._async is not None:
            return self._async.rank
        return 0 if self._data_parallel is None else self._data_parallel.rank

    @property
    def _is_main(self) -> bool:
        """Whether this process logs and saves: rank 0, or the only process."""
        return self._rank == 0

    def _behaviour_may_lag(self) -> bool:
        """Whether a batch's behaviour policy β can differ from the policy at the start of the update."""
        return self._async is not None

    def _excluded_save_params(self) -> list[str]:
        # The process group belongs to this run, not to the model: a model trained on many ranks loads on one.
        return [
            *super()._excluded_save_params(),
            "_data_parallel",
            "distributed",
            "_async",
            "_async_truncations",
            "_async_episodes",
            "_async_successes",
            "_async_infos",
        ]

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding; on rank ``r`` of a multi-process run, ``seed + r · n_envs``: the ranks' environments
        are seeded as one process's ``n_envs × world_size`` environments would be, and no two ranks draw alike."""
        super().set_random_seed(None if seed is None else seed + self._rank * self.n_envs)

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
            self._data_parallel = self._async = None
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
        if self._async_truncations is not None:  # an asynchronous worker's rollout: what the learner needs
            for index, info in enumerate(infos):
                if info.get("episode") is not None:
                    self._async_episodes.append(info["episode"])
                if dones is None or not dones[index]:
                    continue
                if info.get("is_success") is not None:
                    self._async_successes.append(info["is_success"])
                kept = {key: info[key] for key in ASYNC_INFO_KEYS if key in info}
                if kept:  # for the learner's callbacks, at this step of the rollout
                    self._async_infos.append((self.rollout_buffer.pos, index, kept))
                # SB3 bootstraps a truncated episode (rewards += γ V(terminal)) at the step it is about to add.
                if info.get("terminal_observation") is not None and info.get("TimeLimit.truncated", False):
                    self._async_truncations.append((self.rollout_buffer.pos, index, info["terminal_observation"]))

    @property
    def _train_buffer(self) -> RolloutBuffer:
        """The batch of the update: this process's rollout, or, data-parallel, the union of every rank's."""
        union = None if self._data_parallel is None else self._data_parallel.buffer
        return self.rollout_buffer if union is None else union

    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's ``save()``; data-parallel, rank 0 saves and the other ranks write nothing."""
        if self._is_main:
            super().save(path, exclude=exclude, include=include)
        elif not getattr(self, "_said_rank_saves", False):
            self._said_rank_saves = True
            print(f"rank {self._rank}: save() writes nothing here; rank 0 saves the model")

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

    # ------------------------------------------------------------------ asynchronous training

    def learn(
        self: SelfAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "OnPolicyAlgorithm",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAlgorithm:
        """SB3's ``learn()``; asynchronous, the learner's loop on rank 0 and a rollout worker on the others.

        On a worker rank it returns when the learner has finished; the worker's model is not the trained one.
        """
        self._resolve_async()
        if self._async is None:
            return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)
        self._async.begin()  # this learn()'s own keys in the store
        if self._async.is_main:
            return self._learn_as_learner(
                total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar
            )
        self._run_as_worker(total_timesteps, tb_log_name)
        return self

    def _resolve_async(self) -> None:
        """``distributed="async"`` set after construction (``load(..., distributed="async")``, as rl_zoo3's
        ``--trained-agent`` passes hyperparameters): take the asynchronous role now; the reverse drops it."""
        if self.distributed != "async":
            self._async = None
            return
        if self._async is None:
            require(
                type(self).ASYNC_SUPPORTED and launched_by_torchrun(),
                "distributed",
                "'async' under torchrun",
                self.distributed,
            )
            self._data_parallel = None
            self._async = AsyncRole.from_environment()
        if not self._async.is_main:
            require(
                self.device.type == "cpu",
                "device",
                '"cpu" on a worker rank (its rollouts run in a forked process, where CUDA cannot start); '
                'load the model with device="cpu" there',
                self.device,
            )
            self.verbose, self.tensorboard_log = 0, None

    def _learn_as_learner(
        self: SelfAlgorithm,
        total_timesteps: int,
        callback: MaybeCallback,
        log_interval: int,
        tb_log_name: str,
        reset_num_timesteps: bool,
        progress_bar: bool,
    ) -> SelfAlgorithm:
        """SB3's ``learn()`` loop, with the workers' batches in place of this process's rollouts.

        Callbacks see the steps of every batch received (one ``on_step`` per ``n_envs`` steps, between
        ``on_rollout_start`` and ``on_rollout_end``), so ``eval_freq`` and ``save_freq`` keep their meaning;
        ``num_timesteps`` counts the steps of every batch received, dropped ones included.
        """
        assert self._async is not None
        assert self._async.learner is not None
        assert self._async.mailbox is not None
        learner, mailbox = self._async.learner, self._async.mailbox
        iteration = 0
        try:  # whatever happens, the workers are told to stop
            total_timesteps, callback = self._setup_learn(
                total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
            )
            callback.on_training_start(locals(), globals())
            learner.start(self)
            while self.num_timesteps < total_timesteps:
                worker, index, batch = learner.next_batch()
                callback.on_rollout_start()
                continue_training = self._count_batch(batch, callback)
                learner.absorb_statistics(self, batch)
                if learner.lag(self, batch) > self.max_policy_lag:
                    learner.drop(worker, index)
                    callback.on_rollout_end()
                    if not continue_training:
                        break
                    continue
                self._load_batch(batch)
                callback.on_rollout_end()
                if not continue_training:
                    break
                iteration += 1
                self._update_current_progress_remaining(self.num_timesteps, total_timesteps)
                if log_interval is not None and iteration % log_interval == 0:
                    learner.record(self.logger)
                    self.dump_logs(iteration)
                self.train()
                learner.publish(self)
                mailbox.consume(worker, index)
        finally:
            learner.finish(self)
        callback.on_training_end()
        return self

    def _count_batch(self, batch: dict[str, Any], callback: BaseCallback) -> bool:
        """A received batch's steps and episodes into the learner's counts; False if a callback stopped training.

        Each ``on_step`` sees that step's ``dones`` (read off the batch's episode starts) and ``rewards`` in the
        callback's locals, and ``infos`` holding, for each environment whose episode ended at that step, the
        ``ASYNC_INFO_KEYS`` of its info (Monitor's ``episode``, ``is_success``, ``TimeLimit.truncated``); the rest
        of a worker's infos stays with it. The finished episodes also reach ``ep_info_buffer``.
        """
        assert self.ep_info_buffer is not None
        assert self.ep_success_buffer is not None
        self.ep_info_buffer.extend(batch["episodes"])
        self.ep_success_buffer.extend(batch["successes"])
        starts, rewards = batch["arrays"]["episode_starts"], batch["arrays"]["rewards"]
        # Done after step t: an episode starts at step t + 1 (after the last step: the worker's next episode start).
        dones = np.concatenate([starts[1:], np.asarray(batch["last_episode_starts"])[None]]).astype(bool)
        finished = {(step, env): info for step, env, info in batch.get("infos", ())}
        continue_training, steps = True, int(batch["steps"])
        for step in range(dones.shape[0]):
            if steps <= 0:
                break
            self.num_timesteps += min(self.n_envs, steps)
            steps -= self.n_envs
            infos: list[dict[str, Any]] = [dict(finished.get((step, env), {})) for env in range(self.n_envs)]
            callback.update_locals({"dones": dones[step], "rewards": rewards[step], "infos": infos})
            continue_training = continue_training and callback.on_step()
        return continue_training

    def _load_batch(self, batch: dict[str, Any]) -> None:
        """A worker's batch into the rollout buffer, with values, bootstraps and advantages from the current critic.

        The worker's ``log β`` stays with each sample: the update's importance ratio is against it.
        """
        buffer, arrays = self.rollout_buffer, batch["arrays"]
        if arrays["rewards"].shape != (buffer.buffer_size, buffer.n_envs):
            raise ValueError(
                f"worker {batch['worker']} sent a batch of (n_steps, n_envs) = {arrays['rewards'].shape}, but the "
                f"learner's buffer holds {(buffer.buffer_size, buffer.n_envs)}: every rank must build the same "
                "environments with the same n_steps"
            )
        buffer.reset()
        for name, value in arrays.items():
            setattr(buffer, name, value)
        buffer.pos, buffer.full = buffer.buffer_size, True
        self.policy.set_training_mode(False)
        n_samples = buffer.buffer_size * buffer.n_envs
        observations = arrays["observations"]
        if isinstance(observations, dict):
            flat: Any = {key: obs.reshape(n_samples, *obs.shape[2:]) for key, obs in observations.items()}
        else:
            flat = observations.reshape(n_samples, *observations.shape[2:])
        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(flat, self.device))
            buffer.values = values.cpu().numpy().reshape(buffer.buffer_size, buffer.n_envs).astype(np.float32)
            truncations = batch["truncations"]
            if truncations:  # the bootstrap of truncated episodes, with this critic (the worker took its own out)
                terminal = self.policy.predict_values(stack_observations([obs for _, _, obs in truncations], self.device))
                for (step, env, _), value in zip(truncations, terminal.flatten().cpu().numpy(), strict=True):
                    buffer.rewards[step, env] += self.gamma * value
            last_values = self.policy.predict_values(obs_as_tensor(batch["last_obs"], self.device))
        buffer.compute_returns_and_advantage(last_values=last_values, dones=batch["last_episode_starts"])

    def _run_as_worker(self, total_timesteps: int, tb_log_name: str) -> None:
        """A worker rank: supervise a child process that collects and sends batches until the learner stops."""
        assert self._async is not None
        assert self._async.mailbox is not None
        rank, mailbox = self._async.rank, self._async.mailbox

        def child(incarnation: int) -> None:
            run_child(
                lambda own: self._collect_for_learner(own, incarnation, total_timesteps, tb_log_name), rank, mailbox.session
            )

        WorkerSupervisor(mailbox, rank, child).run()
        final = mailbox.final()  # the learner's counts: a loop of learn() calls ends on every rank alike
        if final is not None:
            self.num_timesteps, self._n_updates = final

    def _collect_for_learner(self, mailbox: Any, incarnation: int, total_timesteps: int, tb_log_name: str) -> None:
        """The worker child's loop: a restarted worker (``incarnation`` > 1) reseeds, so it never repeats an episode."""
        assert self._async is not None
        if incarnation > 1 and self.seed is not None:
            self.set_random_seed(self.seed + (incarnation - 1) * self._async.world_size * self.n_envs)
        _, callback = self._setup_learn(total_timesteps, _Heartbeat(mailbox, self._async.rank), True, tb_log_name, False)
        AsyncWorker(self, mailbox, self._async.rank, incarnation).run(callback)


class _Heartbeat(BaseCallback):
    """A worker's sign of life for the learner, at most every ``every_s`` seconds of stepping; it also ends the
    rollout under way once the learner has stopped, so that the worker does not finish a batch nobody reads."""

    def __init__(self, mailbox: Any, worker: int, every_s: float = 0.5) -> None:
        super().__init__()
        self.mailbox, self.worker, self.every_s = mailbox, worker, every_s
        self._last = 0.0

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return True
        self._last = now
        self.mailbox.beat(self.worker)
        return not self.mailbox.stopped()
