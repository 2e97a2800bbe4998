"""A short Optuna search of TRPOPenalty's own settings on one task, on seeds the campaigns do not evaluate.

The MuJoCo entries of ``trpo_penalty.yml`` are ``trpo.yml``'s: rl-zoo tuned them for TRPO's constraint. Where they
leave TRPOPenalty clearly behind, this searches what the penalty adds, keeping everything else of the entry.
"Clearly behind", fixed before the campaign's penalty seeds 1 and 2 ran: on the seeds both ran (at least 3),
TRPOPenalty's mean final return in the ``mujoco`` campaign is below our TRPO's and the 95% bootstrap interval
of the difference (``learning.compare_to_reference``) lies below 0. The search:

- ``target_kl`` (the KL that β steers towards), log-uniform in [0.003, 0.1];
- ``beta``, the initial coefficient, log-uniform in [0.1, 10];
- ``kl_tolerance``, the band around ``target_kl`` in which β stays, in [1.2, 3];
- ``beta_factor``, β's change outside the band, in [1.2, 4];
- ``policy_optimizer``, ``"natural"`` or ``"first_order"``.

Trial 0 is the entry as shipped (the baseline). Every trial trains with one seed (``--seed``, 100 by default: the
campaigns evaluate seeds 0 to 4) for ``--steps`` steps, is evaluated as ``learning.py`` evaluates (deterministic
policy, the evaluation env seeded with seed + 10,000) at ``--evaluations`` points, and is scored by its last
evaluation; Optuna's median pruner stops a trial below the median of the others at the same point. TPE sampler,
seeded. One process, one torch thread.

The study is kept in a journal file beside the report (``results/tune/<algo>_<env>.log``, text, resumable: run
the command again to add trials), and the report (``results/tune/<algo>_<env>.md``) lists every trial. A result
goes into the zoo file by hand, as a hyperparameter, with a comment naming the report; it becomes the shipped
entry only after the campaign's evaluation seeds have run with it.

    python benchmarks/tune.py --env HalfCheetah-v5 --trials 16 --steps 300000 --commit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from common import DEFAULT_RESULTS_DIR, commit_files, git_commit, set_single_thread, source_fingerprint, versions, write_text
from hyperparams import make_env, make_model, run_settings
from learning import EVAL_SEED_OFFSET, Recorder

PENALTY_DEFAULTS = {"beta": 1.0, "kl_tolerance": 1.5, "beta_factor": 2.0, "policy_optimizer": "natural"}
TRPO_DEFAULT_TARGET_KL = 0.01


def penalty_space(trial: optuna.Trial) -> dict[str, Any]:
    """TRPOPenalty's own settings, as the module docstring bounds them."""
    return {
        "target_kl": trial.suggest_float("target_kl", 0.003, 0.1, log=True),
        "beta": trial.suggest_float("beta", 0.1, 10.0, log=True),
        "kl_tolerance": trial.suggest_float("kl_tolerance", 1.2, 3.0),
        "beta_factor": trial.suggest_float("beta_factor", 1.2, 4.0),
        "policy_optimizer": trial.suggest_categorical("policy_optimizer", ["natural", "first_order"]),
    }


def shipped(algo: str, env_id: str) -> dict[str, Any]:
    """The entry's values of the searched settings (the constructor's defaults where the entry is silent)."""
    kwargs = run_settings(algo, env_id).algo_kwargs
    values = {"target_kl": kwargs.get("target_kl", TRPO_DEFAULT_TARGET_KL), **PENALTY_DEFAULTS}
    return {name: kwargs.get(name, value) for name, value in values.items()}


class PruningRecorder(Recorder):
    """``learning.py``'s evaluations, each reported to the trial; a trial the pruner stops ends there."""

    def __init__(self, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial = trial

    def _evaluate(self, episodes: int | None, steps: int | None = None) -> list[float]:
        returns = super()._evaluate(episodes, steps)
        step = int(self.num_timesteps)
        if 0 < step < self.model._total_timesteps:  # the points along training, not the final evaluation
            self.trial.report(float(np.mean(returns)), step)
            if self.trial.should_prune():
                raise optuna.TrialPruned()
        return returns


def objective(args: argparse.Namespace) -> Any:
    settings = run_settings(args.algo, args.env)

    def run_trial(trial: optuna.Trial) -> float:
        params = penalty_space(trial)
        model = make_model(args.algo, args.env, args.seed, **params)
        eval_seed = args.seed + EVAL_SEED_OFFSET
        recorder = PruningRecorder(
            trial,
            make_env(args.env, 1, eval_seed, settings.normalize, training=False),
            eval_seed,
            args.steps / args.evaluations,
            args.eval_episodes,
            {"episodes": args.eval_episodes, "steps": None},
        )
        model.learn(total_timesteps=args.steps, callback=recorder)
        result = recorder.result()
        trial.set_user_attr("curve", [result["eval_timesteps"], result["eval_mean"]])
        trial.set_user_attr("learn_cpu_s", result["learn_cpu_s"])
        return float(result["final_mean"])

    return run_trial


def paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    folder = args.out / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.algo}_{args.env}"
    return folder / f"{stem}.log", folder / f"{stem}.md", folder / f"{stem}.json"


