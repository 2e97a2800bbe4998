"""rl_zoo3 with our algorithms: registration, hyperparameter files, samplers, and the real CLI end to end."""

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS

import sb3_trpo
from sb3_trpo import TRPO, TRPOPenalty
from sb3_trpo.zoo import HYPERPARAMS_DIR, REGISTERED, ZOO_ALGORITHMS
from sb3_trpo.zoo.__main__ import main, with_default_hyperparams

REPO_ROOT = Path(__file__).resolve().parents[1]

ENV_ID = "CartPole-v1"
# Keys of a hyperparameter entry that rl_zoo3 consumes itself; all the others go to the constructor.
ZOO_KEYS = {"n_envs", "n_timesteps", "normalize", "normalize_kwargs", "frame_stack", "env_wrapper", "vec_env_wrapper"}
ZOO_KEYS |= {"callback", "monitor_kwargs", "env_kwargs"}
# Two rollouts of 2 x 64 steps: enough for two updates, short enough for a test.
FAST_TRAIN = ["-n", "256", "--eval-freq", "-1", "--n-eval-envs", "1", "--seed", "0", "--num-threads", "1"]
FAST_PARAMS = ["-params", "n_steps:64", "batch_size:64", "n_critic_updates:2"]


def constructor_parameters(algo_class: type) -> set[str]:
    """The named parameters of the constructor, those it forwards (``*args, **kwargs``) to its bases' included."""
    names: set[str] = set()
    for klass in algo_class.__mro__:
        if "__init__" in vars(klass):
            parameters = inspect.signature(klass.__init__).parameters.values()
            names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
            if not any(p.kind == p.VAR_KEYWORD for p in parameters):
                break
    return names


# ------------------------------------------------------------------ registration and files


def test_our_algorithms_are_registered_in_rl_zoo3():
    assert ALGOS["trpo"] is TRPO  # ours, in place of sb3_contrib's
    assert ALGOS["trpo_penalty"] is TRPOPenalty
    for name, algo in REGISTERED.items():
        assert ALGOS[name] is getattr(sb3_trpo, algo.class_name)
        assert HYPERPARAMS_SAMPLER[name] is algo.sampler
        assert HYPERPARAMS_CONVERTER[name] is algo.converter
    # An algorithm is registered exactly when sb3_trpo exports its class.
    exported = {algo.name for algo in ZOO_ALGORITHMS if hasattr(sb3_trpo, algo.class_name)}
    assert set(REGISTERED) == exported
    assert ("trpo_lstm" in ALGOS) == hasattr(sb3_trpo, "RecurrentTRPO")


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_hyperparams_file_fits_the_constructor(name):
    algo = REGISTERED[name]
    entries = yaml.safe_load(algo.hyperparams_file.read_text(encoding="utf-8"))
    accepted = constructor_parameters(getattr(sb3_trpo, algo.class_name)) | ZOO_KEYS
    assert "default" in entries
    for env_id, entry in entries.items():
        unknown = set(entry) - accepted
        assert not unknown, f"{algo.hyperparams_file.name}: {env_id} sets {unknown}, which {algo.class_name} does not take"


def test_shipped_hyperparams():
    trpo = yaml.safe_load((HYPERPARAMS_DIR / "trpo.yml").read_text(encoding="utf-8"))
    penalty = yaml.safe_load((HYPERPARAMS_DIR / "trpo_penalty.yml").read_text(encoding="utf-8"))
    # TRPOPenalty takes every TRPO parameter; where benchmarks/tune.py's rule adopted a study's best trial, the
    # entry differs by the searched settings only, exactly as that trial ran them
    searched = {
        "Ant-v5": ("sb3_trpo_penalty_Ant-v5_late600k.json", 12),
        "Swimmer-v5": ("sb3_trpo_penalty_Swimmer-v5.json", 10),
    }
    assert {env_id: entry for env_id, entry in penalty.items() if env_id not in searched} == {
        env_id: entry for env_id, entry in trpo.items() if env_id not in searched
    }
    for env_id, (report, trials) in searched.items():
        study = json.loads((REPO_ROOT / "benchmarks" / "results" / "tune" / report).read_text(encoding="utf-8"))
        complete = [trial for trial in study["trials"] if trial["state"] == "complete"]
        best = max(complete, key=lambda trial: trial["value"])
        baseline = next(trial for trial in complete if trial.get("baseline"))
        assert len(study["trials"]) >= trials  # the rule: the best of a finished study, above the baseline
        assert best["value"] > baseline["value"]
        assert penalty[env_id] == {**trpo[env_id], **best["params"]}
    assert trpo["CartPole-v1"]["n_steps"] == 512  # rl-zoo's tuned setting
    for task in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid", "Swimmer"):
        assert trpo[f"{task}-v5"] == trpo[f"{task}-v4"]


