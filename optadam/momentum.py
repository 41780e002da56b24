r"""Gradient descent and Momentum (heavy-ball and Nesterov).

Gradient descent steps against the gradient: ``x_t = x_{t-1} − η · g_t``. Momentum (Polyak, 1964)
keeps a decaying sum of past gradients, the *trace*, and steps along it instead::

    trace_t = g_t + β · trace_{t-1}
    u_t     = trace_t                       heavy-ball
    u_t     = g_t + β · trace_t             Nesterov (Sutskever et al., 2013)
    x_t     = x_{t-1} − η · u_t

With a constant η this is the familiar ``v_t = β · v_{t-1} + η · g_t; x_t = x_{t-1} − v_t``.

The trace can be stored lean: in bfloat16 (``accumulator_dtype``, optionally with stochastic
rounding) or as block-wise 8-bit codes (``state_bits=8``); see ``optadam._quantize``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from optadam import _checks, _dtypes, _quantize, clipping
from optadam._leafwise import (
    Kernel,
    low_precision,
    map_leaves,
    native_step,
    safe_increment,
    stored_step,
    with_one_pass,
    zero_count,
)
from optadam._learning_rate import scale_by_learning_rate


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`."""

    trace: optax.Params  # decaying sum of past gradients, params' dtype unless accumulator_dtype
    count: jax.Array | None = None  # type: ignore[assignment]  # steps so far, int32; only with stochastic_rounding (its seed)


def momentum_moments(decay: Any) -> Callable[[Any, Any], tuple[Any]]:
    """trace_t = g_t + β · trace_{t-1}, as :func:`optadam._leafwise.map_leaves` takes it."""
    return lambda g, trace: (g + decay * trace,)


def momentum_direction(decay: Any, nesterov: bool) -> Callable[[Any, Any], Any]:
    """u_t = trace_t, or Nesterov's g_t + β · trace_t."""
    return lambda g, trace: g + decay * trace if nesterov else trace