def report(study: optuna.Study, args: argparse.Namespace, baseline: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The study as Markdown (every trial, best first) and as JSON."""
    trials = [trial for trial in study.trials if trial.state.is_finished()]
    done = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    ranked = sorted(done, key=lambda trial: -trial.value) + [t for t in trials if t.state != optuna.trial.TrialState.COMPLETE]
    names = list(baseline)
    lines = [
        f"# Optuna search of {args.algo}'s own settings on {args.env}",
        "",
        f"Generated by `python benchmarks/tune.py --algo {args.algo} --env {args.env}`; do not edit by hand. "
        f"Each trial: seed {args.seed}, {args.steps:,} steps, scored by the deterministic return over "
        f"{args.eval_episodes} episodes at the end; evaluations at {args.evaluations} points feed the median pruner. "
        "Trial 0 is the entry as shipped. Everything else is the zoo entry's.",
        "",
        f"| Trial | Score | State | {' | '.join(names)} |",
        "|---:|---:|---|" + "---|" * len(names),
    ]
    for trial in ranked:
        score = f"{trial.value:.1f}" if trial.value is not None else "n/a"
        cells = " | ".join(_cell(trial.params.get(name)) for name in names)
        lines.append(f"| {trial.number} | {score} | {trial.state.name.lower()} | {cells} |")
    base = next((trial for trial in done if trial.number == 0), None)
    best = ranked[0] if done else None
    if best is not None and base is not None:
        lines += [
            "",
            f"Best: trial {best.number}, {best.value:.1f}, against {base.value:.1f} for the shipped entry (trial 0), "
            "one seed each: a lead to confirm on the evaluation seeds, not a result.",
        ]
    lines += [
        "",
        f"Commit {git_commit()}; sb3_trpo source {source_fingerprint()}; "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
    ]
    data = {
        "algo": args.algo,
        "env": args.env,
        "seed": args.seed,
        "steps": args.steps,
        "evaluations": args.evaluations,
        "eval_episodes": args.eval_episodes,
        "baseline": baseline,
        "trials": [
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "params": trial.params,
                "intermediate": {str(step): value for step, value in trial.intermediate_values.items()},
                **trial.user_attrs,
            }
            for trial in trials
        ],
        "commit": git_commit(),
        "source": source_fingerprint(),
        "versions": versions(),
    }
    return "\n".join(lines) + "\n", data


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "n/a" if value is None else str(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="sb3_trpo_penalty", choices=["sb3_trpo_penalty"])
    parser.add_argument("--env", required=True)
    parser.add_argument("--trials", type=int, default=16, help="trials to add to the study (default: 16)")
    parser.add_argument("--steps", type=int, default=300_000, help="training steps of a trial (default: 300,000)")
    parser.add_argument("--seed", type=int, default=100, help="every trial's seed (default: 100, no campaign's)")
    parser.add_argument("--evaluations", type=int, default=6, help="evaluation points along a trial (default: 6)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="episodes per evaluation (default: 10)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--commit", action="store_true", help="git-commit the report after every trial")
    args = parser.parse_args(argv)
    if args.seed in range(5):
        parser.error("--seed: the campaigns evaluate seeds 0 to 4; search on another")
    for name in ("trials", "steps", "evaluations", "eval_episodes"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}: a positive integer")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_single_thread()
    journal, markdown, json_path = paths(args)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name=f"{args.algo}_{args.env}",
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    # Seeded, and seeded afresh on resuming (a sampler seeded as before would draw the first trials again).
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials), n_startup_trials=5)
    baseline = shipped(args.algo, args.env)
    if not study.trials:
        study.enqueue_trial(baseline)

    def write(study: optuna.Study, _: Any) -> None:
        text, data = report(study, args, baseline)
        write_text(markdown, text)
        write_text(json_path, json.dumps(data, indent=1) + "\n")
        if args.commit:
            commit_files([markdown, json_path, journal], f"Tuning {args.algo} on {args.env}: {len(study.trials)} trial(s)")

    study.optimize(objective(args), n_trials=args.trials, callbacks=[write], catch=())
    print(report(study, args, baseline)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