# ------------------------------------------------------------------ samplers


@pytest.mark.parametrize("algo", ZOO_ALGORITHMS, ids=lambda algo: algo.name)
@pytest.mark.parametrize("n_actions", [0, 6])
def test_sampler_and_converter_agree(algo, n_actions):
    """What a trial trains with is what ``--trial-id`` rebuilds from the stored ``trial.params``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=n_actions))
    for _ in range(5):
        trial = study.ask()
        sampled = algo.sampler(trial, n_actions, 2, {})
        assert algo.converter(trial.params) == sampled
        assert 0.001 <= sampled["target_kl"] <= 0.1 * max(n_actions, 1)
        if hasattr(sb3_trpo, algo.class_name):
            assert set(sampled) <= constructor_parameters(getattr(sb3_trpo, algo.class_name))
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    ("args", "expected_algo"),
    [
        (["--algo", "trpo_penalty", "--env", ENV_ID], "trpo_penalty"),
        (["--env", ENV_ID, "--algo=trpo"], "trpo"),
        (["--al", "trpo"], "trpo"),  # argparse abbreviation, as rl_zoo3 accepts it
        (["--algo", "ppo"], None),  # rl_zoo3's own algorithm: its own file
        ([], None),  # rl_zoo3's default algorithm, ppo
        (["--algo"], None),  # malformed: left to rl_zoo3's parser
    ],
)
def test_default_hyperparams_file(args, expected_algo):
    if expected_algo is None:
        assert with_default_hyperparams(args) == args
    else:
        # First, so that a --conf-file of the user's, later on the line, wins.
        assert with_default_hyperparams(args) == ["--conf-file", str(HYPERPARAMS_DIR / f"{expected_algo}.yml"), *args]


# ------------------------------------------------------------------ the CLI, end to end


@pytest.fixture
def zoo(monkeypatch, capsys, tmp_path):
    """Run ``sb3-trpo-zoo <args>`` in this process (no second start-up of torch and rl_zoo3), in ``tmp_path``."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["sb3-trpo-zoo", *args])
        main()
        return capsys.readouterr().out

    return run


