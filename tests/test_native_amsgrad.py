"""The native AMSGrad kernel (optadam/_native/amsgrad.cc): its update and ``optadam.step``'s one
pass against the XLA path, which stays the definition, for every option of scale_by_amsgrad, and
the ways of falling back to that path.

Each comparison builds the transformation anew for each path: ``jax.jit`` caches traces per
function, so a transformation traced on one path keeps it.

Exactness: m and v are bitwise. The kernel divides as the Python is written; XLA rewrites a
division by one of the step's scalars as a multiplication by its reciprocal where the scalar has
one use -- a one-leaf tree: v̂ = v · (1/c2) -- and turns ``/ (sqrt(x) + 0)`` into ``· rsqrt(x)``.
So ``nu_max`` is bitwise in a tree of several leaves and within 1 ulp (element-wise) in a one-leaf
tree, and the update within a few ulp of the leaf's largest update (BUILD_NOTES.md, "Native
kernels", AMSGrad).
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
OPTIONS = {
    "default": {},
    "eps_root": {"b1": 0.5, "b2": 0.9, "eps": 0.0, "eps_root": 1e-6},
    "no_bias_correction": {"bias_correction_mu": False, "bias_correction_nu": False},
    "mu_correction_only": {"bias_correction_nu": False},
    "nu_correction_only": {"bias_correction_mu": False, "eps": 1e-3},
}
LEARNING_RATES = {"constant": 0.01, "schedule": optax.linear_schedule(0.02, 0.001, 6)}
# the update's distance from the XLA path, in float32 ulp of each leaf's largest update, as
# measured: bitwise where m̂ = m (no division to rewrite), 3 where XLA folds m / c1 into the
# denominator, 4 where it also turns the root (ε = 0) into rsqrt; 5 in a one-leaf tree
ULPS = {
    "default": 3,
    "eps_root": 4,
    "no_bias_correction": 0,
    "mu_correction_only": 3,
    "nu_correction_only": 0,
}
ONE_LEAF_ULPS = 5


def gradient_stream(rng: np.random.Generator, dtype: Any, shapes: dict = SHAPES) -> list:
    """``STEPS`` gradient trees, each scaled at random (0.2-3x) so that v̂ falls below its
    running maximum on some steps and ``nu_max`` holds an older value."""
    return [
        jax.tree.map(lambda g: g * rng.uniform(0.2, 3.0), random_tree(rng, dtype, shapes))
        for _ in range(STEPS)
    ]


def within_one_ulp(a: Any, b: Any) -> None:
    """Element-wise: each of ``a`` equal to ``b`` or its neighbour."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y))
        big = np.maximum(np.abs(x), np.abs(y))
        assert np.all((x == y) | (np.abs(x - y) <= np.spacing(big))), "nu_max over 1 ulp off"


def moments(state: Any) -> optadam.ScaleByAmsgradState:
    return state[0]  # amsgrad is chain(scale_by_amsgrad, scale_by_learning_rate)


def held_somewhere(state: optadam.ScaleByAmsgradState, options: dict) -> bool:
    """Whether ``nu_max`` holds, somewhere, more than this step's v̂ (float64 reference)."""
    t = int(state.count)
    c2 = 1 - options.get("b2", 0.999) ** t if options.get("bias_correction_nu", True) else 1.0
    for nu, nu_max in zip(jax.tree.leaves(state.nu), jax.tree.leaves(state.nu_max), strict=True):
        if np.any(np.asarray(nu_max, np.float64) > np.asarray(nu, np.float64) / c2 * (1 + 1e-4)):
            return True
    return False


@needs_kernels
@pytest.mark.parametrize("lr", LEARNING_RATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_matches_xla_path(name, dtype, lr, request):
    """tx.update with the kernel against the XLA path, step after step from the same state: the
    three moments and the update bitwise (the update is the XLA path's jnp direction)."""
    wide(dtype, request)
    rng = np.random.default_rng(0)
    params = random_tree(rng, dtype, SHAPES)
    grads = gradient_stream(rng, dtype)

    def make():
        return optadam.amsgrad(LEARNING_RATES[lr], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, False, params, grads)
    assert traced.count("optadam_amsgrad_f") == 1 and "optadam_amsgrad" not in traced_xla
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, moments(s)), (u_xla, moments(s_xla)))
    assert held_somewhere(moments(pairs[-1][1][1]), OPTIONS[name])


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_leaf_tree_keeps_nu_max_within_one_ulp(dtype, request):
    """In a one-leaf tree XLA computes v̂ as v · (1/c2), the kernel as v / c2 (as written): the
    running maximum may then differ by 1 ulp, and never grows apart over the steps."""
    wide(dtype, request)
    rng = np.random.default_rng(1)
    shapes = {"w": (70001,)}
    params = random_tree(rng, dtype, shapes)
    grads = gradient_stream(rng, dtype, shapes)
    optadam.set_native_enabled(True)
    tx = optadam.amsgrad(0.01)
    s_native = s_xla = tx.init(params)
    native = jax.jit(tx.update).lower(grads[0], s_native)  # traced now, with the kernels on
    assert "optadam_" in native.as_text()
    native = native.compile()
    optadam.set_native_enabled(False)
    xla = jax.jit(optadam.amsgrad(0.01).update)
    for g in grads:  # each path on its own: nothing is reset to the XLA path's state
        u, s_native = native(g, s_native)
        u_xla, s_xla = xla(g, s_xla)
        assert_same(moments(s_native)[:3], moments(s_xla)[:3])  # count, mu, nu
        within_one_ulp(moments(s_native).nu_max, moments(s_xla).nu_max)
        assert_close(u, u_xla, ONE_LEAF_ULPS)


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
            return optadam.amsgrad(lr, **OPTIONS[name])

        assert_kernel_paths_agree(make, params, grads, "optadam_amsgrad_step")


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
        return optadam.amsgrad(LEARNING_RATES["schedule"], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, True, params, grads)
    assert "optadam_amsgrad_step" in traced and "optadam_amsgrad" not in traced_xla
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(moments(s), moments(s_xla))
        assert_step_close(p, p_xla, before, ULPS[name])
        before = p_xla


