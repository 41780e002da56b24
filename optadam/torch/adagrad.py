r"""torch.optim.Adagrad: with learning-rate decay, an initial accumulator and weight decay.

torch 2.13's ``_single_tensor_adagrad``, per parameter, with γ = lr, η = lr_decay, λ =
weight_decay and t = torch's ``step`` (1 at the first step)::

    g_t = −∇f(θ_{t-1})  if maximize  else  ∇f(θ_{t-1})
    g_t = g_t + λ·θ_{t-1}                    if λ ≠ 0
    γ̃_t = γ / (1 + (t − 1)·η)                torch's clr
    s_t = s_{t-1} + g_t²                     sum, s_0 = initial_accumulator_value
    θ_t = θ_{t-1} − γ̃_t · g_t / (√s_t + ε)

γ̃_t comes from the group's lr and torch's step t, so lr_decay is folded into the learning rate. The
direction differs from :func:`optadam.scale_by_adagrad` (and optax), which put ε inside the root.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optadam import _dtypes
from optadam._leafwise import full_like, map_leaves
from optadam.adagrad import ScaleByAdagradState, adagrad_kernel
from optadam.torch._common import (
    TorchOptimizer,
    at_least_zero,
    check_flags,
    check_lr,
    check_switches,
    coupled_decay,
    learning_rate,
    negate,
    torch_optimizer,
)


def scale_by_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike, eps: jax.typing.ArrayLike
) -> optax.GradientTransformation:
    r"""torch's Adagrad direction: ``s_t = s_{t-1} + g_t²``, ``u_t = g_t / (√s_t + ε)``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`optadam.ScaleByAdagradState`.
    """

    def init_fn(params: optax.Params) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            sum_of_squares=full_like(params, initial_accumulator_value, _dtypes.second_moment_dtype)
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdagradState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdagradState]:
        del params

        def moments(g: Any, s: Any) -> tuple[Any, ...]:
            return (s + g * g,)

        def direction(g: Any, s: Any) -> Any:
            return g / (jnp.sqrt(s) + eps)

        native = adagrad_kernel(eps, eps_in_sqrt=False)
        updates, sum_of_squares = map_leaves(
            moments, direction, updates, state.sum_of_squares, kernel=native
        )
        return updates, ScaleByAdagradState(sum_of_squares=sum_of_squares)

    return optax.GradientTransformation(init_fn, update_fn)


def Adagrad(  # noqa: N802 (torch.optim's class name)
    params: Any = None,
    lr: optax.ScalarOrSchedule = 1e-2,
    lr_decay: jax.typing.ArrayLike = 0,
    weight_decay: jax.typing.ArrayLike = 0,
    initial_accumulator_value: jax.typing.ArrayLike = 0,
    eps: jax.typing.ArrayLike = 1e-10,
    foreach: bool | None = None,
    *,
    maximize: bool = False,
    differentiable: bool = False,
    fused: bool | None = None,
) -> TorchOptimizer:
    r"""torch.optim.Adagrad, same arguments and defaults, see the module.

    ``torch.optim.Adagrad(model.parameters(), lr=0.05, lr_decay=1e-4)`` becomes
    ``optadam.torch.Adagrad(lr=0.05, lr_decay=1e-4)``.

    Args:
      params: torch's first argument: None (every leaf, one group), a selector of leaves, or a
        list of param group dicts (see :mod:`optadam.torch`).
      lr: γ, a number >= 0, an array, or a schedule: a callable of the step count (0 at the first
        step; it plays the role of torch's LR scheduler, see :mod:`optadam.torch`). lr_decay
        divides it, schedule or not.
      lr_decay: η, >= 0.
      weight_decay: λ (coupled: added to the gradient), >= 0.
      initial_accumulator_value: s_0, >= 0. As in torch, for every group: a group's own value is
        not used (a warning says so).
      eps: ε, added to the root (outside it), >= 0.
      maximize: ascend the objective.
      foreach, differentiable, fused: torch implementation switches; accepted, no effect.
    """
    defaults = {
        "lr": lr,
        "lr_decay": lr_decay,
        "eps": eps,
        "weight_decay": weight_decay,
        "initial_accumulator_value": initial_accumulator_value,
        "foreach": foreach,
        "maximize": maximize,
        "differentiable": differentiable,
        "fused": fused,
    }
    for group in params if isinstance(params, (list, tuple)) else []:
        value = group.get("initial_accumulator_value", initial_accumulator_value)
        if isinstance(group, dict) and value != initial_accumulator_value:
            warnings.warn(
                f"a param group's initial_accumulator_value ({value}) is not used: torch.optim."
                "Adagrad fills every group's sum with the constructor's "
                f"({initial_accumulator_value}), and so does optadam.torch",
                stacklevel=2,
            )

    def chain(group: dict[str, Any], hyperparams: dict[str, Any], t: jax.Array) -> tuple[Any, ...]:
        decayed_lr = hyperparams["lr"] / (1 + (t - 1) * group["lr_decay"])  # torch's clr
        return (
            negate(group["maximize"]),
            coupled_decay(group["weight_decay"]),
            scale_by_adagrad(initial_accumulator_value, group["eps"]),
            learning_rate(decayed_lr),
        )

    return torch_optimizer("Adagrad", params, defaults, _check, chain, ("lr",))


def _check(group: dict[str, Any]) -> None:
    """torch 2.13's Adagrad constructor checks: ``not 0.0 <= value`` refused."""
    check_lr(group["lr"])
    at_least_zero("lr_decay", group["lr_decay"], "Invalid lr_decay value")
    at_least_zero("weight_decay", group["weight_decay"], "Invalid weight_decay value")
    at_least_zero(
        "initial_accumulator_value",
        group["initial_accumulator_value"],
        "Invalid initial_accumulator_value value",
    )
    at_least_zero("eps", group["eps"], "Invalid epsilon value")
    check_flags(group, ("maximize",))
    check_switches(group, ("foreach", "differentiable", "fused"))
