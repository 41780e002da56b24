"""``optadam.step``: one call for an optimizer step, ``tx.update`` then ``optax.apply_updates``."""

from __future__ import annotations

import optax


def step(
    tx: optax.GradientTransformation,
    grads: optax.Updates,
    state: optax.OptState,
    params: optax.Params,
) -> tuple[optax.Params, optax.OptState]:
    """Apply one step of ``tx``: ``(new_params, new_state)``, as ``tx.update`` + ``apply_updates``.

    Works with any optax transformation and gives the two-call form's numbers. Under ``jax.jit``,
    donate the params and the state, in that order (the order they are returned in: JAX pairs
    donated buffers with results of the same shape in order), and XLA reuses their buffers; where
    a native kernel runs (``optadam.native_status``) it then updates the moments in place.

    Example:
      >>> import jax.numpy as jnp, optadam
      >>> tx = optadam.adam(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> params, state = optadam.step(tx, jnp.array([0.5, -3.0]), tx.init(params), params)
      >>> params
      Array([ 0.9, -1.9], dtype=float32)
    """
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
