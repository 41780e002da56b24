"""The native RAdam kernel (optadam/_native/radam.cc): its update and ``optadam.step``'s one pass
against the XLA path, which stays the definition, for every option of scale_by_radam, on both sides
of the threshold, and the ways of falling back to that path.

Each comparison builds the transformation anew for each path: ``jax.jit`` caches traces per
function, so a transformation traced on one path keeps it.

Exactness: m and v are bitwise. The kernel divides as the Python is written; XLA rewrites a
division by one of the step's scalars as a multiplication by its reciprocal where it has one use
(more of them in a one-leaf tree) and turns ``/ (sqrt(x) + 0)`` into ``· rsqrt(x)``: the update is
within a few ulp of the leaf's largest update (BUILD_NOTES.md, "Native kernels", RAdam).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import (
    assert_close,
    assert_kernel_paths_agree,
    assert_same,
    assert_step_close,
    lockstep,
    meta_gradient_and_sweep,
    needs_kernels,
    random_tree,
    special_tree,
    trajectory,
    wide,
)

import optadam

# odd sizes, and a leaf over 2^16 elements so the call is split over the thread pool
SHAPES = {"s": (), "one": (1,), "three": (3,), "odd": (1023,), "w": (33, 5), "big": (257, 263)}
STEPS = 12
# ρ_t passes the threshold within STEPS in all but "never_rectified" (checked below)
OPTIONS = {
    "default": {},
    "nesterov": {"nesterov": True},
    "paper": {"b1": 0.5, "b2": 0.9, "eps": 0.0, "eps_root": 1e-6, "threshold": 4.0},
    "nesterov_eps_root": {"nesterov": True, "b2": 0.99, "eps_root": 1e-8},
    "never_rectified": {"threshold": 100.0},
}
LEARNING_RATES = {"constant": 0.01, "schedule": optax.linear_schedule(0.02, 0.001, 6)}
# the update's distance from the XLA path, in float32 ulp of each leaf's largest update, as
# measured: bitwise with ε outside the root, 3 with ε = 0 (XLA turns the root into rsqrt and
# folds divisions); 5 in a one-leaf tree
ULPS = {"default": 0, "nesterov": 0, "paper": 3, "nesterov_eps_root": 0, "never_rectified": 0}
ONE_LEAF_ULPS = 5


def gradient_stream(rng: np.random.Generator, dtype: Any, shapes: dict = SHAPES) -> list:
    return [random_tree(rng, dtype, shapes) for _ in range(STEPS)]


def rectified_steps(options: dict) -> list[int]:
    """The steps t <= STEPS whose ρ_t reaches the threshold (NumPy float64)."""
    b2, threshold = options.get("b2", 0.999), options.get("threshold", 5.0)
    rho_inf = 2 / (1 - b2) - 1
    t = np.arange(1, STEPS + 1)
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    return [int(i) for i in t[rho >= threshold]]


def moments(state: Any) -> optadam.ScaleByAdamState:
    return state[0]  # radam is chain(scale_by_radam, scale_by_learning_rate)


@needs_kernels
@pytest.mark.parametrize("lr", LEARNING_RATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_matches_xla_path(name, dtype, lr, request):
    """tx.update with the kernel against the XLA path, step after step from the same state,
    momentum steps and rectified ones: moments and update bitwise (the update is the XLA path's
    jnp direction)."""
    wide(dtype, request)
    rng = np.random.default_rng(0)
    params = random_tree(rng, dtype, SHAPES)
    grads = gradient_stream(rng, dtype)

    def make():
        return optadam.radam(LEARNING_RATES[lr], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, False, params, grads)
    assert traced.count("optadam_radam_f") == 1 and "optadam_radam" not in traced_xla
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, moments(s)), (u_xla, moments(s_xla)))
    rectified = rectified_steps(OPTIONS[name])
    assert (rectified == []) == (name == "never_rectified") and 1 not in rectified


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_leaf_tree_matches_xla_path(dtype, request):
    """In a one-leaf tree XLA rewrites more of the divisions by the step's scalars: moments still
    bitwise, the update within ``ONE_LEAF_ULPS``; each path on its own, nothing reset."""
    wide(dtype, request)
    rng = np.random.default_rng(1)
    shapes = {"w": (70001,)}
    params = random_tree(rng, dtype, shapes)
    grads = gradient_stream(rng, dtype, shapes)
    optadam.set_native_enabled(True)
    tx = optadam.radam(0.01, nesterov=True)
    s_native = s_xla = tx.init(params)
    native = jax.jit(tx.update).lower(grads[0], s_native)  # traced now, with the kernels on
    assert "optadam_" in native.as_text()
    native = native.compile()
    optadam.set_native_enabled(False)
    xla = jax.jit(optadam.radam(0.01, nesterov=True).update)
    for g in grads:
        u, s_native = native(g, s_native)
        u_xla, s_xla = xla(g, s_xla)
        assert_same(s_native, s_xla)
        assert_close(u, u_xla, ONE_LEAF_ULPS)


@needs_kernels
def test_crossing_the_threshold_reuses_the_trace():
    """The rectification flag and r_t are operands: twelve jitted steps, momentum steps first and
    rectified ones after, trace the update and the one-pass step once each."""
    optadam.set_native_enabled(True)
    rng = np.random.default_rng(9)
    params = random_tree(rng, jnp.float32, SHAPES)
    tx = optadam.radam(0.01)
    traces: list[str] = []

    def update(g: Any, s: Any) -> Any:
        traces.append("update")
        return tx.update(g, s)

    def step(p: Any, s: Any, g: Any) -> Any:
        traces.append("step")
        return optadam.step(tx, g, s, p)

    jitted_update, jitted_step = jax.jit(update), jax.jit(step)
    s_update = s_step = tx.init(params)
    p = params
    for g in gradient_stream(rng, jnp.float32):
        _, s_update = jitted_update(g, s_update)
        p, s_step = jitted_step(p, s_step, g)
    assert sorted(traces) == ["step", "update"]
    assert int(moments(s_step).count) == STEPS and rectified_steps({})[0] < STEPS
    assert str(jax.make_jaxpr(step)(p, s_step, params)).count("optadam_radam_step_f32") == 1


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_is_xla_path_and_one_pass_is_one_call(name, dtype, request):
    """The kernel-backed update + apply_updates is the XLA path bit for bit; the one pass is one
    call, donated or not (tests/harness.py: assert_kernel_paths_agree)."""
    wide(dtype, request)
    rng = np.random.default_rng(2)
    params = random_tree(rng, dtype, SHAPES)
    grads = gradient_stream(rng, dtype)
    for lr in LEARNING_RATES.values():

        def make(lr=lr):
            return optadam.radam(lr, **OPTIONS[name])

        assert_kernel_paths_agree(make, params, grads, "optadam_radam_step")


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_one_pass_step_matches_xla_path(name, dtype, request):
    """The one-pass step against kernels off, step after step from the same params and state:
    moments bitwise; params within 1 ulp of themselves plus ``ULPS[name]`` of the step they
    took."""
    wide(dtype, request)
    rng = np.random.default_rng(3)
    params = random_tree(rng, dtype, SHAPES)
    grads = gradient_stream(rng, dtype)

    def make():
        return optadam.radam(LEARNING_RATES["schedule"], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, True, params, grads)
    assert "optadam_radam_step" in traced and "optadam_radam" not in traced_xla
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(moments(s), moments(s_xla))
        assert_step_close(p, p_xla, before, ULPS[name])
        before = p_xla


@needs_kernels
def test_injected_hyperparameters_are_operands_and_match_xla_path():
    """scale_by_radam under inject_hyperparams: changing β1 and η between steps reuses the
    trace (they reach the kernel as operands), with the XLA path's numbers."""
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)
    outs = {}
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optadam.inject_hyperparams(optadam.radam)(0.1, b1=0.9)
        state, traces = tx.init(params), []
        update = jax.jit(lambda g, s, tx=tx, traces=traces: (traces.append(1), tx.update(g, s))[1])
        assert ("optadam_radam_f32" in str(jax.make_jaxpr(tx.update)(params, state))) == native
        us = []
        for i, g in enumerate(grads):
            state.hyperparams["b1"] = jnp.asarray(0.9 - 0.03 * i, jnp.float32)
            state.hyperparams["learning_rate"] = jnp.asarray(0.1 / (1 + i), jnp.float32)
            u, state = update(g, state)
            us.append(u)
        assert len(traces) == 1
        outs[native] = (us, state.inner_state)
    assert_same(outs[True][1], outs[False][1])
    assert_close(outs[True][0], outs[False][0], ULPS["default"])


