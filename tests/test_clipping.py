"""``optadam.clip_by_global_norm`` and ``optadam.chain`` (optadam/clipping.py): optax's numbers and
state, and the clipped one-pass ``optadam.step`` against the two calls.

The references are optax's own ``clip_by_global_norm`` and ``chain``; the one pass is compared
with ``update`` + ``apply_updates`` of the same chain, on the kernel-backed and the XLA paths.
Each path builds its transformation anew (``jax.jit`` caches traces per function).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import (
    assert_same,
    assert_step_close,
    lockstep,
    needs_kernels,
    random_tree,
    trajectory,
    wide,
)

import optadam

# odd sizes, a leaf over 2^16 elements (the pool split) and a 0-d leaf
SHAPES = {"s": (), "one": (1,), "three": (3,), "w": (33, 5), "odd": (1023,), "big": (300, 301)}
STEPS = 14
# optimizers whose optadam.step is one native pass: chained after the clip, still one pass
ONE_PASS = {
    "adam": lambda: optadam.adam(0.1),
    "nadam": lambda: optadam.nadam(0.05, b1=0.8),
    "adamw": lambda: optadam.adamw(0.1, weight_decay=0.3),
    "adamw_schedules": lambda: optadam.adamw(
        optax.cosine_decay_schedule(0.1, 10), weight_decay=optax.linear_schedule(0.3, 0.0, 8)
    ),
    "sgd_momentum": lambda: optadam.sgd(0.1, momentum=0.9),
    "sgd_nesterov": lambda: optadam.sgd(optax.linear_schedule(0.1, 0.01, 6), 0.9, nesterov=True),
    "momentum": lambda: optadam.momentum(0.05, beta=0.95),
    "amsgrad": lambda: optadam.amsgrad(0.1),
    "radam": lambda: optadam.radam(optax.linear_schedule(0.1, 0.01, 10), nesterov=True),
    "rmsprop": lambda: optadam.rmsprop(0.01, centered=True),
    "rmsprop_momentum": lambda: optadam.rmsprop(0.01, momentum=0.9, eps_in_sqrt=False),
    "adagrad": lambda: optadam.adagrad(0.1),
}
STEP_KERNEL = {"adam": "optadam_adam_step_f", "momentum": "optadam_momentum_step_f"}
STEP_KERNEL |= {"amsgrad": "optadam_amsgrad_step_f", "radam": "optadam_radam_step_f"}
STEP_KERNEL |= {"rmsprop": "optadam_rms_step_f", "rmsprop_momentum": "optadam_rms_momentum_step_f"}
STEP_KERNEL |= {"adagrad": "optadam_adagrad_step_f"}
# these directions divide (or take XLA's rsqrt); the kernel's may differ from XLA's rewrites by a
# few ulp
DIVIDES = {"adam", "nadam", "adamw", "adamw_schedules", "amsgrad", "radam", "rmsprop", "adagrad"}
# others: the chain is optax.chain, and optadam.step its update + apply_updates
TWO_CALLS = {
    "optax_adam": lambda: optadam.chain(optadam.clip_by_global_norm(1.0), optax.adam(0.1)),
    "optax_clip": lambda: optadam.chain(optax.clip_by_global_norm(1.0), optadam.adam(0.1)),
    "three_parts": lambda: optadam.chain(
        optadam.clip_by_global_norm(1.0), optadam.sgd(0.1, momentum=0.9), optax.scale(0.5)
    ),
    "masked_adamw": lambda: optadam.chain(
        optadam.clip_by_global_norm(1.0),
        optadam.adamw(0.1, mask=lambda p: {k: k != "w" for k in p}),
    ),
    # (8-bit state after a clip takes its one pass: tests/test_native_8bit.py)
}


def gradient_stream(rng: np.random.Generator, dtype: Any, shapes: dict = SHAPES) -> list:
    """Gradients whose global norm (about 300 · scale here) crosses max_norm=30 back and forth,
    so one compiled step clips some steps and passes others unchanged."""
    scales = [10.0, 0.01, 1.0, 0.05, 3.0, 0.001, 0.2]
    return [random_tree(rng, dtype, shapes, scales[i % len(scales)]) for i in range(STEPS)]


def clipped(name: str, max_norm: float = 30.0) -> Callable[[], Any]:
    return lambda: optadam.chain(optadam.clip_by_global_norm(max_norm), ONE_PASS[name]())


def kernel_of(name: str) -> str:
    if name in STEP_KERNEL:
        return STEP_KERNEL[name]
    return STEP_KERNEL["momentum" if "momentum" in name or "sgd" in name else "adam"]


# --- the transformation: optax's numbers and state ------------------------------------------------

GRADIENTS = {
    "below_max_norm": {"a": [0.1, -0.2], "b": [[0.05]]},
    "above_max_norm": {"a": [3.0, -4.0], "b": [[12.0]]},
    "nan": {"a": [np.nan, 1.0], "b": [[2.0]]},
    "inf": {"a": [np.inf, 1.0], "b": [[-2.0]]},
    "zeros": {"a": [0.0, 0.0], "b": [[0.0]]},
    "random": None,
}


@pytest.mark.parametrize("max_norm", [1.0, 0.0, 1e-30, float("inf")])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", GRADIENTS)
def test_clip_by_global_norm_equals_optax_bitwise(case, dtype, max_norm, request):
    wide(dtype, request)
    values = GRADIENTS[case]
    if values is None:
        grads = random_tree(np.random.default_rng(0), dtype, SHAPES)
    else:
        grads = {k: jnp.asarray(v, dtype) for k, v in values.items()}
    ours, theirs = optadam.clip_by_global_norm(max_norm), optax.clip_by_global_norm(max_norm)
    assert ours.init(grads) == theirs.init(grads) == optax.EmptyState()
    for run in (lambda tx: tx.update, lambda tx: jax.jit(tx.update)):
        got, got_state = run(ours)(grads, ours.init(grads))
        want, want_state = run(theirs)(grads, theirs.init(grads))
        assert_same(got, want)
        assert got_state == want_state
        assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(got))


def test_clip_by_global_norm_passes_none_leaves_and_takes_an_array_max_norm():
    grads = {"a": jnp.array([3.0, 4.0]), "none": None, "b": jnp.array([[12.0]])}
    max_norm = jnp.asarray(2.0)
    got, _ = optadam.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    want, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    assert got["none"] is None
    assert_same(got, want)
    np.testing.assert_allclose(float(optax.tree.norm(got)), 2.0, rtol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), -float("inf")])
def test_clip_by_global_norm_rejects_a_negative_or_nan_max_norm(bad):
    with pytest.raises(ValueError, match=r"max_norm must be >= 0 \(inf: no bound\), got"):
        optadam.clip_by_global_norm(bad)


@pytest.mark.parametrize("name", ONE_PASS)
def test_chain_update_equals_optax_chain_results_and_state(name):
    """Kernels off: optadam.chain's update is optax.chain's, bit for bit, with the same state."""
    optadam.set_native_enabled(False)
    rng = np.random.default_rng(1)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)
    ours = optadam.chain(optadam.clip_by_global_norm(30.0), ONE_PASS[name]())
    theirs = optax.chain(optax.clip_by_global_norm(30.0), ONE_PASS[name]())
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    assert_same(s_ours, s_theirs)
    update_ours, update_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    for g in grads:
        u_ours, s_ours = update_ours(g, s_ours, params)
        u_theirs, s_theirs = update_theirs(g, s_theirs, params)
        assert_same((u_ours, s_ours), (u_theirs, s_theirs))


def test_chain_with_optax_optimizers_equals_optax_chain():
    """optadam.chain(optadam.clip_by_global_norm(c), optax.adam(...)) is optax's chain exactly."""
    rng = np.random.default_rng(2)
    params = random_tree(rng, jnp.float32, SHAPES)
    ours = optadam.chain(optadam.clip_by_global_norm(30.0), optax.adam(0.1))
    theirs = optax.chain(optax.clip_by_global_norm(30.0), optax.adam(0.1))
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for g in gradient_stream(rng, jnp.float32)[:6]:
        u_ours, s_ours = ours.update(g, s_ours, params)
        u_theirs, s_theirs = theirs.update(g, s_theirs, params)
        assert_same((u_ours, s_ours), (u_theirs, s_theirs))


