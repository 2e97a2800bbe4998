"""A short Optuna search of TRPOPenalty's own settings on one task, on seeds the campaigns do not evaluate.

The MuJoCo entries of ``trpo_penalty.yml`` are ``trpo.yml``'s: rl-zoo tuned them for TRPO's constraint. Where they
leave TRPOPenalty clearly behind, this searches what the penalty adds, keeping everything else of the entry.
"Clearly behind", fixed before the campaign's penalty seeds 1 and 2 finished: on the seeds both ran (at least 3),
TRPOPenalty's mean final return in the ``mujoco`` campaign is below our TRPO's and the 95% bootstrap interval
of the difference (``learning.compare_to_reference``) lies below 0. The search:

- ``target_kl`` (the KL that β steers towards), log-uniform in [0.003, 0.1];
- ``beta``, the initial coefficient, log-uniform in [0.1, 10];
- ``kl_tolerance``, the band around ``target_kl`` in which β stays, in [1.2, 3];
- ``beta_factor``, β's change outside the band, in [1.2, 4];
- ``policy_optimizer``, ``"natural"`` or ``"first_order"``.

Trial 0 is the entry as shipped (the baseline). Every trial trains with one seed (``--seed``, 100 by default: the
campaigns evaluate seeds 0 to 4) for ``--steps`` steps, is evaluated as ``learning.py`` evaluates (deterministic
policy, the evaluation env seeded with seed + 10,000) at ``--evaluations`` points (step 0 included) and at the
end, and is scored (``--score``) by the end's (``final``) or by the mean of the evaluations of its second half,
the end's included (``late``: several evaluations rather than one, for a task whose returns move slowly); from a
third of the way on (``late``: from half), Optuna's median pruner stops a trial whose evaluation falls below the
median of the earlier trials at the same point. TPE sampler, seeded. One process, one torch thread.

The study is kept in a journal file beside the report (``results/tune/<algo>_<env>[_<label>].log``, text,
resumable: the same command adds trials; other ``--steps``, ``--seed``, ``--score`` or evaluation options are
refused; a new protocol for a task takes a ``--label``), and the report (``results/tune/<algo>_<env>[_<label>].md``,
``--report-only`` rebuilds it) lists every trial. A result
goes into the zoo file by hand, as a hyperparameter, with a comment naming the report. The rule, written down
while the first searches were still running: the best complete trial replaces the entry's searched settings if
it scores above the baseline trial, else the entry stays as it is (the comment says so); the decision reads the
study only, never the evaluation seeds, which then run whatever entry ships and are reported as they come.

    python benchmarks/tune.py --env HalfCheetah-v5 --trials 16 --steps 300000 --commit

Ant-v5's second study, its protocol fixed before any of its trials ran: the first (300,000 steps, scored at the
end) was suspended after 4 trials, which all ended near 0, the shipped entry's included; every Ant-v5 run of the
``mujoco`` campaign falls from its untrained return (about 1,000, standing still) to near 0 in its first 50,000
steps, and our TRPO's climb back only from about 400,000. So: 600,000 steps, 12 evaluation points (every
50,000), scored by the late mean (7 evaluations, 300,000 to the end), seed 100, 12 trials:

    python benchmarks/tune.py --env Ant-v5 --label late600k --steps 600000 --evaluations 12 --score late --trials 12 --commit

Swimmer-v5's study, its protocol fixed before its first trial, once the campaign's third TRPOPenalty seed left it
clearly behind: HalfCheetah-v5's protocol (300,000 steps, 6 evaluation points, scored at the end, seed 100), with
10 trials (the time its session had left). A Swimmer-v5 run's final return falls in one of two groups (near 130,
or near the published 366) by 300,000 steps, on TRPO's runs as on sb3-contrib's:

    python benchmarks/tune.py --env Swimmer-v5 --trials 10 --steps 300000 --commit
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from common import DEFAULT_RESULTS_DIR, commit_files, git_commit, set_single_thread, source_fingerprint, versions, write_text
from hyperparams import ALGORITHMS, make_model, run_settings
from learning import Recorder, evaluating_recorder

SEARCHED = ("target_kl", "beta", "kl_tolerance", "beta_factor", "policy_optimizer")
# What a study's trials must share: a resumed study with other values would mix unlike trials.
STUDY_OPTIONS = ("seed", "steps", "evaluations", "eval_episodes", "score")
SCORES = ("final", "late")


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
    """The entry's values of the searched settings; the constructor's defaults where the entry is silent."""
    kwargs = run_settings(algo, env_id).algo_kwargs
    defaults: dict[str, Any] = {}
    for cls in reversed(ALGORITHMS[algo].load_class().__mro__):  # TRPOPenalty passes TRPO's through **kwargs
        if "__init__" in vars(cls):
            parameters = inspect.signature(cls.__init__).parameters.values()
            defaults.update({p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty})
    return {name: kwargs.get(name, defaults[name]) for name in SEARCHED}


class PruningRecorder(Recorder):
    """``learning.py``'s evaluations; those along training after step 0 go to the trial, whose pruner may stop it."""

    def __init__(self, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial = trial
        self.training = True

    def _on_training_end(self) -> None:
        self.training = False  # the final evaluation follows: the trial's score, not a point to prune at
        super()._on_training_end()

    def _evaluate(self, episodes: int | None, steps: int | None = None) -> list[float]:
        returns = super()._evaluate(episodes, steps)
        if self.training and self.num_timesteps > 0:
            self.trial.report(float(np.mean(returns)), int(self.num_timesteps))
            if self.trial.should_prune():
                raise optuna.TrialPruned()
        return returns


def objective(args: argparse.Namespace) -> Any:
    def run_trial(trial: optuna.Trial) -> float:
        trial.set_user_attr("source", source_fingerprint())  # of the code that runs the trial, pruned or not
        model = make_model(args.algo, args.env, args.seed, **penalty_space(trial))
        final = {"episodes": args.eval_episodes, "steps": None}
        recorder = evaluating_recorder(
            args.algo,
            args.env,
            args.seed,
            args.steps / args.evaluations,
            args.eval_episodes,
            final,
            functools.partial(PruningRecorder, trial),
        )
        try:
            model.learn(total_timesteps=args.steps, callback=recorder)
        finally:
            recorder.eval_env.close()
            model.get_env().close()
        result = recorder.result()
        trial.set_user_attr("curve", [result["eval_timesteps"], result["eval_mean"]])
        trial.set_user_attr("learn_cpu_s", result["learn_cpu_s"])
        return trial_score(result, args.score, args.steps)

    return run_trial


def trial_score(result: dict[str, Any], kind: str, steps: int) -> float:
    """A complete trial's score: its final return (``final``), or the mean of its evaluations from half of
    ``steps`` on (``late``), the final one included (the recorder's curve ends with it)."""
    if kind == "final":
        return float(result["final_mean"])
    points = list(zip(result["eval_timesteps"], result["eval_mean"], strict=True))
    if points[-1][1] != result["final_mean"]:
        raise ValueError("the curve does not end with the final evaluation")
    return float(np.mean([value for step, value in points if step >= steps / 2]))


def prune_from(args: argparse.Namespace) -> int:
    """The first step at which the median pruner may stop a trial: a third of the way, or half with the late score."""
    return args.steps // 2 if args.score == "late" else args.steps // 3


def paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    folder = args.out / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.algo}_{args.env}" + (f"_{args.label}" if args.label else "")
    return folder / f"{stem}.log", folder / f"{stem}.md", folder / f"{stem}.json"


