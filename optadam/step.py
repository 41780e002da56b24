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
    donated buffers with results of the same shape in order), and XLA reuses their buffers.

    Where a native kernel runs (``optadam.native_status``), ``adam``, ``nadam`` and ``adamw``
    (without a decay ``mask``), ``sgd`` with ``momentum`` and ``momentum`` (their trace in place
    of the moments), ``rmsprop`` (its trace too, with ``momentum``) and ``adagrad`` take one
    pass: one kernel call per dtype
    reads the gradients and writes the params and the moments in place, with no update buffer, as
    ``update`` + ``apply_updates`` would compute them (the learning rate and decay are runtime
    operands, so schedules do not recompile). Each of these but ``adagrad`` keeps the pass after a
    global-norm clip, ``optadam.chain(optadam.clip_by_global_norm(c), tx)``; ``adam``, ``nadam``
    and ``adamw`` with ``state_bits=8`` and float32 params take it block by block, writing the
    codes and scales in place. Anything else -- other transformations, wrappers around these,
    float16 moments, kernels off -- takes ``update`` + ``apply_updates``. ``amsgrad`` and
    ``radam`` take the one pass as well (AMSGrad's ``nu_max`` and RAdam's rectification
    included, the latter as runtime operands).

    Example:
      >>> import jax.numpy as jnp, optadam
      >>> tx = optadam.adam(0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> params, state = optadam.step(tx, jnp.array([0.5, -3.0]), tx.init(params), params)
      >>> params
      Array([ 0.9, -1.9], dtype=float32)
    """
    one_pass = getattr(tx, "one_pass", None)
    if one_pass is not None:
        done = one_pass(grads, state, params)
        if done is not None:
            return done
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
