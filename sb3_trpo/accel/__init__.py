"""Accelerators for SB3's standard MLP actor-critic, all built from one spec.

- :func:`~sb3_trpo.accel.spec.recognise`: the one recogniser, a policy as an
  :class:`~sb3_trpo.accel.spec.MLPSpec` or the reason it is not SB3's standard MLP;
- :mod:`~sb3_trpo.accel.activations`: the one activation table (torch and NumPy kernels, derivatives);
- the backends built from a spec: :class:`~sb3_trpo.accel.actor.MLPActor` (the policy step's
  gradient, Fisher-vector products and candidates by hand), :class:`~sb3_trpo.accel.critic.FlatCritic`
  (the critic fit on a flat buffer with a hand-written Adam), :class:`~sb3_trpo.accel.rollout.NumpyRollouts`
  (the policy evaluated in NumPy while collecting).

The algorithms run without them: each has a reference backend in :mod:`sb3_trpo.common.backends`
that computes the same thing through torch's autograd and SB3's own loop.
"""

from sb3_trpo.accel.actor import MLPActor, actor_unsupported
from sb3_trpo.accel.critic import FlatCritic, critic_unsupported
from sb3_trpo.accel.rollout import NumpyRollouts, rollout_unsupported
from sb3_trpo.accel.spec import MLPSpec, recognise

__all__ = [
    "FlatCritic",
    "MLPActor",
    "MLPSpec",
    "NumpyRollouts",
    "actor_unsupported",
    "critic_unsupported",
    "recognise",
    "rollout_unsupported",
]
