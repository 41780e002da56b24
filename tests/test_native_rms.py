"""The native RMSProp kernel (optadam/_native/rms.cc): its update and ``optadam.step``'s one pass
against the XLA path, which stays the definition, for every option of scale_by_rms, and the ways
of falling back to that path.

Each comparison builds the transformation anew for each path: ``jax.jit`` caches traces per
function, so a transformation traced on one path keeps it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import (
    assert_kernel_paths_agree,
    assert_same,
    assert_step_close,
    lockstep,
    needs_kernels,
    random_tree,
    trajectory,
    wide,
)

import optadam

SHAPES = {"s": (), "one": (1,), "odd": (7,), "w": (33, 5), "t": (4, 3, 2)}
STEPS = 12
# every switch of scale_by_rms, each with and without the others that change the formula
OPTIONS = {
    "plain": {},
    "eps_outside": {"eps_in_sqrt": False},
    "bias_corrected": {"bias_correction": True, "decay": 0.8},
    "initial_scale": {"initial_scale": 0.5, "eps": 1e-3},
    "centered": {"centered": True, "initial_scale": 1.0},
    "centered_eps_outside_bias": {
        "centered": True,
        "eps_in_sqrt": False,
        "bias_correction": True,
        "initial_scale": 0.1,
    },
    "centered_decay_0": {"centered": True, "decay": 0.0, "eps": 0.0, "bias_correction": True},
}
LEARNING_RATES = {"constant": 0.01, "schedule": optax.linear_schedule(0.02, 0.001, 6)}
# the update's distance from the XLA path, in float32 ulp of each leaf's largest update: XLA:CPU's
# rsqrt is not 1/sqrt rounded once (up to 2 ulp from it, in float32 and float64 alike; the
# kernel's is), so with ε inside the root the direction differs by a few ulp; the moments never
# see the direction and stay bitwise (checked separately)
ULPS = 3


def rms_states(state: Any) -> Any:
    return state[0]  # rmsprop is chain(scale_by_rms, scale_by_learning_rate, ...)


@needs_kernels
@pytest.mark.parametrize("lr", LEARNING_RATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_matches_xla_path(name, dtype, lr, request):
    """tx.update with the kernel against the XLA path, step after step from the same state:
    moments and update bitwise (the update is the XLA path's jnp direction)."""
    wide(dtype, request)
    rng = np.random.default_rng(0)
    params = random_tree(rng, dtype, SHAPES)
    grads = [random_tree(rng, dtype, SHAPES) for _ in range(STEPS)]

    def make():
        return optadam.rmsprop(LEARNING_RATES[lr], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, False, params, grads)
    assert traced.count("optadam_rms_f") == 1 and "optadam_rms" not in traced_xla
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, rms_states(s)), (u_xla, rms_states(s_xla)))


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_is_xla_path_and_one_pass_is_one_call(name, dtype, request):
    """The kernel-backed update + apply_updates is the XLA path bit for bit; the one pass is one
    call, donated or not (tests/harness.py: assert_kernel_paths_agree)."""
    wide(dtype, request)
    rng = np.random.default_rng(1)
    params = random_tree(rng, dtype, SHAPES)
    grads = [random_tree(rng, dtype, SHAPES) for _ in range(STEPS)]
    for lr in LEARNING_RATES.values():

        def make(lr=lr):
            return optadam.rmsprop(lr, **OPTIONS[name])

        assert_kernel_paths_agree(make, params, grads, "optadam_rms_step")


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_one_pass_step_matches_xla_path(name, dtype, request):
    """The one-pass step against kernels off, step after step from the same params
    and state: moments bitwise; params within 1 ulp of themselves plus the direction's bound on
    the step they took (bitwise with ε outside the root)."""
    wide(dtype, request)
    rng = np.random.default_rng(2)
    params = random_tree(rng, dtype, SHAPES)
    grads = [random_tree(rng, dtype, SHAPES) for _ in range(STEPS)]

    def make():
        return optadam.rmsprop(0.01, **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, True, params, grads)
    assert "optadam_rms_step" in traced and "optadam_rms" not in traced_xla
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(rms_states(s), rms_states(s_xla))
        if not OPTIONS[name].get("eps_in_sqrt", True):
            assert_same(p, p_xla)
        assert_step_close(p, p_xla, before, ULPS)
        before = p_xla


