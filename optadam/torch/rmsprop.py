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

The moving averages are written here in torch's form (:func:`scale_by_rms`), with ε outside the
root and v_t − ḡ_t² clamped at 0 (rounding can make it a hair negative, where torch's root is NaN);
the momentum buffer is SGD's (:func:`optadam.torch._common.scale_by_momentum_buffer`), before the
learning rate. optax.rmsprop differs: ε inside the root by default, a decay of 0.9 by default
(torch's α is 0.99), and its momentum trace is taken *after* the learning rate -- the same numbers
for a constant rate, not under a schedule. As torch, any α >= 0 and momentum >= 0 are accepted
(α > 1 makes v_t an extrapolation that can turn negative: NaN, as in torch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _dtypes
from optadam._leafwise import map_leaves, zeros_like
from optadam.torch._common import (
    TorchOptimizer,
    at_least_zero,
    check_flags,
    check_lr,
    check_switches,
    coupled_decay,
    is_zero,
    learning_rate,
    negate,
    scale_by_momentum_buffer,
    torch_optimizer,
)


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`."""

    nu: optax.Updates  # v_t: torch's square_avg, at least float32
    mu: optax.Updates | None  # ḡ_t: torch's grad_avg, centered only (else None: no memory)


def scale_by_rms(
    alpha: jax.typing.ArrayLike, eps: jax.typing.ArrayLike, centered: bool
) -> optax.GradientTransformation:
    r"""torch's RMSprop direction ``d_t = g_t / (√v_t + ε)`` (``√(v_t − ḡ_t²)`` when centered).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByRmsState`.
    """

    def init_fn(params: optax.Params) -> ScaleByRmsState:
        nu = zeros_like(params, _dtypes.second_moment_dtype)
        return ScaleByRmsState(
            nu=nu, mu=zeros_like(params, _dtypes.first_moment_dtype) if centered else None
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByRmsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByRmsState]:
        del params

        def plain_moments(g: Any, nu: Any) -> tuple[Any, ...]:
            return (alpha * nu + (1 - alpha) * g * g,)

        def plain_direction(g: Any, nu: Any) -> Any:
            return g / (jnp.sqrt(nu) + eps)

        def centered_moments(g: Any, nu: Any, mu: Any) -> tuple[Any, ...]:
            return alpha * nu + (1 - alpha) * g * g, mu + (1 - alpha) * (g - mu)

        def centered_direction(g: Any, nu: Any, mu: Any) -> Any:
            return g / (jnp.sqrt(jnp.maximum(nu - mu * mu, 0)) + eps)

        if state.mu is None:
            updates, nu = map_leaves(plain_moments, plain_direction, updates, state.nu)
            return updates, ScaleByRmsState(nu=nu, mu=None)
        updates, nu, mu = map_leaves(
            centered_moments, centered_direction, updates, state.nu, state.mu
        )
        return updates, ScaleByRmsState(nu=nu, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def RMSprop(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
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
      alpha: α, the decay of the moving averages, >= 0.
      eps: ε, added to the root (outside it), >= 0.
      weight_decay: λ (coupled: added to the gradient), >= 0.
      momentum: μ, >= 0; 0 keeps no buffer.
      centered: divide by the root of the variance, v_t − ḡ_t², instead of v_t.
      maximize: ascend the objective.
      capturable, foreach, differentiable: torch implementation switches; accepted, no effect.
    """
    defaults = {
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
    return torch_optimizer("RMSprop", params, defaults, _check, _chain, ("lr", "momentum"))


def _check(group: dict[str, Any]) -> None:
    """torch 2.13's RMSprop constructor checks: ``not 0.0 <= value`` refused."""
    check_lr(group["lr"])
    at_least_zero("eps", group["eps"], "Invalid epsilon value")
    at_least_zero("momentum", group["momentum"], "Invalid momentum value")
    at_least_zero("weight_decay", group["weight_decay"], "Invalid weight_decay value")
    at_least_zero("alpha", group["alpha"], "Invalid alpha value")
    check_flags(group, ("centered", "maximize"))
    check_switches(group, ("capturable", "foreach", "differentiable"))


def _chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
    buffer = None
    if not is_zero(group["momentum"]):  # torch keeps no buffer for momentum 0
        buffer = scale_by_momentum_buffer(hyperparams["momentum"], 0, False, t)
    return (
        negate(group["maximize"]),
        coupled_decay(group["weight_decay"]),
        scale_by_rms(group["alpha"], group["eps"], group["centered"]),
        buffer,
        learning_rate(hyperparams["lr"]),
    )