def special_stream(params: dict, g: dict) -> list[dict]:
    """Eight steps, the special gradients on momentum steps (1, 3) and rectified ones (6, 8)."""
    h = jax.tree.map(lambda x: 0.5 * x, params)
    return [g, h, g, h, h, g, h, g]


@needs_kernels
def test_nan_inf_and_zero_size_leaves_give_xla_path_results():
    """NaN and ±inf gradients propagate into m, v and the update as on the XLA path, in momentum
    and rectified steps; a zero-size leaf stays on the XLA path, the others take the kernel."""
    params, g = special_tree()
    params["empty"], g["empty"] = jnp.zeros((0, 3)), jnp.zeros((0, 3))
    grads = special_stream(params, g)
    pairs, traced, _ = lockstep(lambda: optadam.radam(0.1), False, params, grads)
    assert "optadam_radam_f32" in traced
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, moments(s)), (u_xla, moments(s_xla)))
    assert np.isnan(np.asarray(moments(pairs[-1][1][1]).nu["w"][0]))


@needs_kernels
def test_one_pass_step_with_nan_inf_and_zero_size_leaves_matches_update_then_apply_updates():
    params, g = special_tree()
    params["empty"], g["empty"] = jnp.zeros((0, 3)), jnp.zeros((0, 3))
    grads = special_stream(params, g)
    one, s_one, traced = trajectory(lambda: optadam.radam(0.1), True, True, params, grads)
    two, s_two, _ = trajectory(lambda: optadam.radam(0.1), True, False, params, grads)
    assert "optadam_radam_step" in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


