"""Update for update: our TRPO against sb3-contrib's on the same rollouts, from the same state.

sb3-contrib's TRPO collects the rollouts and trains as usual. Before each of its updates, the
state it starts from (policy, optimizer, rollout buffer, NumPy's random state for the critic's
minibatches) is copied into our TRPO, which then runs its own ``train()`` on it. After both have
updated, the script reports the relative difference of the two updates,
``‖Δ_ours − Δ_contrib‖ / ‖Δ_contrib‖``, for the actor and for the critic, and the ratio of their
lengths. Both use rl-zoo's settings from ``hyperparams.py`` (ours with
``kl_action_reduction="mean"`` on MuJoCo, sb3-contrib's trust region). Differences at float32
rounding mean that the two algorithms take the same steps, so any difference in returns comes from
the rollouts or from chance.

A second part looks at the rollouts: both algorithms, built from the same seed, collect their first
rollout (no update before it, so both have drawn the same random numbers) and the script compares the
environment's raw observations step by step. They start equal to float32 rounding; on a chaotic task
such as HalfCheetah those rounding differences grow until the two trajectories are unrelated. Runs of
the two with the same seed are then independent samples, not pairs, and returns have to be compared
over many seeds (``learning.py``'s interval resamples each algorithm's seeds on its own).

A third part checks data-parallel training the same way: two ranks (``torchrun``, gloo), each with half
of the zoo entry's environments, train; before each update rank 0 records the union of the ranks' batches,
its parameters, optimiser state and NumPy's random state, and after it the parameters of both ranks. One
process with all the environments then runs its own ``train()`` from each recorded state on the same union:
the single-process update on the same rollouts, compared with the ranks' as above (and the ranks with each
other: they must be bit-identical).

    python benchmarks/equivalence.py --envs HalfCheetah-v5 Hopper-v5 Swimmer-v5 --updates 120 --data-parallel-updates 60

prints the tables and writes them, with the median and largest differences, to ``results/equivalence.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from common import DEFAULT_RESULTS_DIR, git_commit, set_single_thread, source_fingerprint, versions, write_text
from hyperparams import make_model, run_settings
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecNormalize

DIVERGENCE_THRESHOLDS = (1e-3, 1e-1)


def relative_difference(ours: th.Tensor, reference: th.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm().clamp_min(1e-30))


def first_rollout_observations(algo: str, env_id: str, seed: int) -> np.ndarray:
    """The raw observations (before ``VecNormalize``) of ``algo``'s first rollout, shape (n_steps, n_envs, ...)."""
    model = make_model(algo, env_id, seed)
    model.train = lambda: None  # type: ignore[method-assign]  # one rollout, no update
    observations: list[np.ndarray] = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            env = self.training_env
            new_obs = env.get_original_obs() if isinstance(env, VecNormalize) else self.locals["new_obs"]
            observations.append(np.array(new_obs, dtype=np.float64))
            return True

    model.learn(model.n_steps * model.get_env().num_envs, callback=Record())
    return np.stack(observations)


