"""The KL-penalised TRPO for LSTM policies: RecurrentTRPO's sequences, TRPOPenalty's step."""

from __future__ import annotations

from typing import ClassVar

from stable_baselines3.common.policies import BasePolicy

from sb3_trpo.recurrent.recurrent_trpo import RecurrentTRPO
from sb3_trpo.trpo_penalty.trpo_penalty import TRPOPenalty


class RecurrentTRPOPenalty(RecurrentTRPO, TRPOPenalty):
    """
    TRPO with an adaptive KL penalty (:class:`~sb3_trpo.TRPOPenalty`) for LSTM policies.

    Nothing is written twice: the method resolution order takes the rollouts, the padded batch of
    sequences, the action distribution and the critic loss from :class:`~sb3_trpo.RecurrentTRPO`,
    and the penalised step, the adaptation of ``β`` and its saving from :class:`~sb3_trpo.TRPOPenalty`,
    whose constructor (TRPO's parameters and the penalty's) this class has.

    The parameters mean what they mean for those two classes, with one addition for sequences:

    :param policy_batch_size: With ``policy_optimizer="first_order"``, the number of *sequences* per
        minibatch of Adam (``>= 1``): a minibatch is a set of whole sequences, each unrolled
        through the LSTM from its start, so a step is never cut off from its history.
    """

    SAVED_ALGORITHM: ClassVar[str] = "RecurrentTRPOPenalty"
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = RecurrentTRPO.policy_aliases
