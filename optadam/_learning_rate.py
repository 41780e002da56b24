"""Scaling by the learning rate, with the product taken in at least float32.

``optax.scale_by_learning_rate`` multiplies in the updates' dtype, so with bfloat16 updates the
learning rate itself is first rounded to bf16 (1e-2 becomes 1.0009765625e-2). Here the learning
rate stays in float32 or wider and the product is rounded once. The state is optax's
(``EmptyState`` for a constant, ``ScaleByScheduleState`` for a schedule), so trees match optax's.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from optadam._dtypes import compute_dtype
from optadam._leafwise import safe_increment, zero_count


def _scale(updates: optax.Updates, factor: Any) -> optax.Updates:
    def one(u: Any) -> Any:
        return None if u is None else (u.astype(compute_dtype(u.dtype)) * factor).astype(u.dtype)

    return jax.tree.map(one, updates, is_leaf=lambda x: x is None)


def scale_by_learning_rate(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
    """Multiply updates by ``-learning_rate`` (a number, an array or a schedule of the count)."""
    if not callable(learning_rate):

        def update_constant(
            updates: optax.Updates, state: optax.EmptyState, params: Any = None
        ) -> tuple[optax.Updates, optax.EmptyState]:
            del params
            return _scale(updates, -learning_rate), state

        return optax.GradientTransformation(lambda _: optax.EmptyState(), update_constant)

    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        return optax.ScaleByScheduleState(count=zero_count(params))

    def update_fn(
        updates: optax.Updates, state: optax.ScaleByScheduleState, params: Any = None
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        del params
        updates = _scale(updates, -learning_rate(state.count))
        return updates, optax.ScaleByScheduleState(count=safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
