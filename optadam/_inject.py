"""``inject_hyperparams`` that never holds a hyperparameter in less than float32.

``optax.inject_hyperparams`` stores the hyperparameters in the params' dtype. With bfloat16 params
that rounds b2=0.999 to 1.0, so Adam's bias correction 1 − b2^t is 0 and the first step is NaN.
This wrapper picks the dtype per call -- the params' widest floating dtype, but at least float32 --
and otherwise is optax's, with the same state (``optax.InjectHyperparamsState``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def _hyperparam_dtype(tree: Any) -> Any:
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(tree)]
    real = [jnp.finfo(d).dtype for d in dtypes if jnp.issubdtype(d, jnp.inexact)]
    return jnp.result_type(jnp.float32, *real)


def inject_hyperparams(
    inner_factory: Callable[..., optax.GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: jax.typing.DTypeLike | None = None,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """Like ``optax.inject_hyperparams``, but hyperparameters are at least float32 by default.

    Example:
      >>> import jax.numpy as jnp, optadam
      >>> tx = optadam.inject_hyperparams(optadam.adam)(learning_rate=1e-3)
      >>> state = tx.init({"w": jnp.ones(3, jnp.bfloat16)})
      >>> state.hyperparams["b2"].dtype
      dtype('float32')
      >>> state.hyperparams["learning_rate"] = 1e-4  # change it between steps
    """
    if hyperparam_dtype is not None:
        return optax.inject_hyperparams(inner_factory, static_args, hyperparam_dtype)

    def factory(*args: Any, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        def at(dtype: Any) -> optax.GradientTransformationExtraArgs:
            return optax.inject_hyperparams(inner_factory, static_args, dtype)(*args, **kwargs)

        def init_fn(params: optax.Params) -> Any:
            return at(_hyperparam_dtype(params)).init(params)

        def update_fn(
            updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra: Any
        ) -> tuple[optax.Updates, Any]:
            dtype = _hyperparam_dtype(updates if params is None else params)
            return at(dtype).update(updates, state, params, **extra)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return factory
