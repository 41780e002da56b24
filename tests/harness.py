"""Shared test machinery: run a transformation over a gradient stream and compare trajectories.

The references these are compared with (``reference.py``: NumPy float64; optax) are computed
independently of optadam; this module only drives optimizers and measures distances.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]

# Tests that need the native kernels built (tests/test_native*.py, tests/test_step.py).
needs_kernels = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None,
    reason="no C++ compiler: the kernels cannot be built here",
)
STEPS = 60


def problem(
    dtype: Any, seed: int = 0, shapes: Sequence[tuple[int, ...]] = SHAPES, steps: int = STEPS
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Initial params and a deterministic gradient stream, as lists of NumPy leaves."""
    params = reference.make_grad_stream(shapes, 1, seed=seed + 100, dtype=dtype)[0]
    return params, reference.make_grad_stream(shapes, steps, seed=seed, dtype=dtype)


def reference_run(
    name: str, learning_rate: Any, params: Any, grads: Any, kwargs: dict[str, Any]
) -> list[np.ndarray]:
    """``reference.<name>``'s trajectory, stacked like :func:`run`'s."""
    trajectory = getattr(reference, name)(params, grads, learning_rate=learning_rate, **kwargs)
    return stack_reference(trajectory)


def run(
    tx: optax.GradientTransformation, params: Sequence[Any], grads: Sequence[Sequence[Any]]
) -> list[np.ndarray]:
    """Params after every step, one array per leaf stacked over steps, from one jitted scan.

    ``params`` is a list of leaves; ``grads`` a list over steps of lists of leaves.
    """
    params = [jnp.asarray(p) for p in params]
    stacked = [jnp.stack([jnp.asarray(g[i], p.dtype) for g in grads]) for i, p in enumerate(params)]

    @jax.jit
    def scan(params: list[jax.Array], stacked: list[jax.Array]) -> list[jax.Array]:
        def step(carry: Any, g: list[jax.Array]) -> tuple[Any, list[jax.Array]]:
            p, state = carry
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
            return (p, state), p

        _, trajectory = jax.lax.scan(step, (params, tx.init(params)), stacked)
        return trajectory

    return [np.asarray(x) for x in scan(params, stacked)]


def stack_reference(trajectory: list[list[np.ndarray]]) -> list[np.ndarray]:
    """``reference.py``'s list-over-steps of list-of-leaves as one stacked array per leaf."""
    return [np.stack([step[i] for step in trajectory]) for i in range(len(trajectory[0]))]


def relative_deviation(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """max over leaves and steps of ||actual_t − expected_t||∞ / ||expected_t||∞."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = np.asarray(a, np.complex128), np.asarray(e, np.complex128)
        assert a.shape == e.shape, f"shapes differ: {a.shape} vs {e.shape}"
        if e.size == 0:
            continue
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(e))):
            return float("inf")  # NaN would slip through the max below
        axes = tuple(range(1, e.ndim))
        scale = np.max(np.abs(e), axis=axes) if axes else np.abs(e)
        diff = np.max(np.abs(a - e), axis=axes) if axes else np.abs(a - e)
        worst = max(worst, float(np.max(diff / np.maximum(scale, 1e-300))))
    return worst


def assert_trajectories_close(
    actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float
) -> None:
    deviation = relative_deviation(actual, expected)
    assert deviation <= rtol, f"trajectories deviate by {deviation:.3e} (allowed {rtol:.0e})"


def state_shapes(state: Any) -> list[tuple[tuple[int, ...], str]]:
    return [(np.shape(x), str(jnp.result_type(x))) for x in jax.tree.leaves(state)]


def minimise(
    tx: optax.GradientTransformation, loss: Callable[[jax.Array], jax.Array], x0: Any, steps: int
) -> jax.Array:
    """Run ``steps`` steps of ``tx`` on ``loss`` from ``x0``; return the final point."""

    @jax.jit
    def scan(x: jax.Array) -> jax.Array:
        def step(carry: Any, _: None) -> tuple[Any, None]:
            x, state = carry
            updates, state = tx.update(jax.grad(loss)(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
        return x

    return scan(jnp.asarray(x0))


def rosenbrock(x: jax.Array) -> jax.Array:
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def parabola(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.arange(1, x.size + 1) * x**2) / 2
