r"""torch.optim.SGD: gradient descent with momentum, dampening, Nesterov and weight decay.

torch 2.13's ``_single_tensor_sgd``, per parameter, with γ = lr, λ = weight_decay, μ = momentum and
τ = dampening::

    g_t = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    g_t = g_t + λ·θ_{t-1}                                 if λ ≠ 0
    b_t = g_t  if t = 1  else  μ·b_{t-1} + (1 − τ)·g_t     if μ ≠ 0   (momentum_buffer)
    d_t = g_t + μ·b_t  if nesterov  else  b_t              if μ ≠ 0   (d_t = g_t otherwise)
    θ_t = θ_{t-1} − γ·d_t

Without dampening, b_t = μ·b_{t-1} + g_t from b_0 = 0 gives b_1 = g_1 too; with it, the first step
is a copy (:func:`optadam.torch._common.scale_by_momentum_buffer`, shared with RMSprop). torch
accepts any momentum >= 0 (1 and above included) and any dampening, and so does this.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from optadam.torch._common import (
    TorchOptimizer,
    check_flags,
    check_lr,
    check_switches,
    coupled_decay,
    is_zero,
    learning_rate,
    negate,
    not_below_zero,
    real,
    scale_by_momentum_buffer,
    torch_optimizer,
)


def SGD(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 1e-3,
    momentum: jax.typing.ArrayLike = 0,
    dampening: jax.typing.ArrayLike = 0,
    weight_decay: jax.typing.ArrayLike = 0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    differentiable: bool = False,
    fused: bool | None = None,
) -> TorchOptimizer:
    r"""torch.optim.SGD, same arguments and defaults (less ``params``), see the module.

    ``torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)`` becomes
    ``optadam.torch.SGD(lr=0.1, momentum=0.9, nesterov=True)``.

    Args:
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`).
      momentum: μ, >= 0; 0 keeps no buffer.
      dampening: τ, any real number (torch does not check it).
      weight_decay: λ (coupled: added to the gradient), >= 0.
      nesterov: Nesterov momentum; as in torch, needs μ > 0 and τ = 0.
      maximize: ascend the objective.
      foreach, differentiable, fused: torch implementation switches; accepted, no effect.

    Example:
      >>> import jax.numpy as jnp, optax, optadam.torch
      >>> tx = optadam.torch.SGD(lr=0.5, momentum=0.9)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)
      Array([0.5, 2.5], dtype=float32)
    """
    defaults = {
        "lr": lr,
        "momentum": momentum,
        "dampening": dampening,
        "weight_decay": weight_decay,
        "nesterov": nesterov,
        "maximize": maximize,
        "foreach": foreach,
        "differentiable": differentiable,
        "fused": fused,
    }
    return torch_optimizer("SGD", params, defaults, _check, _chain, ("lr", "momentum"))


def _check(group: dict[str, Any]) -> None:
    """torch 2.13's SGD constructor checks (``value < 0`` refused, so NaN passes, as in torch)."""
    check_lr(group["lr"], sgd=True)
    not_below_zero("momentum", group["momentum"], "Invalid momentum value")
    not_below_zero("weight_decay", group["weight_decay"], "Invalid weight_decay value")
    real("dampening", group["dampening"])
    check_flags(group, ("nesterov", "maximize"))
    check_switches(group, ("foreach", "differentiable", "fused"))
    momentum, dampening = np.asarray(group["momentum"]), np.asarray(group["dampening"])
    if group["nesterov"] and (np.any(momentum <= 0) or np.any(dampening != 0)):
        raise ValueError(
            "nesterov=True requires a momentum > 0 and zero dampening (torch: Nesterov momentum "
            f"requires a momentum and zero dampening), got momentum={group['momentum']!r}, "
            f"dampening={group['dampening']!r}"
        )


def _chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
    buffer = None
    if not is_zero(group["momentum"]):  # torch keeps no buffer for momentum 0
        buffer = scale_by_momentum_buffer(
            hyperparams["momentum"], group["dampening"], group["nesterov"], t
        )
    return (
        negate(group["maximize"]),
        coupled_decay(group["weight_decay"]),
        buffer,
        learning_rate(hyperparams["lr"]),
    )
