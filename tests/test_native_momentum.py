"""The native Momentum kernel (optadam/_native/momentum.cc) against the XLA path, which stays the
definition: ``scale_by_momentum``'s update through ``tx.update``, and ``optadam.step``'s one pass
for ``sgd(momentum=...)`` and ``momentum()``; and every way of falling back to the XLA path.

Each comparison builds the transformation anew for each path: ``jax.jit`` caches traces per
function, so a transformation traced on one path keeps it. Momentum has no division: the kernel
places its fused multiply-adds where XLA:CPU contracts them, so float32 results are bitwise equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_same, needs_kernels, random_tree, trajectory, updates_path

import optadam

SHAPES = {"s": (), "one": (1,), "odd": (7,), "w": (33, 5), "t": (4, 3, 2)}
BIG = {**SHAPES, "big": (300, 301)}  # over 2^16 elements: split over the thread pool
STEPS = 40
FAMILY = {
    "heavy_ball": lambda: optadam.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optadam.sgd(0.1, momentum=0.9, nesterov=True),
    "small_decay": lambda: optadam.sgd(0.03, momentum=0.3, nesterov=True),
    "zero_decay": lambda: optadam.sgd(0.1, momentum=0.0),
    "momentum": lambda: optadam.momentum(0.05, beta=0.95),
    "momentum_nesterov": lambda: optadam.momentum(0.05, beta=0.95, nesterov=True),
    "schedule": lambda: optadam.sgd(optax.linear_schedule(0.1, 0.01, 10), momentum=0.9),
    "array_lr": lambda: optadam.sgd(jnp.asarray(0.05), momentum=0.8, nesterov=True),
}
KERNEL, STEP_KERNEL = "optadam_momentum_f", "optadam_momentum_step_f"


def assert_close_f64(a: Any, b: Any) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = float(np.max(np.abs(np.asarray(y)), initial=0))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-14, atol=1e-14 * scale)


@needs_kernels
@pytest.mark.parametrize("name", FAMILY)
def test_momentum_kernel_update_equals_xla_path_bitwise_float32(name: str):
    optadam.set_native_enabled(True)
    assert optadam.native_status().enabled
    rng = np.random.default_rng(0)
    params = random_tree(rng, jnp.float32, BIG)
    grads = [random_tree(rng, jnp.float32, BIG) for _ in range(STEPS)]
    u_k, s_k, traced_k = updates_path(FAMILY[name], True, params, grads)
    u_x, s_x, traced_x = updates_path(FAMILY[name], False, params, grads)
    assert KERNEL in traced_k and "optadam_momentum" not in traced_x
    assert traced_k.count("ffi_call") == 1  # one call for all leaves of the dtype
    assert_same(u_k, u_x)
    assert_same(s_k, s_x)


@needs_kernels
@pytest.mark.parametrize("name", FAMILY)
def test_momentum_kernel_update_matches_xla_path_float64(name: str, x64):
    rng = np.random.default_rng(1)
    params = random_tree(rng, jnp.float64, SHAPES)
    grads = [random_tree(rng, jnp.float64, SHAPES) for _ in range(STEPS)]
    u_k, s_k, traced_k = updates_path(FAMILY[name], True, params, grads)
    u_x, s_x, _ = updates_path(FAMILY[name], False, params, grads)
    assert KERNEL + "64" in traced_k
    assert_same((u_k, s_k), (u_x, s_x))


@needs_kernels
@pytest.mark.parametrize("name", FAMILY)
def test_one_pass_step_equals_update_then_apply_updates_bitwise_float32(name: str):
    """With kernels on (one pass vs the kernel-backed two calls) and against the XLA path."""
    rng = np.random.default_rng(2)
    params = random_tree(rng, jnp.float32, BIG)
    grads = [random_tree(rng, jnp.float32, BIG) for _ in range(STEPS)]
    one, s_one, traced = trajectory(FAMILY[name], True, True, params, grads, donate=True)
    two, s_two, traced_two = trajectory(FAMILY[name], True, False, params, grads, donate=True)
    xla, s_xla, traced_xla = trajectory(FAMILY[name], False, False, params, grads, donate=True)
    assert STEP_KERNEL in traced and traced.count("ffi_call") == 1
    assert STEP_KERNEL not in traced_two and "optadam_momentum" not in traced_xla
    for other, s_other in ((two, s_two), (xla, s_xla)):
        assert_same(one, other)
        assert_same(s_one, s_other)
        assert jax.tree.structure(s_one) == jax.tree.structure(s_other)


@needs_kernels
@pytest.mark.parametrize("name", FAMILY)
def test_one_pass_step_matches_xla_path_float64(name: str, x64):
    rng = np.random.default_rng(3)
    params = random_tree(rng, jnp.float64, SHAPES)
    grads = [random_tree(rng, jnp.float64, SHAPES) for _ in range(STEPS)]
    one, s_one, traced = trajectory(FAMILY[name], True, True, params, grads, donate=True)
    xla, s_xla, _ = trajectory(FAMILY[name], False, False, params, grads, donate=True)
    assert STEP_KERNEL + "64" in traced
    assert_close_f64((one, s_one), (xla, s_xla))


@needs_kernels
def test_nan_and_inf_give_the_xla_path_results():
    params = {"w": jnp.array([1.0, jnp.inf, 0.5, -2.0, 0.0]), "b": jnp.array([jnp.nan, 1.0])}
    grads = [
        {"w": jnp.array([jnp.nan, 1.0, jnp.inf, -jnp.inf, 0.0]), "b": jnp.array([1.0, 0.0])}
    ] * 3
    for make in (FAMILY["heavy_ball"], FAMILY["nesterov"]):
        u_k, s_k, traced = updates_path(make, True, params, grads)
        u_x, s_x, _ = updates_path(make, False, params, grads)
        assert KERNEL in traced
        assert_same((u_k, s_k), (u_x, s_x))
        one, s_one, traced = trajectory(make, True, True, params, grads, donate=True)
        xla, s_xla, _ = trajectory(make, False, False, params, grads, donate=True)
        assert STEP_KERNEL in traced
        assert_same((one, s_one), (xla, s_xla))


LEAN = {
    "bfloat16_trace": lambda: optadam.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16),
    "stochastic_rounding": lambda: optadam.sgd(
        0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True
    ),
}  # (an 8-bit trace has 8-bit kernels of its own: tests/test_native_8bit.py)


@needs_kernels
@pytest.mark.parametrize("name", LEAN)
def test_lean_trace_steps_give_the_xla_path_numbers(name: str):
    """optadam.step gives the XLA path's numbers: a bfloat16 trace in the low-precision one pass
    (tests/test_native_lowp.py); its update through the low-precision update kernel."""
    rng = np.random.default_rng(4)
    shapes = {**SHAPES, "big": (64, 64)}  # 8-bit state: leaves under 4,096 elements stay float32
    params = random_tree(rng, jnp.float32, shapes)
    grads = [random_tree(rng, jnp.float32, shapes) for _ in range(4)]
    one, s_one, traced = trajectory(LEAN[name], True, True, params, grads, donate=True)
    two, s_two, _ = trajectory(LEAN[name], False, False, params, grads, donate=True)
    assert STEP_KERNEL not in traced and "optadam_momentum_step_lowp" in traced
    assert_same((one, s_one), (two, s_two))
    _, _, traced_update = updates_path(LEAN[name], True, params, grads[:1])
    assert "optadam_momentum_lowp" in traced_update


@needs_kernels
def test_kernels_off_and_plain_sgd_take_the_xla_path(monkeypatch):
    params = random_tree(np.random.default_rng(5), jnp.float32, SHAPES)

    def traced(make: Callable[[], Any], via_step: bool) -> str:
        tx = make()
        if via_step:
            step = lambda p, s, g: optadam.step(tx, g, s, p)  # noqa: E731
        else:
            step = lambda p, s, g: tx.update(g, s, p)  # noqa: E731
        return str(jax.make_jaxpr(step)(params, tx.init(params), params))

    monkeypatch.delenv("OPTADAM_NATIVE", raising=False)
    optadam.set_native_enabled(None)
    assert STEP_KERNEL in traced(FAMILY["nesterov"], True)  # step's one pass is on by default
    assert "optadam_momentum_f32" in traced(FAMILY["nesterov"], False)  # and update's kernel
    monkeypatch.setenv("OPTADAM_NATIVE", "0")
    assert "optadam_momentum" not in traced(FAMILY["nesterov"], True)
    assert "optadam_momentum" not in traced(FAMILY["nesterov"], False)
    monkeypatch.setenv("OPTADAM_NATIVE", "1")
    assert "optadam_momentum" not in traced(lambda: optadam.sgd(0.1), True)  # no trace to keep
    wrapped = lambda: optax.chain(optax.clip(1.0), optadam.sgd(0.1, momentum=0.9))  # noqa: E731
    assert STEP_KERNEL not in traced(wrapped, True)
    optadam.set_native_enabled(False)
    assert "optadam_momentum" not in traced(FAMILY["heavy_ball"], True)
