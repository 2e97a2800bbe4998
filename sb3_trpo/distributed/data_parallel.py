"""Synchronous data-parallel training: every rank collects its own rollout, every rank runs the same update.

After each rollout the ranks exchange what they collected in **one collective**, so that every rank holds
the union of the batches, laid out as one process with all the ranks' environments would hold it (rank
``r``'s environments after rank ``r − 1``'s). Every rank then runs the single-process update on that
union: the same advantages normalisation, gradient, Fisher-vector products, line search and critic fit,
with the same random draws (the critic's minibatch order comes from the global NumPy stream, which rank
0 hands to all), so the parameters stay bit-identical without any further communication. A periodic
checksum turns any divergence into an error.

Why gather rather than all-reduce each mean: on these networks one collective costs about as much as a
whole Fisher-vector product, and an update takes ~30 of them plus one per critic minibatch (hundreds),
so reducing each would cost more than the update. One gather per rollout costs one collective; what
stays is that every rank computes the whole update (``docs/guide/distributed.rst`` weighs the two).

The same exchange carries what else must be global: the steps every rank took (``num_timesteps`` counts
them all), the episodes they finished (``rollout/ep_rew_mean`` covers every rank), the moments their
``VecNormalize`` saw (merged as deltas, so nothing is counted twice), and whether a callback stopped
training on any rank (then all stop).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from stable_baselines3.common.running_mean_std import RunningMeanStd

from sb3_trpo.distributed.communicator import Communicator

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.buffers import RolloutBuffer

RESYNC_ENV = "SB3_TRPO_RESYNC"

# Arrays of the recurrent buffers whose environment axis is not the second: (n_steps, n_layers, n_envs, size).
_ENV_AXIS = {"hidden_states_pi": 2, "cell_states_pi": 2, "hidden_states_vf": 2, "cell_states_vf": 2}


class DataParallel:
    """The data-parallel side of one model: its communicator, the union buffer, the merge of statistics.

    :param communicator: the ranks of the run
    :param checksum_interval: compare the parameters across ranks every that many updates (0: never)
    :param resync: after every update, every rank takes rank 0's parameters, optimiser states and
        synchronised attributes (one more collective): for ranks whose arithmetic may differ in the last bits.
        Default (None): ``$SB3_TRPO_RESYNC`` (``1`` or ``0``) if set, else on when the ranks span several
        machines (``LOCAL_WORLD_SIZE < WORLD_SIZE``: other CPUs, other BLAS) or train on GPUs
        (non-deterministic kernels); ranks of one machine's CPU stay bit-identical without it. Rank 0's choice
        holds on every rank (taken at :meth:`synchronize`), so ranks whose environments differ still agree on the
        extra collective.
    """

    def __init__(
        self, communicator: Communicator, checksum_interval: int = 10, resync: bool | None = None, on_gpu: bool = False
    ) -> None:
        self.communicator, self.checksum_interval = communicator, checksum_interval
        if resync is None:
            forced = os.environ.get(RESYNC_ENV)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", communicator.world_size))
            resync = forced == "1" if forced in ("0", "1") else (local < communicator.world_size or on_gpu)
        self.resync = resync
        self._attributes: list[str] = []
        self.buffer: RolloutBuffer | None = None  # the union of the ranks' rollouts, once gathered
        self._episodes: list[dict[str, Any]] = []  # episodes this rank finished during the rollout
        self._successes: list[Any] = []
        self._statistics: dict[str, RunningMeanStd] = {}  # VecNormalize's moments when they were last merged
        self._own_numpy_state: Any = None  # this rank's NumPy stream, while the update draws from rank 0's

    @property
    def rank(self) -> int:
        return self.communicator.rank

    @property
    def world_size(self) -> int:
        return self.communicator.world_size

    @property
    def is_main(self) -> bool:
        return self.communicator.is_main

    # ------------------------------------------------------------------ start of learn(): one model on every rank

    def synchronize(self, algorithm: BaseAlgorithm, attributes: Iterable[str]) -> None:
        """Rank 0's parameters, optimiser states, ``attributes``, ``VecNormalize`` statistics and choice of
        ``resync`` on every rank."""
        self._attributes = list(attributes)
        state = self.communicator.broadcast({**self._state(algorithm), "resync": self.resync} if self.is_main else None)
        if not self.is_main:
            algorithm.set_parameters(state["parameters"], exact_match=True, device=algorithm.device)
            self._adopt(algorithm, state)
            self.resync = state["resync"]
        self._statistics = _snapshot(algorithm.get_vec_normalize_env())

    def _state(self, algorithm: BaseAlgorithm) -> dict[str, Any]:
        """What every rank takes from rank 0: parameters and optimiser states (on the CPU: unpickled on the CPU of
        every rank, not on GPU 0), the synchronised attributes and ``VecNormalize``'s statistics."""
        vec_normalize = algorithm.get_vec_normalize_env()
        return {
            "parameters": _to_cpu(algorithm.get_parameters()),
            "attributes": {name: getattr(algorithm, name) for name in self._attributes},
            "statistics": None if vec_normalize is None else (getattr(vec_normalize, "obs_rms", None), vec_normalize.ret_rms),
        }

    def _adopt(self, algorithm: BaseAlgorithm, state: dict[str, Any]) -> None:
        """Rank 0's attributes and ``VecNormalize`` statistics (the parameters are the caller's)."""
        for name, value in state["attributes"].items():
            setattr(algorithm, name, value)
        vec_normalize = algorithm.get_vec_normalize_env()
        if vec_normalize is not None:
            obs_rms, vec_normalize.ret_rms = copy.deepcopy(state["statistics"])
            if obs_rms is not None:
                vec_normalize.obs_rms = obs_rms

    # ------------------------------------------------------------------ after each rollout: the union

    def record_infos(self, infos: list[dict[str, Any]], dones: np.ndarray | None) -> None:
        """Keep the episodes this rank finished (SB3's ``_update_info_buffer`` sees every step's infos)."""
        for index, info in enumerate(infos):
            if info.get("episode") is not None:
                self._episodes.append(info["episode"])
            if info.get("is_success") is not None and dones is not None and dones[index]:
                self._successes.append(info["is_success"])

    def after_rollout(
        self,
        algorithm: BaseAlgorithm,
        rollout_buffer: RolloutBuffer,
        steps: int,
        completed: bool,
        error: Exception | None = None,
    ) -> bool:
        """Exchange the rollouts; False (on every rank) if a callback stopped training on any rank.

        :param steps: the environment steps this rank took in the rollout
        :param completed: whether this rank's rollout ran to its end
        :param error: what this rank's rollout raised, if it did: every rank stops, the others with an error
            naming it (the raising rank's caller raises its own)
        """
        vec_normalize = algorithm.get_vec_normalize_env()
        arrays = None
        if completed and error is None:
            try:
                arrays = _buffer_arrays(rollout_buffer)
            except RuntimeError as unusable:  # raised here, it would leave the other ranks waiting in the gather
                error = unusable
        payload = {
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "completed": completed,
            "steps": steps,
            "episodes": self._episodes,
            "successes": self._successes,
            "arrays": arrays,
            "moments": _moments_since(self._statistics, vec_normalize),
            "numpy_state": np.random.get_state() if self.is_main else None,
        }
        self._episodes, self._successes = [], []
        gathered = self.communicator.all_gather(payload)
        failed = [(rank, part["error"]) for rank, part in enumerate(gathered) if part["error"] is not None]
        if error is not None and not completed:
            return False  # this rank's rollout raised: its caller raises that error
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise RuntimeError(f"rank {rank}'s rollout raised, so every rank stops: {message}")

        others = [part for rank, part in enumerate(gathered) if rank != self.rank]
        algorithm.num_timesteps += sum(part["steps"] for part in others)
        assert algorithm.ep_info_buffer is not None
        assert algorithm.ep_success_buffer is not None
        for part in others:
            algorithm.ep_info_buffer.extend(part["episodes"])
            algorithm.ep_success_buffer.extend(part["successes"])
        if vec_normalize is not None:
            _merge_moments(self._statistics, [part["moments"] for part in gathered], vec_normalize)
            self._statistics = _snapshot(vec_normalize)
        if not all(part["completed"] for part in gathered):
            return False
        # The update's random draws (the critic's minibatch order) are the same on every rank: rank 0's.
        self._own_numpy_state = np.random.get_state()
        np.random.set_state(gathered[0]["numpy_state"])
        self.buffer = _union(rollout_buffer, [part["arrays"] for part in gathered])
        return True

    # ------------------------------------------------------------------ after the update

    def after_update(self, algorithm: BaseAlgorithm, n_updates: int) -> None:
        """This rank's NumPy stream back (rank 0's served the update), :meth:`resynchronize` where on, then
        :meth:`check_lockstep`."""
        if self._own_numpy_state is not None:
            np.random.set_state(self._own_numpy_state)
            self._own_numpy_state = None
        if self.resync:
            self.resynchronize(algorithm)
        self.check_lockstep(algorithm, n_updates)

    def resynchronize(self, algorithm: BaseAlgorithm) -> None:
        """Every rank takes rank 0's state after an update (one collective): drift in the last bits cannot grow.

        The state dicts are loaded in place, so the backends, which hold the parameters, stay as they are.
        """
        state = self.communicator.broadcast(self._state(algorithm) if self.is_main else None)
        if self.is_main:
            return
        for name, values in state["parameters"].items():
            target = algorithm
            for part in name.split("."):
                target = getattr(target, part)
            target.load_state_dict(values)  # type: ignore[attr-defined]
        self._adopt(algorithm, state)
        self._statistics = _snapshot(algorithm.get_vec_normalize_env())  # the next moments are counted from these

    def check_lockstep(self, algorithm: BaseAlgorithm, n_updates: int, force: bool = False) -> None:
        """Every ``checksum_interval`` updates (or when ``force``), raise if the ranks' parameters differ."""
        if not force and (self.checksum_interval <= 0 or n_updates % self.checksum_interval):
            return
        checksums = self.communicator.all_gather(parameter_checksum(algorithm.policy.parameters()))
        if any(checksum != checksums[0] for checksum in checksums):
            raise RuntimeError(
                f"the ranks' parameters diverged after update {n_updates}: checksums {checksums} "
                "(sum and sum of squares of every parameter, per rank); the update must be deterministic on every rank"
            )


