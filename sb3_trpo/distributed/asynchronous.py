"""Asynchronous training: one learner and rollout workers that never wait for it.

Launched by ``torchrun`` like data-parallel training, rank 0 is the **learner** and every other rank a
**rollout worker**. A worker collects ``n_steps × n_envs`` with the newest policy it has received,
sends the batch tagged with that policy's version (the learner's update count) and the behaviour
log-probabilities ``log β(a|s)``, and goes on collecting without waiting. The learner updates on the
batches as they arrive, oldest first, drops those more than ``max_policy_lag`` versions behind its
own policy, and publishes its parameters after each update.

**Messages go through the c10d key-value store** that ``torchrun`` already runs for its rendezvous
(``torch.distributed.TCPStore``), not through collectives: a collective makes every rank wait for
every other, which is what asynchronous training must not do, and a rank that dies in a collective
stops them all. Through the store, the learner reads a batch when one is there, a worker reads the
newest policy when it wants it, and a dead worker leaves nothing half-done behind (:class:`Mailbox`).

**Faults.** ``torchrun`` stops every rank when one process fails. So a worker rank runs its rollouts in
a child process and watches it (:class:`WorkerSupervisor`): a child that raises, is killed or crashes is
reported to the learner and started again, and it rejoins with the newest policy; the rank's own
process, which only watches, stays up, so ``torchrun`` never sees a failure. The learner notices a
worker whose environments stop stepping, says so, and carries on with the others; it stops with an
error only when no batch has arrived from any worker within the distributed timeout.

**What the learner does with a batch** is in the algorithm (it owns the buffer and the critic): it
recomputes the values, the bootstraps of truncated episodes and the advantages with its current critic,
keeps the worker's ``log β`` for the importance ratio, and measures the trust region at its own
current policy (``TRPO._policy_batch``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import multiprocessing
import os
import pickle
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
import torch.distributed as dist

from sb3_trpo.distributed.communicator import DEFAULT_TIMEOUT_S, TIMEOUT_ENV
from sb3_trpo.distributed.data_parallel import _merge_moments, _moments_since, _snapshot, _to_cpu

if TYPE_CHECKING:
    from stable_baselines3.common.buffers import RolloutBuffer

STORE_PREFIX = "sb3_trpo/async/"
RESTARTS_ENV = "SB3_TRPO_WORKER_RESTARTS"
STALL_ENV = "SB3_TRPO_WORKER_STALL_TIMEOUT"
DEFAULT_RESTARTS = 3
DEFAULT_STALL_S = 60.0
POLL_S = (0.001, 0.02)  # a waiting learner or worker looks at the store again after 1 ms, 2 ms, ... up to 20 ms
WATCH_S = 0.5  # how often the learner reads the workers' events and heartbeats while it waits
BATCH_ARRAYS = ("observations", "actions", "rewards", "episode_starts", "log_probs")


def timeout_s() -> float:
    """The distributed timeout (``$SB3_TRPO_DISTRIBUTED_TIMEOUT``, default 1800 s)."""
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def connect_store(rank: int | None = None) -> dist.Store:
    """A client of the launch's key-value store at ``MASTER_ADDR:MASTER_PORT``, under our prefix.

    ``torchrun`` runs that store itself (its agent's, ``TORCHELASTIC_USE_AGENT_STORE``); otherwise rank 0
    hosts it, unless a process group already did (``multi_tenant``: the same server, shared). A forked
    worker calls this again for a connection of its own (a socket must not be shared between processes).
    """
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    host = rank == 0 and not agent  # multi-tenant: a process group's server on that port, if any, is shared
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=host,
        timeout=timedelta(seconds=timeout_s()),
        wait_for_workers=False,
        multi_tenant=True,
    )
    # torchrun's agent keeps its store across --max-restarts: each attempt of each run has keys of its own.
    attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return dist.PrefixStore(STORE_PREFIX + attempt, store)


_SESSIONS = itertools.count()
"""Every ``learn()`` of an asynchronous model is a session with keys of its own (``<n>/…``): the n-th ``learn()``
of this process meets the n-th of every other rank, which run the same script, and nothing a finished session
left in the store (its stop, its counters) reaches the next."""


class Mailbox:
    """The keys learner and workers exchange through the store; every value is written whole, or not at all.

    - ``policy``, ``version``: the newest parameters, with their version (the learner's update count);
    - ``sent/k``, ``batch/k/i``: worker ``k``'s batches, numbered from 0 (a batch is written before the
      count that announces it, so a worker killed between the two leaves only a batch the next one
      overwrites); ``consumed/k``: how many of them the learner has used or dropped;
    - ``heartbeat/k``: a counter worker ``k`` raises while it steps its environments;
    - ``events/k``, ``event/k/n``: what happened to worker ``k`` (a crash, a restart), for the learner to say;
    - ``stop``, ``finished``: the learner's end of training, and how many workers have seen it.
    """

    def __init__(self, store: dist.Store, session: int = 0) -> None:
        self.session = session
        self.store = dist.PrefixStore(f"{session}/", store)

    def _count(self, key: str) -> int:
        return int(self.store.add(key, 0))  # adding 0 reads a counter (and creates it at 0)

    # policy
    def publish(self, version: int, payload: dict[str, Any]) -> None:
        self.store.set("policy", pickle.dumps((version, payload), protocol=pickle.HIGHEST_PROTOCOL))  # type: ignore[arg-type]  # bytes: the store takes them
        self.store.set("version", str(version))

    def version(self) -> int:
        """The newest published version, or -1 before the first."""
        return int(self.store.get("version")) if self.store.check(["version"]) else -1

    def policy(self) -> tuple[int, dict[str, Any]]:
        version, payload = pickle.loads(self.store.get("policy"))
        return version, payload

    # batches
    def send(self, worker: int, payload: dict[str, Any]) -> int:
        index = self._count(f"sent/{worker}")
        self.store.set(f"batch/{worker}/{index}", pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))  # type: ignore[arg-type]
        self.store.add(f"sent/{worker}", 1)
        return index

    def sent(self, worker: int) -> int:
        return self._count(f"sent/{worker}")

    def receive(self, worker: int, index: int) -> dict[str, Any]:
        key = f"batch/{worker}/{index}"
        payload = pickle.loads(self.store.get(key))
        self.store.delete_key(key)
        return payload

    def consume(self, worker: int, index: int) -> None:
        self.store.set(f"consumed/{worker}", str(index + 1))

    def consumed(self, worker: int) -> int:
        return int(self.store.get(f"consumed/{worker}")) if self.store.check([f"consumed/{worker}"]) else 0

    # liveness
    def beat(self, worker: int) -> None:
        self.store.add(f"heartbeat/{worker}", 1)

    def beats(self, worker: int) -> int:
        return self._count(f"heartbeat/{worker}")

    def report(self, worker: int, message: str) -> None:
        number = int(self.store.add(f"events/{worker}", 1))  # a number of its own (supervisor and child both report)
        self.store.set(f"event/{worker}/{number}", message)

    def event(self, worker: int, number: int) -> str | None:
        """Worker ``worker``'s event ``number`` (from 1), or None while it is not there (or its reporter died first)."""
        key = f"event/{worker}/{number}"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def n_events(self, worker: int) -> int:
        return self._count(f"events/{worker}")

    # the end
    def stop(self) -> None:
        self.store.add("stop", 1)

    def stopped(self) -> bool:
        return self._count("stop") > 0

    def finish(self) -> None:
        self.store.add("finished", 1)

    def finished(self) -> int:
        return self._count("finished")

    def set_final(self, num_timesteps: int, n_updates: int) -> None:
        self.store.set("final", f"{num_timesteps} {n_updates}")

    def final(self) -> tuple[int, int] | None:
        """The learner's ``num_timesteps`` and update count when it stopped, if it said."""
        if not self.store.check(["final"]):
            return None
        num_timesteps, n_updates = self.store.get("final").decode().split()
        return int(num_timesteps), int(n_updates)


# ---------------------------------------------------------------------------------------------- the learner


@dataclass
class _Window:
    """What the learner saw since its logs were last written."""

    lags: list[int] = field(default_factory=list)
    idle_s: float = 0.0
    busy_start: float = field(default_factory=time.perf_counter)
    worker_fps: dict[int, float] = field(default_factory=dict)


class AsyncLearner:
    """Rank 0 of an asynchronous run: takes the workers' batches, publishes the policy, watches the workers.

    :param mailbox: the store's keys
    :param world_size: the number of ranks (workers are ranks 1 to ``world_size − 1``)
    """

    def __init__(self, mailbox: Mailbox, world_size: int) -> None:
        self.mailbox = mailbox
        self.workers = list(range(1, world_size))
        self._next = dict.fromkeys(self.workers, 0)  # the next batch to read from each worker
        self._turn = 0  # round-robin start, so that one fast worker cannot starve the others
        self._events_seen = dict.fromkeys(self.workers, 0)
        self._missing: dict[int, int] = {}
        self._beats = {worker: (-1, time.monotonic()) for worker in self.workers}
        self.stalled: set[int] = set()
        self.stall_s = float(os.environ.get(STALL_ENV, DEFAULT_STALL_S))
        self.n_received = self.n_dropped = self.n_worker_failures = 0
        self.idle_s = 0.0
        self._last_watch = 0.0
        self._window = _Window()

    def start(self, algorithm: Any) -> None:
        """Publish the first policy; the workers' stall clocks start now."""
        self.publish(algorithm)
        now = time.monotonic()
        self._beats = dict.fromkeys(self.workers, (-1, now))
        self._window = _Window()

    def publish(self, algorithm: Any) -> None:
        """The algorithm's policy (and ``VecNormalize`` statistics) as version ``_n_updates``."""
        vec_normalize = algorithm.get_vec_normalize_env()
        statistics = None if vec_normalize is None else (getattr(vec_normalize, "obs_rms", None), vec_normalize.ret_rms)
        payload = {"policy": _to_cpu(algorithm.policy.state_dict()), "statistics": statistics}
        self.mailbox.publish(algorithm._n_updates, payload)

    def next_batch(self) -> tuple[int, int, dict[str, Any]]:
        """The oldest unread batch of the next worker that has one: ``(worker, index, payload)``; waits for one.

        :raises RuntimeError: when no batch arrives within the distributed timeout
        """
        start = time.perf_counter()
        deadline = time.monotonic() + timeout_s()
        pause = POLL_S[0]
        while True:
            for offset in range(len(self.workers)):
                worker = self.workers[(self._turn + offset) % len(self.workers)]
                if self.mailbox.sent(worker) > self._next[worker]:
                    index = self._next[worker]
                    self._next[worker] += 1
                    self._turn = (self._turn + offset + 1) % len(self.workers)
                    payload = self.mailbox.receive(worker, index)
                    waited = time.perf_counter() - start
                    self.idle_s += waited
                    self._window.idle_s += waited
                    self.n_received += 1
                    self._window.worker_fps[worker] = payload["steps"] / max(payload["seconds"], 1e-9)
                    self._watch()
                    return worker, index, payload
            if self._watch() and self.mailbox.finished() >= len(self.workers):
                raise RuntimeError(
                    "every rollout worker has given up (each failed more than "
                    f"${RESTARTS_ENV} times; their failures were reported above): no batch can arrive. Training stops here."
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no rollout worker sent a batch in {timeout_s():g} s (${TIMEOUT_ENV}); workers stalled: "
                    f"{sorted(self.stalled) or 'none seen'}. Training stops here."
                )
            time.sleep(pause)  # backing off: each look costs the store's server (torchrun's agent) a request
            pause = min(2 * pause, POLL_S[1])

    def lag(self, algorithm: Any, payload: dict[str, Any]) -> int:
        """How many versions the batch's behaviour policy is behind the learner's (recorded for the logs)."""
        lag = int(algorithm._n_updates - payload["version"])
        self._window.lags.append(lag)
        return lag

    def drop(self, worker: int, index: int) -> None:
        """Count a batch too old to use, and tell its worker it is done with."""
        self.n_dropped += 1
        self.mailbox.consume(worker, index)

    def absorb_statistics(self, algorithm: Any, payload: dict[str, Any]) -> None:
        """Merge the moments the worker's ``VecNormalize`` saw into the learner's (deltas: nothing counted twice)."""
        vec_normalize = algorithm.get_vec_normalize_env()
        if vec_normalize is not None and payload["moments"]:
            _merge_moments(_snapshot(vec_normalize), [payload["moments"]], vec_normalize)

    def record(self, logger: Any) -> None:
        """The window's figures under ``async/``, then a new window."""
        window, now = self._window, time.perf_counter()
        if window.lags:
            logger.record("async/policy_lag_mean", float(np.mean(window.lags)))
            logger.record("async/policy_lag_max", max(window.lags))
        logger.record("async/batches_received", self.n_received)
        logger.record("async/batches_dropped", self.n_dropped)
        logger.record("async/learner_idle_fraction", window.idle_s / max(now - window.busy_start, 1e-9))
        logger.record("async/workers_stalled", len(self.stalled))
        logger.record("async/worker_failures", self.n_worker_failures)
        for worker, fps in sorted(window.worker_fps.items()):
            logger.record(f"async/worker{worker}_fps", fps)
        self._window = _Window(worker_fps=dict(window.worker_fps))

    def _new_events(self, worker: int) -> list[str]:
        """Worker ``worker``'s events not said yet, in order; one announced but not written yet is waited for
        (a few watches), then passed over: its reporter died between the two."""
        messages = []
        for number in range(self._events_seen[worker] + 1, self.mailbox.n_events(worker) + 1):
            message = self.mailbox.event(worker, number)
            if message is None:
                self._missing[worker] = self._missing.get(worker, 0) + 1
                if self._missing[worker] < 10:
                    break
                message = f"worker {worker}: event {number} was announced but never written"
            self._missing[worker] = 0
            self._events_seen[worker] = number
            messages.append(message)
        return messages

    def _watch(self, force: bool = False) -> bool:
        """Say what happened to the workers (crashes, restarts) and which stopped stepping their environments
        (every ``WATCH_S`` at most, unless ``force``); whether it looked."""
        now = time.monotonic()
        if not force and now - self._last_watch < WATCH_S:
            return False
        self._last_watch = now
        for worker in self.workers:
            for message in self._new_events(worker):
                self.n_worker_failures += "exited with" in message
                warnings.warn(f"async learner: {message}; the learner goes on", RuntimeWarning, stacklevel=2)
            beats = self.mailbox.beats(worker)
            last, since = self._beats[worker]
            if beats != last:
                self._beats[worker] = (beats, now)
                if worker in self.stalled:
                    self.stalled.discard(worker)
                    warnings.warn(
                        f"async learner: worker {worker} is stepping its environments again", RuntimeWarning, stacklevel=2
                    )
            elif now - since > self.stall_s and worker not in self.stalled:
                self.stalled.add(worker)
                warnings.warn(
                    f"async learner: worker {worker} has not stepped its environments for {now - since:.0f} s "
                    f"(stalled or dead, ${STALL_ENV}); training continues with the other workers",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return True

    def finish(self, algorithm: Any = None) -> None:
        """Tell the workers to stop (and the counts they end ``learn()`` with), then wait until they have, or
        their supervisors have killed them (the stall timeout): the store may be this process's."""
        if algorithm is not None:
            self.mailbox.set_final(algorithm.num_timesteps, algorithm._n_updates)
        self.mailbox.stop()
        deadline = time.monotonic() + self.stall_s + 4 * WATCH_S
        while self.mailbox.finished() < len(self.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._watch(force=True)  # what happened to the workers until the end is said too


# ---------------------------------------------------------------------------------------------- the workers


class AsyncWorker:
    """A rollout worker's loop, in the child process its rank's :class:`WorkerSupervisor` started.

    :param algorithm: the model (a forked copy of the rank's): its environments, policy and rollout backend
    :param mailbox: the store's keys, on this process's own connection
    :param worker: this worker's rank
    :param incarnation: 1 for the first child, then one more for each restart (reseeds the environments)
    """

    def __init__(self, algorithm: Any, mailbox: Mailbox, worker: int, incarnation: int) -> None:
        self.algorithm, self.mailbox, self.worker, self.incarnation = algorithm, mailbox, worker, incarnation
        self.version = -1
        self._statistics: dict[str, Any] = {}

    def run(self, callback: Any) -> None:
        """Collect and send until the learner says stop."""
        algorithm, mailbox = self.algorithm, self.mailbox
        lag_zero = algorithm.max_policy_lag == 0
        while not mailbox.stopped():
            if lag_zero and not self._wait(lambda: mailbox.consumed(self.worker) >= mailbox.sent(self.worker)):
                break  # lag 0: the learner has used (or dropped) our last batch, and published what followed
            if not self._wait(lambda: mailbox.version() >= 0, deadline=timeout_s()):
                break  # no learner in this session (stopped, or never came)
            self._adopt_newest()
            algorithm._async_truncations = []
            start = time.perf_counter()
            steps_before = algorithm.num_timesteps
            if not algorithm.collect_rollouts(algorithm.env, callback, algorithm.rollout_buffer, algorithm.n_steps):
                break
            seconds = time.perf_counter() - start
            mailbox.send(self.worker, self._payload(algorithm.num_timesteps - steps_before, seconds))

    def _wait(self, condition: Callable[[], bool], deadline: float | None = None) -> bool:
        """Wait until ``condition``; False if the learner said stop first, or after ``deadline`` seconds."""
        pause, end = POLL_S[0], None if deadline is None else time.monotonic() + deadline
        while not condition():
            if self.mailbox.stopped() or (end is not None and time.monotonic() > end):
                return False
            self.mailbox.beat(self.worker)
            time.sleep(pause)
            pause = min(2 * pause, POLL_S[1])
        return True

    def _adopt_newest(self) -> None:
        """The newest published policy and ``VecNormalize`` statistics, if newer than ours."""
        if self.mailbox.version() <= self.version:
            return
        self.version, payload = self.mailbox.policy()
        algorithm = self.algorithm
        algorithm.policy.load_state_dict(payload["policy"])
        vec_normalize = algorithm.get_vec_normalize_env()
        if vec_normalize is not None:
            obs_rms, vec_normalize.ret_rms = copy.deepcopy(payload["statistics"])
            if obs_rms is not None:
                vec_normalize.obs_rms = obs_rms
            self._statistics = _snapshot(vec_normalize)

    def _payload(self, steps: int, seconds: float) -> dict[str, Any]:
        """The batch, as the learner needs it: raw rewards, the states to bootstrap from, ``log β``."""
        algorithm = self.algorithm
        buffer: RolloutBuffer = algorithm.rollout_buffer
        arrays = {name: getattr(buffer, name) for name in BATCH_ARRAYS}
        rewards = arrays["rewards"].copy()
        truncations = algorithm._async_truncations
        algorithm._async_truncations = None
        if truncations:  # take our critic's bootstrap back out: the learner adds its own
            with th.no_grad():
                values = algorithm.policy.predict_values(
                    stack_observations([obs for _, _, obs in truncations], algorithm.device)
                )
            for (step, env, _), value in zip(truncations, values.flatten().cpu().numpy(), strict=True):
                rewards[step, env] -= algorithm.gamma * value
        arrays["rewards"] = rewards
        vec_normalize = algorithm.get_vec_normalize_env()
        moments = _moments_since(self._statistics, vec_normalize) if vec_normalize is not None else {}
        if vec_normalize is not None:
            self._statistics = _snapshot(vec_normalize)
        payload = {
            "version": self.version,
            "worker": self.worker,
            "incarnation": self.incarnation,
            "arrays": arrays,
            "last_obs": algorithm._last_obs,
            "last_episode_starts": algorithm._last_episode_starts,
            "truncations": truncations,
            "steps": steps,
            "seconds": seconds,
            "episodes": list(algorithm._async_episodes),
            "successes": list(algorithm._async_successes),
            "infos": list(algorithm._async_infos),
            "moments": moments,
        }
        algorithm._async_episodes.clear()
        algorithm._async_successes.clear()
        algorithm._async_infos.clear()
        return payload


def stack_observations(observations: list[Any], device: th.device) -> Any:
    """Terminal observations (arrays, or dicts of arrays) as one batch for ``predict_values``."""
    from stable_baselines3.common.utils import obs_as_tensor

    if isinstance(observations[0], dict):
        return obs_as_tensor({key: np.stack([obs[key] for obs in observations]) for key in observations[0]}, device)
    return obs_as_tensor(np.stack(observations), device)


def describe_exit(exitcode: int | None) -> str:
    """``exit code 1``, ``signal SIGKILL``: how a child process ended."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:  # a real-time signal has no name
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class WorkerSupervisor:
    """A worker rank's own process: it runs the worker in a child process and starts it again when it fails.

    ``torchrun`` stops every rank when one process fails; a worker that crashes must not take the learner
    with it. So the rank's process forks the worker, watches it, reports a failure to the learner and
    forks a new one (at most ``$SB3_TRPO_WORKER_RESTARTS`` times, default 3), and always ends with success.

    :param mailbox: the store's keys
    :param worker: this rank
    :param child: the worker's work, run in the child process with its incarnation number
    """

    def __init__(self, mailbox: Mailbox, worker: int, child: Callable[[int], None]) -> None:
        self.mailbox, self.worker, self.child = mailbox, worker, child
        self.max_restarts = int(os.environ.get(RESTARTS_ENV, DEFAULT_RESTARTS))
        self.stall_s = float(os.environ.get(STALL_ENV, DEFAULT_STALL_S))

    def run(self) -> int:
        """Supervise until the learner stops (or the restarts run out); the number of restarts."""
        context = multiprocessing.get_context("fork")  # the child inherits the model and its environments
        incarnation, restarts = 1, 0
        while True:
            process = context.Process(target=self.child, args=(incarnation,), name=f"sb3_trpo-worker{self.worker}")
            process.start()
            self.mailbox.store.set(f"pid/{self.worker}", str(process.pid))
            self._wait(process)
            if process.exitcode == 0 or self._stopped():
                break
            restarts += 1
            message = f"worker {self.worker} (pid {process.pid}) exited with {describe_exit(process.exitcode)}"
            if restarts > self.max_restarts:
                self.mailbox.report(self.worker, f"{message}; not restarted (${RESTARTS_ENV}={self.max_restarts})")
                break
            self.mailbox.report(self.worker, f"{message}; restarted ({restarts} of {self.max_restarts})")
            incarnation += 1
        with contextlib.suppress(RuntimeError, dist.DistError):  # the learner's process (and the store it hosted) is gone
            self.mailbox.finish()
        return restarts

    def _stopped(self) -> bool:
        """Whether the learner has stopped; a store that no longer answers means it has."""
        try:
            return self.mailbox.stopped()
        except (RuntimeError, dist.DistError):
            return True

    def _wait(self, process: Any) -> None:
        """Until the child ends; once the learner has stopped, a child still busy after the stall timeout
        (stuck in an environment's step, say) is killed, so that this rank, and torchrun, can finish."""
        stopped_at = None
        while process.is_alive():
            process.join(WATCH_S)
            if stopped_at is None and self._stopped():
                stopped_at = time.monotonic()
            if stopped_at is not None and time.monotonic() - stopped_at > self.stall_s and process.is_alive():
                process.kill()
                process.join()


def run_child(work: Callable[[Mailbox], None], worker: int, session: int) -> None:
    """A worker child's body: its own store connection, one thread, and any error reported before it exits."""
    th.set_num_threads(1)  # forked after the parent used torch: one thread avoids its OpenMP pool (as DataLoader's workers)
    mailbox = Mailbox(connect_store(), session)
    mailbox.store.set(f"pid/{worker}", str(os.getpid()))
    try:
        work(mailbox)
    except BaseException as error:
        mailbox.report(worker, f"worker {worker} (pid {os.getpid()}) raised {type(error).__name__}: {error}")
        raise


@dataclass
class AsyncRole:
    """This process's part in an asynchronous run: the learner (rank 0) or a rollout worker.

    :ivar mailbox: the keys of the current session (one per ``learn()``, :meth:`begin`)
    :ivar learner: rank 0's side of the current session
    """

    rank: int
    world_size: int
    store: dist.Store
    mailbox: Mailbox | None = None
    learner: AsyncLearner | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0, the learner: it logs and saves."""
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> AsyncRole:
        """The role ``torchrun``'s environment gives this process (``RANK``, ``WORLD_SIZE``)."""
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return cls(rank, world_size, connect_store(rank))

    def begin(self) -> Mailbox:
        """A new session (a ``learn()``): its keys, and on rank 0 a new learner."""
        self.mailbox = Mailbox(self.store, next(_SESSIONS))
        self.learner = AsyncLearner(self.mailbox, self.world_size) if self.is_main else None
        return self.mailbox
