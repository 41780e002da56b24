r"""torch.optim.RAdam: rectified Adam, with coupled or decoupled weight decay.

torch 2.13's ``_single_tensor_radam``, per parameter, with γ = lr, (β1, β2) = betas, λ =
weight_decay and t = torch's ``step`` (1 at the first step)::

    g_t     = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    θ_{t-1} = θ_{t-1} · (1 − γλ)                 decoupled_weight_decay
    g_t     = g_t + λ·θ_{t-1}                     otherwise, if λ ≠ 0
    m_t     = β1·m_{t-1} + (1 − β1)·g_t           exp_avg
    v_t     = β2·v_{t-1} + (1 − β2)·g_t²          exp_avg_sq
    m̂_t     = m_t / (1 − β1^t)
    ρ_∞     = 2 / (1 − β2) − 1
    ρ_t     = ρ_∞ − 2t·β2^t / (1 − β2^t)
    r_t     = √((ρ_t − 4)(ρ_t − 2)ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)ρ_t))
    l_t     = √(1 − β2^t) / (√v_t + ε)            torch's adaptive_lr
    θ_t     = θ_{t-1} − γ·m̂_t·l_t·r_t             if ρ_t > 5
    θ_t     = θ_{t-1} − γ·m̂_t                     otherwise

:func:`optadam.scale_by_radam` (and optax) divide by √v̂_t + ε = √v_t/√(1 − β2^t) + ε, which scales
ε by √(1 − β2^t) relative to torch's, and rectify from ρ_t >= 5.
"""

from __future__ import annotations

from typing import Any

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
    one_minus_power,
    torch_optimizer,
)
from optadam.torch.adam import AdamMoments


def scale_by_radam(
    b1: jax.Array, b2: jax.Array, eps: jax.typing.ArrayLike, t: jax.Array
) -> optax.GradientTransformation:
    r"""torch's RAdam direction at step ``t``: m̂_t·l_t·r_t once ρ_t > 5, m̂_t before (see the
    module docstring).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`optadam.torch.adam.AdamMoments`.
    """

    def init_fn(params: optax.Params) -> AdamMoments:
        return AdamMoments(*init_moments(params, None, None))

    def update_fn(
        updates: optax.Updates, state: AdamMoments, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AdamMoments]:
        del params
        c1, c2 = one_minus_power(b1, t), one_minus_power(b2, t)  # bias corrections, once per step
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * (1 - c2) / c2  # β2^t = 1 − c2
        rectify = rho > 5
        r_squared = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        # r is unused before the threshold, where r² may be negative; 1 keeps r and its gradient
        # finite there.
        r = jnp.sqrt(jnp.where(rectify, r_squared, 1.0))

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            mu_hat = mu / c1
            adaptive_lr = jnp.sqrt(c2) / (jnp.sqrt(nu) + eps)
            return jnp.where(rectify, mu_hat * adaptive_lr * r, mu_hat)

        updates, mu, nu = map_leaves(moments, direction, updates, state.mu, state.nu)
        return updates, AdamMoments(mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def RAdam(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> TorchOptimizer:
    r"""torch.optim.RAdam, same arguments and defaults (less ``params``), see the module.

    ``torch.optim.RAdam(model.parameters(), lr=1e-3, weight_decay=0.01,
    decoupled_weight_decay=True)`` becomes ``optadam.torch.RAdam(lr=1e-3, weight_decay=0.01,
    decoupled_weight_decay=True)``.

    Args:
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`).
      betas: (β1, β2), each in [0, 1).
      eps: ε, added to √v_t, >= 0.
      weight_decay: λ, >= 0; added to the gradient, or with ``decoupled_weight_decay`` applied to
        the parameters as θ(1 − γλ).
      decoupled_weight_decay: AdamW-style decay.
      maximize: ascend the objective.
      foreach, capturable, differentiable: torch implementation switches; accepted, no effect.
    """
    defaults = {
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
        "maximize": maximize,
        "foreach": foreach,
        "capturable": capturable,
        "decoupled_weight_decay": decoupled_weight_decay,
        "differentiable": differentiable,
    }

    def chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
        b1, b2 = hyperparams["betas"]
        direction = scale_by_radam(b1, b2, group["eps"], t)
        return adam_family_chain(group, hyperparams["lr"], direction)

    return torch_optimizer("RAdam", params, defaults, check_adam_family, chain, ("lr", "betas"))