@needs_kernels
def test_scale_by_rms_alone_takes_the_kernel_and_matches_xla():
    rng = np.random.default_rng(3)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [random_tree(rng, jnp.float32, SHAPES) for _ in range(STEPS)]
    outs = {}
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optadam.scale_by_rms(centered=True, bias_correction=True, eps_in_sqrt=False)
        state, update = tx.init(params), jax.jit(tx.update)
        jaxpr = str(jax.make_jaxpr(tx.update)(grads[0], state))
        assert ("optadam_rms_f32" in jaxpr) == native
        us = []
        for g in grads:
            u, state = update(g, state)
            us.append(u)
        outs[native] = (us, state)
    assert_same(outs[True], outs[False])


@needs_kernels
def test_a_wrapped_rmsprop_step_takes_update_then_apply_updates():
    """What the one pass does not cover (here a chain it cannot see into) takes update +
    apply_updates: the same numbers."""
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(80, 80)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(80, 80)), jnp.float32)} for _ in range(3)]

    def make():
        return optax.chain(optax.clip(1.0), optadam.rmsprop(0.01))

    one, s_one, traced = trajectory(make, True, True, params, grads)
    two, s_two, _ = trajectory(make, True, False, params, grads)
    assert "optadam_rms_step" not in traced and "optadam_rms_f32" in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


# rmsprop(momentum=β) with a lean trace: tx.update's kernels (ν's; the trace's only with 8 bits:
# otherwise XLA fuses the trace with the direction it sums), and the one pass's; their numbers
# against the XLA path: tests/test_native_lowp.py, tests/test_native_8bit.py
LEAN_TRACES = {
    "bfloat16_trace": (
        lambda: optadam.rmsprop(0.01, momentum=0.9, mu_dtype=jnp.bfloat16),
        ("optadam_rms_f32",),
        "optadam_rms_momentum_step_lowp",
    ),
    "8bit": (
        lambda: optadam.rmsprop(0.01, momentum=0.9, state_bits=8, block_size=64),
        ("optadam_rms8_f32", "optadam_momentum8_f32"),
        "optadam_rms_momentum8_step_f32",
    ),
}


@needs_kernels
@pytest.mark.parametrize("name", LEAN_TRACES)
def test_a_lean_trace_takes_each_transformations_kernel_and_its_own_one_pass(name):
    make, update_kernels, step_kernel = LEAN_TRACES[name]
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(80, 80)), jnp.float32)}
    grads = [{"w": jnp.asarray(rng.normal(size=(80, 80)), jnp.float32)}]
    _, _, traced_update = trajectory(make, True, False, params, grads)
    _, _, traced_step = trajectory(make, True, True, params, grads)
    assert all(kernel in traced_update for kernel in update_kernels)
    assert ("optadam_momentum" in traced_update) == ("optadam_momentum8_f32" in update_kernels)
    assert step_kernel in traced_step and traced_step.count("ffi_call") == 1


def test_kernels_off_step_is_update_then_apply_updates():
    rng = np.random.default_rng(5)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [random_tree(rng, jnp.float32, SHAPES) for _ in range(3)]

    def make():
        return optadam.rmsprop(0.01, centered=True)

    one, s_one, traced = trajectory(make, False, True, params, grads)
    two, s_two, _ = trajectory(make, False, False, params, grads)
    assert "optadam_rms" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


