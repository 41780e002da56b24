"""The native AdaGrad kernel (optadam/_native/adagrad.cc): its update and ``optadam.step``'s one
pass against the XLA path, which stays the definition, for every option of scale_by_adagrad, and
the ways of falling back to that path.

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
    lockstep,
    needs_kernels,
    random_tree,
    trajectory,
    wide,
)

import optadam

# odd sizes, a leaf over 65,536 elements (so a call is split over the thread pool) and, for
# tx.update, a zero-size leaf (it never reaches the kernel)
SHAPES = {"s": (), "one": (1,), "three": (3,), "odd": (1023,), "w": (33, 5), "big": (257, 263)}
EMPTY = {"empty": (0,)}
STEPS = 12
# every option of scale_by_adagrad: s_0 and ε (zero included: s_t = 0 takes the u = 0 branch,
# see zero_some), and stochastic rounding, which keeps a count but leaves a float32 sum as it is
OPTIONS = {
    "default": {},
    "zero_start_no_eps": {"initial_accumulator_value": 0.0, "eps": 0.0},
    "large_eps": {"initial_accumulator_value": 1.0, "eps": 1e-2},
    "stochastic_rounding": {"stochastic_rounding": True},
}
LEARNING_RATES = {"constant": 0.05, "schedule": optax.linear_schedule(0.1, 0.01, 6)}
# XLA:CPU's rsqrt is not 1/sqrt rounded once (up to 1.6 float32 ulp off the exact root on 10^6
# random values, where the kernel's 1/sqrt is up to 1.5 off), so the direction differs by a few
# ulp: at most 3 ulp of each leaf's largest update measured (3 seeds x 12 steps); held to 4.
ULPS = 4


def zero_some(grads: list[dict]) -> list[dict]:
    """The same elements of every gradient set to 0: with s_0 = 0 their sum stays 0 (u = 0)."""

    def zero(g: jax.Array) -> jax.Array:
        return jnp.where(jnp.arange(g.size).reshape(g.shape) % 5 == 0, 0, g)

    return [jax.tree.map(zero, tree) for tree in grads]


def problem(seed: int, dtype: str, shapes: dict = SHAPES) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    params = random_tree(rng, dtype, shapes)
    return params, zero_some([random_tree(rng, dtype, shapes) for _ in range(STEPS)])


def assert_close(a: Any, b: Any, dtype: str, moved: Any = None) -> None:
    """Non-finite values equal; finite ones within ULPS float32 ulp of the leaf's largest
    magnitude (1e-14 relative in float64); with ``moved`` (params: the XLA path's step), 1 ulp of
    the leaf's largest value plus that bound on the step."""
    moved_leaves = jax.tree.leaves(b) if moved is None else jax.tree.leaves(moved)
    for x, y, m in zip(jax.tree.leaves(a), jax.tree.leaves(b), moved_leaves, strict=True):
        x, y, m = np.asarray(x), np.asarray(y), np.asarray(m)
        finite = np.isfinite(y)
        np.testing.assert_array_equal(x[~finite], y[~finite])
        top = np.max(np.abs(m[np.isfinite(m)]), initial=0)
        if dtype == "float32":
            atol = ULPS * np.spacing(np.float32(top))
            if moved is not None:
                atol += np.spacing(np.float32(np.max(np.abs(y[finite]), initial=0)))
        else:
            atol = 1e-14 * (top + (0 if moved is None else np.max(np.abs(y[finite]), initial=0)))
        np.testing.assert_allclose(x[finite], y[finite], rtol=0, atol=atol)


def sums(state: Any) -> Any:
    return state[0].sum_of_squares  # adagrad is chain(scale_by_adagrad, scale_by_learning_rate)


@needs_kernels
@pytest.mark.parametrize("lr", LEARNING_RATES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_matches_xla_path(name, dtype, lr, request):
    """tx.update with the kernel against the XLA path, step after step from the same state: the
    sums bitwise (the kernel spells out XLA's fma(g, g, s)) and the update too (the XLA path's
    jnp direction); a zero-size leaf stays on XLA."""
    wide(dtype, request)
    params, grads = problem(0, dtype, {**SHAPES, **EMPTY})

    def make():
        return optadam.adagrad(LEARNING_RATES[lr], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, False, params, grads)
    assert traced.count("optadam_adagrad_f") == 1 and "optadam_adagrad" not in traced_xla
    for (u, s), (u_xla, s_xla) in pairs:
        assert_same((u, s), (u_xla, s_xla))
        for leaf in ("w", "big"):  # the elements whose gradient is always 0
            zero = np.asarray(grads[0][leaf]) == 0
            assert np.all(np.asarray(u[leaf])[zero] == 0)


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_kernel_update_is_xla_path_and_one_pass_is_one_call(name, dtype, request):
    """The kernel-backed update + apply_updates is the XLA path bit for bit; the one pass is one
    call, donated or not (tests/harness.py: assert_kernel_paths_agree)."""
    wide(dtype, request)
    params, grads = problem(1, dtype)
    for lr in LEARNING_RATES.values():

        def make(lr=lr):
            return optadam.adagrad(lr, **OPTIONS[name])

        assert_kernel_paths_agree(make, params, grads, "optadam_adagrad_step")


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", OPTIONS)
def test_one_pass_step_matches_xla_path(name, dtype, request):
    """The one-pass step against kernels off, step after step from the same params and state:
    sums (and the count) bitwise, params within 1 ulp of themselves plus ULPS on their step."""
    wide(dtype, request)
    params, grads = problem(2, dtype)

    def make():
        return optadam.adagrad(LEARNING_RATES["schedule"], **OPTIONS[name])

    pairs, traced, traced_xla = lockstep(make, True, params, grads)
    assert "optadam_adagrad_step" in traced and "optadam_adagrad" not in traced_xla
    before = params
    for (p, s), (p_xla, s_xla) in pairs:
        assert_same(s, s_xla)
        step = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p_xla, before)
        assert_close(p, p_xla, dtype, moved=step)
        before = p_xla


@needs_kernels
@pytest.mark.parametrize("via_step", [False, True])
def test_nan_and_inf_gradients_give_the_xla_paths_values(via_step):
    """NaN and ±inf gradients: the sums and the results equal the XLA path's, NaN for NaN."""
    rng = np.random.default_rng(3)
    params = random_tree(rng, "float32", SHAPES)
    bad = np.asarray(rng.normal(size=1023), np.float32)
    bad[:6] = [np.nan, np.inf, -np.inf, 0.0, np.nan, np.inf]
    grads = [{**random_tree(rng, "float32", SHAPES), "odd": jnp.asarray(bad)} for _ in range(3)]

    def make():
        return optadam.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)

    pairs, traced, _ = lockstep(make, via_step, params, grads)
    assert "optadam_adagrad" in traced
    before = params
    for (out, s), (out_xla, s_xla) in pairs:
        assert_same(s, s_xla)
        assert np.isnan(np.asarray(out["odd"])[[0, 1, 2, 4]]).all()
        if via_step:
            step = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), out_xla, before)
            assert_close(out, out_xla, "float32", moved=step)
            before = out_xla
        else:
            assert_close(out, out_xla, "float32")


