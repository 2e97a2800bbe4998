"""
``python -m sb3_trpo.zoo <command> [options]`` and ``sb3-trpo-zoo``: rl_zoo3's CLI with our algorithms.

The commands and their options are rl_zoo3's own (``train``, ``enjoy``, ``plot_train``, ``all_plots``,
``plot_from_file``), run by rl_zoo3 itself once :mod:`sb3_trpo.zoo` has registered the algorithms.
Two things are added: ``train`` with one of our algorithms reads the hyperparameter file shipped with
this package unless ``--conf-file`` names another, and ``-optimize`` without ``--storage`` keeps its
study in an SQLite file (:func:`with_default_storage`). Two things are made safer: every
``VecNormalize`` statistics file is written atomically (:func:`~sb3_trpo.common.files.atomic_vec_normalize_saves`;
the models and checkpoints of our algorithms are, by their ``save()``), and an environment that fails in a
``--vec-env subproc`` worker is reported as such (:func:`~sb3_trpo.common.workers.explain_worker_failures`)
instead of as a bare ``EOFError``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rl_zoo3 import cli

from sb3_trpo.common.files import atomic_vec_normalize_saves
from sb3_trpo.common.workers import explain_worker_failures
from sb3_trpo.distributed import launched_by_torchrun
from sb3_trpo.zoo import REGISTERED

COMMANDS = ("train", "enjoy", "plot_train", "all_plots", "plot_from_file")


def _algo_argument(args: list[str]) -> str | None:
    """The value of ``--algo`` in ``args`` as rl_zoo3's ``train`` will read it, or None if it is malformed."""
    # Same option name, abbreviations allowed like rl_zoo3's parser (only --algo starts with --a there).
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--algo", default="ppo")
    try:
        known, _ = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):
        return None  # rl_zoo3's parser will report it
    return known.algo


def with_default_hyperparams(train_args: list[str]) -> list[str]:
    """``train``'s arguments, with ``--conf-file <our hyperparams/<algo>.yml>`` first when ``--algo`` is ours.

    It goes first so that a ``--conf-file`` (or ``-conf``) of the user's, later on the line, wins:
    argparse keeps the last value of an option.
    """
    algo = _algo_argument(train_args)
    if algo not in REGISTERED:
        return train_args
    return ["--conf-file", str(REGISTERED[algo].hyperparams_file), *train_args]


def with_default_storage(train_args: list[str]) -> list[str]:
    """``train``'s arguments, with an SQLite study file when ``-optimize`` names no ``--storage``.

    rl_zoo3 keeps a study without storage in memory only; ours goes to
    ``<log-folder>/<algo>/optuna_<env>.db`` with the study name ``<algo>_<env>``, so a search can be
    inspected afterwards and resumed by running the same command again.
    """
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("-optimize", "--optimize-hyperparameters", action="store_true")
    parser.add_argument("--storage", default=None)
    parser.add_argument("--study-name", default=None)
    parser.add_argument("-f", "--log-folder", default="logs")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--env", default="CartPole-v1")
    try:
        known, _ = parser.parse_known_args(train_args)
    except (argparse.ArgumentError, SystemExit):
        return train_args  # rl_zoo3's parser will report it
    if not known.optimize_hyperparameters or known.storage is not None:
        return train_args
    folder = Path(known.log_folder) / known.algo
    folder.mkdir(parents=True, exist_ok=True)
    defaults = ["--storage", f"sqlite:///{folder / f'optuna_{known.env}.db'}"]
    if known.study_name is None:
        defaults += ["--study-name", f"{known.algo}_{known.env}"]
    return [*train_args, *defaults]


def for_this_rank(train_args: list[str]) -> list[str]:
    """``train``'s arguments on this process: under ``torchrun``, ranks other than 0 write nothing that lasts.

    Every rank trains (each collects its own rollouts: ``TRPO(distributed="auto")``), rank 0 writes the
    logs, evaluations, checkpoints and the final model. The other ranks evaluate and checkpoint nothing and
    keep rl_zoo3's files in a scratch folder of their own (the last values on the line win).
    """
    rank = int(os.environ.get("RANK", "0"))
    if launched_by_torchrun() and any(arg in ("-optimize", "--optimize", "--optimize-hyperparameters") for arg in train_args):
        # Each rank would sample its own trial's hyperparameters: the ranks of one model would disagree.
        raise SystemExit(
            "train --optimize runs on one process: launch it without torchrun (rl_zoo3's --n-jobs runs trials in "
            "parallel); train the chosen hyperparameters under torchrun afterwards"
        )
    if not launched_by_torchrun() or rank == 0:
        return train_args
    scratch = tempfile.mkdtemp(prefix=f"sb3_trpo_zoo_rank{rank}_")
    return [*train_args, "-f", scratch, "--eval-freq", "-1", "--save-freq", "-1", "--verbose", "0", "--tensorboard-log", ""]


def _program_name() -> str:
    if os.path.basename(sys.argv[0]) == "__main__.py":
        return "python -m sb3_trpo.zoo"
    return os.path.basename(sys.argv[0])


def main() -> None:
    """Run the rl_zoo3 command named by the first argument, with our algorithms registered."""
    program = _program_name()
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        asked = len(sys.argv) >= 2
        usage = (
            f"usage: {program} {{{','.join(COMMANDS)}}} [options]\n\n"
            f"rl_zoo3's commands, with the algorithms {', '.join(sorted(REGISTERED))} of sb3_trpo.\n"
            f"Options of a command: {program} <command> --help"
        )
        print(usage, file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
    command = sys.argv[1]
    if command == "train":
        sys.argv[2:] = for_this_rank(with_default_storage(with_default_hyperparams(sys.argv[2:])))
    # argparse names the program after sys.argv[0]: "sb3-trpo-zoo train: error: ..."
    sys.argv[0] = f"{program} {command}"
    # Every VecNormalize save atomic (models are: our algorithms' save()), and a dead SubprocVecEnv worker named.
    with atomic_vec_normalize_saves(), explain_worker_failures():
        cli.main()


if __name__ == "__main__":
    main()
