"""What every optadam.torch optimizer shares: the chain around its step direction, and a record of
the torch.optim constructor it reproduces.

Every optimizer is ``chain(maximize, coupled weight decay, direction, [momentum], learning rate,
decoupled weight decay)``, wrapped so that complex leaves are seen as pairs of reals -- torch's
``view_as_real``, which makes torch's second moments per component (re², im²), not |g|² -- and so
that None gradients are refused. Pieces an option leaves out are left out of the chain (and so out
of the state).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optadam import _checks
from optadam._leafwise import is_none, map_leaves, safe_increment, zero_count
from optadam._learning_rate import scale_by_learning_rate


class TorchOptimizer(optax.GradientTransformationExtraArgs):
    """An optax transformation that remembers the torch.optim constructor it reproduces.

    Use it as any ``optax.GradientTransformation``. :func:`optadam.torch.state_dict` reads the two
    attributes to write torch's ``param_groups``; wrapping the transformation (``optax.chain``,
    ``inject_hyperparams``) keeps working but drops them.
    """

    torch_name: str  # the torch.optim class, e.g. "Adam"
    param_group: dict[str, Any]  # hyperparameters as torch keeps them in a param group

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.param_group.items())
        return f"optadam.torch.{self.torch_name}({args})"


def torch_optimizer(
    torch_name: str, param_group: dict[str, Any], *steps: optax.GradientTransformation | None
) -> TorchOptimizer:
    """``optax.chain`` of the steps that are not None, with torch's view of the parameters."""
    tx = _as_torch_sees_it(optax.chain(*(s for s in steps if s is not None)))
    optimizer = TorchOptimizer(tx.init, tx.update)
    optimizer.torch_name = torch_name
    optimizer.param_group = param_group
    return optimizer


def _as_real_pairs(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: jnp.stack([x.real, x.imag], axis=-1) if jnp.iscomplexobj(x) else x, tree
    )


def _as_complex_like(tree: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda u, x: jax.lax.complex(u[..., 0], u[..., 1]) if jnp.iscomplexobj(x) else u, tree, like
    )


def _refuse_missing_gradients(updates: optax.Updates, params: optax.Params | None) -> None:
    """torch skips a parameter whose ``.grad`` is None: its state and its own step count stay put.
    optadam.torch keeps one step count for all parameters, so it cannot follow, and refuses."""
    g_paths, _ = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_none)
    p_leaves = [] if params is None else jax.tree.leaves(params, is_leaf=is_none)
    for i, (path, g) in enumerate(g_paths):
        if g is None and (i >= len(p_leaves) or p_leaves[i] is not None):
            raise ValueError(
                f"the gradient at {jax.tree_util.keystr(path) or 'the root'} is None: torch would "
                "skip that parameter and leave its step count behind, but optadam.torch keeps one "
                "step count for all parameters; give it a gradient, or take it out of the tree"
            )


