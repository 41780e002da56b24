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

import optadam

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


# --- native kernels against the XLA path (tests/test_native*.py, test_step.py, test_clipping.py)


def wide(dtype: str, request: pytest.FixtureRequest) -> None:
    """Turn on x64 (conftest's fixture) for float64 only: with it on, Adam's bias corrections of a
    traced count are float64, wider than float32 leaves, and the kernels (rightly) leave float32
    leaves to XLA."""
    if dtype == "float64":
        request.getfixturevalue("x64")


def random_tree(
    rng: np.random.Generator, dtype: Any, shapes: dict[str, tuple[int, ...]], scale: float = 1.0
) -> dict[str, jax.Array]:
    """A dict of standard-normal leaves (times ``scale``) of the given shapes and dtype."""
    return {k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in shapes.items()}


def trajectory(
    make: Callable[[], Any],
    native: bool,
    via_step: bool,
    params: Any,
    grads: list,
    donate: bool = False,
) -> tuple[list, Any, str]:
    """The params after each jitted step, the final state, and the step's jaxpr.

    The step is ``optadam.step`` (``via_step``) or ``tx.update`` then ``optax.apply_updates``;
    the transformation is built by ``make`` after the kernels' switch is set to ``native``
    (``jax.jit`` caches traces per function, so a transformation traced on one path keeps it).
    With ``donate`` the step donates params and state (copies of the caller's, which stay
    valid)."""
    optadam.set_native_enabled(native)
    tx = make()

    def step(p: Any, s: Any, g: Any) -> Any:
        if via_step:
            return optadam.step(tx, g, s, p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
    p, s = params, tx.init(params)
    if donate:
        p, s = jax.tree.map(jnp.copy, (p, s))  # the caller keeps its params for the other path
    traced = str(jax.make_jaxpr(step)(params, s, grads[0]))
    trail = []
    for g in grads:
        p, s = jitted(p, s, g)
        trail.append(jax.tree.map(np.asarray, p))
    return trail, s, traced


def assert_kernel_paths_agree(
    make: Callable[[], Any], params: Any, grads: list, step_kernel: str, exact: bool = True
) -> tuple[str, str]:
    """``make()``'s steps taken the three ways, checked against each other; returns the jaxprs
    of the kernel-backed update and of the one pass.

    The kernel-backed ``tx.update`` + ``optax.apply_updates`` equals the XLA path (kernels off)
    bit for bit, every step, params and state alike: the kernel advances the moments with XLA's
    operations, and the direction is the same jnp either way. ``optadam.step``'s one pass is one
    ``step_kernel`` call for all leaves, with the same bits whether params and state are donated
    or not. (The one pass against the XLA path, which differs by a few ulp where XLA rewrites
    divisions: each family's ``..._matches_xla_path`` test.) Not ``exact``: the two-call paths
    within 1e-14 relative (float64 programs where XLA contracts a multiply-add the kernel
    rounds twice)."""
    update, s_update, traced_update = trajectory(make, True, False, params, grads)
    xla, s_xla, traced_xla = trajectory(make, False, False, params, grads)
    assert "optadam_" in traced_update and "optadam_" not in traced_xla
    assert "_step_" not in traced_update
    if exact:
        assert_same((update, s_update), (xla, s_xla))
    else:
        assert_close((update, s_update), (xla, s_xla), 0)
    kept, s_kept, traced = trajectory(make, True, True, params, grads)
    donated, s_donated, _ = trajectory(make, True, True, params, grads, donate=True)
    assert step_kernel in traced and traced.count("ffi_call") == 1
    assert_same(kept, donated)
    assert_same(s_kept, s_donated)
    assert jax.tree.structure(s_kept) == jax.tree.structure(s_xla)
    return traced_update, traced


def lockstep(
    make: Callable[[], Any], via_step: bool, params: Any, grads: list
) -> tuple[list[tuple[Any, Any]], str, str]:
    """Each step from the XLA path's params and state, taken by both paths: per step the pair of
    ``(output, state)`` (native, XLA), where output is the update or (``via_step``) the new
    params; and both jaxprs. The kernels' switch is read where a function is traced, so each path
    is compiled under its own setting."""

    def compiled(native: bool) -> tuple[Any, Any, str]:
        optadam.set_native_enabled(native)
        tx = make()

        def step(p: Any, s: Any, g: Any) -> Any:
            return optadam.step(tx, g, s, p) if via_step else tx.update(g, s, p)

        s = tx.init(params)
        traced = str(jax.make_jaxpr(step)(params, s, grads[0]))
        return s, jax.jit(step).lower(params, s, grads[0]).compile(), traced

    s, native, traced = compiled(True)
    _, xla, traced_xla = compiled(False)
    p, pairs = params, []
    for g in grads:
        out_native, s_native = native(p, s, g)
        out_xla, s_xla = xla(p, s, g)
        pairs.append(((out_native, s_native), (out_xla, s_xla)))
        s = s_xla
        if via_step:
            p = out_xla
    return pairs, traced, traced_xla


def assert_same(a: Any, b: Any) -> None:
    """The same tree structure and every leaf equal (NaN where the other has NaN)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_close(a: Any, b: Any, ulps: int) -> None:
    """Leaf by leaf: float32 within ``ulps`` ulp of ``b``'s leaf's largest magnitude, other
    dtypes (float64) within 1e-14 relative to it; NaN and inf where ``b`` has them."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        finite = np.isfinite(y)
        np.testing.assert_array_equal(x[~finite], y[~finite])
        scale = np.max(np.abs(y[finite]), initial=0)
        atol = ulps * np.spacing(np.float32(scale)) if y.dtype == np.float32 else 1e-14 * scale
        np.testing.assert_allclose(x[finite], y[finite], rtol=0, atol=atol)


def special_tree() -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Float32 params with a leaf over 2^16 elements (split over the thread pool), and a gradient
    equal to them but for NaN, +inf and −inf in ``w``'s first three elements."""
    rng = np.random.default_rng(5)
    params = random_tree(rng, jnp.float32, {"w": (9,), "b": (70000,)})
    g = dict(params)
    g["w"] = g["w"].at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
    return params, g


def meta_gradient_and_sweep(
    alias: Callable[..., optax.GradientTransformation],
    kernel: str,
    native: bool,
    via_step: bool,
    steps: int,
) -> tuple[Any, Any]:
    """d(loss after ``steps`` steps of ``alias(lr, b1=b1)``)/d(lr, b1), and a vmap over the
    learning rate, both through a scan, by ``optadam.step`` or ``update`` + ``apply_updates``.

    η and β1 ride in the carry, so the scan's body traces the kernel with them as operands;
    differentiating the scan then takes the XLA math as the kernel's derivative rule. Asserts
    that the traced programs hold ``kernel`` (``<kernel>_step_f32`` via the step,
    ``<kernel>_f32`` otherwise) exactly when ``native``."""
    optadam.set_native_enabled(native)
    rng = np.random.default_rng(8)
    params = random_tree(rng, jnp.float32, {"w": (6,), "b": (3,)})
    target = random_tree(rng, jnp.float32, {"w": (6,), "b": (3,)})

    def loss(p: Any) -> jax.Array:
        return sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)

    def train(lr: jax.Array, b1: jax.Array) -> jax.Array:
        def body(carry: Any, _: Any) -> Any:
            p, s, lr, b1 = carry
            tx, g = alias(lr, b1=b1), jax.grad(loss)(p)
            if via_step:
                p, s = optadam.step(tx, g, s, p)
            else:
                u, s = tx.update(g, s, p)
                p = optax.apply_updates(p, u)
            return (p, s, lr, b1), None

        start = (params, alias(0.1).init(params), lr, b1)
        (p, *_), _ = jax.lax.scan(body, start, None, length=steps)
        return loss(p)

    lrs = jnp.asarray([0.05, 0.1, 0.2])
    traced_kernel = f"{kernel}_step_f32" if via_step else f"{kernel}_f32"
    for traced in (
        jax.make_jaxpr(train)(0.1, 0.9),
        jax.make_jaxpr(jax.vmap(train, (0, None)))(lrs, 0.9),
    ):
        assert (traced_kernel in str(traced)) == native
    meta_grad = jax.jit(jax.grad(train, argnums=(0, 1)))(0.1, 0.9)
    swept = jax.jit(jax.vmap(train, in_axes=(0, None)))(lrs, 0.9)
    return meta_grad, swept


