"""The benchmarks' report arithmetic (``benchmarks/learning.py``, ``tune.py``, ``scaling.py``), on hand-made runs
with exact answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from learning import (
    best_evaluation,
    compare_to_reference,
    curve_table,
    kl_table,
    mean_interval,
    penalty_table,
    published_table,
    time_to_target,
)
from scaling import bounds_report, same_batch_bounds


def run(seed: int, curve: list[float], final: float, steps: list[int] | None = None) -> dict:
    steps = steps if steps is not None else [1000 * index for index in range(len(curve))]
    return {
        "seed": seed,
        "eval_timesteps": steps,
        "eval_mean": curve,
        "final_mean": final,
        "eval_cpu_s": [10.0 * index for index in range(len(curve))],
    }


def test_best_evaluation_is_the_first_highest_point_of_the_curve() -> None:
    assert best_evaluation(run(0, [1.0, 5.0, 3.0, 5.0], final=2.0)) == (5.0, 1000)
    assert best_evaluation(run(0, [7.0, 5.0, 3.0], final=2.0)) == (7.0, 0)


def test_curve_table_gives_untrained_return_best_point_and_final_over_best() -> None:
    groups = {
        "Task-v0": {
            ("ours", 3000): [run(0, [10.0, 40.0, 30.0, 20.0], final=20.0), run(1, [30.0, 50.0, 60.0, 60.0], final=45.0)],
            ("never_learns", 3000): [run(0, [-4.0, -9.0, -6.0, -5.0], final=-5.0)],
        }
    }
    rows = curve_table(groups).splitlines()
    assert rows[2] == "| Task-v0 | ours | 3,000 | 20.0 | 40.0 (1k), 60.0 (2k) | 0.50, 0.75 |"
    # the best is at step 0 and negative: no ratio
    assert rows[3] == "| Task-v0 | never_learns | 3,000 | -4.0 | -4.0 (0k) | n/a |"
    assert curve_table({"Task-v0": {("ours", 3000): [run(0, [], final=1.0, steps=[])]}}) == ""


def test_mean_interval_is_students_t_over_the_seeds() -> None:
    # mean 2, sample standard deviation √(2/3), 4 seeds: 2 ± 3.182 · √(2/3) / 2
    half = 3.182 * np.sqrt(2 / 3) / 2
    assert mean_interval([1.0, 2.0, 2.0, 3.0]) == pytest.approx((2.0, 2 - half, 2 + half))
    # one more seed: 2 ± 3.182 · √(2/3) · √(1 + 1/4)
    half = 3.182 * np.sqrt(2 / 3) * np.sqrt(5 / 4)
    assert mean_interval([1.0, 2.0, 2.0, 3.0], one_seed=True) == pytest.approx((2.0, 2 - half, 2 + half))
    # 3 seeds: t with 2 degrees of freedom; 20 seeds: the table's last row, wider than the truth
    assert mean_interval([1.0, 2.0, 3.0]) == pytest.approx((2.0, 2 - 4.303 / np.sqrt(3), 2 + 4.303 / np.sqrt(3)))
    assert mean_interval([0.0, 2.0] * 10)[2] == pytest.approx(1.0 + 2.228 * np.std([0.0, 2.0] * 10, ddof=1) / np.sqrt(20))
    with pytest.raises(ValueError, match="at least 3 values, got 2"):
        mean_interval([1.0, 2.0])


def test_published_table_says_below_within_or_above_and_tells_lost_from_never_reached() -> None:
    # Hopper's published figure is 3618.4. Lost: each seed reached it along the curve, then fell to half.
    # Finals 1800, 1801, 1802 (s = 1): the mean's interval 1801 ± 4.303/√3, one seed's 1801 ± 4.303·√(4/3).
    lost = [run(seed, [0.0, 3618.386, 1800.0], final=1800.0 + seed) for seed in range(3)]
    # Never reached: a tenth of it, and kept; and a run that did not reach the published budget (no row).
    never = [run(seed, [0.0, 361.8386], final=361.8386) for seed in range(3)]
    # A mean near the figure and a wide spread: 3533.3 ± 4.303 · 1501.1 / √3, and ± 4.303 · 1501.1 · √(4/3)
    within = [run(seed, [0.0, 3700.0], final=value) for seed, value in enumerate((2000.0, 3600.0, 5000.0))]
    above = [run(seed, [0.0, 9002.0], final=9000.0 + seed) for seed in range(3)]
    # A seed whose best is not positive has no final/best: the median of 0.5 and 0.7, not of 0.5, 0.7 and 1
    mixed = [run(0, [0.0, 1000.0], final=500.0), run(1, [0.0, 1000.0], final=700.0), run(2, [-10.0, -5.0], final=-5.0)]
    groups = {
        "Hopper-v5": {
            ("lost", 1_000_000): lost,
            ("never", 1_000_000): never,
            ("within", 1_000_000): within,
            ("above", 1_000_000): above,
            ("mixed", 1_000_000): mixed,
            ("few", 1_000_000): lost[:2],
            ("short", 300_000): lost,
        },
        "CartPole-v1": {("lost", 1_000_000): lost},  # no published figure: no row
    }
    table = published_table(groups).splitlines()
    rows = [row for row in table if row.startswith("| Hopper-v5")]
    assert rows == [
        "| Hopper-v5 | lost | 1801.0 [1798.5, 1803.5] (3) | [1796.0, 1806.0] | 3618.4 | mean below, one seed below "
        "| 1.00 | 0.50 |",
        "| Hopper-v5 | never | 361.8 [361.8, 361.8] (3) | [361.8, 361.8] | 3618.4 | mean below, one seed below "
        "| 0.10 | 1.00 |",
        "| Hopper-v5 | within | 3533.3 [-195.9, 7262.6] (3) | [-3925.2, 10991.9] | 3618.4 | mean within, one seed within "
        "| 1.02 | 0.97 |",
        "| Hopper-v5 | above | 9001.0 [8998.5, 9003.5] (3) | [8996.0, 9006.0] | 3618.4 | mean above, one seed above "
        "| 2.49 | 1.00 |",
        "| Hopper-v5 | mixed | 398.3 [-504.3, 1301.0] (3) | [-1406.9, 2203.6] | 3618.4 | mean below, one seed below "
        "| 0.28 | 0.60 |",
        "| Hopper-v5 | few | 1800.5 (2) | n/a | 3618.4 | n/a | 1.00 | 0.50 |",
    ]
    assert not any("CartPole" in row for row in table)
    assert published_table({"CartPole-v1": {("lost", 1_000_000): lost}}) == ""


def test_kl_table_gives_the_first_update_and_the_settled_kl_against_target_kl() -> None:
    def traced(kl: list[float], beta: list[float] | None = None) -> dict:
        return {**run(0, [1.0], 1.0), "target_kl": 0.01, "trace": {"kl": kl, **({"beta": beta} if beta else {})}}

    groups = {
        "Task-v0": {
            ("penalty", 100): [traced([0.1, 0.04, 0.01, 0.02, 0.005], beta=[2.0, 4.0, 4.0, 2.0, 1.0])],
            ("constraint", 100): [traced([0.004, 0.006, 0.008, 0.008])],
        }
    }
    rows = kl_table(groups).splitlines()
    # second half: [0.01, 0.02, 0.005] (median 0.01) and [0.008, 0.008]
    assert rows[2] == "| Task-v0 | penalty | 10.00 | 1.00 | 1 |"
    assert rows[3] == "| Task-v0 | constraint | 0.40 | 0.80 | n/a |"
    assert kl_table({"Task-v0": {("constraint", 100): [traced([0.004])]}}) == ""  # no penalty run, no table


def test_penalty_table_says_clearly_behind_only_with_3_seeds_and_the_interval_below_0() -> None:
    def runs(*finals: float) -> list[dict]:
        return [run(seed, [], final) for seed, final in enumerate(finals)]

    groups = {
        "Behind-v0": {("sb3_trpo", 10): runs(10.0, 11.0, 12.0), ("sb3_trpo_penalty", 10): runs(1.0, 2.0, 3.0)},
        "Overlap-v0": {("sb3_trpo", 10): runs(10.0, 11.0, 12.0), ("sb3_trpo_penalty", 10): runs(1.0, 2.0, 30.0)},
        "Few-v0": {("sb3_trpo", 10): runs(10.0, 11.0), ("sb3_trpo_penalty", 10): runs(1.0, 2.0)},
        "Alone-v0": {("sb3_trpo_penalty", 10): runs(1.0, 2.0, 3.0)},
    }
    rows = {
        row.split(" | ")[0][2:]: row.split(" | ")[1:] for row in penalty_table(groups).splitlines()[2:] if row.startswith("| ")
    }
    assert sorted(rows) == ["Behind-v0", "Few-v0", "Overlap-v0"]  # no TRPO on Alone-v0: no row

    def difference(cell: str) -> tuple[float, float, float, int]:  # "-9.0 [-10.3, -7.7] (3)"
        mean, interval, seeds = cell.split(" ", 1)[0], cell[cell.index("[") + 1 : cell.index("]")], cell.split("(")[1]
        low, high = (float(value) for value in interval.split(", "))
        return float(mean), low, high, int(seeds.rstrip(")"))

    mean, low, high, seeds = difference(rows["Behind-v0"][1])
    assert (mean, seeds, rows["Behind-v0"][2]) == (-9.0, 3, "yes |")
    assert -11.0 <= low < high < 0  # every resampled difference is negative
    mean, low, high, seeds = difference(rows["Overlap-v0"][1])
    assert (mean, seeds, rows["Overlap-v0"][2]) == (0.0, 3, "no |")
    assert low < 0 < high
    assert difference(rows["Few-v0"][1])[::3] == (-9.0, 2)
    assert rows["Few-v0"][2] == "n/a |"  # fewer than 3 seeds: no verdict


def test_compare_to_reference_on_the_seeds_both_ran() -> None:
    ours = [run(0, [], 10.0), run(1, [], 20.0), run(2, [], 99.0)]
    theirs = [run(0, [], 5.0), run(1, [], 5.0)]
    comparison = compare_to_reference(ours, theirs)
    assert comparison["seeds"] == 2
    assert comparison["ratio"] == pytest.approx(3.0)
    assert comparison["difference"] == pytest.approx(10.0)
    low, high = comparison["interval"]
    assert 5.0 <= low <= 10.0 <= high <= 15.0  # ours resample among {10, 20}, theirs are always 5
    assert compare_to_reference(ours, None)["seeds"] == 0


def test_time_to_target_is_the_first_evaluation_that_reaches_it() -> None:
    curve = run(0, [0.0, 50.0, 120.0, 90.0, 130.0], final=100.0)
    assert time_to_target(curve, 100.0) == (2000, 20.0)
    assert time_to_target(curve, 200.0) is None


def test_a_diagnostic_variant_is_its_task_with_other_arguments_and_the_same_zoo_entry() -> None:
    from hyperparams import VARIANTS, make_env, zoo_entry

    assert VARIANTS["AntNoContactObs-v5"] == ("Ant-v5", {"include_cfrc_ext_in_observation": False})
    assert zoo_entry("sb3_trpo", "AntNoContactObs-v5") == zoo_entry("sb3_trpo", "Ant-v5")
    variant, task = make_env("AntNoContactObs-v5", 1, 0, None), make_env("Ant-v5", 1, 0, None)
    assert variant.observation_space.shape == (27,)  # Ant-v4's observation: no contact forces
    assert task.observation_space.shape == (105,)
    assert variant.envs[0].spec.max_episode_steps == task.envs[0].spec.max_episode_steps == 1000
    variant.close()
    task.close()


def test_the_penalty_search_starts_from_the_shipped_entry_and_refuses_evaluation_seeds() -> None:
    import tune

    assert tune.shipped("sb3_trpo_penalty", "HalfCheetah-v5") == {
        "target_kl": 0.04,  # the entry's
        "beta": 1.0,  # TRPOPenalty's defaults, where the entry is silent
        "kl_tolerance": 1.5,
        "beta_factor": 2.0,
        "policy_optimizer": "natural",
    }
    assert tune.shipped("sb3_trpo_penalty", "Hopper-v5")["target_kl"] == 0.01  # TRPO's default
    for seed in range(5):
        with pytest.raises(SystemExit):
            tune.parse_args(["--env", "Hopper-v5", "--seed", str(seed)])
    with pytest.raises(SystemExit):
        tune.parse_args(["--env", "Hopper-v5", "--steps", "0"])


class StubTrial:
    """An Optuna trial's reporting side: records what is reported, prunes when told to."""

    def __init__(self, prune: bool) -> None:
        self.prune, self.reported = prune, []

    def report(self, value: float, step: int) -> None:
        self.reported.append(step)

    def should_prune(self) -> bool:
        return self.prune


