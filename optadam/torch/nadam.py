r"""torch.optim.NAdam: Adam with Nesterov momentum on a momentum-decay schedule (Dozat, 2016).

torch 2.13's ``_single_tensor_nadam``, per parameter, with γ = lr, (β1, β2) = betas, λ =
weight_decay, ψ = momentum_decay and t = torch's ``step`` (1 at the first step)::

    g_t     = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    θ_{t-1} = θ_{t-1} · (1 − γλ)                  decoupled_weight_decay
    g_t     = g_t + λ·θ_{t-1}                      otherwise, if λ ≠ 0
    μ_t     = β1·(1 − ½·0.96^(tψ))                 the momentum schedule (torch's mu)
    μ_{t+1} = β1·(1 − ½·0.96^((t+1)ψ))             (mu_next)
    Π_t     = Π_{t-1}·μ_t,  Π_0 = 1                mu_product, a float32 scalar in torch
    m_t     = β1·m_{t-1} + (1 − β1)·g_t            exp_avg
    n_t     = β2·n_{t-1} + (1 − β2)·g_t²           exp_avg_sq
    d_t     = √(n_t / (1 − β2^t)) + ε
    θ_t     = θ_{t-1} − γ(1 − μ_t)/(1 − Π_t) · g_t/d_t − γμ_{t+1}/(1 − Π_t·μ_{t+1}) · m_t/d_t

:func:`optadam.nadam` (and optax) has no momentum schedule (μ_t = β1), and 1 − β1^t and
1 − β1^(t+1) in place of the products. In code, as in optadam, ``mu`` and ``nu`` are the moments
m and n; ``mu_t``, ``mu_next`` and ``mu_product`` are the schedule's μ_t, μ_{t+1} and Π_t (torch's
names).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam._leafwise import map_leaves, replicated_scalar
from optadam.adam import init_moments
from optadam.torch._common import (
    TorchOptimizer,
    adam_family_chain,
    adam_moments,
    at_least_zero,
    check_adam_family,
    one_minus_power,
    torch_optimizer,
)


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`."""

    mu_product: jax.Array  # Π_t = μ_1···μ_t, a float32 scalar rounded each step, as torch's
    mu: optax.Updates  # m_t: EMA of gradients (torch's exp_avg), in the params' dtype
    nu: optax.Updates  # n_t: EMA of squared gradients (exp_avg_sq), at least float32


def scale_by_nadam(
    b1: jax.Array,
    b2: jax.Array,
    eps: jax.typing.ArrayLike,
    momentum_decay: jax.typing.ArrayLike,
    t: jax.Array,
) -> optax.GradientTransformation:
    r"""torch's NAdam direction at step ``t`` (see the module docstring).

    Π_t is stored in float32 and rounded each step, as torch does with its default dtype: under
    ``torch.set_default_dtype(torch.float64)`` torch keeps it in float64 instead, and float64 runs
    then differ by up to ~2e-10 relative over 1,000 steps (at lr 1e-2).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByNadamState`.
    """

    def init_fn(params: optax.Params) -> ScaleByNadamState:
        mu, nu = init_moments(params, None, None)
        return ScaleByNadamState(mu_product=replicated_scalar(params, 1, jnp.float32), mu=mu, nu=nu)

    def update_fn(
        updates: optax.Updates, state: ScaleByNadamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByNadamState]:
        del params
        c2 = one_minus_power(b2, t)
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
        mu_product = state.mu_product * mu_t.astype(jnp.float32)  # rounded as torch's
        wide_product = mu_product.astype(mu_t.dtype)  # then read as torch reads it: in float64
        g_scale = (1 - mu_t) / (1 - wide_product)
        mu_scale = mu_next / (1 - wide_product * mu_next)

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            d = jnp.sqrt(nu / c2) + eps
            return g_scale * (g / d) + mu_scale * (mu / d)

        updates, mu, nu = map_leaves(moments, direction, updates, state.mu, state.nu)
        return updates, ScaleByNadamState(mu_product=mu_product, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def NAdam(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 2e-3,
    betas: tuple[jax.typing.ArrayLike, jax.typing.ArrayLike] = (0.9, 0.999),
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0,
    momentum_decay: jax.typing.ArrayLike = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    foreach: bool | None = None,
    maximize: bool = False,
    capturable: bool = False,
    differentiable: bool = False,
) -> TorchOptimizer:
    r"""torch.optim.NAdam, same arguments and defaults (less ``params``), see the module.

    ``torch.optim.NAdam(model.parameters(), lr=1e-3, momentum_decay=4e-3)`` becomes
    ``optadam.torch.NAdam(lr=1e-3, momentum_decay=4e-3)``.

    Args:
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`).
      betas: (β1, β2), each in [0, 1).
      eps: ε, added to √n̂_t, >= 0.
      weight_decay: λ, >= 0; added to the gradient, or with ``decoupled_weight_decay`` applied to
        the parameters as θ(1 − γλ).
      momentum_decay: ψ, >= 0.
      decoupled_weight_decay: AdamW-style decay (torch's NAdamW).
      maximize: ascend the objective.
      foreach, capturable, differentiable: torch implementation switches; accepted, no effect.
    """
    defaults = {
        "lr": lr,
        "betas": betas,
        "eps": eps,
        "weight_decay": weight_decay,
        "momentum_decay": momentum_decay,
        "decoupled_weight_decay": decoupled_weight_decay,
        "maximize": maximize,
        "foreach": foreach,
        "capturable": capturable,
        "differentiable": differentiable,
    }

    def check(group: dict[str, Any]) -> None:
        check_adam_family(group)
        at_least_zero("momentum_decay", group["momentum_decay"], "Invalid momentum_decay value")

    def chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
        b1, b2 = hyperparams["betas"]
        direction = scale_by_nadam(b1, b2, group["eps"], group["momentum_decay"], t)
        return adam_family_chain(group, hyperparams["lr"], direction)

    return torch_optimizer("NAdam", params, defaults, check, chain, ("lr", "betas"))
