"""torch.optim's optimizers for JAX, named and parameterized as in torch, with torch's numbers.

``torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=0.1, amsgrad=True)`` becomes
``optadam.torch.Adam(lr=3e-4, weight_decay=0.1, amsgrad=True)``: the same arguments, defaults and
options. Each factory returns an ``optax.GradientTransformation``; applied with
``optax.apply_updates`` the parameters follow torch.optim 2.13's trajectory (tested against it: to
1e-10 relative in float64 and 1e-5 in float32 over 1,000 steps). ``load_state_dict`` and
``state_dict`` carry a run across, either way.

Conventions:

* **Param groups.** The first argument, ``params``, is torch's: None (every leaf, one group), a
  selector of leaves, or a list of group dicts whose keys override the keyword arguments, with a
  selector as each group's ``"params"``: a glob on the "/"-joined key path (``"*/bias"``,
  ``"encoder/**"``), a callable ``(path, leaf) -> bool``, or a list of these. Leaves in no group
  are not optimized (zero update, no state); see :mod:`optadam.torch._groups`. ``tx.param_groups``
  lists the groups with the defaults filled in, as torch's ``optimizer.param_groups``.
* **State.** Every optimizer's state is a :class:`TorchState`: one step ``count`` (torch's
  ``step``: 1 after the first update), each group's ``lr`` and ``momentum`` or ``betas`` as float
  arrays (``optadam.torch._common.group_hyperparams`` reads them, ``with_group_hyperparams``
  replaces them between steps, as a torch LR scheduler writes ``param_groups``, without a
  recompile), and each group's per-parameter state.
* **Learning-rate schedules.** ``lr`` may also be a callable of the step count, as in optax: the
  update that takes the count from k to k + 1 uses ``lr(k)``, and the state shows ``lr(k + 1)``. A
  torch LR scheduler stepped after each ``optimizer.step()`` sets the lr of update k + 1 from its
  ``last_epoch = k``, so ``LambdaLR(opt, f)`` is ``lr=lambda k: base_lr * f(k)``, ``StepLR(opt, s,
  g)`` is ``optax.exponential_decay(base_lr, s, g, staircase=True)``, and ``CosineAnnealingLR(opt,
  T, η_min)`` is ``lambda k: η_min + (base_lr − η_min)·(1 + cos(πk/T))/2``.
* **Parameters.** torch's state dicts number parameters 0, 1, ... through the param groups; here
  group k's are the leaves it selects, in the order of ``jax.tree.leaves(params)``.
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