def test_chain_is_one_pass_only_for_the_clip_then_a_one_pass_optimizer():
    for name in ONE_PASS:
        tx = clipped(name)()
        assert getattr(tx, "one_pass", None) is not None, name
    for name, make in TWO_CALLS.items():
        if name == "8bit_rmsprop_momentum":  # one pass built; at run time it declines
            continue
        assert getattr(make(), "one_pass", None) is None, name
    assert getattr(optadam.chain(optadam.adam(0.1)), "one_pass", None) is None


# --- the one pass: the two calls' numbers ---------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("name", ONE_PASS)
def test_clipped_one_pass_step_matches_xla_path_float32(name):
    """The kernel-backed two calls give the XLA path's bits; the one pass against the XLA path
    (the definition): the state bit for bit, and the params bit for bit for Momentum and within
    the Adam kernel's own bound per step (tests/test_step.py) for the Adam family -- on a stream
    that clips some steps only."""
    rng = np.random.default_rng(3)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)
    one, s_one, traced = trajectory(clipped(name), True, True, params, grads, donate=True)
    two, s_two, traced_two = trajectory(clipped(name), True, False, params, grads, donate=True)
    xla, s_xla, traced_xla = trajectory(clipped(name), False, False, params, grads, donate=True)
    assert kernel_of(name) in traced and traced.count("ffi_call") == 1
    assert "_step_f" not in traced_two and "optadam_" not in traced_xla
    assert_same((two, s_two), (xla, s_xla))
    assert_same(s_one, s_xla)
    if name not in DIVIDES:
        assert_same(one, xla)
    else:  # the moments agree, so each step adds at most its own bound: they add up
        previous, bound = params, [0.0] * len(SHAPES)
        for a, b in zip(one, xla, strict=True):
            leaves = zip(*map(jax.tree.leaves, (a, b, previous)), strict=True)
            for i, (x, y, old) in enumerate(leaves):
                largest_step = np.max(np.abs(y - old), initial=0)
                bound[i] = bound[i] + np.spacing(np.abs(y)) + 3 * np.spacing(largest_step)
                assert np.all(np.abs(x - y) <= bound[i])
            previous = b


