"""Policies for TRPO: SB3's actor-critic policies, as in ``sb3_contrib.trpo.policies``.

TRPO needs nothing beyond SB3's ``ActorCriticPolicy``: the actor's parameters are found from what
the action distribution depends on, so custom policies and shared features extractors work too.
"""

from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy

MlpPolicy = ActorCriticPolicy
CnnPolicy = ActorCriticCnnPolicy
MultiInputPolicy = MultiInputActorCriticPolicy

__all__ = ["CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
