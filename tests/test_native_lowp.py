"""The low-precision ``tx.update`` kernels of the families beyond Adam's (``optadam_momentum_lowp``,
``_rms_lowp``, ``_adagrad_lowp``, ``_amsgrad_lowp``, ``_radam_lowp``, all built on
optadam/_native/lowp.h) against the XLA path: bfloat16/float16 params and gradients, moments
stored in bfloat16 (rounded to nearest or stochastically, with the XLA path's bits) or float32.

The kernel advances the moments and the direction stays jnp, so ``tx.update`` +
``optax.apply_updates`` must give the XLA path's bits, params and state, every step.
``optadam.step`` runs each family's one pass (``optadam_<family>_step_lowp``, lowp.h's
``LowpStepCall``; RMSProp with a trace ``optadam_rms_momentum_step_lowp``, lowp.h's ``Traced``):
the moments bitwise, the params within the bound test_native_bf16 holds Adam's to (the direction
is C++ there, and XLA rewrites divisions), and equal to the kernel-backed two calls where the
family's direction has no division to rewrite. A momentum trace after RMSProp's direction is held
to the params' bound too: it follows that direction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import needs_kernels, trajectory
from test_native_bf16 import SPECIAL, assert_bitwise, assert_close_in_ulps, ulps_for
from test_native_bf16 import problem as bf16_problem

import optadam

BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32
STEPS = 12

# name: (params and gradients dtype, the optimizer, its kernel)
CASES: dict[str, tuple[Any, Callable[[], Any], str]] = {
    "sgd_momentum_bf16_trace": (
        F32,
        lambda: optadam.sgd(0.1, momentum=0.9, accumulator_dtype=BF16),
        "momentum",
    ),
    "sgd_nesterov_bf16_params": (BF16, lambda: optadam.sgd(0.1, 0.9, nesterov=True), "momentum"),
    "sgd_momentum_stochastic": (
        F32,
        lambda: optadam.sgd(0.1, 0.9, accumulator_dtype=BF16, stochastic_rounding=True),
        "momentum",
    ),
    "sgd_momentum_f16_params_f32_trace": (
        F16,
        lambda: optadam.sgd(0.1, 0.9, accumulator_dtype=F32),
        "momentum",
    ),
    "rmsprop_bf16_nu": (F32, lambda: optadam.rmsprop(0.01, nu_dtype=BF16), "rms"),
    "rmsprop_centered_stochastic": (
        F32,
        lambda: optadam.rmsprop(
            0.01, centered=True, mu_dtype=BF16, nu_dtype=BF16, stochastic_rounding=True
        ),
        "rms",
    ),
    "rmsprop_centered_bf16_params_bias_corrected": (
        BF16,
        lambda: optadam.rmsprop(0.01, centered=True, eps_in_sqrt=False, bias_correction=True),
        "rms",
    ),
    "rmsprop_momentum_bf16_everything": (
        BF16,
        lambda: optadam.rmsprop(0.01, momentum=0.9, nesterov=True, stochastic_rounding=True),
        "rms",
    ),
    "rmsprop_centered_momentum_bf16_mu_and_trace": (
        F32,
        lambda: optadam.rmsprop(0.01, centered=True, momentum=0.9, mu_dtype=BF16, nu_dtype=F32),
        "rms",
    ),
    "rmsprop_f16_params_f32_nu": (F16, lambda: optadam.rmsprop(0.01, nu_dtype=F32), "rms"),
    "adagrad_bf16_sum": (F32, lambda: optadam.adagrad(0.1, nu_dtype=BF16), "adagrad"),
    "adagrad_bf16_params_stochastic": (
        BF16,
        lambda: optadam.adagrad(0.1, stochastic_rounding=True),
        "adagrad",
    ),
    "amsgrad_bf16_moments": (
        F32,
        lambda: optadam.amsgrad(0.1, mu_dtype=BF16, nu_dtype=BF16),
        "amsgrad",
    ),
    "amsgrad_bf16_params_stochastic": (
        BF16,
        lambda: optadam.amsgrad(0.1, stochastic_rounding=True),
        "amsgrad",
    ),
    "amsgrad_f16_params_bf16_nu": (
        F16,
        lambda: optadam.amsgrad(0.1, mu_dtype=F32, nu_dtype=BF16),
        "amsgrad",
    ),
    "radam_bf16_moments_stochastic": (
        F32,
        lambda: optadam.radam(0.1, mu_dtype=BF16, nu_dtype=BF16, stochastic_rounding=True),
        "radam",
    ),
    "radam_nesterov_bf16_params": (BF16, lambda: optadam.radam(0.1, nesterov=True), "radam"),
}


def problem(dtype: Any, seed: int) -> tuple[dict, list[dict]]:
    """test_native_bf16's leaves (1 to 70,000 elements and a zero-size one), ``STEPS`` steps."""
    params, grads = bf16_problem(dtype, seed)
    return params, grads[:STEPS]