def _to_cpu(value: Any) -> Any:
    """``value`` (nested dicts and lists of tensors, as state dicts are) with every tensor on the CPU."""
    if isinstance(value, th.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def parameter_checksum(parameters: Iterable[th.Tensor]) -> tuple[float, float]:
    """``(Σ θ, Σ θ²)`` over every parameter, in float64: equal on two ranks whose parameters are bit-identical."""
    total, squares = 0.0, 0.0
    with th.no_grad():
        for param in parameters:
            values = param.detach().double()
            total += values.sum().item()
            squares += values.square().sum().item()
    return total, squares


# ---------------------------------------------------------------------------------------------- buffers


def _buffer_arrays(buffer: RolloutBuffer) -> dict[str, Any]:
    """The rollout buffer's per-step arrays (dict observations as a dict), before any ``get()`` reshapes them."""
    if buffer.generator_ready:
        raise RuntimeError("the rollout buffer was already flattened by get(): gather it right after the rollout")
    arrays: dict[str, Any] = {}
    for name, value in vars(buffer).items():
        if (isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[0] == buffer.buffer_size) or (
            isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            arrays[name] = value
    return arrays


def _union(local: RolloutBuffer, parts: list[dict[str, Any]]) -> RolloutBuffer:
    """One buffer holding every rank's rollout, each rank's environments after the previous rank's."""
    union = copy.copy(local)
    for name in parts[0]:
        axis = _ENV_AXIS.get(name, 1)
        if isinstance(parts[0][name], dict):
            setattr(
                union, name, {key: np.concatenate([part[name][key] for part in parts], axis=axis) for key in parts[0][name]}
            )
        else:
            setattr(union, name, np.concatenate([part[name] for part in parts], axis=axis))
    union.n_envs = sum(part["episode_starts"].shape[1] for part in parts)
    union.generator_ready = False
    return union


# ---------------------------------------------------------------------------------------------- VecNormalize


def _snapshot(vec_normalize: Any) -> dict[str, RunningMeanStd]:
    """Copies of ``VecNormalize``'s running statistics (``obs``, per key for dict observations, and ``ret``)."""
    if vec_normalize is None:
        return {}
    statistics = {}
    obs_rms = getattr(vec_normalize, "obs_rms", None)  # absent with norm_obs=False
    if obs_rms is not None:
        for key, rms in obs_rms.items() if isinstance(obs_rms, dict) else [("obs", obs_rms)]:
            statistics[f"obs/{key}"] = copy.deepcopy(rms)
    statistics["ret"] = copy.deepcopy(vec_normalize.ret_rms)
    return statistics


def _current(vec_normalize: Any, name: str) -> RunningMeanStd:
    if name == "ret":
        return vec_normalize.ret_rms
    key = name.split("/", 1)[1]
    return vec_normalize.obs_rms[key] if isinstance(vec_normalize.obs_rms, dict) else vec_normalize.obs_rms


def _moments_since(snapshot: dict[str, RunningMeanStd], vec_normalize: Any) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The moments (mean, variance, count) of what this rank's statistics absorbed since ``snapshot``.

    ``RunningMeanStd`` merges a batch by the parallel-variance formula; this inverts it: from the
    statistics before (``m₀, v₀, n₀``) and after (``m₁, v₁, n₁``), the batch has ``n = n₁ − n₀``,
    ``m = (m₁n₁ − m₀n₀)/n`` and ``v = (v₁n₁ − v₀n₀ − (m − m₀)² n₀n/n₁)/n``.
    """
    moments = {}
    for name, before in snapshot.items():
        after = _current(vec_normalize, name)
        count = after.count - before.count
        if count <= 0:
            continue
        mean = (after.mean * after.count - before.mean * before.count) / count
        squares = (
            after.var * after.count
            - before.var * before.count
            - (mean - before.mean) ** 2 * before.count * count / after.count
        )
        moments[name] = (mean, np.maximum(squares / count, 0.0), count)
    return moments


def _merge_moments(snapshot: dict[str, RunningMeanStd], parts: list[dict[str, Any]], vec_normalize: Any) -> None:
    """Every rank's new moments merged into the statistics they all shared, in rank order: the same on every rank."""
    for name, before in snapshot.items():
        merged = copy.deepcopy(before)
        for moments in parts:
            if name in moments:
                merged.update_from_moments(*moments[name])
        target = _current(vec_normalize, name)
        target.mean, target.var, target.count = merged.mean, merged.var, merged.count
