"""Decoupled weight decay that keeps each update in its own dtype.

``optax.add_decayed_weights`` computes ``u + λ·θ`` in whatever dtype the operands promote to. With
bfloat16 params and an injected (float32) λ, that is float32: AdamW's updates would come out in
float32 for bfloat16 gradients, unlike every other optimizer's (and ``apply_if_finite``, whose two
branches must agree, fails to trace). Here the sum is rounded back to the update's dtype, once.
The state is optax's, so trees match ``optax.adamw``'s.
"""

from __future__ import annotations

from typing import Any

import jax
import optax


def add_decayed_weights(
    weight_decay: optax.ScalarOrSchedule, mask: Any = None
) -> optax.GradientTransformation:
    """``optax.add_decayed_weights(weight_decay, mask)``, with updates kept in their dtype."""
    decay = optax.add_decayed_weights(weight_decay, mask)

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        decayed, state = decay.update(updates, state, params)
        kept = jax.tree.map(
            lambda new, old: new if old is None else new.astype(old.dtype),
            decayed,
            updates,
            is_leaf=lambda x: x is None,
        )
        return kept, state

    return optax.GradientTransformation(decay.init, update_fn)
