r"""Gradient descent and Momentum (heavy-ball and Nesterov).

Gradient descent steps against the gradient: ``x_t = x_{t-1} − η · g_t``. Momentum (Polyak, 1964)
keeps a decaying sum of past gradients, the *trace*, and steps along it instead::

    trace_t = g_t + β · trace_{t-1}
    u_t     = trace_t                       heavy-ball
    u_t     = g_t + β · trace_t             Nesterov (Sutskever et al., 2013)
    x_t     = x_{t-1} − η · u_t

With a constant η this is the familiar ``v_t = β · v_{t-1} + η · g_t; x_t = x_{t-1} − v_t``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from optadam import _checks, _dtypes
from optadam._leafwise import map_leaves, zeros_like
from optadam._learning_rate import scale_by_learning_rate


class ScaleByMomentumState(NamedTuple):
    """State of :func:`scale_by_momentum`."""

    trace: optax.Params  # decaying sum of past gradients, params' dtype unless accumulator_dtype


def scale_by_momentum(
    decay: jax.typing.ArrayLike = 0.9,
    nesterov: bool = False,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Replace gradients by their momentum trace (optax's ``trace`` semantics).

    ``trace_t = g_t + β · trace_{t-1}``; the update is ``trace_t``, or ``g_t + β · trace_t`` with
    ``nesterov=True``.

    Args:
      decay: β, in [0, 1).
      nesterov: use Nesterov's look-ahead.
      accumulator_dtype: storage dtype of the trace; default: the params' dtype.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByMomentumState`.
    """
    _checks.in_unit_interval("decay", decay)
    _checks.boolean("nesterov", nesterov)
    accumulator_dtype = _checks.float_dtype("accumulator_dtype", accumulator_dtype)

    def init_fn(params: optax.Params) -> ScaleByMomentumState:
        return ScaleByMomentumState(
            trace=zeros_like(params, lambda d: _dtypes.first_moment_dtype(d, accumulator_dtype))
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByMomentumState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByMomentumState]:
        del params

        def step(g: Any, trace: Any) -> tuple[Any, ...]:
            trace = g + decay * trace
            return (g + decay * trace if nesterov else trace), trace

        updates, trace = map_leaves(step, updates, state.trace)
        return updates, ScaleByMomentumState(trace=trace)

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic gradient descent, with optional (Nesterov) momentum. A drop-in for ``optax.sgd``.

    ``x_t = x_{t-1} − η · g_t``, or with ``momentum=β`` the heavy-ball / Nesterov step of
    :func:`scale_by_momentum`.

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      momentum: β in [0, 1), or None for plain gradient descent.
      nesterov: use Nesterov momentum.
      accumulator_dtype: storage dtype of the momentum trace.

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
    return optax.chain(
        (
            optax.identity()
            if momentum is None
            else scale_by_momentum(momentum, nesterov, accumulator_dtype)
        ),
        scale_by_learning_rate(learning_rate),
    )


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
