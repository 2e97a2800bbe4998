"""TRPO for LSTM policies, on sb3-contrib's recurrent policies and rollout buffers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy

from sb3_trpo.accel.spec import MLPSpec
from sb3_trpo.common.backends import RolloutBackend, SB3Rollouts
from sb3_trpo.common.policy_step import PolicyBatch
from sb3_trpo.common.reduction import batch_mean
from sb3_trpo.common.validation import require
from sb3_trpo.recurrent.policies import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy
from sb3_trpo.trpo.trpo import TRPO

RECURRENT_BUFFERS = (RecurrentRolloutBuffer, RecurrentDictRolloutBuffer)


@dataclass(kw_only=True)
class RecurrentPolicyBatch(PolicyBatch):
    """A padded batch of sequences, as sb3-contrib's recurrent rollout buffers return it.

    The rollout is cut into sequences at episode starts and where the environment changes; each is
    padded at its end to the longest, and the ``n_seq × max_length`` steps are flattened sequence by
    sequence (``n_seq * max_length`` rows). ``mask`` marks the real steps. The LSTM runs forward in
    time, so padded steps, which come last, never influence a real one.
    """

    lstm_states: tuple[th.Tensor, th.Tensor]  # the actor's LSTM (hidden, cell) at each sequence start: (n_layers, n_seq, size)
    episode_starts: th.Tensor  # (n_seq * max_length,): 1.0 where an episode starts (the LSTM state is reset there)

    def __len__(self) -> int:
        """The number of sequences: :meth:`subset` picks whole sequences, never single steps."""
        return self.lstm_states[0].shape[1]

    def subset(self, index: th.Tensor) -> RecurrentPolicyBatch:
        """The sequences at ``index``, their padding trimmed to the longest of them."""
        assert self.mask is not None
        n_seq = len(self)
        length = int(self.mask.reshape(n_seq, -1)[index].sum(dim=1).max())

        def pick(steps: th.Tensor) -> th.Tensor:
            by_sequence = steps.reshape(n_seq, -1, *steps.shape[1:])
            return by_sequence[index, :length].reshape(-1, *steps.shape[1:])

        observations: th.Tensor | dict[str, th.Tensor]
        if isinstance(self.observations, dict):
            observations = {key: pick(obs) for key, obs in self.observations.items()}
        else:
            observations = pick(self.observations)
        return RecurrentPolicyBatch(
            observations,
            pick(self.actions),
            pick(self.behaviour_log_prob),
            pick(self.advantages),
            pick(self.mask),
            lstm_states=(self.lstm_states[0][:, index], self.lstm_states[1][:, index]),
            episode_starts=pick(self.episode_starts),
        )


class RecurrentTRPO(TRPO):
    """
    Trust Region Policy Optimization with recurrent (LSTM) policies.

    Paper: https://arxiv.org/abs/1502.05477 (Schulman et al., 2015); the recurrent machinery
    (policies, rollout buffers, LSTM states and episode starts) is sb3-contrib's, as in
    ``sb3_contrib.RecurrentPPO``.

    The policy step is TRPO's, on the whole rollout as one padded batch of sequences: each sequence
    starts from the LSTM state recorded when its first step was collected and is unrolled through
    the LSTM, so the surrogate, the KL, the gradient and the Fisher-vector products are
    back-propagated through time. Every mean runs over the real steps only (the padding is masked
    out). The line search, the diagnostics, the critic fit and the checks of bad input are TRPO's.

    The parameters are :class:`~sb3_trpo.TRPO`'s, with the same names, defaults and meanings, except:

    :param policy: The policy model to use: ``"MlpLstmPolicy"``, ``"CnnLstmPolicy"``,
        ``"MultiInputLstmPolicy"``, or a subclass of sb3-contrib's ``RecurrentActorCriticPolicy``.
        The LSTM is set in ``policy_kwargs`` (``lstm_hidden_size``, ``n_lstm_layers``,
        ``enable_critic_lstm``, ``shared_lstm``), as for RecurrentPPO.
    :param batch_size: Minibatch size of the critic's regression, in transitions; each minibatch is
        cut into padded sequences, as RecurrentPPO's are
    :param rollout_buffer_class: ``None`` (sb3-contrib's ``RecurrentRolloutBuffer``, or
        ``RecurrentDictRolloutBuffer`` for dict observations) or a subclass of either
    :param sub_sampling_factor: Use every ``k``-th *sequence* of the rollout for the policy step
        (``>= 1``): the steps of a sequence depend on each other through the LSTM, so sequences are
        kept whole. Sequences differ in length, so the share of states is only about ``1/k``.
    """

    SAVED_ALGORITHM: ClassVar[str] = "RecurrentTRPO"
    ASYNC_SUPPORTED: ClassVar[bool] = False  # a worker's batch would need its LSTM states re-run by the learner
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpLstmPolicy": MlpLstmPolicy,
        "CnnLstmPolicy": CnnLstmPolicy,
        "MultiInputLstmPolicy": MultiInputLstmPolicy,
    }
    policy: RecurrentActorCriticPolicy

    def _setup_model(self) -> None:
        require(
            isinstance(self.policy_class, type) and issubclass(self.policy_class, RecurrentActorCriticPolicy),
            "policy",
            "an LSTM policy: MlpLstmPolicy, CnnLstmPolicy, MultiInputLstmPolicy or a subclass of "
            "sb3_contrib's RecurrentActorCriticPolicy",
            self.policy_class,
        )
        require(
            self.rollout_buffer_class is None
            or (isinstance(self.rollout_buffer_class, type) and issubclass(self.rollout_buffer_class, RECURRENT_BUFFERS)),
            "rollout_buffer_class",
            "None or a subclass of sb3_contrib's RecurrentRolloutBuffer or RecurrentDictRolloutBuffer",
            self.rollout_buffer_class,
        )
        super()._setup_model()

    def _make_rollout_buffer(self) -> RecurrentRolloutBuffer | RecurrentDictRolloutBuffer:
        """sb3-contrib's recurrent buffer (dict observations: its dict variant), shaped by the policy's LSTM."""
        # As RecurrentPPO: the actor's and the critic's LSTM have the same shape.
        lstm = self.policy.lstm_actor
        state_shape = (lstm.num_layers, self.n_envs, lstm.hidden_size)
        self._last_lstm_states = RNNStates(
            (th.zeros(state_shape, device=self.device), th.zeros(state_shape, device=self.device)),
            (th.zeros(state_shape, device=self.device), th.zeros(state_shape, device=self.device)),
        )
        buffer_class: type[RecurrentRolloutBuffer | RecurrentDictRolloutBuffer]
        if self.rollout_buffer_class is not None:
            buffer_class = self.rollout_buffer_class  # type: ignore[assignment]  # checked in _setup_model
        elif isinstance(self.observation_space, spaces.Dict):
            buffer_class = RecurrentDictRolloutBuffer
        else:
            buffer_class = RecurrentRolloutBuffer
        return buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            hidden_state_shape=(self.n_steps, *state_shape),
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            **self.rollout_buffer_kwargs,
        )

    def _make_rollout_backend(self, spec: MLPSpec | str) -> RolloutBackend:
        """RecurrentPPO's rollout collection: it carries the LSTM states of the environments from step to step
        (and across rollouts), records them with each step and resets them at episode starts."""
        require(self.rollout_method != "numpy", "rollout_method", '"auto" or "sb3" for an LSTM policy', self.rollout_method)
        return SB3Rollouts(RecurrentPPO.collect_rollouts, declined="numpy: LSTM policies are collected by RecurrentPPO's loop")

    def _probe_distribution(self) -> Distribution:
        """The action distribution on one observation of the space, from a zero LSTM state."""
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
        lstm = self.policy.lstm_actor
        zeros = th.zeros(lstm.num_layers, 1, lstm.hidden_size, device=self.device)
        with th.backends.cudnn.flags(enabled=False):
            distribution, _ = self.policy.get_distribution(observation, (zeros, zeros), th.ones(1, device=self.device))  # type: ignore[arg-type]
        return distribution

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_lstm_states"]

    # ------------------------------------------------------------------ TRPO's hooks, for sequences

    def _rollout_batch(self, data: Any) -> RecurrentPolicyBatch:
        """The buffer's padded sequences, with their mask, starting LSTM states and episode starts."""
        # The recurrent buffers keep the action space's dtype (int8 for MultiBinary); SB3's others hand out float32.
        batch = super()._rollout_batch(data._replace(actions=data.actions.float()))
        return RecurrentPolicyBatch(
            batch.observations,
            batch.actions,
            batch.behaviour_log_prob,
            batch.advantages,
            data.mask > 1e-8,
            lstm_states=data.lstm_states.pi,
            episode_starts=data.episode_starts,
        )

    def _distribution(self, batch: PolicyBatch) -> Distribution:
        """The action distribution on every step of the sequences, the actor's LSTM unrolled from each start.

        cuDNN's LSTM has no double backward, which both Fisher-vector products need: on a GPU the
        LSTM runs without it here (on the CPU this changes nothing).
        """
        assert isinstance(batch, RecurrentPolicyBatch), "RecurrentTRPO works on padded batches of sequences"
        with th.backends.cudnn.flags(enabled=False):
            observations: Any = batch.observations  # a tensor, or a dict of them for MultiInputLstmPolicy
            distribution, _ = self.policy.get_distribution(observations, batch.lstm_states, batch.episode_starts)
        return distribution

    def _value_loss(self, data: Any) -> th.Tensor:
        """Mean squared error of the critic over the real steps of a minibatch of padded sequences."""
        values = self.policy.predict_values(data.observations, data.lstm_states.vf, data.episode_starts).flatten()
        return batch_mean((data.returns - values).pow(2), data.mask > 1e-8)
