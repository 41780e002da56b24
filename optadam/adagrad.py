r"""AdaGrad (Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods").

Each parameter's step is divided by the root of the sum of all its squared gradients so far, so
often-updated parameters slow down and rarely-updated ones keep large steps::

    s_t = s_{t-1} + |g_t|²                  s_0 = initial_accumulator_value
    u_t = g_t / sqrt(s_t + ε)               (0 where s_t = 0)
    x_t = x_{t-1} − η · u_t

A sum only grows, so a bfloat16 ``sum_of_squares`` (``nu_dtype``) stops changing once |g|² falls
under half its ulp; ``stochastic_rounding=True`` keeps it unbiased (see ``optadam._quantize``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _checks, _dtypes, _quantize, clipping
from optadam._leafwise import (
    Kernel,
    abs_sq,
    full_like,
    low_precision,
    map_leaves,
    native_step,
    safe_increment,
    stored_step,
    with_one_pass,
    zero_count,
)
from optadam._learning_rate import scale_by_learning_rate


class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`."""

    sum_of_squares: optax.Params  # s_t: running sum of |g|², real, at least float32 by default
    count: jax.Array | None = None  # type: ignore[assignment]  # steps so far, int32; only with stochastic_rounding (its seed)


def adagrad_sum(g: Any, s: Any) -> Any:
    """s_t = s_{t-1} + |g_t|²."""
    return s + abs_sq(g)


def adagrad_direction(g: Any, s: Any, eps: Any) -> Any:
    """u_t = g_t / sqrt(s_t + ε), 0 where s_t = 0."""
    return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0) * g


def adagrad_kernel(eps: Any, eps_in_sqrt: bool = True, *, step: tuple[Any, ...] = ()) -> Kernel:
    """The native AdaGrad kernel (optadam/_native/adagrad.cc) with this step's scalars, in its
    C++ structs' order: for ``optadam.step`` the clip's three (``step[:-1]``), then ε, then (for
    ``optadam.step``) −η (``step[-1]``). ``eps_in_sqrt=False`` is torch's direction,
    ``g_t / (sqrt(s_t) + ε)`` (``optadam.torch.Adagrad``)."""
    scalars = (*step[:-1], eps, *step[-1:])
    return Kernel("adagrad", scalars, (("eps_in_sqrt", eps_in_sqrt),))


def adagrad_moments(g: Any, s: Any) -> tuple[Any]:
    """:func:`adagrad_sum` as :func:`optadam._leafwise.map_leaves` takes it."""
    return (adagrad_sum(g, s),)


def scale_by_adagrad(
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Divide gradients by the root of their accumulated squares: ``u_t = g_t / sqrt(s_t + ε)``.

    Args:
      initial_accumulator_value: s_0, >= 0.
      eps: ε inside the root, >= 0.
      nu_dtype: storage dtype of ``sum_of_squares``; default: params' real dtype, at least float32.
      stochastic_rounding: round a bfloat16 ``sum_of_squares`` up or down at random, unbiasedly;
        the state then keeps a step count to seed the bits (reproducible).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdagradState`.
    """
    _checks.non_negative("initial_accumulator_value", initial_accumulator_value)
    _checks.non_negative("eps", eps)
    nu_dtype = _checks.float_dtype("nu_dtype", nu_dtype)
    _checks.boolean("stochastic_rounding", stochastic_rounding)

    def init_fn(params: optax.Params) -> ScaleByAdagradState:
        return ScaleByAdagradState(
            sum_of_squares=full_like(
                params,
                initial_accumulator_value,
                lambda d: _dtypes.second_moment_dtype(d, nu_dtype),
            ),
            count=zero_count(params) if stochastic_rounding else None,
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByAdagradState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdagradState]:
        del params

        def direction(g: Any, s: Any) -> Any:
            return adagrad_direction(g, s, eps)

        t = None if state.count is None else safe_increment(state.count)
        rounding = None if t is None else _quantize.rounding_seed(t, "adagrad")
        updates, sum_of_squares = map_leaves(
            adagrad_moments,
            direction,
            updates,
            state.sum_of_squares,
            rounding_seed=rounding,
            kernel=adagrad_kernel(eps),
        )
        return updates, ScaleByAdagradState(sum_of_squares=sum_of_squares, count=t)

    return optax.GradientTransformation(init_fn, update_fn)


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad: ``x_t = x_{t-1} − η · g_t / sqrt(s_t + ε)``. A drop-in for ``optax.adagrad``.

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      initial_accumulator_value: s_0, default 0.1.
      eps: ε, default 1e-7.
      nu_dtype: storage dtype of the accumulated squares.
      stochastic_rounding: unbiased rounding of bfloat16 accumulated squares.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.adagrad(learning_rate=0.1, initial_accumulator_value=0.0, eps=0.0)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([1.0, -2.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)  # s_1 = g², so the first step is η·sign(g)
      Array([0.9, 2.1], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    tx = optax.chain(
        scale_by_adagrad(
            initial_accumulator_value,
            eps,
            nu_dtype=nu_dtype,
            stochastic_rounding=stochastic_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )
    return with_one_pass(tx, _adagrad_one_pass(eps, learning_rate), takes_clip=True)


def _adagrad_one_pass(eps: Any, learning_rate: optax.ScalarOrSchedule) -> Any:
    """``optadam.step``'s one pass for ``chain(scale_by_adagrad, scale_by_learning_rate)``: the
    native step kernel with the chain's scalars, each state advanced as its transformation
    advances it; None (so ``update`` + ``apply_updates``) where it does not apply -- e.g. kernels
    off (``optadam._leafwise.native_step``). A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first; with
    bfloat16/float16 params it takes the two calls, which round ``c`` to their dtype."""

    def direction(g: Any, s: Any) -> Any:
        return adagrad_direction(g, s, eps)

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 2:
            return None
        adagrad_state, lr_state = state
        if not isinstance(adagrad_state, ScaleByAdagradState):
            return None
        if clip is not None and low_precision(params):
            return None
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate

        def xla(g: Any, p: Any, s: Any) -> list[Any]:  # update + apply_updates, one leaf
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            return stored_step(adagrad_moments, direction, g, p, [s], minus_lr)

        kernel = adagrad_kernel(eps, step=(*clipping.kernel_scalars(clip), minus_lr))
        count = adagrad_state.count
        t = None if count is None else safe_increment(count)
        rounding = None if t is None else _quantize.rounding_seed(t, "adagrad")  # as update's
        sums = adagrad_state.sum_of_squares
        done = native_step(kernel, xla, grads, params, sums, rounding_seed=rounding)
        if done is None:
            return None
        new_params, sum_of_squares = done
        return new_params, (ScaleByAdagradState(sum_of_squares, count=t), lr_state)

    return one_pass
