"""What every optadam.torch optimizer shares: param groups, one step count, the chain around its
step direction, torch's checks, and the pieces of math several optimizers use.

Each param group runs ``chain(maximize, coupled weight decay, direction, [momentum], learning rate,
decoupled weight decay)`` over its own leaves, built at every update from the group's values: its
schedulable hyperparameters (``lr``, ``momentum``, ``betas``) from the state, the others from the
constructor, and torch's step t from the one count in the state. The whole is wrapped so that
complex leaves are seen as pairs of reals -- torch's ``view_as_real``, which makes torch's second
moments per component (re², im²), not |g|² -- and so that None gradients are refused. Pieces an
option leaves out are left out of the chain (and so out of the state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam import _checks, _dtypes
from optadam._leafwise import is_none, map_leaves, safe_increment, zero_count, zeros_like
from optadam._learning_rate import scale_by_learning_rate
from optadam.torch import _groups
from optadam.torch._groups import TorchState, group_hyperparams, with_group_hyperparams

__all__ = ["TorchState", "group_hyperparams", "with_group_hyperparams"]

# A group's chain: (its values, its schedulable values as arrays, torch's step t) -> the pieces.
Chain = Callable[[dict[str, Any], dict[str, Any], jax.Array], tuple[Any, ...]]


class TorchOptimizer(optax.GradientTransformationExtraArgs):
    """An optax transformation that remembers the torch.optim constructor it reproduces.

    Use it as any ``optax.GradientTransformation``; its state is a :class:`TorchState`.
    :func:`optadam.torch.state_dict` reads the attributes to write torch's ``param_groups``;
    wrapping the transformation (``optax.chain``, ``inject_hyperparams``) keeps working but drops
    them.
    """

    torch_name: str  # the torch.optim class, e.g. "Adam"
    defaults: dict[str, Any]  # the keyword arguments, as torch's optimizer.defaults
    # torch's optimizer.param_groups: "params" (the selector) and every hyperparameter. For the
    # schedulable ones (lr, momentum, betas) these are the initial values; the current ones are
    # in the state (group_hyperparams).
    param_groups: tuple[dict[str, Any], ...]
    schedulable: tuple[str, ...]  # the hyperparameters kept in the state, e.g. ("lr", "betas")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        return f"optadam.torch.{self.torch_name}({args})"


def torch_optimizer(
    torch_name: str,
    params: Any,
    defaults: dict[str, Any],
    check: Callable[[dict[str, Any]], None],
    chain: Chain,
    schedulable: tuple[str, ...],
) -> TorchOptimizer:
    """The optimizer over the param groups of ``params`` (torch's first argument, see
    :mod:`optadam.torch._groups`), each group checked by ``check`` and run by ``chain``.

    A group's ``lr`` may be a schedule (a callable of the count): the update that takes the count
    from k to k + 1 uses ``lr(k)``, and the state's lr is then ``lr(k + 1)``, the next step's.
    """
    check(defaults)
    groups = _groups.param_groups(params, defaults)
    if params is not None:
        for k, group in enumerate(groups):
            try:
                check(group)
            except (TypeError, ValueError) as error:
                raise type(error)(f"param_groups[{k}]: {error}") from None

    def schedulable_values(group: dict[str, Any], count: Any) -> dict[str, Any]:
        values = {key: group[key] for key in schedulable}
        if callable(group["lr"]):
            values["lr"] = group["lr"](count)
        return values

    def group_tx(k: int, hyperparams: dict[str, Any], t: jax.Array) -> Any:
        return optax.chain(*(s for s in chain(groups[k], hyperparams, t) if s is not None))

    def init_fn(params: optax.Params) -> TorchState:
        owner = _groups.owners(groups, params)
        count = zero_count(params)
        hyperparams = tuple(_groups.as_arrays(schedulable_values(g, count), params) for g in groups)
        states = tuple(
            group_tx(k, hyperparams[k], count).init(_groups.split(params, owner, k))
            for k in range(len(groups))
        )
        return TorchState(count=count, hyperparams=hyperparams, groups=states)

    def update_fn(
        updates: optax.Updates,
        state: TorchState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, TorchState]:
        del extra_args  # optax's convention: extra arguments are for whoever wants them
        owner = _groups.owners(groups, updates if params is None else params)
        t = safe_increment(state.count)
        parts, states, hyperparams = [], [], []
        for k, group in enumerate(groups):
            now = state.hyperparams[k]
            if callable(group["lr"]):
                now = {**now, "lr": jnp.asarray(group["lr"](state.count), now["lr"].dtype)}
            mine = None if params is None else _groups.split(params, owner, k)
            part, inner = group_tx(k, now, t).update(
                _groups.split(updates, owner, k), state.groups[k], mine
            )
            parts.append(part)
            states.append(inner)
            if callable(group["lr"]):  # the state shows the lr of the next step, as torch's group
                now = {**now, "lr": jnp.asarray(group["lr"](t), now["lr"].dtype)}
            hyperparams.append(now)
        return _groups.merge(parts, updates, owner), TorchState(
            count=t, hyperparams=tuple(hyperparams), groups=tuple(states)
        )

    tx = _as_torch_sees_it(optax.GradientTransformationExtraArgs(init_fn, update_fn))
    optimizer = TorchOptimizer(tx.init, tx.update)
    optimizer.torch_name = torch_name
    optimizer.defaults = defaults
    optimizer.param_groups = groups
    optimizer.schedulable = schedulable
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


def learning_rate(lr: jax.Array) -> optax.GradientTransformation:
    """u ← −γ·u, with γ this step's lr (from the state); no state."""
    return scale_by_learning_rate(lr)


