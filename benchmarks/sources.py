"""Whether the sources behind a campaign's runs agree: a short probe under each, compared bit for bit.

Every run stores the fingerprint of the ``sb3_trpo`` source it ran (``common.source_fingerprint``) and the commit
it ran from. A campaign that runs for days spans commits, and its report marks an environment MIXED where its runs
of our algorithms ran under several sources. Those runs belong in one table if the sources compute the same
updates on their settings.

For each environment and algorithm whose class is ``sb3_trpo``'s, and each source among its runs other than the
one imported now, this takes that source's first run (by seed) with a recorded commit, extracts the commit's
``sb3_trpo/`` (``git archive``; a ``-dirty`` commit's base, which the fingerprint then has to match), checks that
its fingerprint is the stored one, and trains a probe in a fresh process under it and under the current source:
the run's stored settings (not what the zoo file says now), its seed, ``--rollouts`` rollouts, one thread. The
policy's parameters and VecNormalize's statistics after the probe must equal the current source's bit for bit;
a difference is reported with its size. The report lists the ``sb3_trpo`` files in which each source differs from
the current one: a probe shows agreement on the code it reaches, in a few updates, not on code it does not
(data-parallel training, a skipped update). Only ``sb3_trpo/`` is swapped: ``benchmarks/`` (the environments'
set-up, say) is the current one for both.

    python benchmarks/sources.py --campaign mujoco

writes ``results/sources_mujoco.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import BENCHMARKS_DIR, DEFAULT_RESULTS_DIR, git_commit, run_worker, source_fingerprint, write_text

REPOSITORY = BENCHMARKS_DIR.parent
OURS = "sb3_trpo:"  # the classes whose code the fingerprint covers; the others' runs carry it by chance


@dataclass(frozen=True)
class Probe:
    """One source of an (environment, algorithm) group, and the run whose settings and seed the probe takes."""

    env: str
    algo: str
    source: str
    commit: str | None
    seed: int
    settings: dict[str, Any]
    runs: int  # the group's runs made under this source


Sources = dict[tuple[str, str], dict[str, int]]  # (environment, algorithm) -> source -> its runs


def probes(runs: Sequence[dict[str, Any]], current: str) -> tuple[list[Probe], Sources]:
    """The probes to train (every source of our algorithms' runs but ``current``), and each group's sources.

    A group is an (environment, algorithm) of our classes; its sources come in order of their first run's seed. A
    source's probe takes its first run (by seed) with a recorded commit, else its first run (which cannot be rebuilt).
    """
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in sorted(runs, key=lambda run: (run["env"], run["algo"], run["seed"])):
        if is_ours(run):
            group = groups.setdefault((run["env"], run["algo"]), {})
            group.setdefault(run.get("source") or "unknown", []).append(run)
    todo = []
    for (env, algo), group in groups.items():
        for source, of_source in group.items():
            if source != current:
                run = next((run for run in of_source if run.get("commit")), of_source[0])
                todo.append(Probe(env, algo, source, run.get("commit"), run["seed"], run["settings"], len(of_source)))
    return todo, {key: {source: len(of_source) for source, of_source in group.items()} for key, group in groups.items()}


def is_ours(run: dict[str, Any]) -> bool:
    """Whether ``run`` ran one of ``sb3_trpo``'s classes (the code its fingerprint covers)."""
    return str(run["settings"].get("class", "")).startswith(OURS)


def shared_settings(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    """Per group of our algorithms' runs, whether all of them stored the same settings."""
    seen: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        if is_ours(run):
            seen.setdefault((run["env"], run["algo"]), []).append(json.dumps(run["settings"], sort_keys=True))
    return {key: len(set(values)) == 1 for key, values in seen.items()}


def base_commit(commit: str) -> str:
    """The commit a run recorded, without ``git describe``'s ``-dirty`` (its tree is then checked by its fingerprint)."""
    return commit.removesuffix("-dirty")


def differing_files(commit: str) -> list[str]:
    """The ``sb3_trpo`` Python files in which ``commit`` differs from the working tree."""
    names = subprocess.run(
        ["git", "diff", "--name-only", base_commit(commit), "--", "sb3_trpo"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(name.removeprefix("sb3_trpo/") for name in names if name.endswith(".py"))


def extract_source(commit: str, into: Path) -> Path:
    """``commit``'s ``sb3_trpo/`` under ``into``, the directory to put first on ``PYTHONPATH``, which it returns."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", base_commit(commit), "sb3_trpo"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def train_probe(probe: Probe, rollouts: int, source_root: Path | None) -> dict[str, Any]:
    """The probe trained in a fresh process under ``source_root``'s ``sb3_trpo`` (None: the one installed now)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Path(tmp) / "settings.json"
        settings.write_text(json.dumps(probe.settings), encoding="utf-8")
        args = ["--probe", probe.env, "--settings", str(settings), "--seed", str(probe.seed), "--rollouts", str(rollouts)]
        return run_worker(Path(__file__), args, pythonpath=source_root)


def probe_worker(env_id: str, settings_path: Path, seed: int, rollouts: int) -> dict[str, Any]:
    """Build the run from its stored settings, train ``rollouts`` rollouts, return what to compare."""
    import torch as th
    from common import sb3_trpo_root, set_single_thread
    from hyperparams import Algorithm, make_env, settings_of
    from stable_baselines3.common.vec_env import VecNormalize

    set_single_thread()
    settings = settings_of(json.loads(settings_path.read_text(encoding="utf-8")))
    algorithm = Algorithm(settings.described["class"], settings.described["zoo_file"]).load_class()
    env = make_env(env_id, settings.n_envs, seed, settings.normalize)
    model = algorithm(settings.policy, env, seed=seed, device="cpu", **settings.algo_kwargs)
    model.learn(total_timesteps=rollouts * model.n_steps * settings.n_envs)
    state = {name: tensor.detach().double().flatten() for name, tensor in model.policy.state_dict().items()}
    if isinstance(env, VecNormalize):
        state["obs_rms.mean"] = th.as_tensor(env.obs_rms.mean, dtype=th.float64).flatten()
        state["obs_rms.var"] = th.as_tensor(env.obs_rms.var, dtype=th.float64).flatten()
        state["ret_rms.var"] = th.as_tensor(np.atleast_1d(env.ret_rms.var), dtype=th.float64)
    return {
        "source": source_fingerprint(),
        "root": str(sb3_trpo_root()),
        "num_timesteps": int(model.num_timesteps),
        "state": {name: values.tolist() for name, values in state.items()},
    }


def comparable(ours: dict[str, list[float]], reference: dict[str, list[float]]) -> bool:
    """Whether two states hold the same names with the same sizes."""
    return ours.keys() == reference.keys() and all(len(ours[name]) == len(reference[name]) for name in ours)


def bitwise_equal(ours: dict[str, list[float]], reference: dict[str, list[float]]) -> bool:
    """Every entry of two states the same float64 bits (NaN equal to the same NaN, -0.0 not equal to 0.0)."""
    return comparable(ours, reference) and all(
        np.asarray(ours[name], dtype=np.float64).tobytes() == np.asarray(reference[name], dtype=np.float64).tobytes()
        for name in ours
    )


def largest_difference(ours: dict[str, list[float]], reference: dict[str, list[float]]) -> float:
    """The largest absolute difference over every entry of two states; inf where one is NaN and the other is not,
    or where their names or sizes differ."""
    if not comparable(ours, reference):
        return float("inf")
    largest = 0.0
    for name in ours:
        a, b = np.asarray(ours[name], dtype=np.float64), np.asarray(reference[name], dtype=np.float64)
        difference = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        largest = max(largest, float(np.nan_to_num(difference, nan=np.inf).max(initial=0.0)))
    return largest


def verdict(expected_source: str, result: dict[str, Any] | None, reference: dict[str, Any]) -> tuple[str, str]:
    """(what a source's probe shows, its largest difference) against the current source's probe ``reference``."""
    if result is None:
        return "not rebuilt (no commit recorded)", "n/a"
    if result["source"] != expected_source:
        return f"not rebuilt (the commit's fingerprint is {result['source']})", "n/a"
    if result["num_timesteps"] == reference["num_timesteps"] and bitwise_equal(result["state"], reference["state"]):
        return "equal, bit for bit", "0"
    return "different", f"{largest_difference(result['state'], reference['state']):.3g}"


def report(
    campaign: str,
    current: str,
    sources: Sources,
    shared: dict[tuple[str, str], bool],
    rows: list[tuple[Probe, str, str, list[str]]],
    rollouts: int,
    commit: str | None,
) -> str:
    """The Markdown report: a row per source of each group, the current one first."""
    lines = [
        f"# Sources of the `{campaign}` campaign's runs",
        "",
        f"Generated by `python benchmarks/sources.py --campaign {campaign}`; do not edit by hand.",
        "",
        "| Environment | Algorithm | Source (commit) | Runs | Settings shared by the group's runs "
        "| After the probe, against the current source | Largest difference | sb3_trpo files that differ |",
        "|---|---|---|---:|---|---|---:|---|",
    ]
    by_group: dict[tuple[str, str], list[tuple[Probe, str, str, list[str]]]] = {}
    for row in rows:
        by_group.setdefault((row[0].env, row[0].algo), []).append(row)
    for (env, algo), group_sources in sources.items():
        share = "yes" if shared[(env, algo)] else "no"
        if current in group_sources:
            lines.append(
                f"| {env} | {algo} | {current} (current) | {group_sources[current]} | {share} | the reference | n/a | none |"
            )
        for probe, shows, difference, files in by_group.get((env, algo), []):
            lines.append(
                f"| {env} | {algo} | {probe.source} ({probe.commit or 'n/a'}) | {probe.runs} | {share} "
                f"| {shows} | {difference} | {', '.join(files) if files else 'n/a'} |"
            )
    lines += [
        "",
        f"The current source is {current} (commit {commit or 'unknown'}). Probe: each source's first run (by seed) "
        "with a recorded commit, rebuilt from its stored settings and seed under that source and under the current "
        f"one, {rollouts} rollouts each, one torch thread, "
        "in fresh processes; compared are the policy's parameters (actor, critic, log std) and VecNormalize's "
        "statistics after the probe. Equal bit for bit: over the probe, the two sources collect the same rollouts "
        "and compute the same updates from them on these settings; code that the probe does not reach (a skipped "
        "update, data-parallel training) is not compared, which the last column helps to judge: the files in "
        "which the source differs from the current one. Only `sb3_trpo/` is swapped; `benchmarks/` is the current "
        "one for both. Runs: how many of the group's runs were made under that source.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--campaign", default="mujoco", help="the runs of results/runs/<campaign>/")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts (and updates) per probe")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # worker: the environment
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rollouts < 1:
        parser.error(f"--rollouts must be an integer >= 1, got {args.rollouts}")
    if args.probe:
        result = probe_worker(args.probe, args.settings, args.seed, args.rollouts)
        args.worker_output.write_text(json.dumps(result), encoding="utf-8")
        return

    from learning import load_runs

    runs = load_runs(args.out, args.campaign)
    if not runs:
        raise SystemExit(f"no runs under {args.out / 'runs' / args.campaign}")
    current = source_fingerprint()
    todo, sources = probes(runs, current)
    references: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, probe in enumerate(todo):
            key = (probe.env, probe.algo, json.dumps(probe.settings, sort_keys=True), probe.seed)
            if key not in references:
                references[key] = train_probe(probe, args.rollouts, None)
                if references[key]["source"] != current:
                    raise SystemExit(f"the probe's worker imported source {references[key]['source']}, not {current}")
            result, files = None, []
            if probe.commit:
                root = extract_source(probe.commit, Path(tmp) / str(index))
                result = train_probe(probe, args.rollouts, root)
                if not Path(result["root"]).is_relative_to(root.resolve()):
                    raise SystemExit(f"the probe's worker imported sb3_trpo from {result['root']}, not from {root}")
                files = differing_files(probe.commit)
            shows, difference = verdict(probe.source, result, references[key])
            print(f"{probe.env} {probe.algo} {probe.source} ({probe.commit}): {shows}", flush=True)
            rows.append((probe, shows, difference, files))
    text = report(args.campaign, current, sources, shared_settings(runs), rows, args.rollouts, git_commit())
    write_text(args.out / f"sources_{args.campaign}.md", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
