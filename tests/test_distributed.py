"""Data-parallel training on 2 processes (gloo on localhost, started by torchrun) against one process.

Each test starts ``tests/distributed_worker.py`` on two ranks with a timeout, so a hang fails the test
instead of stalling the suite, then compares what the ranks wrote with the single-process result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import launch
import numpy as np
import pytest
import torch as th
from launch import flat_parameters, set_parameters
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from sb3_trpo import TRPO, TRPOPenalty
from sb3_trpo.distributed import data_parallel_for, launched_by_torchrun

WORKER = Path(__file__).parent / "distributed_worker.py"
UPDATE_SETTINGS = {"n_steps": 64, "batch_size": 32, "n_critic_updates": 3, "seed": 3, "target_kl": 0.02}


def torchrun(mode: str, out: Path, timeout: float = 240.0) -> None:
    """Run ``mode`` of the worker on 2 ranks, with a timeout."""
    launch.torchrun(WORKER, mode, out, timeout)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("mode", "algorithm", "extra"),
    [
        ("update", TRPO, {}),
        ("penalty", TRPOPenalty, {}),
        ("penalty_first_order", TRPOPenalty, {"policy_optimizer": "first_order", "n_epochs": 2}),
    ],
)
def test_two_ranks_take_the_single_process_update_on_the_union_of_their_batches(tmp_path, mode, algorithm, extra):
    torchrun(mode, tmp_path)
    # One process with both ranks' environments (n_envs=2, seeded 3 and 4 as ranks 0 and 1 seed theirs).
    reference = algorithm("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), **UPDATE_SETTINGS, **extra)
    reference.set_logger(configure(str(tmp_path / "reference_logs"), []))
    first_observations = reference.env.reset()
    for update in range(2):
        ranks = [np.load(tmp_path / f"rank{rank}_update{update}.npz") for rank in range(2)]
        meta = json.loads((tmp_path / f"rank0_update{update}.json").read_text())
        for name in ranks[0].files:  # every rank updates on the same union, from the same parameters
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name])
        union = ranks[0]
        assert union["buffer_observations"].shape[:2] == (64, 2)  # rank r's environment is column r
        if update == 0:  # the ranks' environments were seeded as one process's two environments are
            np.testing.assert_allclose(union["buffer_observations"][0], first_observations, rtol=0, atol=0)

        set_parameters(reference, union["before"])
        buffer = reference.rollout_buffer
        for name in ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages"):
            setattr(buffer, name, union[f"buffer_{name}"].copy())
        buffer.full, buffer.pos, buffer.generator_ready = True, buffer.buffer_size, False
        state = meta["numpy_state"]
        np.random.set_state((state[0], np.array(state[1], dtype=np.uint32), *state[2:]))
        reference._n_updates = update
        reference.train()

        logged = reference.logger.name_to_value
        for key in ("train/cg_iterations", "train/line_search_backtracks", "train/is_line_search_success"):
            assert logged[key] == meta["logged"][key], key
        for key in ("train/step_size", "train/kl_divergence", "train/policy_objective", "train/value_loss"):
            assert logged[key] == pytest.approx(meta["logged"][key], rel=1e-5, abs=1e-9), key
        assert np.abs(union["after"] - union["before"]).max() > 1e-4  # the update moved the parameters
        np.testing.assert_allclose(flat_parameters(reference), union["after"], rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_ranks_stay_in_lockstep_count_every_step_and_a_divergence_is_caught(tmp_path):
    torchrun("lockstep", tmp_path)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    np.testing.assert_array_equal(np.load(tmp_path / "rank0_parameters.npy"), np.load(tmp_path / "rank1_parameters.npy"))
    for report in reports:
        assert report["num_timesteps"] == 3 * 64 * 2  # learn(total_timesteps) counts both ranks' steps
        assert report["n_updates"] == 3
        assert report["backends"] == {"actor": "mlp", "critic": "flat", "rollout": "numpy"}
        assert "diverged" in report["divergence"]
    assert reports[0]["episodes"] == reports[1]["episodes"]  # every rank's episodes, on every rank
    assert len(reports[0]["episodes"]) >= 2
    loaded = TRPO.load(tmp_path / "model")  # rank 0 saved it; it loads in one process
    assert loaded._data_parallel is None
    np.testing.assert_array_equal(flat_parameters(loaded), np.load(tmp_path / "rank0_parameters.npy"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["vecnormalize", "vecnormalize_rewards_only"])
def test_vec_normalize_statistics_merge_every_ranks_observations_once(tmp_path, mode):
    torchrun(mode, tmp_path)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert reports[0] == reports[1]
    # Each rank normalised its reset observation and 2 × 64 steps' observations: counted once each.
    if mode == "vecnormalize":
        assert reports[0]["count"] == pytest.approx(1e-4 + 2 * (1 + 2 * 64), rel=1e-12)
    assert reports[0]["ret_count"] == pytest.approx(1e-4 + 2 * 2 * 64, rel=1e-12)


@pytest.mark.timeout(300)
def test_recurrent_trpo_trains_data_parallel_in_lockstep(tmp_path):
    torchrun("recurrent", tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "rank0_parameters.npy"), np.load(tmp_path / "rank1_parameters.npy"))
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"num_timesteps": 128, "n_updates": 2}


@pytest.mark.timeout(300)
def test_resynchronised_ranks_take_rank_0s_state_after_every_update(tmp_path):
    launch.torchrun(WORKER, "resync", tmp_path, env={"SB3_TRPO_RESYNC": "1"})
    np.testing.assert_array_equal(np.load(tmp_path / "rank0_parameters.npy"), np.load(tmp_path / "rank1_parameters.npy"))
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert reports[0]["beta"] == reports[1]["beta"]  # the penalty's β too, though rank 1 changed its own
    assert reports[0]["obs_mean"] == reports[1]["obs_mean"]  # and VecNormalize's statistics
    assert reports[0]["n_updates"] == 3
    assert reports[0]["resync"] is reports[1]["resync"] is True  # rank 1 was told 0: rank 0's choice holds
    # per update: the exchange, the resynchronisation and the checksum; plus the start's broadcast
    assert reports[0]["collectives"] == reports[1]["collectives"] == 1 + 3 * 3


def test_resync_is_on_across_machines_and_off_on_one(monkeypatch):
    from sb3_trpo.distributed.data_parallel import DataParallel

    class Ranks:  # a communicator's shape, without a process group
        rank, world_size, is_main = 0, 4, True

    monkeypatch.delenv("SB3_TRPO_RESYNC", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert not DataParallel(Ranks()).resync  # type: ignore[arg-type]
    assert DataParallel(Ranks(), on_gpu=True).resync  # type: ignore[arg-type]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 machines of 2
    assert DataParallel(Ranks()).resync  # type: ignore[arg-type]
    monkeypatch.setenv("SB3_TRPO_RESYNC", "0")
    assert not DataParallel(Ranks()).resync  # type: ignore[arg-type]


def test_the_process_group_the_communicator_starts_is_torn_down_at_exit(monkeypatch):
    # Left to the interpreter's teardown, a gloo group sometimes aborts a process whose run succeeded.
    import atexit
    import socket

    import torch.distributed as dist

    import sb3_trpo.distributed.communicator as communicator_module
    from sb3_trpo.distributed.communicator import Communicator, destroy_at_exit

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in {**environment, "TORCH_GLOO_LAZY_INIT": "1"}.items():  # the communicator sets the last
        monkeypatch.setenv(name, value)
    monkeypatch.delattr(sys, "last_value", raising=False)
    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    # First a pause with the group alive and the GIL free, for a gloo thread still holding the last collective
    # (it would release it during finalisation, which aborts the process); then the teardown.
    pauses: list[tuple[float, bool]] = []
    monkeypatch.setattr(communicator_module.time, "sleep", lambda seconds: pauses.append((seconds, dist.is_initialized())))
    try:
        communicator = Communicator(timeout_s=30)
        assert communicator.world_size == 1
        assert registered == [destroy_at_exit]
        destroy_at_exit()
        assert not dist.is_initialized()
        assert pauses == [(communicator_module.EXIT_GRACE_S, True)]
        destroy_at_exit()  # a group already destroyed (by the user, say): nothing to do
        assert len(pauses) == 1
        Communicator(timeout_s=30)
        monkeypatch.setattr(sys, "last_value", RuntimeError("a rank raised"), raising=False)
        destroy_at_exit()  # after an uncaught exception the group is left alone (others may be in a collective)
        assert dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_without_torchrun_a_model_trains_on_this_process_alone(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    assert data_parallel_for("auto", th.device("cpu")) is None
    assert data_parallel_for("off", th.device("cpu")) is None
    model = TRPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32)
    assert model._data_parallel is None
    with pytest.raises(ValueError, match=r"^distributed must be"):
        TRPO("MlpPolicy", "CartPole-v1", distributed="mpi")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("algo", ["trpo", "trpo_penalty", "trpo_lstm", "trpo_penalty_lstm"])
def test_the_zoo_trains_on_two_ranks_and_rank_0_writes_the_model_once(tmp_path, algo):
    from sb3_trpo.zoo import REGISTERED

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sb3_trpo.zoo"]
    command += ["train", "--algo", algo, "--env", "CartPole-v1", "-f", str(tmp_path / "logs"), "-n", "256", "--seed", "0"]
    command += ["--eval-freq", "-1", "--num-threads", "1", "-params", "n_steps:32", "batch_size:32", "n_critic_updates:1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SB3_TRPO_DISTRIBUTED_TIMEOUT": "60"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    runs = list((tmp_path / "logs" / algo).iterdir())
    assert [run.name for run in runs] == ["CartPole-v1_1"]  # one run folder: rank 1 wrote nothing here
    model = getattr(__import__("sb3_trpo"), REGISTERED[algo].class_name).load(runs[0] / "CartPole-v1.zip", device="cpu")
    assert model._data_parallel is None  # loads on one process
    assert model.num_timesteps == 256  # both ranks' steps: 2 ranks × 2 rollouts × 2 envs × 32 steps


def start_ranks(mode: str, out: Path) -> list[subprocess.Popen]:
    """Both ranks of ``mode`` as plain processes (no torchrun, which would stop one when the other fails)."""
    import socket

    with socket.socket() as probe:  # a free port on this machine for the process group's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    base["SB3_TRPO_DISTRIBUTED_TIMEOUT"] = "30"
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(out)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


@pytest.mark.timeout(200)
def test_a_rank_whose_rollout_raises_stops_every_rank_with_its_error(tmp_path):
    errors = [process.communicate(timeout=180)[1] for process in start_ranks("rank_error", tmp_path)]
    assert "environment 0 returned a non-finite observation" in errors[1], errors[1][-3000:]
    assert "rank 1's rollout raised, so every rank stops: ValueError: environment 0" in errors[0], errors[0][-3000:]


@pytest.mark.timeout(200)
def test_a_killed_rank_makes_the_others_stop_with_an_error_not_hang(tmp_path):
    import time

    processes = start_ranks("fault", tmp_path)
    start = time.monotonic()
    _, errors = processes[0].communicate(timeout=180)
    elapsed = time.monotonic() - start
    processes[1].wait(timeout=30)
    assert processes[1].returncode == -9  # killed, as planned
    assert processes[0].returncode != 0
    assert "the other ranks stopped answering" in errors, errors[-3000:]
    assert elapsed < 150


@pytest.mark.timeout(300)
def test_with_max_restarts_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SB3_TRPO_DISTRIBUTED_TIMEOUT": "30"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    result = subprocess.run(
        [*command, str(WORKER), "resume", str(tmp_path)], env=env, capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(report["resumed"] for report in reports)  # both ranks of the second attempt started from the checkpoint
    assert all(report["num_timesteps"] >= 6 * 32 * 2 for report in reports)
    assert TRPO.load(tmp_path / "final").num_timesteps == reports[0]["num_timesteps"]
