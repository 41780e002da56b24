r"""Global-norm clipping before an optimizer, the most common chain in training, in one pass.

Clipping by the global norm (Pascanu et al., 2013, "On the difficulty of training Recurrent Neural
Networks") rescales the whole gradient when its norm over all leaves reaches ``c``::

    ‖g‖ = sqrt(Σ_leaves Σ_i |g_i|²)                      the global norm: one reduction
    g'  = g                    if ‖g‖ < c
    g'  = (g / ‖g‖) · c        otherwise (‖g‖ NaN included)

:func:`clip_by_global_norm` is ``optax.clip_by_global_norm``: the same state (``optax.EmptyState``)
and the same numbers. :func:`chain` is ``optax.chain`` -- same state, same updates -- that can also
see what it chains: ``chain(clip_by_global_norm(c), tx)`` with ``tx`` an optimizer whose
``optadam.step`` is one native pass (``adam``, ``nadam``, unmasked ``adamw``, ``amsgrad``,
``radam``, ``rmsprop`` with or without ``momentum``, ``sgd`` with ``momentum``, ``momentum``) is one
pass too. The norm is one XLA reduction over the gradients, as
optax computes it; whether to clip, ‖g‖ and c go to the optimizer's step kernel as runtime
scalars, and the kernel computes ``g'`` from each element as it reads it, instead of XLA writing
``g'`` out and reading it back. Any other chain is ``update`` + ``apply_updates``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _checks
from optadam._leafwise import OnePass, with_one_pass


class GlobalNormClip(NamedTuple):
    """One step's clipping: ‖g‖, computed once from all the gradients, and c.

    Floats only: a one-pass kernel's derivative rule (``jax.closure_convert``) takes closed-over
    floats as operands, but would bake in a traced bool; :func:`clip_leaf` compares them itself.
    """

    g_norm: jax.Array  # ‖g‖, the global L2 norm, in the gradients' widest dtype
    max_norm: Any  # c, as given


def global_norm_clip(grads: optax.Updates, max_norm: Any) -> GlobalNormClip:
    """This step's ‖g‖, as optax computes it: one reduction over all the leaves."""
    return GlobalNormClip(g_norm=optax.tree.norm(grads), max_norm=max_norm)


def _within(clip: GlobalNormClip) -> jax.Array:
    """‖g‖ < c: the gradients pass unchanged (False when ‖g‖ is NaN)."""
    return jnp.squeeze(clip.g_norm < clip.max_norm)


def clip_leaf(g: jax.Array, clip: GlobalNormClip) -> jax.Array:
    """One leaf of g': g if ‖g‖ < c, else (g / ‖g‖) · c, with ‖g‖ in the leaf's dtype."""
    return jax.lax.select(_within(clip), g, (g / clip.g_norm.astype(g.dtype)) * clip.max_norm)


def kernel_scalars(clip: GlobalNormClip | None) -> tuple[Any, ...]:
    """The clip's runtime scalars for a step kernel (its ``ClipScalars`` struct): whether to clip
    (1 or 0), ‖g‖ and c; no clip is (0, 1, 1)."""
    if clip is None:
        return (0, 1, 1)
    return (jnp.where(_within(clip), 0, 1), clip.g_norm, clip.max_norm)


class ClipByGlobalNorm(optax.GradientTransformation):
    """:func:`clip_by_global_norm`'s transformation, which says its ``max_norm`` to :func:`chain`
    (``_replace`` and other copies drop it, and so only the one pass)."""

    max_norm: Any = None


def clip_by_global_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformation:
    """Clip the gradients to a global L2 norm of at most ``max_norm``: a drop-in for
    ``optax.clip_by_global_norm`` (state ``optax.EmptyState()``, the same numbers).

    Chained with :func:`chain` in front of an optimizer that has a one-pass ``optadam.step``, the
    clipping joins that pass.

    Args:
      max_norm: c, the largest global norm the updates keep, >= 0 (``inf``: no clipping, as in
        optax).

    Returns:
      An ``optax.GradientTransformation`` with state ``optax.EmptyState``.
    """
    _checks.non_negative_or_inf("max_norm", max_norm)

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        clip = global_norm_clip(updates, max_norm)
        return jax.tree.map(lambda g: clip_leaf(g, clip), updates), state

    out = ClipByGlobalNorm(optax.init_empty_state, update_fn)
    out.max_norm = max_norm
    return out


def chain(*args: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``optax.chain``: the transformations applied in order, the state a tuple of their states.

    ``chain(clip_by_global_norm(c), tx)``, where ``optadam.step`` runs ``tx`` in one native pass,
    runs the clipped step in that pass too: ``optadam.step`` computes ‖g‖ with one reduction and
    hands the clip to ``tx``'s kernel, with the numbers of ``update`` + ``apply_updates``. Any other
    chain, or where the kernel does not apply, is ``update`` + ``apply_updates``.

    Example:
      >>> import jax.numpy as jnp, optadam
      >>> tx = optadam.chain(optadam.clip_by_global_norm(1.0), optadam.sgd(0.5, momentum=0.9))
      >>> params = jnp.array([1.0, 1.0])
      >>> params, state = optadam.step(tx, jnp.array([3.0, 4.0]), tx.init(params), params)
      >>> params  # g clipped from norm 5 to norm 1: (0.6, 0.8), then a step of 0.5 · g
      Array([0.7, 0.6], dtype=float32)
    """
    chained = optax.chain(*args)
    if len(args) != 2:
        return chained
    clip, tx = args
    if not isinstance(clip, ClipByGlobalNorm) or not isinstance(tx, OnePass):
        return chained
    if tx.one_pass is None or not tx.takes_clip:
        return chained
    max_norm, inner = clip.max_norm, tx.one_pass

    def one_pass(grads: Any, state: Any, params: Any) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 2:
            return None
        clip_state, tx_state = state
        done = inner(grads, tx_state, params, clip=global_norm_clip(grads, max_norm))
        if done is None:
            return None
        new_params, tx_state = done
        return new_params, (clip_state, tx_state)

    return with_one_pass(chained, one_pass)