@needs_kernels
@pytest.mark.parametrize("name", ["adamw", "sgd_nesterov"])
def test_clipped_one_pass_step_matches_xla_path_float64(name, x64):
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float64, SHAPES)
    grads = gradient_stream(rng, jnp.float64)
    one, s_one, traced = trajectory(clipped(name), True, True, params, grads, donate=True)
    two, s_two, _ = trajectory(clipped(name), True, False, params, grads, donate=True)
    xla, s_xla, _ = trajectory(clipped(name), False, False, params, grads, donate=True)
    assert kernel_of(name) + "64" in traced
    assert_same((two, s_two), (xla, s_xla))  # the update kernel: the XLA path's bits
    for x, y in zip(jax.tree.leaves((one, s_one)), jax.tree.leaves((xla, s_xla)), strict=True):
        scale = float(np.max(np.abs(np.asarray(y)), initial=0))
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-14, atol=1e-14 * scale)


@needs_kernels
@pytest.mark.parametrize("name", ["adamw", "nadam", "sgd_momentum"])
def test_clipped_one_pass_with_nan_inf_and_zero_gradients_gives_the_two_call_results(name):
    """A NaN or inf anywhere makes ‖g‖ NaN or inf: every element then clips to NaN or 0 as on the
    XLA path; zero gradients pass (‖g‖ = 0 < c)."""
    params = {"w": jnp.array([1.0, jnp.inf, 0.5, -2.0, 0.0]), "b": jnp.array([jnp.nan, 1.0])}
    grads = [
        {"w": jnp.array([0.5, 1.0, 2.0, -1.0, 0.0]), "b": jnp.array([1.0, jnp.inf])},
        {"w": jnp.zeros(5), "b": jnp.zeros(2)},
        {"w": jnp.array([jnp.nan, 1.0, 0.0, -1.0, 0.0]), "b": jnp.array([1.0, 0.0])},
    ]
    one, s_one, traced = trajectory(clipped(name, 1.0), True, True, params, grads, donate=True)
    two, s_two, _ = trajectory(clipped(name, 1.0), True, False, params, grads, donate=True)
    assert kernel_of(name) in traced
    assert_same((one, s_one), (two, s_two))


@needs_kernels
@pytest.mark.parametrize("name", TWO_CALLS)
def test_other_chains_take_update_then_apply_updates(name):
    rng = np.random.default_rng(5)
    shapes = {**SHAPES, "big": (64, 64)}  # 8-bit state: leaves under 4,096 elements stay float32
    params = random_tree(rng, jnp.float32, shapes)
    grads = gradient_stream(rng, jnp.float32, shapes)[:4]
    one, s_one, traced = trajectory(TWO_CALLS[name], True, True, params, grads, donate=True)
    two, s_two, _ = trajectory(TWO_CALLS[name], True, False, params, grads, donate=True)
    assert "_step_f" not in traced  # no one-pass kernel
    assert_same((one, s_one), (two, s_two))