def command(args: argparse.Namespace) -> str:
    options = " ".join(f"--{name.replace('_', '-')} {getattr(args, name)}" for name in STUDY_OPTIONS)
    label = f" --label {args.label}" if args.label else ""
    return f"python benchmarks/tune.py --algo {args.algo} --env {args.env}{label} {options}"


def score(trial: optuna.trial.FrozenTrial) -> str:
    """A complete trial's score; where a pruned one stopped (Optuna keeps its last evaluation as its value)."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return f"{trial.value:.1f}"
    if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"pruned at {step:,} ({trial.intermediate_values[step]:.1f})"
    return "n/a"


SCORE_TEXT = {"final": "the evaluation at the end", "late": "the mean of the evaluations from half of its steps to the end"}


def report(study: optuna.Study, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The study as Markdown (complete trials best first, then the others) and as JSON."""
    trials = [trial for trial in study.trials if trial.state.is_finished()]
    done = sorted(
        (trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE), key=lambda trial: -trial.value
    )
    others = [trial for trial in trials if trial.state != optuna.trial.TrialState.COMPLETE]
    lines = [
        f"# Optuna search of {args.algo}'s own settings on {args.env}",
        "",
        f"Generated by `{command(args)} --report-only`; do not edit by hand. Each trial: seed {args.seed}, "
        f"{args.steps:,} steps, scored by {SCORE_TEXT[args.score]} (the deterministic return over {args.eval_episodes} "
        f"episodes); its evaluations after step 0 ({args.evaluations - 1} along training) feed the median pruner from "
        f"step {prune_from(args):,} on. The shipped entry is marked (baseline). The other settings are the zoo entry's.",
        "",
        f"| Trial | Score | State | {' | '.join(SEARCHED)} |",
        "|---:|---:|---|" + "---|" * len(SEARCHED),
    ]
    for trial in done + others:
        cells = " | ".join(_cell(trial.params.get(name)) for name in SEARCHED)
        name = f"{trial.number}{' (baseline)' if trial.user_attrs.get('baseline') else ''}"
        lines.append(f"| {name} | {score(trial)} | {trial.state.name.lower()} | {cells} |")
    base = next((trial for trial in done if trial.user_attrs.get("baseline")), None)
    if done and base is not None:
        best = done[0]
        verdict = (
            f"The shipped entry (trial {base.number}) scores best of the {len(done)} complete trials."
            if best is base
            else f"Best of the {len(done)} complete trials: trial {best.number}, {best.value:.1f}, against "
            f"{base.value:.1f} for the shipped entry (trial {base.number}), one seed each."
        )
        verdict += (
            " By `tune.py`'s rule, the best trial of a finished study replaces the entry's settings where it is not "
            "the shipped entry."
        )
        lines += ["", verdict]
    provenance = {"commit": git_commit(), "source": source_fingerprint(), "versions": versions()}
    ran = sorted({str(trial.user_attrs.get("source", "not recorded")) for trial in trials})
    lines += [
        "",
        f"sb3_trpo source of the trials: {', '.join(ran)}.",
        f"Report built at commit {provenance['commit']}, sb3_trpo source {provenance['source']}; "
        + ", ".join(f"{key} {value}" for key, value in provenance["versions"].items())
        + ".",
    ]
    data = {
        "algo": args.algo,
        "env": args.env,
        "label": args.label,
        **{name: getattr(args, name) for name in STUDY_OPTIONS},
        "baseline": shipped(args.algo, args.env),
        "trials": [
            {
                "number": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
                "params": trial.params,
                "intermediate": {str(step): value for step, value in trial.intermediate_values.items()},
                **trial.user_attrs,
            }
            for trial in trials
        ],
        **provenance,
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
    parser.add_argument("--score", default="final", choices=SCORES, help="a trial's score (default: final)")
    parser.add_argument("--label", default="", help="names a task's second study: its files end in _<label>")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--commit", action="store_true", help="git-commit the report after every trial")
    parser.add_argument("--report-only", action="store_true", help="run no trial: rebuild the report from the journal")
    args = parser.parse_args(argv)
    if args.seed in range(5):
        parser.error("--seed: the campaigns evaluate seeds 0 to 4; search on another")
    for name in ("trials", "steps", "evaluations", "eval_episodes"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}: a positive integer")
    if args.label and not re.fullmatch(r"[A-Za-z0-9_-]+", args.label):
        parser.error("--label: letters, digits, '-' and '_'")
    return args


def open_study(args: argparse.Namespace, journal: Path) -> optuna.Study:
    """The study of ``journal``, new or resumed; a ``ValueError`` where it was run with other options."""
    if args.report_only and not journal.exists():
        raise ValueError(f"{journal} holds no study: nothing to report")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    name, pruner = f"{args.algo}_{args.env}", optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=prune_from(args))
    try:  # loaded, not created again: a create_study(load_if_exists=True) would append to the journal
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    except KeyError:
        if args.report_only:
            raise ValueError(f"{journal} holds no study {name!r}: nothing to report") from None
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)
    options = {name: getattr(args, name) for name in STUDY_OPTIONS}
    if not study.user_attrs:
        for name, value in options.items():
            study.set_user_attr(name, value)
    recorded = {"score": "final"} | study.user_attrs  # the studies from before --score were all scored at the end
    if recorded != options:
        raise ValueError(f"{journal} holds a study run with {recorded}, not {options}: resume it with those")
    # Seeded, and seeded afresh on resuming (a sampler seeded as before would draw the first trials again).
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials), n_startup_trials=5)
    return study


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_single_thread()
    journal, markdown, json_path = paths(args)
    study = open_study(args, journal)

    def write(study: optuna.Study, _: Any = None) -> None:
        text, data = report(study, args)
        write_text(markdown, text)
        write_text(json_path, json.dumps(data, indent=1) + "\n")
        if args.commit:
            study_name = f"{args.env} ({args.label})" if args.label else args.env
            commit_files([markdown, json_path, journal], f"Tuning {args.algo} on {study_name}: {len(study.trials)} trial(s)")

    if args.report_only:
        write(study)
        return 0
    # The shipped entry first; queued again while no run of it has a score or waits (one was interrupted or failed).
    kept = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
    if not any(trial.user_attrs.get("baseline") and trial.state in kept for trial in study.trials):
        study.enqueue_trial(shipped(args.algo, args.env), user_attrs={"baseline": True})
    study.optimize(objective(args), n_trials=args.trials, callbacks=[write], catch=())
    print(report(study, args)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