@pytest.mark.parametrize("prune", [False, True])
def test_the_pruner_sees_the_evaluations_along_training_but_not_step_0_nor_the_final_one(prune: bool) -> None:
    import optuna
    import tune
    from hyperparams import make_env, make_model

    model = make_model("sb3_trpo_penalty", "Pendulum-v1", seed=100)  # 2 envs x 1024 steps per rollout
    trial = StubTrial(prune)
    recorder = tune.PruningRecorder(trial, make_env("Pendulum-v1", 1, 7, None, training=False), 7, 2048, 1, {"episodes": 1})
    if prune:
        with pytest.raises(optuna.TrialPruned):
            model.learn(4096, callback=recorder)
    else:
        model.learn(4096, callback=recorder)
    assert trial.reported == [2048]  # evaluated at 0, 2048 and (unpruned) 4096 at the end
    assert recorder.curve["eval_timesteps"] == ([0, 2048] if prune else [0, 2048, 4096])


def test_a_penalty_search_runs_its_baseline_first_and_resumes_with_new_draws(tmp_path: Path) -> None:
    import json

    import tune

    arguments = [
        "--env",
        "Pendulum-v1",
        "--steps",
        "2048",
        "--evaluations",
        "2",
        "--eval-episodes",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert tune.main([*arguments, "--trials", "2"]) == 0
    assert tune.main([*arguments, "--trials", "1"]) == 0
    path = tmp_path / "tune" / "sb3_trpo_penalty_Pendulum-v1.json"
    study = json.loads(path.read_text())
    trials = {trial["number"]: trial for trial in study["trials"]}
    assert sorted(trials) == [0, 1, 2]
    assert trials[0]["params"] == tune.shipped("sb3_trpo_penalty", "Pendulum-v1")
    assert [number for number, trial in trials.items() if trial.get("baseline")] == [0]  # queued once
    assert trials[1]["params"] != trials[2]["params"]  # the resumed sampler does not draw trial 1 again
    assert all(trial["state"] == "complete" and trial["value"] < 0 for trial in trials.values())
    assert "| 0 (baseline) |" in (tmp_path / "tune" / "sb3_trpo_penalty_Pendulum-v1.md").read_text()
    with pytest.raises(ValueError, match="holds a study run with"):  # other options would mix unlike trials
        tune.main([*arguments[:-2], "--out", str(tmp_path), "--steps", "4096", "--trials", "1"])
    path.unlink()
    journal = (tmp_path / "tune" / "sb3_trpo_penalty_Pendulum-v1.log").read_bytes()
    assert tune.main([*arguments, "--report-only"]) == 0  # rebuilt from the journal, no trial added
    assert len(json.loads(path.read_text())["trials"]) == 3
    assert (tmp_path / "tune" / "sb3_trpo_penalty_Pendulum-v1.log").read_bytes() == journal  # left as it was
    with pytest.raises(ValueError, match="holds no study"):
        tune.main(["--env", "CartPole-v1", "--out", str(tmp_path), "--report-only"])
    assert not (tmp_path / "tune" / "sb3_trpo_penalty_CartPole-v1.log").exists()


def test_the_search_report_names_the_verdict_of_the_adoption_rule() -> None:
    import argparse

    import optuna
    import tune

    args = argparse.Namespace(
        algo="sb3_trpo_penalty",
        env="Pendulum-v1",
        seed=100,
        steps=1000,
        evaluations=2,
        eval_episodes=1,
        score="final",
        label="",
    )
    space = {"target_kl": optuna.distributions.FloatDistribution(0.003, 0.1, log=True)}

    def study_of(*scores: tuple[float, bool]) -> optuna.Study:
        study = optuna.create_study(direction="maximize")
        for index, (value, baseline) in enumerate(scores):
            study.add_trial(
                optuna.trial.create_trial(
                    params={"target_kl": 0.01 + index / 100},
                    distributions=space,
                    value=value,
                    user_attrs={"baseline": True} if baseline else {},
                )
            )
        return study

    kept, _ = tune.report(study_of((-100.0, True), (-300.0, False)), args)
    assert "The shipped entry (trial 0) scores best of the 2 complete trials." in kept
    replaced, data = tune.report(study_of((-300.0, True), (-100.0, False)), args)
    assert "Best of the 2 complete trials: trial 1, -100.0, against -300.0 for the shipped entry (trial 0)" in replaced
    assert [trial["value"] for trial in data["trials"]] == [-300.0, -100.0]


def test_the_same_batch_bounds_pair_the_runs_and_take_medians() -> None:
    # One process: 30 updates, 24 s of learn() of which 6 s updating: R₁ = 0.6 s, U = 0.2 s per update.
    # A rank with half the environments: 18 s of learn(), 6 s updating, 3 s in collectives: R_N = 0.3 s.
    one = {"learn_s": 24.0, "train_s": 6.0, "updates": 30, "steps": 1}
    rank = {"learn_s": 18.0, "train_s": 6.0, "collective_s": 3.0, "updates": 30, "steps": 1}
    # a second pair whose rank's rollout did not shrink at all: R_N = R₁ = 0.6 s
    slow_rank = {"learn_s": 27.0, "train_s": 6.0, "collective_s": 3.0, "updates": 30, "steps": 1}
    bounds = same_batch_bounds([one, one, one], [rank, rank, slow_rank], processes=2, n_envs=2)
    assert bounds["rollout_ms"] == pytest.approx(600.0)
    assert bounds["update_ms"] == pytest.approx(200.0)
    assert bounds["rank_rollout_ms"] == pytest.approx(300.0)
    assert bounds["rollout_share"] == pytest.approx(0.5)
    assert bounds["if_rollout_split"] == pytest.approx(0.8 / 0.5)
    assert bounds["update_whole"] == pytest.approx(0.8 / 0.5)  # this rollout did split: both agree
    assert bounds["update_divided"] == pytest.approx(0.8 / 0.4)
    # 1.6× with the update divided: R_N + 0.1 = 0.8 / 1.6, so R_N = 0.4 s, two thirds of R₁
    assert bounds["share_for_target"] == pytest.approx(2 / 3)
    assert same_batch_bounds([one], [rank], processes=2, n_envs=2, target=2.0)["share_for_target"] == pytest.approx(0.5)
    # the rank that did not shrink: no gain with the update whole, 0.8 / 0.7 with it divided by 2
    slow = same_batch_bounds([one], [slow_rank], processes=2, n_envs=2)
    assert slow["if_rollout_split"] == pytest.approx(1.6)
    assert slow["update_whole"] == pytest.approx(1.0)
    assert slow["update_divided"] == pytest.approx(0.8 / 0.7)
    # pair by pair, then medians: a slower single run (R₁ = 1.2 s) goes with its own rank's run. The pairs'
    # shares are 0.5, 0.5 and 1.0 (median 0.5) where the medians' ratio would be 600 ms / 600 ms = 1.0.
    slower = {"learn_s": 42.0, "train_s": 6.0, "updates": 30, "steps": 1}
    paired = same_batch_bounds([one, slower, one], [rank, slow_rank, slow_rank], processes=2, n_envs=2)
    assert paired["rollout_share"] == pytest.approx(0.5)
    assert paired["update_whole"] == pytest.approx(1.6)  # of 1.6, 1.4/0.8 = 1.75 and 1.0
    assert paired["rollout_ms"] == pytest.approx(600.0)
    assert paired["rank_rollout_ms"] == pytest.approx(600.0)


def test_the_same_batch_bounds_split_a_step_of_the_loop_into_a_fixed_cost_and_one_per_environment() -> None:
    # 10 updates of 1,000 steps each of the loop with 4 environments (40,000 steps). A step costs O = 30 µs plus
    # E = 10 µs per environment: one process's rollout 1000 · (30 + 40) µs = 70 ms, a rank's (2 environments)
    # 1000 · (30 + 20) µs = 50 ms. With U = 10 ms, 1.6× with the update divided needs R_N + 5 ms = 80 ms / 1.6,
    # R_N = 45 ms: a share of 45/70 = 9/14. With a fixed cost O' for one process and ranks alike,
    # (1000 (O' + 40 µs) + 10 ms) / (1000 (O' + 20 µs) + 5 ms) = 1.6 gives O' = 10 ms / 600 = 16.7 µs.
    one = {"learn_s": 0.8, "train_s": 0.1, "updates": 10, "steps": 40_000}
    rank = {"learn_s": 0.65, "train_s": 0.1, "collective_s": 0.05, "updates": 10, "steps": 40_000}
    bounds = same_batch_bounds([one], [rank], processes=2, n_envs=4)
    assert bounds["env_us"] == pytest.approx(10.0)
    assert bounds["step_us"] == pytest.approx(30.0)
    assert bounds["share_for_target"] == pytest.approx(9 / 14)
    assert bounds["step_for_target_us"] == pytest.approx(100 / 6)
    # With the update whole: O' + 40 µs + 10 µs = 1.6 (O' + 20 µs + 10 µs) gives O' = 2 µs / 0.6
    assert bounds["step_for_target_whole_us"] == pytest.approx(10 / 3)


def test_the_bounds_table_leaves_out_runs_that_did_not_time_their_update() -> None:
    # R₁ = 600 ms, U = 200 ms, R_N = 350 ms; 1,000 steps of the loop per update: 600 µs a step with 2 environments,
    # 350 µs with 1, so E = 250 µs, O = 100 µs. Speed-ups 0.8/0.55 (whole) and 0.8/0.45 (divided). 1.6× with the update
    # divided: O' + 500 µs + 200 µs = 1.6 (O' + 250 µs + 100 µs), O' = 233 µs; with it whole,
    # O' + 700 µs = 1.6 (O' + 450 µs) needs O' = -33 µs: none.
    one = {"learn_s": 24.0, "train_s": 6.0, "updates": 30, "steps": 60_000}
    rank = {"learn_s": 19.5, "train_s": 6.0, "collective_s": 3.0, "updates": 30, "steps": 60_000}
    untimed = {key: value for key, value in one.items() if key != "train_s"}
    results = {
        "Timed-v0": {"n_envs": 2, "runs": {"1": [one], "2": [rank]}},
        "Old-v0": {"n_envs": 2, "runs": {"1": [untimed], "2": [rank]}},
    }
    rows = bounds_report(results, processes=2).splitlines()
    assert rows[-1] == "| Timed-v0 | 600 / 200 | 350 | 0.58 | 0.67 | 1.60 | 1.45 | 1.78 | 100 / 250 | none / 233 |"
    assert not any("Old-v0" in row for row in rows)
    assert bounds_report({"Old-v0": results["Old-v0"]}, processes=2) == ""


def test_a_trial_scores_its_final_return_or_the_mean_of_its_second_half() -> None:
    import tune

    # as the recorder's result: the curve ends with the final evaluation, at the last rollout's end
    result = {"eval_timesteps": [0, 250, 500, 750, 1024], "eval_mean": [1000.0, 0.0, 10.0, 30.0, 50.0], "final_mean": 50.0}
    assert tune.trial_score(result, "final", 1000) == 50.0
    assert tune.trial_score(result, "late", 1000) == pytest.approx((10.0 + 30.0 + 50.0) / 3)  # 500 on, the end once
    with pytest.raises(ValueError, match="does not end with the final evaluation"):
        tune.trial_score({**result, "final_mean": 60.0}, "late", 1000)
    assert tune.prune_from(tune.parse_args(["--env", "Ant-v5", "--steps", "600", "--score", "late"])) == 300
    assert tune.prune_from(tune.parse_args(["--env", "Ant-v5", "--steps", "600"])) == 200
    with pytest.raises(SystemExit):
        tune.parse_args(["--env", "Ant-v5", "--score", "best"])
    for label in ("../elsewhere", "lat\u00e9", "x\u00b2"):
        with pytest.raises(SystemExit):
            tune.parse_args(["--env", "Ant-v5", "--label", label])


def test_a_labelled_study_has_its_own_files_and_a_study_from_before_score_resumes_as_final(tmp_path: Path) -> None:
    import shlex

    import optuna
    import tune

    base = ["--env", "Pendulum-v1", "--out", str(tmp_path)]
    labelled = tune.parse_args([*base, "--label", "late600k", "--score", "late", "--steps", "600"])
    assert tune.paths(labelled)[0].name == "sb3_trpo_penalty_Pendulum-v1_late600k.log"
    # the report's command names the same study: its files and its options
    again = tune.parse_args([*shlex.split(tune.command(labelled))[2:], "--out", str(tmp_path)])
    assert tune.paths(again) == tune.paths(labelled)
    assert {name: getattr(again, name) for name in tune.STUDY_OPTIONS} == {
        name: getattr(labelled, name) for name in tune.STUDY_OPTIONS
    }
    # a journal written before --score existed: its options lack "score", and its trials were scored at the end
    journal = tune.paths(tune.parse_args(base))[0]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    old = optuna.create_study(study_name="sb3_trpo_penalty_Pendulum-v1", storage=storage, direction="maximize")
    for name, value in {"seed": 100, "steps": 300_000, "evaluations": 6, "eval_episodes": 10}.items():
        old.set_user_attr(name, value)
    assert tune.open_study(tune.parse_args(base), journal).user_attrs == {
        "seed": 100,
        "steps": 300_000,
        "evaluations": 6,
        "eval_episodes": 10,
    }  # resumed as it was, nothing added to it
    with pytest.raises(ValueError, match="holds a study run with"):
        tune.open_study(tune.parse_args([*base, "--score", "late"]), journal)


def source_run(env: str, algo: str, seed: int, source: str, commit: str | None = "abc1234") -> dict:
    classes = {"sb3_trpo": "sb3_trpo:TRPO", "sb3_contrib": "sb3_contrib:TRPO", "sb3_trpo_lag1_current": "lagged:FixedLagTRPO"}
    settings = {"class": classes.get(algo, "sb3_trpo:TRPOPenalty"), "seed_of": seed}
    return {"env": env, "algo": algo, "seed": seed, "source": source, "commit": commit, "settings": settings}


def test_the_sources_probed_are_those_of_our_classes_but_the_current_one() -> None:
    from sources import probes, shared_settings

    runs = [
        source_run("A-v5", "sb3_trpo", 2, "old"),
        source_run("A-v5", "sb3_trpo", 1, "old"),
        source_run("A-v5", "sb3_trpo", 0, "now"),
        source_run("A-v5", "sb3_contrib", 0, "older"),  # sb3-contrib's runs do not run sb3_trpo's code
        source_run("A-v5", "sb3_trpo_lag1_current", 0, "older"),  # nor does the lag campaign's benchmark class
        source_run("B-v5", "sb3_trpo_penalty", 3, "older", None),
        source_run("B-v5", "sb3_trpo_penalty", 4, "older", "def5678-dirty"),
        source_run("C-v5", "sb3_trpo_penalty", 0, "oldest", None),
    ]
    todo, sources = probes(runs, current="now")
    assert [(p.env, p.algo, p.source, p.seed, p.runs, p.commit) for p in todo] == [
        ("A-v5", "sb3_trpo", "old", 1, 2, "abc1234"),  # the source's first run by seed
        ("B-v5", "sb3_trpo_penalty", "older", 4, 2, "def5678-dirty"),  # its first run with a commit
        ("C-v5", "sb3_trpo_penalty", "oldest", 0, 1, None),  # none: its first run, which cannot be rebuilt
    ]
    assert todo[0].settings == {"class": "sb3_trpo:TRPO", "seed_of": 1}
    assert sources == {
        ("A-v5", "sb3_trpo"): {"now": 1, "old": 2},
        ("B-v5", "sb3_trpo_penalty"): {"older": 2},
        ("C-v5", "sb3_trpo_penalty"): {"oldest": 1},
    }
    assert shared_settings(runs) == {
        ("A-v5", "sb3_trpo"): False,
        ("B-v5", "sb3_trpo_penalty"): False,
        ("C-v5", "sb3_trpo_penalty"): True,
    }


def test_a_source_agrees_only_bit_for_bit() -> None:
    from sources import base_commit, bitwise_equal, largest_difference, verdict

    nan = float("nan")
    reference = {"source": "now", "num_timesteps": 64, "state": {"w": [1.0, 2.0], "b": [0.5, nan]}}
    same = {**reference, "source": "old", "state": {"w": [1.0, 2.0], "b": [0.5, nan]}}
    assert bitwise_equal(same["state"], reference["state"])  # the same NaN is the same bits
    assert largest_difference(same["state"], reference["state"]) == 0.0
    assert verdict("old", same, reference) == ("equal, bit for bit", "0")
    off = {**same, "state": {"w": [1.0, 2.25], "b": [0.5, nan]}}
    assert largest_difference(off["state"], reference["state"]) == 0.25
    assert verdict("old", off, reference) == ("different", "0.25")
    signed = {**same, "state": {"w": [1.0, 2.0], "b": [0.5, nan]}}
    signed_reference = {**reference, "state": {"w": [-0.0, 2.0], "b": [0.5, nan]}}
    signed["state"]["w"][0] = 0.0
    assert verdict("old", signed, signed_reference) == ("different", "0")  # equal values, other bits
    late_nan = {**same, "state": {"w": [1.0, 2.0], "b": [0.5, 1.0]}}  # a NaN in the last entry only on one side
    assert largest_difference(late_nan["state"], reference["state"]) == float("inf")
    assert verdict("old", late_nan, reference) == ("different", "inf")
    assert verdict("old", {**same, "num_timesteps": 128}, reference) == ("different", "0")
    assert largest_difference({"w": [1.0, 2.0]}, reference["state"]) == float("inf")  # other names: not comparable
    assert verdict("old", {**same, "source": "other"}, reference)[0].startswith("not rebuilt")
    assert verdict("old", None, reference)[0].startswith("not rebuilt")
    assert base_commit("abc1234-dirty") == base_commit("abc1234") == "abc1234"


def test_stored_settings_rebuild_the_runs_as_the_zoo_entry_reads_them() -> None:
    import json

    from hyperparams import run_settings, settings_of

    runs = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "runs" / "mujoco"
    for algo, env_id in [("sb3_trpo", "HalfCheetah-v5"), ("sb3_trpo_penalty", "Swimmer-v5"), ("sb3_contrib", "Ant-v5")]:
        stored = json.loads((runs / env_id / f"{algo}_seed0.json").read_text(encoding="utf-8"))["settings"]
        rebuilt = settings_of(json.loads(json.dumps(stored)))  # what a run file holds, through JSON
        assert rebuilt == run_settings(algo, env_id)  # the zoo entries the runs ran with are the shipped ones
    entry = settings_of(
        {
            "class": "sb3_trpo:TRPO",
            "zoo_file": "x",
            "n_timesteps": 1e6,
            "policy": "MlpPolicy",
            "normalize": True,
            "gamma": 0.98,
            "n_envs": 2,
            "learning_rate": "lin_0.5",
        }
    )
    assert (entry.n_envs, entry.n_timesteps, entry.policy) == (2, 1_000_000, "MlpPolicy")
    assert entry.normalize == {"gamma": 0.98}  # VecNormalize discounts with the algorithm's gamma
    assert type(entry.described["n_timesteps"]) is int  # YAML's !!float 1e6 stored as an integer
    assert entry.described["n_timesteps"] == 1_000_000
    assert entry.algo_kwargs["learning_rate"](0.5) == 0.25  # rl-zoo's lin_ schedule
    assert set(entry.algo_kwargs) == {"gamma", "learning_rate"}
    without_gamma = {"class": "sb3_trpo:TRPO", "zoo_file": "x", "n_timesteps": 1, "policy": "MlpPolicy"}
    assert settings_of({**without_gamma, "normalize": True}).normalize == {}  # normalised, VecNormalize's defaults
    assert settings_of({**without_gamma, "normalize": "{'norm_reward': False}"}).normalize == {"norm_reward": False}
    assert settings_of({**without_gamma, "normalize": False}).normalize is None
    assert settings_of(without_gamma).normalize is None


@pytest.mark.timeout(180)
def test_a_probe_runs_under_the_source_it_is_given_and_tells_a_changed_update_apart(tmp_path: Path) -> None:
    from common import source_fingerprint
    from sources import Probe, extract_source, train_probe, verdict

    settings = {
        "class": "sb3_trpo:TRPO",
        "zoo_file": "a test",
        "n_envs": 1,
        "n_timesteps": 128,
        "policy": "MlpPolicy",
        "normalize": True,  # VecNormalize's statistics are compared too
        "n_steps": 64,
        "batch_size": 32,
        "n_critic_updates": 2,
    }
    probe = Probe("CartPole-v1", "sb3_trpo", "head", "HEAD", 3, settings, 1)
    installed = train_probe(probe, 2, None)
    assert installed["source"] == source_fingerprint()
    assert installed["num_timesteps"] == 128
    assert {"obs_rms.mean", "obs_rms.var", "ret_rms.var"} <= set(installed["state"])
    first, second = extract_source("HEAD", tmp_path / "first"), extract_source("HEAD", tmp_path / "second")
    reference, again = train_probe(probe, 2, first), train_probe(probe, 2, second)
    assert Path(reference["root"]) == (first / "sb3_trpo").resolve()  # the extracted source, not the installed one
    assert Path(again["root"]) == (second / "sb3_trpo").resolve()
    assert again["source"] == reference["source"]  # one commit, one fingerprint
    assert verdict(reference["source"], again, reference) == ("equal, bit for bit", "0")
    changed = extract_source("HEAD", tmp_path / "changed")
    with open(changed / "sb3_trpo" / "__init__.py", "a", encoding="utf-8") as init:  # twice the CG damping
        init.write(
            "\n_init = TRPO.__init__\n\n\ndef _damped(self, *args, **kwargs):\n"
            "    _init(self, *args, **kwargs)\n    self.cg_damping *= 2\n\n\nTRPO.__init__ = _damped\n"
        )
    differs = train_probe(probe, 2, changed)
    assert differs["source"] != reference["source"]
    assert verdict(differs["source"], differs, reference)[0] == "different"