def assert_trees_bitwise(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert_bitwise(x, y)


def is_traced(case: str) -> bool:
    """RMSProp with a momentum trace: its one pass is ``optadam_rms_momentum_step_lowp``."""
    return "momentum" in case and CASES[case][2] == "rms"


def step_kernel(case: str) -> str:
    """The kernel ``optadam.step`` runs for a case: its family's one pass."""
    return f"optadam_{'rms_momentum' if is_traced(case) else CASES[case][2]}_step_lowp"


def trace_slack(case: str, state: Any, params: Any) -> list[float]:
    """Per params leaf, what a traced case's bfloat16 trace may add to one step's difference: a
    few float32 ulp in the direction can flip the trace's rounding, one bfloat16 ulp, taken at
    twice the trace's largest magnitude in ``state``; 0 otherwise."""
    if not is_traced(case):
        return [0.0] * len(jax.tree.leaves(params))
    return [
        2.0 * float(np.max(np.abs(np.asarray(t, F32)), initial=0.0)) * 2.0**-7
        if t.dtype == BF16
        else 0.0
        for t in jax.tree.leaves(state[-1].trace)
    ]


def assert_states_alike(case: str, ours: Any, theirs: Any, ulps: int) -> None:
    """The moments bit for bit; a trace (``is_traced``), which follows the direction, within
    ``ulps``."""
    if not is_traced(case):
        assert_trees_bitwise(ours, theirs)
        return
    assert_trees_bitwise(ours[:-1], theirs[:-1])
    assert_trees_bitwise(ours[-1].count, theirs[-1].count)
    for a, b in zip(
        jax.tree.leaves(ours[-1].trace), jax.tree.leaves(theirs[-1].trace), strict=True
    ):
        assert_close_in_ulps(a, b, ulps)


@needs_kernels
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_update_equals_xla_path_bitwise(case: str) -> None:
    dtype, make, family = CASES[case]
    params, grads = problem(dtype, seed=len(case))
    kernel, s_kernel, traced = trajectory(make, True, False, params, grads)
    xla, s_xla, traced_xla = trajectory(make, False, False, params, grads)
    assert f"optadam_{family}_lowp" in traced
    assert "optadam_" not in traced_xla
    assert_trees_bitwise(s_kernel, s_xla)  # every moment (bfloat16 or not) and count
    for ours, theirs in zip(kernel, xla, strict=True):
        assert_trees_bitwise(ours, theirs)  # the params, every step


@needs_kernels
@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_step_against_xla_path(case: str) -> None:
    dtype, make, _ = CASES[case]
    params, grads = problem(dtype, seed=len(case))
    kernel, s_kernel, traced = trajectory(make, True, True, params, grads)
    xla, s_xla, traced_xla = trajectory(make, False, True, params, grads)
    assert step_kernel(case) in traced
    assert "optadam_" not in traced_xla
    # the moments depend on the gradients only
    assert_states_alike(case, s_kernel, s_xla, (ulps_for(dtype) + 1) * STEPS)
    slack = trace_slack(case, s_xla, params)
    for k, (ours, theirs) in enumerate(zip(kernel, xla, strict=True)):
        leaves = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), slack, strict=True)
        for a, b, extra in leaves:
            assert_close_in_ulps(a, b, (ulps_for(dtype) + 1) * (k + 1), slack=extra * (k + 1))


