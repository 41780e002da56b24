r"""torch.optim.Adam and torch.optim.AdamW (Adam with ``decoupled_weight_decay=True``).

torch 2.13's ``_single_tensor_adam``, per parameter, with γ = lr, (β1, β2) = betas, λ =
weight_decay and t = torch's ``step`` (1 at the first step)::

    g_t     = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    θ_{t-1} = θ_{t-1} · (1 − γλ)                     decoupled_weight_decay (AdamW)
    g_t     = g_t + λ·θ_{t-1}                         otherwise, if λ ≠ 0
    m_t     = β1·m_{t-1} + (1 − β1)·g_t               exp_avg (torch: exp_avg.lerp_(g, 1 − β1))
    v_t     = β2·v_{t-1} + (1 − β2)·g_t²              exp_avg_sq
    v_max_t = max(v_max_{t-1}, v_t)                   max_exp_avg_sq, amsgrad only
    m̂_t     = m_t / (1 − β1^t)
    √v̂_t    = √v_t / √(1 − β2^t)                      (√v_max_t / √(1 − β2^t) with amsgrad)
    θ_t     = θ_{t-1} − γ · m̂_t / (√v̂_t + ε)

The math of :func:`optadam.scale_by_adam`, but AMSGrad takes the maximum of the raw v_t and
corrects it after (:func:`optadam.scale_by_amsgrad` and optax take the maximum of v̂_t), and the
bias corrections are computed as torch's double-precision ones are, to float32's last digits
(see ``optadam.torch._common.one_minus_power``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam._leafwise import map_leaves
from optadam.adam import init_moments
from optadam.torch._common import (
    TorchOptimizer,
    adam_family_chain,
    adam_moments,
    check_adam_family,
    check_flags,
    one_minus_power,
    torch_optimizer,
)


class AdamMoments(NamedTuple):
    """State of :func:`scale_by_adam` and of RAdam's direction."""

    mu: optax.Updates  # m_t: torch's exp_avg, in the params' dtype
    nu: optax.Updates  # v_t: torch's exp_avg_sq, at least float32


class AmsgradMoments(NamedTuple):
    """State of :func:`scale_by_adam` with ``amsgrad``."""

    mu: optax.Updates  # m_t: torch's exp_avg
    nu: optax.Updates  # v_t: torch's exp_avg_sq
    nu_max: optax.Updates  # max of v_1 ... v_t: torch's max_exp_avg_sq (raw, not corrected)


def scale_by_adam(
    b1: jax.Array, b2: jax.Array, eps: jax.typing.ArrayLike, amsgrad: bool, t: jax.Array
) -> optax.GradientTransformation:
    r"""torch's Adam direction ``u_t = m̂_t / (√v_t / √(1 − β2^t) + ε)`` at step ``t`` (see the
    module docstring).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`AdamMoments`, or with ``amsgrad``
      :class:`AmsgradMoments`.
    """

    def init_fn(params: optax.Params) -> AdamMoments | AmsgradMoments:
        mu, nu = init_moments(params, None, None)
        return AmsgradMoments(mu, nu, nu) if amsgrad else AdamMoments(mu, nu)

    def update_fn(
        updates: optax.Updates,
        state: AdamMoments | AmsgradMoments,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, AdamMoments | AmsgradMoments]:
        del params
        c1, c2 = one_minus_power(b1, t), one_minus_power(b2, t)  # bias corrections, once per step

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            return (mu / c1) / (jnp.sqrt(nu) / jnp.sqrt(c2) + eps)

        def amsgrad_moments(g: Any, mu: Any, nu: Any, nu_max: Any) -> tuple[Any, ...]:
            mu, nu = adam_moments(g, mu, nu, b1, b2)
            return mu, nu, jnp.maximum(nu_max, nu)

        def amsgrad_direction(g: Any, mu: Any, nu: Any, nu_max: Any) -> Any:
            return direction(g, mu, nu_max)

        if isinstance(state, AmsgradMoments):
            updates, mu, nu, nu_max = map_leaves(
                amsgrad_moments, amsgrad_direction, updates, state.mu, state.nu, state.nu_max
            )
            return updates, AmsgradMoments(mu, nu, nu_max)
        updates, mu, nu = map_leaves(moments, direction, updates, state.mu, state.nu)
        return updates, AdamMoments(mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def Adam(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0,
    amsgrad: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
    decoupled_weight_decay: bool = False,
) -> TorchOptimizer:
    r"""torch.optim.Adam, same arguments and defaults (less ``params``), see the module.

    ``torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.95))`` becomes
    ``optadam.torch.Adam(lr=3e-4, betas=(0.9, 0.95))``.

    Args:
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`).
      betas: (β1, β2), each in [0, 1).
      eps: ε, added to √v̂ (outside the root), >= 0.
      weight_decay: λ, >= 0; added to the gradient, or with ``decoupled_weight_decay`` applied to
        the parameters as θ(1 − γλ).
      amsgrad: divide by the running maximum of v_t.
      maximize: ascend the objective.
      decoupled_weight_decay: AdamW's decay.
      foreach, capturable, differentiable, fused: torch implementation switches; accepted, no
        effect.

    Example:
      >>> import jax.numpy as jnp, optax, optadam.torch
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optadam.torch.Adam(lr=0.1)
      >>> updates, state = tx.update({"w": jnp.array([0.5, -3.0])}, tx.init(params))
      >>> optax.apply_updates(params, updates)["w"]  # Adam's first step is about γ·sign(g)
      Array([ 0.9, -1.9], dtype=float32)
    """
    defaults = {
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
        "amsgrad": amsgrad,
        "maximize": maximize,
        "foreach": foreach,
        "capturable": capturable,
        "differentiable": differentiable,
        "fused": fused,
        "decoupled_weight_decay": decoupled_weight_decay,
    }
    return _adam("Adam", params, defaults)


def AdamW(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    foreach: bool | None = None,
    capturable: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> TorchOptimizer:
    r"""torch.optim.AdamW: :func:`Adam` with ``decoupled_weight_decay=True`` and λ = 1e-2.

    ``θ_{t-1} ← θ_{t-1}·(1 − γλ)`` before Adam's step, with the learning rate γ of that step.
    optax.adamw's ``u + λθ`` scaled by −γ is the same update (and its default λ is 1e-4).
    """
    defaults = {
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
        "amsgrad": amsgrad,
        "maximize": maximize,
        "foreach": foreach,
        "capturable": capturable,
        "differentiable": differentiable,
        "fused": fused,
        "decoupled_weight_decay": True,
    }
    return _adam("AdamW", params, defaults)


def _adam(torch_name: str, params: Any, defaults: dict[str, Any]) -> TorchOptimizer:
    def check(group: dict[str, Any]) -> None:
        check_adam_family(group)
        check_flags(group, ("amsgrad",))

    def chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
        b1, b2 = hyperparams["betas"]
        direction = scale_by_adam(b1, b2, group["eps"], group["amsgrad"], t)
        return adam_family_chain(group, hyperparams["lr"], direction)

    return torch_optimizer(torch_name, params, defaults, check, chain, ("lr", "betas"))
