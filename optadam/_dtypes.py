"""optadam's dtype policy, in one place.

* First moments (``mu``, ``trace``) are stored in the parameters' dtype unless ``mu_dtype`` (or
  ``accumulator_dtype``) says otherwise -- optax's rule, kept so that state memory matches optax's.
* Second moments (``nu``, ``sum_of_squares``) are real and never narrower than float32 unless
  ``nu_dtype`` says so: in bfloat16, 0.999 rounds to 1.0 and an EMA of squares stops forgetting,
  so optax's bf16 ``nu`` drifts far from the true value. For complex parameters ``nu`` holds |g|²,
  a real array.
* Arithmetic happens in at least float32 (:func:`compute_dtype`); each result is rounded once, to
  the dtype it is stored in. Updates come out in the gradients' dtype.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def first_moment_dtype(param_dtype: Any, override: Any = None) -> Any:
    return param_dtype if override is None else override


def second_moment_dtype(param_dtype: Any, override: Any = None) -> Any:
    if override is not None:
        return override
    real = jnp.finfo(param_dtype).dtype  # float32 for complex64, bfloat16 for bfloat16, ...
    return jnp.promote_types(real, jnp.float32)


def compute_dtype(dtype: Any) -> Any:
    """The dtype an array is lifted to for optimizer arithmetic: at least float32, complex kept."""
    return jnp.promote_types(dtype, jnp.float32)
