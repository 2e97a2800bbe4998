"""
rl_zoo3 with this package's algorithms: ``python -m sb3_trpo.zoo <command> ...`` or ``sb3-trpo-zoo``.

Importing this module registers each algorithm of :data:`ZOO_ALGORITHMS` that ``sb3_trpo`` exports in
the tables where rl_zoo3 looks algorithms up: ``rl_zoo3.utils.ALGOS`` (the class, for ``train``,
``enjoy``, ``record_video``, continuing training), ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER``
(the Optuna search of ``-optimize``) and ``HYPERPARAMS_CONVERTER`` (``--trial-id``). rl_zoo3's files
are not touched; these are the dicts its own modules share. ``trpo`` replaces sb3_contrib's TRPO.

The tuned hyperparameters of algorithm ``<name>`` are ``sb3_trpo/zoo/hyperparams/<name>.yml``;
``train`` reads them unless ``--conf-file`` says otherwise (see :mod:`sb3_trpo.zoo.__main__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

try:
    import optuna
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
    from rl_zoo3.utils import ALGOS
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("sb3_trpo.zoo needs rl_zoo3 and optuna: pip install 'sb3_trpo[zoo]'") from error

from stable_baselines3.common.base_class import BaseAlgorithm

import sb3_trpo
from sb3_trpo.zoo.samplers import (
    convert_trpo_lstm_params,
    convert_trpo_params,
    sample_trpo_lstm_params,
    sample_trpo_params,
    sample_trpo_penalty_lstm_params,
    sample_trpo_penalty_params,
)

HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"


class Sampler(Protocol):
    """rl_zoo3's sampler signature: a trial's constructor arguments."""

    def __call__(self, trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]: ...


class Converter(Protocol):
    """rl_zoo3's converter signature: a stored trial's ``params`` as constructor arguments."""

    def __call__(self, sampled_params: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ZooAlgorithm:
    """One algorithm as rl_zoo3 sees it. Adding an algorithm to the zoo is one of these in
    :data:`ZOO_ALGORITHMS`, and its file ``hyperparams/<name>.yml``.

    :param name: The ``--algo`` value, and the name of the log folder and of the hyperparameter file
    :param class_name: The class's name in ``sb3_trpo``; the entry is registered only if ``sb3_trpo`` exports it
    :param sampler: The Optuna search space, ``(trial, n_actions, n_envs, additional_args) -> kwargs``
    :param converter: ``trial.params`` back to constructor arguments, for ``--trial-id``
    """

    name: str
    class_name: str
    sampler: Sampler
    converter: Converter = convert_trpo_params

    @property
    def hyperparams_file(self) -> Path:
        """The tuned hyperparameters shipped with the package, ``hyperparams/<name>.yml``."""
        return HYPERPARAMS_DIR / f"{self.name}.yml"


ZOO_ALGORITHMS: tuple[ZooAlgorithm, ...] = (
    ZooAlgorithm("trpo", "TRPO", sample_trpo_params),
    ZooAlgorithm("trpo_penalty", "TRPOPenalty", sample_trpo_penalty_params),
    ZooAlgorithm("trpo_lstm", "RecurrentTRPO", sample_trpo_lstm_params, convert_trpo_lstm_params),
    ZooAlgorithm("trpo_penalty_lstm", "RecurrentTRPOPenalty", sample_trpo_penalty_lstm_params, convert_trpo_lstm_params),
)


def register_algorithms() -> dict[str, ZooAlgorithm]:
    """Put every algorithm that ``sb3_trpo`` exports into rl_zoo3's tables; return them by ``--algo`` name.

    Idempotent: registering twice writes the same entries again.
    """
    registered = {}
    for algo in ZOO_ALGORITHMS:
        algo_class: type[BaseAlgorithm] | None = getattr(sb3_trpo, algo.class_name, None)
        if algo_class is None:
            continue
        ALGOS[algo.name] = algo_class
        HYPERPARAMS_SAMPLER[algo.name] = algo.sampler
        HYPERPARAMS_CONVERTER[algo.name] = algo.converter
        registered[algo.name] = algo
    return registered


REGISTERED: dict[str, ZooAlgorithm] = register_algorithms()

__all__ = ["HYPERPARAMS_DIR", "REGISTERED", "ZOO_ALGORITHMS", "ZooAlgorithm", "register_algorithms"]