def decoupled_decay(lr: jax.Array, weight_decay: Any) -> optax.GradientTransformation | None:
    """torch's decoupled weight decay θ ← θ·(1 − γλ), then the step: θ ← θ·(1 − γλ) + u.

    After :func:`learning_rate`, with that step's γ. torch rounds as its two in-place ops do
    (``param.mul_(1 − γλ)``, then the step's ``param.addcdiv_``): the factor 1 − γλ to the params'
    dtype (in float32, 1 − 1e-4 is 0.99989998, a decay 1.7e-4 larger than γλ), then θ·(1 − γλ)
    before the step is added. The second matters once a schedule has made γλ small: the decay is
    then a few ulps of θ, and rounding it is a large part of it, the same way step after step
    while θ barely moves (1e-5 relative from torch after 1,000 float32 steps if applied unrounded).
    So the update is the difference between torch's new θ and θ, u' = (θ·(1 − γλ) + u) − θ:
    exact when the two are within a factor 2 of each other (Sterbenz), so θ + u' is torch's new θ.
    """
    if is_zero(weight_decay):
        return None

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError(
                "decoupled weight decay needs the params: call tx.update(g, state, params)"
            )
        # The barrier keeps XLA from simplifying 1 − (1 − γλ) to γλ, which drops a rounding.
        shrink = jax.lax.optimization_barrier(1 - lr * weight_decay)

        def unchanged(u: Any, theta: Any) -> tuple[Any, ...]:
            return (theta,)  # the params ride along as read-only "state"

        def decayed(u: Any, theta: Any) -> Any:
            decay = 1 - jnp.asarray(shrink, theta.dtype)  # exact: the factor is in [1/2, 1]
            # θ·(1 − γλ) rounded, as θ − θ·decay: XLA fuses a product with the sum after it
            # into one multiply-add, rounded once. Here that rounds θ − θ·decay, the exact
            # θ·(1 − γλ), once; unfused, θ·decay is rounded first, far below θ's last digit.
            shrunk = theta - theta * decay
            return (shrunk + u) - theta

        updates, _ = map_leaves(unchanged, decayed, updates, params)
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def one_minus_power(beta: Any, t: jax.Array) -> jax.Array:
    """1 − β^t, as −expm1(t·ln β).

    torch computes its bias corrections from Python floats, in double precision. In float32,
    ``1 − β**t`` loses digits, and an Adam run drifts ~3e-6 from torch's over 1,000 steps;
    −expm1(t·ln β) keeps them. β comes from the state, as a float32 array without x64: 0.999 is
    then 0.99900001, but the moments use the same β, so v_t / (1 − β2^t) stays an average of g².
    """
    return -jnp.expm1(t * jnp.log(beta))


# --- torch's per-leaf math that several optimizers share --------------------------------------


def adam_moments(g: Any, mu: Any, nu: Any, b1: Any, b2: Any) -> tuple[Any, Any]:
    """torch's Adam moments (Adam, AdamW, NAdam, RAdam): ``exp_avg.lerp_(g, 1 − β1)`` and
    ``exp_avg_sq·β2 + (1 − β2)·g²``, i.e. m_t = β1·m_{t-1} + (1 − β1)·g_t, v_t likewise."""
    return mu + (1 - b1) * (g - mu), b2 * nu + (1 - b2) * g * g


class MomentumBufferState(NamedTuple):
    """State of :func:`scale_by_momentum_buffer`."""

    trace: optax.Params  # b_t: torch's momentum_buffer, in the params' dtype