def run_in_new_process(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_train_load_enjoy(name, zoo, tmp_path):
    algo_class = getattr(sb3_trpo, REGISTERED[name].class_name)
    trained = zoo("train", "--algo", name, "--env", ENV_ID, "-f", "logs", *FAST_TRAIN, *FAST_PARAMS)
    assert f"Loading hyperparameters from: {HYPERPARAMS_DIR / f'{name}.yml'}" in trained

    # Where rl_zoo3 writes it: <log folder>/<algo>/<env>_<run id>/<env>.zip
    model_path = tmp_path / "logs" / name / f"{ENV_ID}_1" / f"{ENV_ID}.zip"
    assert model_path.is_file()
    model = algo_class.load(model_path, device="cpu")
    assert type(model) is algo_class
    assert (model.n_steps, model.batch_size, model.n_critic_updates) == (64, 64, 2)
    assert model.num_timesteps >= 256

    replayed = zoo("enjoy", "--algo", name, "--env", ENV_ID, "-f", "logs", "--no-render", "-n", "1000")
    assert f"Loading {Path('logs') / name / f'{ENV_ID}_1' / f'{ENV_ID}.zip'}" in replayed
    assert "Mean reward:" in replayed  # CartPole's episodes end within 500 steps


@pytest.mark.filterwarnings("ignore:The critic's mini-batch size")  # sampled batch_size > n_steps: allowed
def test_optimize_with_sqlite_storage(zoo, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    # Random search, seeded: two short trials, one per policy optimizer of TRPOPenalty.
    zoo(
        "train", "--algo", "trpo_penalty", "--env", ENV_ID, "-f", "logs", "-n", "256", "--seed", "2", "--num-threads", "1",
        "-optimize", "--n-trials", "2", "--n-evaluations", "1", "--eval-episodes", "2", "--sampler", "random",
        "--pruner", "none", "--storage", storage, "--study-name", "zoo-test", "--no-optim-plots",
    )  # fmt: skip
    study = optuna.load_study(study_name="zoo-test", storage=storage)
    completed = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(completed) == len(study.trials) == 2
    for trial in completed:
        assert {"target_kl", "beta", "kl_tolerance", "beta_factor", "policy_optimizer"} <= set(trial.params)
    assert list((tmp_path / "logs" / "trpo_penalty").glob("report_*.csv"))


@pytest.mark.filterwarnings("ignore:The critic's mini-batch size")
def test_optimize_without_storage_keeps_the_study_in_a_default_sqlite_file(zoo, tmp_path):
    zoo(
        "train", "--algo", "trpo", "--env", ENV_ID, "-f", "logs", "-n", "256", "--seed", "3", "--num-threads", "1",
        "-optimize", "--n-trials", "2", "--n-evaluations", "1", "--eval-episodes", "2", "--sampler", "random",
        "--pruner", "none", "--no-optim-plots",
    )  # fmt: skip
    database = tmp_path / "logs" / "trpo" / f"optuna_{ENV_ID}.db"
    assert database.is_file()
    study = optuna.load_study(study_name=f"trpo_{ENV_ID}", storage=f"sqlite:///{database}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2


def test_default_storage_leaves_explicit_choices_alone():
    from sb3_trpo.zoo.__main__ import with_default_storage

    explicit = ["--algo", "trpo", "-optimize", "--storage", "x.log"]
    assert with_default_storage(explicit) == explicit
    no_search = ["--algo", "trpo", "--env", ENV_ID]
    assert with_default_storage(no_search) == no_search


def test_module_entry_point_and_conf_file_override(tmp_path):
    """``python -m sb3_trpo.zoo``, with ``-conf``: the user's file wins over the shipped one."""
    conf = tmp_path / "mine.yml"
    conf.write_text(f"{ENV_ID}:\n  n_envs: 1\n  n_timesteps: 64\n  policy: MlpPolicy\n  n_steps: 32\n  gamma: 0.95\n")
    command = [sys.executable, "-m", "sb3_trpo.zoo", "train", "--algo", "trpo_penalty", "--env", ENV_ID, "-conf", str(conf)]
    result = run_in_new_process([*command, "-f", "logs", "--eval-freq", "-1", "--num-threads", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Loading hyperparameters from: {conf}" in result.stdout
    model = TRPOPenalty.load(tmp_path / "logs" / "trpo_penalty" / f"{ENV_ID}_1" / f"{ENV_ID}.zip", device="cpu")
    assert (model.n_steps, model.gamma, model.n_envs) == (32, 0.95, 1)


def test_wrong_algorithm_name(tmp_path):
    script = Path(sys.executable).parent / "sb3-trpo-zoo"  # the console script of setup.py
    result = run_in_new_process([str(script), "train", "--algo", "trpo_penalti", "--env", ENV_ID], cwd=tmp_path)
    assert result.returncode == 2
    assert "sb3-trpo-zoo train: error: argument --algo: invalid choice: 'trpo_penalti'" in result.stderr
    assert "'trpo_penalty'" in result.stderr  # rl_zoo3 lists the algorithms that exist
    assert not (tmp_path / "logs").exists()


def test_wrong_algorithm_name_in_enjoy(zoo, capsys):
    with pytest.raises(SystemExit) as error:
        zoo("enjoy", "--algo", "trpo_penalti", "--env", ENV_ID, "--no-render")
    assert error.value.code == 2
    assert "invalid choice: 'trpo_penalti'" in capsys.readouterr().err


def test_checkpoints_and_vec_normalize_statistics_are_saved_atomically(zoo, tmp_path, monkeypatch):
    """Through the entry point, rl_zoo3's ``VecNormalize.save`` calls are atomic; the checkpoints are, by ``save()``."""
    from stable_baselines3.common.vec_env import VecNormalize

    from sb3_trpo.common import files

    saved_statistics = []
    atomic = files.save_vec_normalize

    def spy(vec_normalize, save_path):
        saved_statistics.append(Path(save_path).name)
        atomic(vec_normalize, save_path)

    monkeypatch.setattr(files, "save_vec_normalize", spy)
    zoo(
        "train",
        "--algo",
        "trpo",
        "--env",
        ENV_ID,
        "-f",
        "logs",
        *FAST_TRAIN,
        *FAST_PARAMS,
        "normalize:True",
        "--save-freq",
        "128",
    )

    run = tmp_path / "logs" / "trpo" / f"{ENV_ID}_1"
    assert "vecnormalize.pkl" in saved_statistics
    assert VecNormalize.save is not spy  # only inside the entry point
    checkpoints = sorted(run.glob("rl_model_*_steps.zip"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert TRPO.load(checkpoint, device="cpu").num_timesteps > 0
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_an_optuna_search_under_torchrun_is_refused(monkeypatch):
    from sb3_trpo.zoo.__main__ import for_this_rank

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match="--optimize runs on one process"):
        for_this_rank(["--algo", "trpo", "--env", "CartPole-v1", "--optimize"])
    assert for_this_rank(["--algo", "trpo"]) == ["--algo", "trpo"]  # rank 0 trains as usual