# rmsprop(momentum=β): the one pass adds scale_by_momentum's trace over (−η)·u_t. Odd sizes and a
# leaf over 65,536 elements (the pool split); every switch of scale_by_rms with heavy-ball and
# Nesterov.
MOMENTUM_SHAPES = {"s": (), "one": (1,), "three": (3,), "odd": (1023,), "big": (257, 263)}
MOMENTUM_OPTIONS = {
    "heavy_ball": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "eps_outside": {"momentum": 0.8, "eps_in_sqrt": False},
    "eps_outside_nesterov": {"momentum": 0.8, "eps_in_sqrt": False, "nesterov": True},
    "centered_bias_nesterov": {
        "momentum": 0.9,
        "nesterov": True,
        "centered": True,
        "bias_correction": True,
        "decay": 0.8,
    },
    "centered_eps_outside_initial_scale": {
        "momentum": 0.5,
        "centered": True,
        "eps_in_sqrt": False,
        "initial_scale": 0.1,
    },
    "zero_momentum_stochastic_rounding": {"momentum": 0.0, "stochastic_rounding": True},
}


def momentum_problem(seed: int, dtype: str) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    params = random_tree(rng, dtype, MOMENTUM_SHAPES)
    return params, [random_tree(rng, dtype, MOMENTUM_SHAPES) for _ in range(STEPS)]


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MOMENTUM_OPTIONS)
def test_momentum_kernel_update_is_xla_path_and_one_pass_is_one_call(name, dtype, request):
    """rmsprop(momentum=...): the kernel-backed update (the rms kernel; the trace stays XLA's,
    fused with the direction it sums, which a kernel would need written out first) +
    apply_updates is the XLA path bit for bit in float32, within 1e-14 in float64; the one pass
    is one call, donated or not (tests/harness.py: assert_kernel_paths_agree)."""
    wide(dtype, request)
    params, grads = momentum_problem(6, dtype)
    for lr in LEARNING_RATES.values():

        def make(lr=lr):
            return optadam.rmsprop(lr, **MOMENTUM_OPTIONS[name])

        traced_update, _ = assert_kernel_paths_agree(
            make, params, grads, "optadam_rms_momentum_step", exact=dtype == "float32"
        )
        assert "optadam_rms_f" in traced_update and "optadam_momentum_f" not in traced_update


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MOMENTUM_OPTIONS)
def test_momentum_one_pass_step_matches_xla_path(name, dtype, request):
    """The one pass against kernels off, step after step from the same params and state (a
    schedule). float32 with ε outside the root: params, moments and trace bitwise. With ε
    inside, the moments bitwise and the trace and params within MOMENTUM_ULPS of the leaf's
    largest value (params: of their step, plus 1 ulp of themselves). float64: 1e-14 relative (XLA
    contracts (−η)·u_t into the Nesterov step's FMA in some float64 programs)."""
    wide(dtype, request)
    params, grads = momentum_problem(7, dtype)
    options = MOMENTUM_OPTIONS[name]

    def make():
        return optadam.rmsprop(LEARNING_RATES["schedule"], **options)

    pairs, traced, traced_xla = lockstep(make, True, params, grads)
    assert "optadam_rms_momentum_step" in traced and "optadam_" not in traced_xla
    bitwise = dtype == "float32" and not options.get("eps_in_sqrt", True)
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(rms_states(s), rms_states(s_xla))
        if bitwise:
            assert_same((p, s), (p_xla, s_xla))
        for x, y in zip(*(jax.tree.leaves(t) for t in (s[2].trace, s_xla[2].trace)), strict=True):
            within(x, y, MOMENTUM_ULPS * ulp(np.max(np.abs(y)), dtype))
        assert_step_close(p, p_xla, before, MOMENTUM_ULPS)
        before = p_xla


# With ε inside the root, (−η)·u_t differs from the XLA path's by up to 4 float32 ulp of the
# leaf's largest value on the 67,591-element leaf (the rsqrt bound above, over more samples).
MOMENTUM_ULPS = 4


def ulp(x: Any, dtype: str) -> float:
    """One float32 ulp of x; in float64 1e-14 of x (the issue's relative bound)."""
    return float(np.spacing(np.float32(x))) if dtype == "float32" else 1e-14 * float(x)


def within(x: Any, y: Any, atol: float) -> None:
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)