def scale_by_momentum_buffer(
    momentum: Any, dampening: Any, nesterov: bool, t: jax.Array
) -> optax.GradientTransformation:
    r"""torch's momentum buffer (SGD, RMSprop): ``b_1 = d_1``, ``b_t = μ·b_{t-1} + (1 − τ)·d_t``;
    the update is ``d_t + μ·b_t`` with Nesterov, else ``b_t``.

    Without dampening b_0 = 0 gives b_1 = d_1 anyway; with it, the first step is a copy.
    """

    def init_fn(params: optax.Params) -> MomentumBufferState:
        return MomentumBufferState(trace=zeros_like(params, _dtypes.first_moment_dtype))

    def update_fn(
        updates: optax.Updates, state: MomentumBufferState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MomentumBufferState]:
        del params

        def moments(d: Any, b: Any) -> tuple[Any, ...]:
            return (jnp.where(t == 1, d, momentum * b + (1 - dampening) * d),)

        def direction(d: Any, b: Any) -> Any:
            return d + momentum * b if nesterov else b

        updates, trace = map_leaves(moments, direction, updates, state.trace)
        return updates, MomentumBufferState(trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


# --- torch's constructor checks ----------------------------------------------------------------


def real(name: str, value: Any) -> np.ndarray | None:
    """A real number or array (None when traced), as torch's comparisons need."""
    return _checks._real_array(name, value)


def at_least_zero(name: str, value: Any, torch_reason: str) -> None:
    """torch's ``if not 0.0 <= value: raise ValueError(...)``: refuses negatives and NaN."""
    array = real(name, value)
    if array is not None and not np.all(array >= 0):
        raise ValueError(f"{name} must be >= 0, got {value!r} (torch: {torch_reason}: {value})")


def not_below_zero(name: str, value: Any, torch_reason: str) -> None:
    """torch SGD's ``if value < 0.0: raise ValueError(...)``: refuses negatives, lets NaN by."""
    array = real(name, value)
    if array is not None and np.any(array < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r} (torch: {torch_reason}: {value})")


def check_lr(lr: Any, sgd: bool = False) -> None:
    """A number >= 0, an array, or a schedule (a callable of the step count)."""
    if callable(lr) and not isinstance(lr, (jax.Array, np.ndarray)):
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(
            "lr must be a number, an array or a schedule (a callable of the step count), "
            f"got {lr!r} of type {type(lr).__name__}"
        )
    (not_below_zero if sgd else at_least_zero)("lr", lr, "Invalid learning rate")


def check_betas(betas: Any) -> tuple[Any, Any]:
    """torch's ``betas=(β1, β2)``: ``0 <= β < 1`` each."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        array = real(f"betas[{i}]", beta)
        if array is not None and not np.all((array >= 0) & (array < 1)):
            raise ValueError(
                f"betas[{i}] must be in [0, 1), got {beta!r} (torch: Invalid beta parameter at "
                f"index {i}: {beta})"
            )
    return betas[0], betas[1]


def check_switches(group: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """torch's implementation switches: ``foreach``, ``fused``, ``capturable``, ``differentiable``.

    They choose how torch computes a step (a loop over tensors, one multi-tensor kernel, one fused
    kernel, tensors on the device for CUDA graphs, autograd through the step), not what it computes,
    so they are accepted and change nothing here. They are checked as torch checks them: None or a
    bool, and torch's two refusals (``fused`` with ``differentiable``, ``fused`` with ``foreach``).
    """
    for name in names:
        if group[name] is not None:
            _checks.boolean(name, group[name])
    if group.get("fused") and group.get("differentiable"):
        raise ValueError("fused=True does not support differentiable=True (as in torch)")
    if group.get("fused") and group.get("foreach"):
        raise ValueError("fused=True and foreach=True cannot be set together (as in torch)")


def check_flags(group: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        _checks.boolean(name, group[name])


# --- the Adam family: Adam, AdamW, NAdam, RAdam -----------------------------------------------


def check_adam_family(group: Mapping[str, Any]) -> None:
    """torch's checks of Adam, AdamW, NAdam and RAdam: lr, eps, betas and weight_decay."""
    check_lr(group["lr"])
    at_least_zero("eps", group["eps"], "Invalid epsilon value")
    check_betas(group["betas"])
    at_least_zero("weight_decay", group["weight_decay"], "Invalid weight_decay value")
    check_flags(group, ("maximize", "decoupled_weight_decay"))
    switches = ("foreach", "fused", "capturable", "differentiable")
    check_switches(group, tuple(s for s in switches if s in group))


def adam_family_chain(
    group: Mapping[str, Any], lr: jax.Array, direction: optax.GradientTransformation
) -> tuple[optax.GradientTransformation | None, ...]:
    """maximize, then weight decay coupled (added to g) or decoupled (θ·(1 − γλ), after the
    learning rate), around an Adam-family ``direction``."""
    wd, decoupled = group["weight_decay"], group["decoupled_weight_decay"]
    return (
        negate(group["maximize"]),
        None if decoupled else coupled_decay(wd),
        direction,
        learning_rate(lr),
        decoupled_decay(lr, wd) if decoupled else None,
    )
