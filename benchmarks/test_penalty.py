"""Slow learning checks of TRPOPenalty (``pytest benchmarks -m slow``)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from penalty import run_one, settled_median_kl


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["TRPOPenalty (natural)", "TRPOPenalty (first_order)"])
def test_penalty_learns_cartpole_and_keeps_kl_near_target(variant):
    # The same rl-zoo hyperparameters as TRPO, 100k steps.
    run = run_one("CartPole-v1", variant, seed=0, timesteps=None)
    assert run["final_return"] >= 475
    ratio = settled_median_kl(run) / run["target_kl"]
    assert 1 / 3 <= ratio <= 3, f"median KL is {ratio:.2f} x target_kl once beta has settled"