@needs_kernels
def test_scale_by_adagrad_alone_takes_the_kernel_and_matches_xla():
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = zero_some([random_tree(rng, jnp.float32, SHAPES) for _ in range(STEPS)])
    outs = {}
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optadam.scale_by_adagrad(initial_accumulator_value=0.0, eps=1e-6)
        state, update = tx.init(params), jax.jit(tx.update)
        jaxpr = str(jax.make_jaxpr(tx.update)(grads[0], state))
        assert ("optadam_adagrad_f32" in jaxpr) == native
        us = []
        for g in grads:
            u, state = update(g, state)
            us.append(u)
        outs[native] = (us, state)
    assert_same(outs[True][1], outs[False][1])
    assert_close(outs[True][0], outs[False][0], "float32")


# (a bfloat16 sum or bfloat16 params take the low-precision one pass: tests/test_native_lowp.py)
FALLBACKS = {
    "injected": lambda: optadam.inject_hyperparams(optadam.adagrad)(0.05),
    "wrapped": lambda: optax.chain(optax.clip(1.0), optadam.adagrad(0.05)),
}


@needs_kernels
@pytest.mark.parametrize("name", FALLBACKS)
def test_what_the_one_pass_does_not_cover_takes_update_then_apply_updates(name):
    """optadam.step gives update + apply_updates' numbers."""
    params, grads = problem(5, "float32", {"w": (80, 80), "odd": (7,)})
    grads = grads[:3]
    one, s_one, traced = trajectory(FALLBACKS[name], True, True, params, grads)
    two, s_two, _ = trajectory(FALLBACKS[name], True, False, params, grads)
    assert "optadam_adagrad_step" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
def test_zero_size_leaf_passes_through_the_one_pass_step():
    """A zero-size leaf never reaches a kernel: optadam.step's one pass returns it as it is and
    takes the other leaves, with the results it gives them without the empty leaf."""
    params, grads = problem(7, "float32", {"w": (33, 5), **EMPTY})
    rest, rest_grads = problem(7, "float32", {"w": (33, 5)})

    def make():
        return optadam.adagrad(0.05)

    one, s_one, traced = trajectory(make, True, True, params, grads[:3])
    alone, s_alone, _ = trajectory(make, True, True, rest, rest_grads[:3])
    assert "optadam_adagrad_step" in traced
    assert all(p.pop("empty").shape == (0,) for p in one)
    assert_same(one, alone)
    assert_same(
        [x for x in jax.tree.leaves(s_one) if np.size(x)], jax.tree.leaves(s_alone)
    )  # the state less the empty leaf's


def test_kernels_off_step_is_update_then_apply_updates():
    params, grads = problem(8, "float32")

    def make():
        return optadam.adagrad(0.05)

    one, s_one, traced = trajectory(make, False, True, params, grads[:3])
    two, s_two, _ = trajectory(make, False, False, params, grads[:3])
    assert "optadam_adagrad" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_adagrad_update_takes_the_kernel_bitwise(dtype, request):
    """optadam.torch.Adagrad's direction (ε outside the root) through the kernel: no rsqrt, so
    the update and the sums equal the XLA path's bit for bit, with torch's lr decay, weight decay
    and maximize around it."""
    wide(dtype, request)
    params, grads = problem(9, dtype, {**SHAPES, **EMPTY})

    def make():
        return optadam.torch.Adagrad(
            lr=0.05, lr_decay=1e-3, weight_decay=0.1, initial_accumulator_value=0.1, maximize=True
        )

    pairs, traced, traced_xla = lockstep(make, False, params, grads)
    assert traced.count("optadam_adagrad_f") == 1 and "optadam_adagrad" not in traced_xla
    for native, xla in pairs:
        assert_same(native, xla)