def rollout_divergence_lines(env_id: str, seed: int) -> list[str]:
    """Where the first rollouts of ours and sb3-contrib, from the same seed, part ways."""
    ours = first_rollout_observations("sb3_trpo", env_id, seed)
    contrib = first_rollout_observations("sb3_contrib", env_id, seed)
    difference = np.abs(ours - contrib).reshape(len(ours), -1).max(axis=1)
    nonzero = np.flatnonzero(difference > 0)
    first_steps = [f"first not 0 at step {nonzero[0]} ({difference[nonzero[0]]:.1e})" if nonzero.size else "always 0"]
    for threshold in DIVERGENCE_THRESHOLDS:
        above = np.flatnonzero(difference > threshold)
        first_steps.append(f"above {threshold:g} from step {above[0]}" if above.size else f"never above {threshold:g}")
    last_quarter = difference[-max(1, len(difference) // 4) :]
    spread = float(np.median(contrib.reshape(len(contrib), -1).std(axis=0)))
    return [
        f"## Same seed, same rollout? {env_id}",
        "",
        f"{env_id}, seed {seed}: the first rollout of each ({len(difference)} steps of every environment, "
        "no update before it, the same random numbers drawn), raw observations compared step by step. "
        "Largest absolute difference over the environments and the observation's entries: "
        f"{', '.join(first_steps)}; over the last quarter of the rollout "
        f"its median is {np.median(last_quarter):.2g}, against a median spread (std over the rollout) of "
        f"the observation's entries of {spread:.2g}. Float rounding is all that differs at the start; where "
        "it grows to the size of the observations themselves, runs with the same seed follow unrelated "
        "trajectories, and returns compare only as samples over many seeds.",
        "",
    ]


BUFFER_ARRAYS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")
DATA_PARALLEL_RANKS = 2
LOGGED_EQUAL = ("train/cg_iterations", "train/line_search_backtracks", "train/is_line_search_success")


def data_parallel_rank(env_id: str, seed: int, updates: int, out: Path) -> None:
    """One rank of the data-parallel part (under ``torchrun``): train ``updates`` updates, recording each.

    Each rank has ``n_envs / world_size`` of the entry's environments (the model seeds rank ``r``'s as one
    process seeds its environments ``r · n_envs`` onwards). Rank 0 writes ``update<k>.pt`` per update; every
    rank writes its parameters after each update (``rank<r>_after<k>.pt``).
    """
    set_single_thread()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    settings = run_settings("sb3_trpo", env_id)
    if settings.n_envs % world_size:
        raise SystemExit(f"{env_id}: n_envs={settings.n_envs} does not split over {world_size} ranks")
    model = make_model("sb3_trpo", env_id, seed, n_envs=settings.n_envs // world_size)
    model.set_logger(Logger(None, []))
    assert model._data_parallel is not None, "not data-parallel: run under torchrun"
    model._data_parallel.checksum_interval = 0  # a drift between the ranks is measured, not stopped
    train, count = model.train, [0]

    def recorded_train() -> None:
        parallel = model._data_parallel
        assert parallel is not None
        assert parallel.buffer is not None
        record: dict[str, Any] = {}
        if rank == 0:
            record = {
                "buffer": {name: getattr(parallel.buffer, name).copy() for name in BUFFER_ARRAYS},
                "before": copy.deepcopy(model.policy.state_dict()),
                "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
                "numpy_state": np.random.get_state(),
                "n_updates": model._n_updates,
                "progress_remaining": model._current_progress_remaining,  # the learning-rate schedules'
            }
        train()
        if rank == 0:
            logged = model.logger.name_to_value
            record["logged"] = {key: float(logged[key]) for key in LOGGED_EQUAL}
            th.save(record, out / f"update{count[0]}.pt")
        th.save(model.policy.state_dict(), out / f"rank{rank}_after{count[0]}.pt")
        count[0] += 1

    model.train = recorded_train  # type: ignore[method-assign]
    model.learn(updates * model.n_steps * settings.n_envs)


def data_parallel_rows(env_id: str, seed: int, updates: int) -> tuple[list[tuple[float, float, float]], float, int]:
    """Per update: (actor relative difference, actor length ratio ranks / one process, critic relative difference)
    of the ranks' update against one process's on the same union; the largest difference between the ranks' parameters; the
    number of updates whose CG iterations, backtracks or acceptance differ from one process's."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
        command += [str(DATA_PARALLEL_RANKS), str(Path(__file__).resolve()), "--data-parallel-rank"]
        command += [env_id, str(seed), str(updates), str(out)]
        # No re-synchronisation: the ranks' own parameters after each update are compared.
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "SB3_TRPO_RESYNC": "0"}
        subprocess.run(command, check=True, env=environment, timeout=3600)

        reference = make_model("sb3_trpo", env_id, seed)
        reference.set_logger(Logger(None, []))
        rows: list[tuple[float, float, float]] = []
        rank_gap, branch_differences = 0.0, 0
        for index in range(updates):
            record = th.load(out / f"update{index}.pt", weights_only=False)
            after = [th.load(out / f"rank{rank}_after{index}.pt") for rank in range(DATA_PARALLEL_RANKS)]
            rank_gap = max(rank_gap, max(float((after[0][k] - other[k]).abs().max()) for other in after for k in after[0]))
            reference.policy.load_state_dict(record["before"])
            reference.policy.optimizer.load_state_dict(record["optimizer"])
            buffer = reference.rollout_buffer
            for name, values in record["buffer"].items():
                setattr(buffer, name, values.copy())
            buffer.full, buffer.pos, buffer.generator_ready = True, buffer.buffer_size, False
            np.random.set_state(record["numpy_state"])
            reference._n_updates = record["n_updates"]
            reference._current_progress_remaining = record["progress_remaining"]
            reference.train()
            logged = reference.logger.name_to_value
            branch_differences += any(float(logged[key]) != record["logged"][key] for key in LOGGED_EQUAL)
            rows.append(update_differences(record["before"], after[0], reference.policy.state_dict()))
    return rows, rank_gap, branch_differences


def update_differences(
    start: dict[str, th.Tensor], ours: dict[str, th.Tensor], reference: dict[str, th.Tensor]
) -> tuple[float, float, float]:
    """(actor relative difference, actor length ratio ours/reference, critic relative difference) of two updates
    from ``start``."""

    def update(state: dict[str, th.Tensor], names: list[str]) -> th.Tensor:
        return th.cat([(state[name] - start[name]).flatten() for name in names])

    actor = [name for name in start if "value" not in name]
    critic = [name for name in start if "value" in name]
    actor_ours, actor_reference = update(ours, actor), update(reference, actor)
    return (
        relative_difference(actor_ours, actor_reference),
        float(actor_ours.norm() / actor_reference.norm()),
        relative_difference(update(ours, critic), update(reference, critic)),
    )


def summary_lines(rows: list[tuple[float, float, float]], ratio: str) -> list[str]:
    """Median and largest differences of ``rows``, and the length ratios (``ratio`` names them), as bullet points."""
    actor_differences, critic_differences = np.array([row[0] for row in rows]), np.array([row[2] for row in rows])
    ratios = np.array([row[1] for row in rows])
    return [
        f"- actor: median relative difference {np.median(actor_differences):.1e}, largest {actor_differences.max():.1e}",
        f"- critic: median relative difference {np.median(critic_differences):.1e}, largest {critic_differences.max():.1e}",
        f"- actor step length, {ratio}: median {np.median(ratios):.5f}, range "
        f"[{ratios.min():.5f}, {ratios.max():.5f}], above 1 in {int((ratios > 1).sum())} of {len(ratios)} updates "
        f"and below 1 in {int((ratios < 1).sum())}",
    ]


def table_lines(rows: list[tuple[float, float, float]]) -> list[str]:
    return [
        "| update | actor: relative difference | actor: length ratio | critic: relative difference |",
        "|---:|---:|---:|---:|",
        *(
            f"| {index} | {actor_difference:.2e} | {ratio:.5f} | {critic_difference:.2e} |"
            for index, (actor_difference, ratio, critic_difference) in enumerate(rows)
        ),
    ]


def contrib_rows(env_id: str, seed: int, updates: int) -> list[tuple[float, float, float]]:
    """Per update of sb3-contrib's TRPO: (actor relative difference, actor length ratio ours / sb3-contrib's,
    critic relative difference) of our update from the same state on the same rollouts."""
    contrib = make_model("sb3_contrib", env_id, seed)
    ours = make_model("sb3_trpo", env_id, seed)
    ours.set_logger(Logger(None, []))
    contrib_train = contrib.train
    rows: list[tuple[float, float, float]] = []

    def train_both() -> None:
        start = copy.deepcopy(contrib.policy.state_dict())
        optimizer = copy.deepcopy(contrib.policy.optimizer.state_dict())
        buffer = copy.deepcopy(contrib.rollout_buffer)
        numpy_state = np.random.get_state()
        contrib_train()
        ours.policy.load_state_dict(start)
        ours.policy.optimizer.load_state_dict(optimizer)
        ours.rollout_buffer = buffer
        np.random.set_state(numpy_state)  # the critic's minibatches: the same permutations
        ours.train()
        rows.append(update_differences(start, ours.policy.state_dict(), contrib.policy.state_dict()))

    contrib.train = train_both  # type: ignore[method-assign]
    contrib.learn(updates * contrib.n_steps * contrib.get_env().num_envs)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--data-parallel-rank":
        env_id, seed, updates, out = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        data_parallel_rank(env_id, seed, updates, out)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5", "Swimmer-v5"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument(
        "--data-parallel-updates",
        type=int,
        default=60,
        help="updates of the data-parallel part, on the first task (0: skip it)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="results directory (default: %(default)s)")
    args = parser.parse_args()
    set_single_thread()
    provenance = (  # taken now: the source that runs, not whatever is checked out when the run ends
        ", ".join(f"{name} {version}" for name, version in versions().items())
        + f". Commit: {git_commit()}; sb3_trpo source fingerprint {source_fingerprint()}."
    )

    lines = ["# Same rollouts, same updates", "", "Generated by `benchmarks/equivalence.py`; do not edit by hand.", ""]
    for env_id in args.envs:
        rows = contrib_rows(env_id, args.seed, args.updates)
        lines += [
            *rollout_divergence_lines(env_id, args.seed),
            f"## Update for update: {env_id}",
            "",
            f"{env_id}, seed {args.seed}, {len(rows)} updates at rl-zoo's settings: before each update of "
            "sb3-contrib's TRPO, its state is copied into ours, which updates from it too. "
            "Relative difference: ‖Δ_ours − Δ_contrib‖ / ‖Δ_contrib‖. sb3-contrib starts conjugate gradient "
            "from small random noise (`1e-4 · randn`), ours from 0: where the truncated CG is far from "
            "converged (later in training) the two directions differ by more than float rounding, "
            "in both directions (the length ratio stays on both sides of 1).",
            "",
            *summary_lines(rows, "ours / sb3-contrib's"),
            "",
            *table_lines(rows),
            "",
        ]
    if args.data_parallel_updates > 0:
        env_id = args.envs[0]
        parallel_rows, rank_gap, branch_differences = data_parallel_rows(env_id, args.seed, args.data_parallel_updates)
        lines += [
            f"## Data-parallel, update for update: {env_id}",
            "",
            f"{env_id}, seed {args.seed}, {len(parallel_rows)} updates at rl-zoo's settings on "
            f"{DATA_PARALLEL_RANKS} ranks (`torchrun`, gloo), each with 1/{DATA_PARALLEL_RANKS} of the entry's "
            "environments: before each update rank 0 recorded the union of the ranks' batches and its state; one "
            "process with all the environments then updated from that state on that union. Relative difference: "
            "‖Δ_ranks − Δ_one process‖ / ‖Δ_one process‖. Both run the same code on the same "
            "arrays: any difference would be float rounding, and 0 means bit-identical.",
            "",
            *summary_lines(parallel_rows, "the ranks' / one process's"),
            f"- updates where CG iterations, line-search backtracks or acceptance differ from one process's: "
            f"{branch_differences} of {len(parallel_rows)}",
            f"- largest difference between the ranks' parameters after any update: {rank_gap:.1e} (0: bit-identical)",
            "",
            *table_lines(parallel_rows),
            "",
        ]
    lines.append(provenance)
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out / "equivalence.md", text)


if __name__ == "__main__":
    main()
