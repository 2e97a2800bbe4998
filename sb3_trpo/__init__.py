"""sb3-trpo: Trust Region Policy Optimization for Stable-Baselines3."""

from pathlib import Path

from sb3_trpo.recurrent import RecurrentTRPO, RecurrentTRPOPenalty
from sb3_trpo.trpo import TRPO
from sb3_trpo.trpo_penalty import TRPOPenalty

__version__ = (Path(__file__).parent / "version.txt").read_text(encoding="utf-8").strip()

__all__ = ["TRPO", "RecurrentTRPO", "RecurrentTRPOPenalty", "TRPOPenalty", "__version__"]
