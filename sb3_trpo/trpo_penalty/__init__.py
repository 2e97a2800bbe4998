from sb3_trpo.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo.trpo_penalty.trpo_penalty import TRPOPenalty

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy", "TRPOPenalty"]