def scale_by_momentum(
    decay: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
    *,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Replace gradients by their momentum trace (optax's ``trace`` semantics).

    ``trace_t = g_t + β · trace_{t-1}``; the update is ``trace_t``, or ``g_t + β · trace_t`` with
    ``nesterov=True``.

    Args:
      decay: β, in [0, 1).
      nesterov: use Nesterov's look-ahead.
      accumulator_dtype: storage dtype of the trace (optax's name for ``mu_dtype``); default: the
        params' dtype.
      state_bits: 8 stores the trace as block-wise 8-bit codes, about 1 byte per parameter
        (leaves under 4,096 elements stay float32); None (default): in ``accumulator_dtype``.
      block_size: elements per 8-bit block (each has one float32 scale); None (default): 256.
      stochastic_rounding: round a bfloat16 trace up or down at random, unbiasedly; the state
        then keeps a step count to seed the bits (reproducible).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByMomentumState`.
    """
    return _scale_by_momentum(
        decay,
        nesterov,
        accumulator_dtype,
        state_bits=state_bits,
        block_size=block_size,
        stochastic_rounding=stochastic_rounding,
    )


def _scale_by_momentum(
    decay: jax.typing.ArrayLike,
    nesterov: bool,
    accumulator_dtype: jax.typing.DTypeLike | None,
    *,
    state_bits: int | None,
    block_size: int | None,
    stochastic_rounding: bool,
    after_elementwise: bool = False,
) -> optax.GradientTransformation:
    """:func:`scale_by_momentum`. ``after_elementwise``: its input is computed element-wise in
    the same chain (rmsprop's scaled direction), which XLA fuses into the trace's loop; a
    moments kernel would need it written out first and read back, more than it saves (rmsprop
    with a bfloat16 trace: 41 ms against the XLA path's 13, BUILD_NOTES.md), so only the 8-bit
    kernel (which replaces a compute-bound XLA path) runs there."""
    _checks.in_unit_interval("decay", decay)
    _checks.boolean("nesterov", nesterov)
    block_size, accumulator_dtype = _checks.lean_state(
        state_bits, block_size, stochastic_rounding, accumulator_dtype=accumulator_dtype
    )

    def init_fn(params: optax.Params) -> ScaleByMomentumState:
        trace = _quantize.moments_like(
            params,
            0,
            lambda d: _dtypes.first_moment_dtype(d, accumulator_dtype),
            moment=1,
            state_bits=state_bits,
            block_size=block_size,
        )
        return ScaleByMomentumState(
            trace=trace, count=zero_count(params) if stochastic_rounding else None
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByMomentumState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByMomentumState]:
        del params

        moments, direction = momentum_moments(decay), momentum_direction(decay, nesterov)
        t = None if state.count is None else safe_increment(state.count)
        rounding = None if t is None else _quantize.rounding_seed(t, "momentum")
        native = Kernel("momentum", (decay,), (("nesterov", nesterov),))
        updates, trace = map_leaves(
            moments,
            direction,
            updates,
            state.trace,
            rounding_seed=rounding,
            kernel=native,
            eight_bit_only=after_elementwise,
        )
        return updates, ScaleByMomentumState(trace=trace, count=t)

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic gradient descent, with optional (Nesterov) momentum. A drop-in for ``optax.sgd``.

    ``x_t = x_{t-1} − η · g_t``, or with ``momentum=β`` the heavy-ball / Nesterov step of
    :func:`scale_by_momentum`.

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      momentum: β in [0, 1), or None for plain gradient descent.
      nesterov: use Nesterov momentum.
      accumulator_dtype: storage dtype of the momentum trace.
      state_bits, block_size, stochastic_rounding: a lean trace, see :func:`scale_by_momentum`
        (they need ``momentum``: plain SGD keeps no state).

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.sgd(learning_rate=0.5)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, _ = tx.update(jnp.array([1.0, -1.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)
      Array([0.5, 2.5], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    _checks.optional_unit_interval("momentum", momentum)
    if momentum is None and (state_bits is not None or stochastic_rounding):
        raise ValueError(
            "state_bits and stochastic_rounding store the momentum trace: they need momentum, "
            "got momentum=None (plain SGD keeps no state)"
        )
    tx = optax.chain(
        (
            optax.identity()
            if momentum is None
            else scale_by_momentum(
                momentum,
                nesterov,
                accumulator_dtype,
                state_bits=state_bits,
                block_size=block_size,
                stochastic_rounding=stochastic_rounding,
            )
        ),
        scale_by_learning_rate(learning_rate),
    )
    if momentum is None:
        return tx
    return with_one_pass(tx, _momentum_one_pass(momentum, nesterov, learning_rate), takes_clip=True)


def _momentum_one_pass(
    decay: Any, nesterov: bool, learning_rate: optax.ScalarOrSchedule
) -> Callable[..., tuple[Any, Any] | None]:
    """``optadam.step``'s one pass for ``chain(scale_by_momentum, scale_by_learning_rate)``: the
    native step kernel with the chain's scalars, each state advanced as its transformation
    advances it; None (so ``update`` + ``apply_updates``) where it does not apply -- e.g. 8-bit
    trace, kernels off (``optadam._leafwise.native_step``). A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first; with
    bfloat16/float16 params it takes the two calls, which round ``c`` to their dtype."""
    moments, direction = momentum_moments(decay), momentum_direction(decay, nesterov)

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 2:
            return None
        momentum_state, lr_state = state
        if not isinstance(momentum_state, ScaleByMomentumState):
            return None
        if clip is not None and low_precision(params):
            return None
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate
        scalars = (*clipping.kernel_scalars(clip), decay, minus_lr)
        kernel = Kernel("momentum", scalars, (("nesterov", nesterov),))

        def xla(g: Any, p: Any, trace: Any) -> list[Any]:  # update + apply_updates, one leaf
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            return stored_step(moments, direction, g, p, [trace], minus_lr)

        count = momentum_state.count
        t = None if count is None else safe_increment(count)
        rounding = None if t is None else _quantize.rounding_seed(t, "momentum")  # as update's
        done = native_step(kernel, xla, grads, params, momentum_state.trace, rounding_seed=rounding)
        if done is None:
            return None
        new_params, trace = done
        return new_params, (ScaleByMomentumState(trace=trace, count=t), lr_state)

    return one_pass


def momentum(
    learning_rate: optax.ScalarOrSchedule, beta: jax.typing.ArrayLike = 0.9, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    r"""The tutorial series' Momentum: ``v_t = β · v_{t-1} + g_t``, ``x_t = x_{t-1} − η · v_t``.

    The same as ``sgd(learning_rate, momentum=beta, nesterov=nesterov)``.

    Args:
      learning_rate: η, a number, an array, or a schedule.
      beta: β, the momentum, in [0, 1), default 0.9.
      nesterov: use Nesterov's look-ahead ``u_t = g_t + β · v_t``.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.momentum(learning_rate=0.1, beta=0.9)
      >>> params, grads = jnp.array([1.0, 2.0]), jnp.array([1.0, -2.0])
      >>> state = tx.init(params)
      >>> for _ in range(2):  # a constant gradient: steps of η·g, then η·(1 + β)·g
      ...     updates, state = tx.update(grads, state)
      ...     params = optax.apply_updates(params, updates)
      >>> params
      Array([0.71, 2.58], dtype=float32)
    """
    _checks.in_unit_interval("beta", beta)
    return sgd(learning_rate, momentum=beta, nesterov=nesterov)
