from sb3_trpo.recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from sb3_trpo.recurrent.recurrent_trpo import RecurrentPolicyBatch, RecurrentTRPO
from sb3_trpo.recurrent.recurrent_trpo_penalty import RecurrentTRPOPenalty

__all__ = [
    "CnnLstmPolicy",
    "MlpLstmPolicy",
    "MultiInputLstmPolicy",
    "RecurrentPolicyBatch",
    "RecurrentTRPO",
    "RecurrentTRPOPenalty",
]
