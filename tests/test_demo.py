import json

from sb3_trpo import TRPO
from sb3_trpo.demo import main


def test_demo_trains_evaluates_and_saves_model_and_plot(tmp_path):
    summary = main(["--timesteps", "1024", "--output", str(tmp_path)])
    assert (tmp_path / "learning_curve_CartPole-v1.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert 1.0 <= summary["eval_mean_return"] <= 500.0
    model = TRPO.load(summary["model"])
    assert model.num_timesteps >= 1024