@needs_kernels
def test_injected_hyperparameters_are_operands_and_match_xla_path():
    """scale_by_amsgrad under inject_hyperparams: changing β1 and η between steps reuses the
    trace (they reach the kernel as operands), with the XLA path's numbers."""
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)
    outs = {}
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optadam.inject_hyperparams(optadam.amsgrad)(0.1, b1=0.9)
        state, traces = tx.init(params), []
        update = jax.jit(lambda g, s, tx=tx, traces=traces: (traces.append(1), tx.update(g, s))[1])
        assert ("optadam_amsgrad_f32" in str(jax.make_jaxpr(tx.update)(params, state))) == native
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


@needs_kernels
def test_nan_inf_and_zero_size_leaves_give_xla_path_results():
    """NaN and ±inf gradients propagate into m, v, v_max (jnp.maximum keeps a NaN) and the update
    as on the XLA path; a zero-size leaf stays on the XLA path, the others take the kernel."""
    params, g = special_tree()
    params["empty"], g["empty"] = jnp.zeros((0, 3)), jnp.zeros((0, 3))
    grads = [g, jax.tree.map(lambda x: 0.5 * x, params), g]
    pairs, traced, _ = lockstep(lambda: optadam.amsgrad(0.1), False, params, grads)
    assert "optadam_amsgrad_f32" in traced
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, moments(s)), (u_xla, moments(s_xla)))
    assert np.isnan(np.asarray(moments(pairs[-1][1][1]).nu_max["w"][0]))


@needs_kernels
def test_one_pass_step_with_nan_inf_and_zero_size_leaves_matches_xla_path():
    """NaN and inf where the XLA path has them, the rest within its bound, step after step."""
    params, g = special_tree()
    params["empty"], g["empty"] = jnp.zeros((0, 3)), jnp.zeros((0, 3))
    grads = [g, jax.tree.map(lambda x: 0.5 * x, params), g]
    pairs, traced, _ = lockstep(lambda: optadam.amsgrad(0.1), True, params, grads)
    assert "optadam_amsgrad_step" in traced
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(moments(s), moments(s_xla))
        assert_step_close(p, p_xla, before, ONE_LEAF_ULPS)
        before = p_xla


# (bfloat16 moments take the low-precision one pass: tests/test_native_lowp.py; 8-bit moments
# their 8-bit one pass and update kernels: tests/test_native_8bit.py)
FALLBACKS = {
    "wrapped": lambda: optax.chain(optax.clip(1.0), optadam.amsgrad(0.01)),
    "injected": lambda: optadam.inject_hyperparams(optadam.amsgrad)(0.01),
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
    assert "optadam_amsgrad_step" not in traced
    assert "optadam_amsgrad_f32" in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


def test_kernels_off_step_is_update_then_apply_updates():
    rng = np.random.default_rng(7)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)[:3]

    def make():
        return optadam.amsgrad(0.01)

    one, s_one, traced = trajectory(make, False, True, params, grads)
    two, s_two, _ = trajectory(make, False, False, params, grads)
    assert "optadam_amsgrad" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
@pytest.mark.parametrize("via_step", [True, False])
def test_meta_gradient_and_vmap_through_the_kernel_equal_the_xla_path(via_step):
    grad_k, swept_k = meta_gradient_and_sweep(optadam.amsgrad, "optadam_amsgrad", True, via_step, 6)
    grad_x, swept_x = meta_gradient_and_sweep(
        optadam.amsgrad, "optadam_amsgrad", False, via_step, 6
    )
    np.testing.assert_allclose(grad_k, grad_x, rtol=1e-5)
    np.testing.assert_allclose(swept_k, swept_x, rtol=1e-6)


@needs_kernels
def test_donated_step_from_init_runs_in_place_and_equals_two_calls():
    """``tx.init``'s state can be donated as it is (``nu_max`` does not share ``nu``'s buffers),
    and the donated one-pass step gives the non-donated one's bits."""
    optadam.set_native_enabled(True)
    rng = np.random.default_rng(9)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = gradient_stream(rng, jnp.float32)[:3]
    tx = optadam.amsgrad(0.01)
    step = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p), donate_argnums=(0, 1))

    kept = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p))
    p, s = jax.tree.map(jnp.copy, params), tx.init(params)
    p_kept, s_kept = params, tx.init(params)
    for g in grads:
        p, s = step(p, s, g)
        p_kept, s_kept = kept(p_kept, s_kept, g)
    assert_same((p, s), (p_kept, s_kept))