@needs_kernels
@pytest.mark.parametrize("donate", [False, True], ids=["kept", "donated"])
@pytest.mark.parametrize("case", list(CASES))
def test_one_pass_step_equals_kernel_update_and_apply_updates(case: str, donate: bool) -> None:
    """The one pass against the two calls on the kernel path, step by step from the same state:
    the moments bit for bit; the params bit for bit where the direction has no division (XLA
    rewrites those), else within test_native_bf16's one-step bound (plus, behind a bfloat16
    trace, one ulp of it: ``trace_slack``)."""
    dtype, make, family = CASES[case]
    params, grads = problem(dtype, seed=len(case) + 1)
    optadam.set_native_enabled(True)
    tx = make()
    one_pass = jax.jit(
        lambda g, s, p: optadam.step(tx, g, s, p), donate_argnums=(1, 2) if donate else ()
    )

    @jax.jit
    def two_calls(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state, p = tx.init(params), params
    exact = family == "momentum"
    for g in grads:
        expected, expected_state = two_calls(g, state, p)
        copies = jax.tree.map(jnp.copy, (state, p))  # donated: the two calls keep theirs
        got, state = one_pass(g, *copies)
        assert_states_alike(case, state, expected_state, ulps_for(dtype) + 1)
        slack = trace_slack(case, expected_state, expected)
        leaves = zip(jax.tree.leaves(got), jax.tree.leaves(expected), slack, strict=True)
        for a, b, extra in leaves:
            if exact:
                assert_bitwise(a, b)
            else:
                assert_close_in_ulps(a, b, ulps_for(dtype) + 1, slack=extra)
        p = expected


@needs_kernels
def test_stochastic_rounding_differs_from_nearest_with_the_xla_bits() -> None:
    params, grads = problem(F32, seed=4)
    stochastic = trajectory(CASES["sgd_momentum_stochastic"][1], True, False, params, grads)
    nearest = trajectory(CASES["sgd_momentum_bf16_trace"][1], True, False, params, grads)
    trace_sr = np.asarray(stochastic[1][0].trace["big"], np.float32)
    trace_nearest = np.asarray(nearest[1][0].trace["big"], np.float32)
    assert np.mean(trace_sr != trace_nearest) > 0.1


@needs_kernels
@pytest.mark.parametrize(
    "case",
    [
        "sgd_momentum_bf16_trace",
        "rmsprop_centered_stochastic",
        "adagrad_bf16_params_stochastic",
        "amsgrad_f16_params_bf16_nu",
        "radam_bf16_moments_stochastic",
    ],
)
def test_nan_inf_zero_and_subnormal_gradients_as_on_the_xla_path(case: str) -> None:
    dtype, make, family = CASES[case]
    rng = np.random.default_rng(6)
    g = np.concatenate([SPECIAL, rng.normal(size=77).astype(np.float32) * 1e-3])
    params = {"x": jnp.asarray(rng.normal(size=g.size), dtype)}
    with np.errstate(over="ignore"):  # float16 gradients: 3e38 and 7e4 overflow to inf
        grads = [{"x": jnp.asarray(x, dtype)} for x in (g, -g[::-1], np.zeros_like(g), g)]
    kernel, s_kernel, traced = trajectory(make, True, False, params, grads)
    xla, s_xla, _ = trajectory(make, False, False, params, grads)
    assert f"optadam_{family}_lowp" in traced
    assert_trees_bitwise(s_kernel, s_xla)
    for ours, theirs in zip(kernel, xla, strict=True):
        assert_trees_bitwise(ours, theirs)


@needs_kernels
def test_float16_state_stays_on_the_xla_path_and_8bit_state_takes_its_own_kernel() -> None:
    params = {"w": jnp.ones((64, 512), F32)}
    optadam.set_native_enabled(True)
    for tx, kernel in (
        (optadam.rmsprop(0.1, state_bits=8), "optadam_rms8_f32"),  # block8.h, not lowp.h
        (optadam.sgd(0.1, 0.9, accumulator_dtype=F16), None),  # float16: not a lowp storage
    ):
        state = tx.init(params)
        traced = str(jax.make_jaxpr(tx.update)(params, state, params))
        assert traced.count("optadam_") == (kernel is not None), jax.tree.map(jnp.dtype, state)
        assert kernel is None or kernel in traced
