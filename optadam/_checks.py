"""Construction-time checks of hyperparameters.

Every factory validates its arguments here, before any array exists, so a bad value fails where
it is written rather than as a NaN a thousand steps later. Only concrete values are checked: a JAX
tracer (a hyperparameter under ``jit``/``vmap``/``inject_hyperparams``) has no value yet and
passes through.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any) -> np.ndarray | None:
    """The value as a NumPy array, or None when it is traced (and so cannot be checked)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return None


def _real_array(name: str, value: Any) -> np.ndarray | None:
    if isinstance(value, bool) or (isinstance(value, np.ndarray) and value.dtype == bool):
        raise TypeError(f"{name} must be a real number or array, got the bool {value!r}")
    if not isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
        raise TypeError(
            f"{name} must be a real number or array, got {value!r} of type {type(value).__name__}"
        )
    array = _concrete(value)
    if array is not None and not (
        np.issubdtype(array.dtype, np.floating)
        or np.issubdtype(array.dtype, np.integer)
        or array.dtype == jnp.bfloat16
    ):
        raise TypeError(f"{name} must be real, got {value!r} with dtype {array.dtype}")
    return array


def _describe(value: Any) -> str:
    return repr(value.item()) if isinstance(value, np.ndarray) and value.size == 1 else repr(value)


def in_unit_interval(name: str, value: Any) -> None:
    """Decay rates and momenta: 0 <= value < 1 (1 would never forget, >1 diverges)."""
    array = _real_array(name, value)
    if array is not None and not np.all((array >= 0) & (array < 1)):
        raise ValueError(f"{name} must be in [0, 1), got {_describe(value)}")


def adam_args(b1: Any, b2: Any, eps: Any, eps_root: Any) -> None:
    """Adam's family (Adam, AMSGrad, NAdam, RAdam): β1, β2 in [0, 1), ε and ε_root >= 0."""
    in_unit_interval("b1", b1)
    in_unit_interval("b2", b2)
    non_negative("eps", eps)
    non_negative("eps_root", eps_root)


def non_negative(name: str, value: Any) -> None:
    """Epsilons, initial accumulators, weight decay: finite and >= 0."""
    array = _real_array(name, value)
    if array is not None and not np.all(np.isfinite(array) & (array >= 0)):
        raise ValueError(f"{name} must be finite and >= 0, got {_describe(value)}")


def non_negative_or_inf(name: str, value: Any) -> None:
    """A bound that +inf switches off (a clipping norm): >= 0, not NaN."""
    array = _real_array(name, value)
    if array is not None and not np.all(array >= 0):
        raise ValueError(f"{name} must be >= 0 (inf: no bound), got {_describe(value)}")


def finite(name: str, value: Any) -> None:
    """Any finite real number (e.g. RAdam's threshold)."""
    array = _real_array(name, value)
    if array is not None and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a finite real number, got {_describe(value)}")


def optional_unit_interval(name: str, value: Any) -> None:
    """A momentum that may be switched off with None."""
    if value is not None:
        in_unit_interval(name, value)


def scalar_or_schedule(name: str, value: Any) -> None:
    """A learning rate or weight decay: a number >= 0, an array, or a callable of the step."""
    if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
        return
    if not isinstance(value, (int, float, np.number, np.ndarray, jax.Array)) or isinstance(
        value, bool
    ):
        raise TypeError(
            f"{name} must be a number, an array or a schedule (a callable of the step count), "
            f"got {value!r} of type {type(value).__name__}"
        )
    non_negative(name, value)


def float_dtype(name: str, value: Any) -> Any:
    """A storage dtype for a moment: None (the default rule) or a floating dtype."""
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError as error:
        raise TypeError(f"{name} must be a floating dtype or None, got {value!r}") from error
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(f"{name} must be a floating dtype or None, got {dtype}")
    return jax.dtypes.canonicalize_dtype(dtype)


def boolean(name: str, value: Any) -> None:
    """Structural switches (nesterov, centered, ...) change the program: they must be bools."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def integer_at_least(name: str, value: Any, low: int) -> None:
    """Sizes and counts that shape the program (not traced hyperparameters): Python ints."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a Python int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def lean_state(
    state_bits: Any, block_size: Any, stochastic_rounding: Any, **dtypes: Any
) -> tuple[Any, ...]:
    """The state's storage options -- moment dtypes and the lean-state options (see
    ``optadam._quantize``) -- and that they make sense together; returns the block size
    (``None``: 256, the default), then each of ``dtypes`` as :func:`float_dtype` returns it.

    ``block_size`` defaults to None, not 256, so that ``inject_hyperparams`` (which turns every
    numeric argument into a traced hyperparameter) leaves it alone. ``dtypes`` are the moment dtype
    options (``mu_dtype=...``): with ``state_bits=8`` the moments are 8-bit codes (small leaves in
    float32), so a dtype would be silently ignored.
    """
    checked = [float_dtype(name, dtype) for name, dtype in dtypes.items()]
    for name, value in (("state_bits", state_bits), ("block_size", block_size)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | np.integer)
        ):
            raise TypeError(
                f"{name} chooses the state's layout and must be a Python int, got {value!r} "
                "(with inject_hyperparams, pass static_args=('state_bits', 'block_size'))"
            )
    if state_bits is not None and state_bits != 8:
        raise ValueError(
            "state_bits must be None (moments stored as floats) or 8 (block-wise 8-bit), "
            f"got {state_bits}"
        )
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    boolean("stochastic_rounding", stochastic_rounding)
    if state_bits is not None:
        for name, dtype in dtypes.items():
            if dtype is not None:
                raise ValueError(
                    f"{name} cannot be combined with state_bits=8: moments are stored as 8-bit "
                    "codes (leaves under 4,096 elements in float32); pass one or the other"
                )
        if stochastic_rounding:
            raise ValueError(
                "stochastic_rounding rounds moments stored in bfloat16; with state_bits=8 there "
                "are none (8-bit second moments are always rounded stochastically, first moments "
                "to nearest): pass one or the other"
            )
    return (256 if block_size is None else int(block_size), *checked)
