r"""torch.optim.SGD: gradient descent with momentum, dampening, Nesterov and weight decay.

torch 2.13's ``_single_tensor_sgd``, per parameter, with γ = lr, λ = weight_decay, μ = momentum and
τ = dampening::

    g_t = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    g_t = g_t + λ·θ_{t-1}                                 if λ ≠ 0
    b_t = g_t  if t = 1  else  μ·b_{t-1} + (1 − τ)·g_t     if μ ≠ 0   (momentum_buffer)
    d_t = g_t + μ·b_t  if nesterov  else  b_t              if μ ≠ 0   (d_t = g_t otherwise)
    θ_t = θ_{t-1} − γ·d_t

Without dampening, b_t = μ·b_{t-1} + g_t from b_0 = 0 gives b_1 = g_1 too, so this is
:func:`optadam.scale_by_momentum`. torch's first-step copy matters only with τ ≠ 0, where
:func:`scale_by_dampened_momentum` keeps a step count to know the first step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _checks, _dtypes
from optadam._leafwise import map_leaves, safe_increment, zero_count, zeros_like
from optadam.momentum import scale_by_momentum
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


class ScaleByDampenedMomentumState(NamedTuple):
    """State of :func:`scale_by_dampened_momentum`."""

    count: jax.Array  # type: ignore[assignment]  # t: steps so far, int32, saturating
    trace: optax.Params  # b_t: torch's momentum_buffer, in the params' dtype


def scale_by_dampened_momentum(
    momentum: jax.typing.ArrayLike, dampening: jax.typing.ArrayLike
) -> optax.GradientTransformation:
    r"""torch's dampened momentum buffer: ``b_1 = g_1``, ``b_t = μ·b_{t-1} + (1 − τ)·g_t``.

    The update is b_t (torch refuses Nesterov with dampening).

    Args:
      momentum: μ, in [0, 1).
      dampening: τ, >= 0.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByDampenedMomentumState`.
    """
    _checks.in_unit_interval("momentum", momentum)
    _checks.non_negative("dampening", dampening)

    def init_fn(params: optax.Params) -> ScaleByDampenedMomentumState:
        return ScaleByDampenedMomentumState(
            count=zero_count(params), trace=zeros_like(params, _dtypes.first_moment_dtype)
        )

    def update_fn(
        updates: optax.Updates,
        state: ScaleByDampenedMomentumState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, ScaleByDampenedMomentumState]:
        del params
        t = safe_increment(state.count)

        def moments(g: Any, b: Any) -> tuple[Any, ...]:
            return (jnp.where(t == 1, g, momentum * b + (1 - dampening) * g),)

        def direction(g: Any, b: Any) -> Any:
            return b

        updates, trace = map_leaves(moments, direction, updates, state.trace)
        return updates, ScaleByDampenedMomentumState(count=t, trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


def SGD(  # noqa: N802 (torch.optim's class name)
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
      momentum: μ, in [0, 1); 0 keeps no buffer.
      dampening: τ, >= 0.
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
    param_group = {
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
    check_lr(lr)
    _checks.in_unit_interval("momentum", momentum)
    _checks.non_negative("dampening", dampening)
    _checks.non_negative("weight_decay", weight_decay)
    _checks.boolean("nesterov", nesterov)
    _checks.boolean("maximize", maximize)
    check_switches(foreach=foreach, differentiable=differentiable, fused=fused)
    if nesterov and (np.any(np.asarray(momentum) <= 0) or np.any(np.asarray(dampening) != 0)):
        raise ValueError(
            "nesterov=True requires a momentum > 0 and zero dampening (as in torch), got "
            f"momentum={momentum!r}, dampening={dampening!r}"
        )
    if is_zero(momentum):
        buffer = None
    elif is_zero(dampening):
        buffer = scale_by_momentum(momentum, nesterov)
    else:
        buffer = scale_by_dampened_momentum(momentum, dampening)
    return torch_optimizer(
        "SGD", param_group, negate(maximize), coupled_decay(weight_decay), buffer, learning_rate(lr)
    )