# (bfloat16 moments take the low-precision one pass: tests/test_native_lowp.py; 8-bit moments
# their 8-bit one pass and update kernels: tests/test_native_8bit.py)
FALLBACKS = {
    "wrapped": lambda: optax.chain(optax.clip(1.0), optadam.radam(0.01)),
    "injected": lambda: optadam.inject_hyperparams(optadam.radam)(0.01),
}


@needs_kernels
@pytest.mark.parametrize("name", FALLBACKS)
def test_wrappers_step_takes_update_then_apply_updates(name):
    """What the one pass does not cover takes update + apply_updates (the same numbers), its
    update through the update kernel."""
    rng = np.random.default_rng(6)
    params = {"w": jnp.asarray(rng.normal(size=(80, 80)), jnp.float32)}
    grads = gradient_stream(rng, jnp.float32, {"w": (80, 80)})[:3]
    one, s_one, traced = trajectory(FALLBACKS[name], True, True, params, grads)
    two, s_two, _ = trajectory(FALLBACKS[name], True, False, params, grads)
    assert "optadam_radam_step" not in traced
    assert "optadam_radam_f32" in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


def test_kernels_off_step_is_update_then_apply_updates():
    rng = np.random.default_rng(7)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)[:3]

    def make():
        return optadam.radam(0.01)

    one, s_one, traced = trajectory(make, False, True, params, grads)
    two, s_two, _ = trajectory(make, False, False, params, grads)
    assert "optadam_radam" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
@pytest.mark.parametrize("via_step", [True, False])
def test_meta_gradient_and_vmap_through_the_kernel_equal_the_xla_path(via_step):
    # 8 steps: 3 of them rectified
    grad_k, swept_k = meta_gradient_and_sweep(optadam.radam, "optadam_radam", True, via_step, 8)
    grad_x, swept_x = meta_gradient_and_sweep(optadam.radam, "optadam_radam", False, via_step, 8)
    np.testing.assert_allclose(grad_k, grad_x, rtol=1e-5)
    np.testing.assert_allclose(swept_k, swept_x, rtol=1e-6)
