"""torch.optim's optimizers for JAX, named and parameterized as in torch, with torch's numbers.

``torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=0.1, amsgrad=True)`` becomes
``optadam.torch.Adam(lr=3e-4, weight_decay=0.1, amsgrad=True)``: the same arguments, defaults and
options, less ``params``. Each factory returns an ``optax.GradientTransformation``; applied with
``optax.apply_updates`` the parameters follow torch.optim 2.13's trajectory (tested against it: to
1e-10 relative in float64 and 1e-5 in float32 over 1,000 steps). ``load_state_dict`` and
``state_dict`` carry a run across, either way.

Conventions:

* **Steps.** torch's ``step`` is 1 at the first update; every state here has a ``count`` of the
  updates taken, equal to torch's ``step`` after each update (``count = step − 1`` during it).
* **Learning-rate schedules.** ``lr`` may be a callable of the step count, as in optax: the update
  that takes the count from k to k + 1 uses ``lr(k)``. A torch LR scheduler stepped after each
  ``optimizer.step()`` sets the lr of update k + 1 from its ``last_epoch = k``, so ``LambdaLR(opt,
  f)`` is ``lr=lambda k: base_lr * f(k)``, ``StepLR(opt, s, g)`` is
  ``optax.exponential_decay(base_lr, s, g, staircase=True)``, and ``CosineAnnealingLR(opt, T,
  η_min)`` is ``lambda k: η_min + (base_lr − η_min)·(1 + cos(πk/T))/2``.
* **Parameters.** torch's state dicts number parameters 0, 1, ... through the param groups;
  here number i is leaf i of ``jax.tree.leaves(params)``.
* **Implementation switches** (``foreach``, ``fused``, ``capturable``, ``differentiable``) are
  accepted and change nothing: they choose how torch computes a step, not what it computes.
* **Complex parameters** are seen as (real, imag) pairs, as torch's ``view_as_real`` does.

Example:
  >>> import jax.numpy as jnp, optax, optadam.torch
  >>> tx = optadam.torch.SGD(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-4)
  >>> params = {"w": jnp.ones(3)}
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)
  >>> optax.apply_updates(params, updates)["w"]
  Array([0.94999, 0.94999, 0.94999], dtype=float32)
"""

from optadam.torch import lr_scheduler as lr_scheduler
from optadam.torch._common import TorchOptimizer, TorchState
from optadam.torch._state_dict import load_state_dict, state_dict
from optadam.torch.adagrad import Adagrad
from optadam.torch.adam import Adam, AdamMoments, AdamW, AmsgradMoments
from optadam.torch.nadam import NAdam, ScaleByNadamState
from optadam.torch.radam import RAdam
from optadam.torch.rmsprop import RMSprop
from optadam.torch.sgd import SGD

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamMoments",
    "AdamW",
    "AmsgradMoments",
    "NAdam",
    "RAdam",
    "RMSprop",
    "ScaleByNadamState",
    "TorchOptimizer",
    "TorchState",
    "load_state_dict",
    "state_dict",
]
