"""Policies for RecurrentTRPO: sb3-contrib's LSTM actor-critic policies, the ones RecurrentPPO uses.

TRPO needs nothing beyond them: the actor is whatever the action distribution depends on (the
features extractor, the actor's LSTM and its head), found by autograd as for feed-forward policies.
"""

from sb3_contrib.common.recurrent.policies import (
    RecurrentActorCriticCnnPolicy,
    RecurrentActorCriticPolicy,
    RecurrentMultiInputActorCriticPolicy,
)

MlpLstmPolicy = RecurrentActorCriticPolicy
CnnLstmPolicy = RecurrentActorCriticCnnPolicy
MultiInputLstmPolicy = RecurrentMultiInputActorCriticPolicy

__all__ = ["CnnLstmPolicy", "MlpLstmPolicy", "MultiInputLstmPolicy"]
