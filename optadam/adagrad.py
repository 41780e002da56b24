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

from optadam import _checks, _dtypes, _quantize
from optadam._leafwise import abs_sq, full_like, map_leaves, safe_increment, zero_count
from optadam._learning_rate import scale_by_learning_rate


class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`."""

    sum_of_squares: optax.Params  # s_t: running sum of |g|², real, at least float32 by default
    count: jax.Array | None = None  # type: ignore[assignment]  # steps so far, int32; only with stochastic_rounding (its seed)


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

        def moments(g: Any, s: Any) -> tuple[Any, ...]:
            return (s + abs_sq(g),)

        def direction(g: Any, s: Any) -> Any:
            return jnp.where(s > 0, jax.lax.rsqrt(s + eps), 0.0) * g

        t = None if state.count is None else safe_increment(state.count)
        rounding = None if t is None else _quantize.rounding_seed(t, "adagrad")
        updates, sum_of_squares = map_leaves(
            moments, direction, updates, state.sum_of_squares, rounding_seed=rounding
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
    return optax.chain(
        scale_by_adagrad(
            initial_accumulator_value,
            eps,
            nu_dtype=nu_dtype,
            stochastic_rounding=stochastic_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )
