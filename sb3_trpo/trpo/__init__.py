from sb3_trpo.trpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_trpo.trpo.trpo import TRPO

__all__ = ["TRPO", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