@needs_kernels
def test_clip_with_bfloat16_state_is_one_pass_and_with_bfloat16_params_two_calls():
    """A bfloat16 trace after a clip: the low-precision one pass, the two calls' bits. bfloat16
    params: the two calls (they round c and the clipped gradients to bfloat16)."""

    def make() -> Any:
        sgd = optadam.sgd(0.1, 0.9, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True)
        return optadam.chain(optadam.clip_by_global_norm(30.0), sgd)

    rng = np.random.default_rng(8)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)
    one, s_one, traced = trajectory(make, True, True, params, grads, donate=True)
    two, s_two, _ = trajectory(make, True, False, params, grads, donate=True)
    assert "optadam_momentum_step_lowp" in traced and traced.count("ffi_call") == 1
    assert_same((one, s_one), (two, s_two))
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), (params, grads))
    one, s_one, traced = trajectory(make, True, True, *low)
    two, s_two, _ = trajectory(make, True, False, *low)
    assert "_step_lowp" not in traced and "optadam_momentum_lowp" in traced
    assert_same((one, s_one), (two, s_two))


@needs_kernels
def test_a_zero_size_leaf_keeps_the_one_pass_and_kernels_off_take_the_two_calls():
    rng = np.random.default_rng(6)
    params = {**random_tree(rng, jnp.float32, SHAPES), "empty": jnp.zeros((0, 3))}
    grads = [{**g, "empty": jnp.zeros((0, 3))} for g in gradient_stream(rng, jnp.float32)[:4]]
    for native in (True, False):
        one, s_one, traced = trajectory(clipped("adamw"), native, True, params, grads, donate=True)
        two, s_two, _ = trajectory(clipped("adamw"), native, False, params, grads, donate=True)
        assert ("_step_f" in traced) == native  # the empty leaf passes through the one pass
        if not native:  # optadam.step is then the two calls
            assert_same((one, s_one), (two, s_two))
    # with the kernel: the XLA path's state, and params within the Adam kernel's bound per step
    pairs, _, _ = lockstep(clipped("adamw"), True, params, grads)
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert p["empty"].shape == (0, 3)
        assert_same(s, s_xla)
        assert_step_close(p, p_xla, before, 3)
        before = p_xla


@needs_kernels
def test_donated_clipped_step_compiles_to_one_kernel_call_and_no_copy():
    optadam.set_native_enabled(True)
    params = random_tree(np.random.default_rng(7), jnp.float32, SHAPES)
    for name in ("adamw_schedules", "sgd_nesterov"):
        tx = clipped(name)()
        step = jax.jit(lambda p, s, g, tx=tx: optadam.step(tx, g, s, p), donate_argnums=(0, 1))
        hlo = step.lower(params, tx.init(params), params).compile().as_text()
        assert hlo.count("custom-call(") == 1
        assert not re.search(r"= \w+\[\d[\d,]*\]\S* copy\(", hlo), hlo  # no array copied


@needs_kernels
def test_gradient_through_a_clipped_step_takes_the_xla_math():
    """A clipped one-pass step traced under ``jit`` and differentiated (through the params and the
    gradients, so through ‖g‖) uses the XLA math as its derivative."""
    rng = np.random.default_rng(8)
    params = random_tree(rng, jnp.float32, {"w": (5, 3), "b": (4,)})
    grads = random_tree(rng, jnp.float32, {"w": (5, 3), "b": (4,)}, scale=3.0)

    def derivative(native: bool, name: str) -> Any:
        optadam.set_native_enabled(native)
        tx = clipped(name, 1.0)()
        state = tx.init(params)
        step = jax.jit(lambda p, g: optadam.step(tx, g, state, p))

        def f(p: Any, g: Any) -> Any:
            new, _ = step(p, g)
            return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(new))

        assert ("_step_f" in str(jax.make_jaxpr(step)(params, grads))) == native
        return jax.grad(f, argnums=(0, 1))(params, grads)

    for name in ("adamw", "sgd_nesterov"):
        kernel, xla = derivative(True, name), derivative(False, name)
        for a, b in zip(jax.tree.leaves(kernel), jax.tree.leaves(xla), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
