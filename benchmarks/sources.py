"""Whether the sources behind a campaign's runs train alike: a short probe under each, compared bit for bit.

Every run stores the fingerprint of the ``sb3_trpo`` source it ran (``common.source_fingerprint``) and the commit
it ran from. A campaign that runs for days spans commits, and its report marks an environment MIXED where its runs
of our algorithms ran under several sources. Those runs belong in one table only if the sources train alike.

For each environment and algorithm of ours, and each source among its runs other than the one checked out now,
this takes the run of that source with the lowest seed, extracts its commit's ``sb3_trpo/`` (``git archive``),
checks that its fingerprint is the stored one, and trains a probe in a fresh process under it, and under the
current source: the run's stored settings (not what the zoo file says now), its seed, ``--rollouts`` rollouts,
one thread. The policy's parameters and the observation statistics after the probe must equal the current
source's bit for bit; any difference is reported with its size.

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
from common import BENCHMARKS_DIR, DEFAULT_RESULTS_DIR, run_worker, source_fingerprint, write_text

REPOSITORY = BENCHMARKS_DIR.parent
OURS_PREFIX = "sb3_trpo"  # the algorithms that run sb3_trpo's code; the others' runs carry the fingerprint by chance


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

    A group is an (environment, algorithm); its sources come in order of their first run's seed.
    """
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for run in sorted(runs, key=lambda run: (run["env"], run["algo"], run["seed"])):
        if run["algo"].startswith(OURS_PREFIX):
            group = groups.setdefault((run["env"], run["algo"]), {})
            group.setdefault(run.get("source") or "unknown", []).append(run)
    todo = [
        Probe(env, algo, source, of_source[0].get("commit"), of_source[0]["seed"], of_source[0]["settings"], len(of_source))
        for (env, algo), group in groups.items()
        for source, of_source in group.items()
        if source != current
    ]
    return todo, {key: {source: len(of_source) for source, of_source in group.items()} for key, group in groups.items()}


def shared_settings(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    """Per group of our algorithms' runs, whether all of them stored the same settings."""
    seen: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        if run["algo"].startswith(OURS_PREFIX):
            seen.setdefault((run["env"], run["algo"]), []).append(json.dumps(run["settings"], sort_keys=True))
    return {key: len(set(values)) == 1 for key, values in seen.items()}


def extract_source(commit: str, into: Path) -> Path:
    """``commit``'s ``sb3_trpo/`` under ``into`` (a directory to put first on ``PYTHONPATH``); ``into`` returned."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "sb3_trpo"], cwd=REPOSITORY, capture_output=True, check=True
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
    import importlib

    import torch as th
    from common import sb3_trpo_root, set_single_thread
    from hyperparams import make_env, settings_of
    from stable_baselines3.common.vec_env import VecNormalize

    set_single_thread()
    settings = settings_of(json.loads(settings_path.read_text(encoding="utf-8")))
    module, name = settings.described["class"].split(":")
    algorithm = getattr(importlib.import_module(module), name)
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


def largest_difference(ours: dict[str, list[float]], reference: dict[str, list[float]]) -> float:
    """The largest absolute difference over every entry of two states; inf where their names or shapes differ."""
    if ours.keys() != reference.keys() or any(len(ours[name]) != len(reference[name]) for name in ours):
        return float("inf")
    return max((float(np.max(np.abs(np.subtract(ours[name], reference[name])))) for name in ours if ours[name]), default=0.0)


def verdict(expected_source: str, probe: dict[str, Any] | None, reference: dict[str, Any]) -> tuple[str, str]:
    """(what the probe shows, its largest difference) for a source's probe against the current source's."""
    if probe is None:
        return "not rebuilt (no commit recorded, or one with uncommitted changes)", "n/a"
    if probe["source"] != expected_source:
        return f"not rebuilt (the commit's fingerprint is {probe['source']})", "n/a"
    difference = largest_difference(probe["state"], reference["state"])
    if probe["num_timesteps"] == reference["num_timesteps"] and difference == 0.0:
        return "equal, bit for bit", "0"
    return "different", f"{difference:.3g}"


def report(
    campaign: str,
    current: str,
    sources: Sources,
    shared: dict[tuple[str, str], bool],
    rows: list[tuple[Probe, str, str]],
    rollouts: int,
) -> str:
    """The Markdown report: a row per source of each group, the current one first."""
    lines = [
        f"# Sources of the `{campaign}` campaign's runs",
        "",
        f"Generated by `python benchmarks/sources.py --campaign {campaign}`; do not edit by hand.",
        "",
        "| Environment | Algorithm | Source (commit) | Runs | Settings shared by the group's runs "
        "| After the probe, against the current source | Largest difference |",
        "|---|---|---|---:|---|---|---:|",
    ]
    by_group: dict[tuple[str, str], list[tuple[Probe, str, str]]] = {}
    for row in rows:
        by_group.setdefault((row[0].env, row[0].algo), []).append(row)
    for (env, algo), group_sources in sources.items():
        share = "yes" if shared[(env, algo)] else "no"
        if current in group_sources:
            lines.append(
                f"| {env} | {algo} | {current} (current) | {group_sources[current]} | {share} | the reference | n/a |"
            )
        for probe, shows, difference in by_group.get((env, algo), []):
            lines.append(
                f"| {env} | {algo} | {probe.source} ({probe.commit or 'n/a'}) | {probe.runs} | {share} "
                f"| {shows} | {difference} |"
            )
    lines += [
        "",
        f"The current source is {current}. Probe: each source's run with the lowest seed, rebuilt from its stored "
        f"settings and seed under that source and under the current one, {rollouts} rollouts each, one torch thread, "
        "in fresh processes; compared are the policy's parameters (actor, critic, log std) and VecNormalize's "
        "statistics after the probe. Equal bit for bit: over the probe, the two sources collect the same rollouts "
        "and compute the same updates from them on these settings; code that the probe does not reach (a skipped "
        "update, say) is not compared. Runs: how many of the group's runs were made under that source.",
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

    runs = [
        json.loads(path.read_text(encoding="utf-8")) for path in sorted((args.out / "runs" / args.campaign).glob("*/*.json"))
    ]
    if not runs:
        raise SystemExit(f"no runs under {args.out / 'runs' / args.campaign}")
    current = source_fingerprint()
    todo, sources = probes(runs, current)
    references: dict[tuple[str, str, str], dict[str, Any]] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, probe in enumerate(todo):
            key = (probe.env, probe.algo, json.dumps(probe.settings, sort_keys=True) + str(probe.seed))
            if key not in references:
                references[key] = train_probe(probe, args.rollouts, None)
                if references[key]["source"] != current:
                    raise SystemExit(f"the probe's worker imported source {references[key]['source']}, not {current}")
            commit = probe.commit if probe.commit and not probe.commit.endswith("-dirty") else None
            result = None
            if commit is not None:
                result = train_probe(probe, args.rollouts, extract_source(commit, Path(tmp) / str(index)))
            shows, difference = verdict(probe.source, result, references[key])
            print(f"{probe.env} {probe.algo} {probe.source} ({probe.commit}): {shows}", flush=True)
            rows.append((probe, shows, difference))
    text = report(args.campaign, current, sources, shared_settings(runs), rows, args.rollouts)
    write_text(args.out / f"sources_{args.campaign}.md", text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
