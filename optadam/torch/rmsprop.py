r"""torch.optim.RMSprop: plain, centered, with momentum and weight decay.

torch 2.13's ``_single_tensor_rmsprop``, per parameter, with γ = lr, α = alpha, λ = weight_decay
and μ = momentum::

    g_t = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    g_t = g_t + λ·θ_{t-1}                        if λ ≠ 0
    v_t = α·v_{t-1} + (1 − α)·g_t²               square_avg, v_0 = 0
    ḡ_t = α·ḡ_{t-1} + (1 − α)·g_t                grad_avg, centered only
    d_t = g_t / (√(v_t − ḡ_t²) + ε)  if centered  else  g_t / (√v_t + ε)
    b_t = μ·b_{t-1} + d_t                        momentum_buffer, if μ > 0
    θ_t = θ_{t-1} − γ·b_t                        (θ_{t-1} − γ·d_t without momentum)

That is :func:`optadam.scale_by_rms` with ε outside the root and no initial scale (which clamps
v_t − ḡ_t² at 0, where rounding can make it negative and torch's root is NaN), then
:func:`optadam.scale_by_momentum`, then the learning rate. optax.rmsprop differs: ε inside the
root by default, a decay of 0.9 by default (torch's α is 0.99), and its momentum trace is taken
*after* the learning rate -- the same numbers for a constant rate, not under a schedule.
"""

from __future__ import annotations

import jax
import optax

from optadam import _checks
from optadam.momentum import scale_by_momentum
from optadam.rmsprop import scale_by_rms
from optadam.torch._common import (
    TorchOptimizer,
    check_lr,
    check_switches,
    coupled_decay,
    is_zero,
    learning_rate,
    negate,
    torch_optimizer,
)


def RMSprop(  # noqa: N802 (torch.optim's class name)
    lr: optax.ScalarOrSchedule = 1e-2,
    alpha: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0,
    momentum: jax.typing.ArrayLike = 0,
    centered: bool = False,
    capturable: bool = False,
    foreach: bool | None = None,
    maximize: bool = False,
    differentiable: bool = False,
) -> TorchOptimizer:
    r"""torch.optim.RMSprop, same arguments and defaults (less ``params``), see the module.

    ``torch.optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, centered=True)`` becomes
    ``optadam.torch.RMSprop(lr=1e-3, momentum=0.9, centered=True)``.

    Args:
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`).
      alpha: α, the decay of the moving averages, in [0, 1).
      eps: ε, added to the root (outside it), >= 0.
      weight_decay: λ (coupled: added to the gradient), >= 0.
      momentum: μ, in [0, 1); 0 keeps no buffer.
      centered: divide by the root of the variance, v_t − ḡ_t², instead of v_t.
      maximize: ascend the objective.
      capturable, foreach, differentiable: torch implementation switches; accepted, no effect.
    """
    param_group = {
        "lr": lr,
        "momentum": momentum,
        "alpha": alpha,
        "eps": eps,
        "centered": centered,
        "weight_decay": weight_decay,
        "capturable": capturable,
        "foreach": foreach,
        "maximize": maximize,
        "differentiable": differentiable,
    }
    check_lr(lr)
    _checks.in_unit_interval("alpha", alpha)
    _checks.non_negative("eps", eps)
    _checks.non_negative("weight_decay", weight_decay)
    _checks.in_unit_interval("momentum", momentum)
    _checks.boolean("centered", centered)
    _checks.boolean("maximize", maximize)
    check_switches(capturable=capturable, foreach=foreach, differentiable=differentiable)
    return torch_optimizer(
        "RMSprop",
        param_group,
        negate(maximize),
        coupled_decay(weight_decay),
        scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, centered=centered),
        None if is_zero(momentum) else scale_by_momentum(momentum),
        learning_rate(lr),
    )
