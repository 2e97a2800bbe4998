"""Slow learning test of RecurrentTRPO: CartPoleNoVel-v1 (no velocities) at least 400 within 150k steps.

The criterion is the mean over seeds 0, 1 and 2 of the final deterministic return (20 episodes, the
protocol and the settings of ``recurrent.py``), as in ``test_learning.py``: one seed may end lower.

    python -m pytest benchmarks/test_recurrent_learning.py -m slow
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from recurrent import HYPERPARAMS, TARGET_RETURN, train_and_evaluate

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def _one_thread():
    th.set_num_threads(1)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # three runs of about five minutes each, beyond the suite's 600 s per test
def test_recurrent_trpo_balances_cartpole_without_velocities() -> None:
    n_timesteps = HYPERPARAMS["trpo_lstm"]["n_timesteps"]
    assert n_timesteps <= 150_000
    finals = [
        train_and_evaluate("trpo_lstm", seed, None, eval_every=n_timesteps, eval_episodes=1, final_eval_episodes=20)[
            "final_mean"
        ]
        for seed in SEEDS
    ]
    mean_return = float(np.mean(finals))
    assert mean_return >= TARGET_RETURN, f"mean return {mean_return:.1f} < {TARGET_RETURN} (per seed {finals})"