def assert_step_close(p: Any, p_xla: Any, before: Any, ulps: int) -> None:
    """Params after one step from ``before``, against the XLA path's ``p_xla``, leaf by leaf:
    non-finite values equal; finite ones within 1 ulp of the leaf's largest value plus ``ulps``
    ulp of the largest step it took in float32, 1e-14 relative to their sum in float64."""
    for x, y, y0 in zip(*(jax.tree.leaves(t) for t in (p, p_xla, before)), strict=True):
        x, y, y0 = np.asarray(x), np.asarray(y), np.asarray(y0)
        finite = np.isfinite(y) & np.isfinite(y0)
        np.testing.assert_array_equal(x[~finite], y[~finite])
        top = np.max(np.abs(y[finite]), initial=0)
        moved = np.max(np.abs(y[finite] - y0[finite]), initial=0)
        if y.dtype == np.float32:
            atol = np.spacing(np.float32(top)) + ulps * np.spacing(np.float32(moved))
        else:
            atol = 1e-14 * (top + moved)
        np.testing.assert_allclose(x[finite], y[finite], rtol=0, atol=atol)


def updates_path(make: Callable[[], Any], native: bool, params: Any, grads: list) -> tuple:
    """Every update and the final state of jitted ``tx.update`` calls at fixed ``params``, and the
    traced jaxpr; ``make`` builds the transformation after the kernels' switch is set to
    ``native``."""
    optadam.set_native_enabled(native)
    tx = make()
    state = tx.init(params)
    update = jax.jit(tx.update)
    updates = []
    for g in grads:
        u, state = update(g, state, params)
        updates.append(u)
    traced = str(jax.make_jaxpr(tx.update)(grads[0], tx.init(params), params))
    return updates, state, traced