def _as_torch_sees_it(
    tx: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` with complex leaves viewed as a trailing axis of (real, imag) pairs, as torch's
    ``view_as_real`` does (the state of a complex leaf holds real arrays of shape ``(*shape, 2)``),
    and with None gradient leaves refused (see :func:`_refuse_missing_gradients`)."""

    def init_fn(params: optax.Params) -> optax.OptState:
        return tx.init(_as_real_pairs(params))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        _refuse_missing_gradients(updates, params)
        real_updates, state = tx.update(
            _as_real_pairs(updates), state, _as_real_pairs(params), **extra_args
        )
        return _as_complex_like(real_updates, updates), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def is_zero(value: Any) -> bool:
    """A Python-number 0: torch skips weight decay, momentum, ... when the number is 0."""
    return isinstance(value, (int, float)) and value == 0


def negate(maximize: bool) -> optax.GradientTransformation | None:
    """torch's ``maximize``: g ← −g, before anything else (so ascent on the objective)."""
    return optax.scale(-1.0) if maximize else None


def coupled_decay(weight_decay: Any) -> optax.GradientTransformation | None:
    """torch's weight decay when it is not decoupled: g ← g + λ·θ, before the direction."""
    return None if is_zero(weight_decay) else optax.add_decayed_weights(weight_decay)


def learning_rate(lr: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """u ← −γ_t·u, with γ_t = lr(count) for a schedule (count = torch's step − 1) or lr.

    A constant is turned into a schedule too, so that every optadam.torch state counts its steps
    (the ``count`` of this state is torch's ``step``).
    """
    return scale_by_learning_rate(lr if callable(lr) else lambda count: lr)


def decoupled_decay(
    lr: optax.ScalarOrSchedule, weight_decay: Any
) -> optax.GradientTransformation | None:
    """torch's decoupled weight decay θ ← θ·(1 − γ_tλ), as the update u ← u + ((1 − γ_tλ) − 1)·θ.

    After :func:`learning_rate`. torch multiplies by the factor 1 − γλ rounded to the parameters'
    compute dtype (float32 for float32 params): in float32, 1 − 1e-4 rounds to 0.99989998, so the
    decay torch applies is 1.7e-4 larger than γλ -- and AdamW runs drift apart by 2e-5 over 1,000
    steps unless the factor is rounded the same way here. Keeps its own step count, for γ_t.
    """
    if is_zero(weight_decay):
        return None

    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        return optax.ScaleByScheduleState(count=zero_count(params))

    def update_fn(
        updates: optax.Updates,
        state: optax.ScaleByScheduleState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        if params is None:
            raise ValueError(
                "decoupled weight decay needs the params: call tx.update(g, state, params)"
            )
        shrink = 1 - value_at(lr, state.count) * weight_decay

        def unchanged(u: Any, theta: Any) -> tuple[Any, ...]:
            return (theta,)  # the params ride along as read-only "state"

        def decayed(u: Any, theta: Any) -> Any:
            return u + (jnp.asarray(shrink, theta.dtype) - 1) * theta

        updates, _ = map_leaves(unchanged, decayed, updates, params)
        return updates, optax.ScaleByScheduleState(count=safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def value_at(lr: optax.ScalarOrSchedule, count: Any) -> Any:
    """A learning rate at a step count: lr(count) for a schedule, lr for a constant."""
    return lr(count) if callable(lr) else lr


def one_minus_power(beta: Any, t: jax.Array) -> jax.Array:
    """1 − β^t, as −expm1(t·ln β).

    torch computes its bias corrections from Python floats, in double precision. In float32,
    ``1 − β**t`` loses digits: 0.999 rounds to 0.99900001, so at t = 1 the correction is 1.3e-5 off
    (1.7e-4 for 0.9999), and an Adam run drifts ~3e-6 from torch's over 1,000 steps. ln β, taken
    here in double precision, keeps its digits in float32, and so does expm1.
    """
    log_beta = math.log(beta) if isinstance(beta, (int, float)) and beta > 0 else jnp.log(beta)
    return -jnp.expm1(t * log_beta)


def check_lr(lr: Any) -> None:
    _checks.scalar_or_schedule("lr", lr)


def check_betas(betas: Any) -> tuple[Any, Any]:
    """torch's ``betas=(β1, β2)``, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    _checks.in_unit_interval("betas[0]", betas[0])
    _checks.in_unit_interval("betas[1]", betas[1])
    return betas[0], betas[1]


def check_switches(**switches: Any) -> None:
    """torch's implementation switches: ``foreach``, ``fused``, ``capturable``, ``differentiable``.

    They choose how torch computes a step (a loop over tensors, one multi-tensor kernel, one fused
    kernel, tensors on the device for CUDA graphs, autograd through the step), not what it computes,
    so they are accepted and change nothing here. They are checked as torch checks them: None or a
    bool, and torch's two refusals (``fused`` with ``differentiable``, ``fused`` with ``foreach``).
    """
    for name, value in switches.items():
        if value is not None:
            _checks.boolean(name, value)
    if switches.get("fused") and switches.get("differentiable"):
        raise ValueError("fused=True does not support differentiable=True (as in torch)")
    if switches.get("fused") and switches.get("foreach"):
        raise ValueError("fused=True and foreach=True cannot be set together (as in torch)")
