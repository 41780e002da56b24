"""The Adam family's low-precision kernels (optadam_adam_lowp, optadam_adam_step_lowp) against
the XLA path: bfloat16/float16 params and gradients with float32 moments, bfloat16 moments rounded
to nearest or stochastically (the same bits), ``update`` and ``optadam.step``.

Moments are held bitwise. Updates are rounded from a float32 direction that is itself not always
bitwise (XLA rewrites divisions, BUILD_NOTES.md "Native kernels"), so they are held to 2 ulp of
their storage dtype at the leaf's largest magnitude (float32: 4 ulp; tests/test_native holds 3
with float32 moments, one element here needed 4 with a bfloat16 one), or at η where AdamW's decay
cancels the update; params after k steps of ``optadam.step`` to (that + 1) · k ulp.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from harness import needs_kernels

import optadam

SHAPES = {"one": (1,), "odd": (3,), "w": (33, 5), "mid": (1023,), "big": (70_000,), "empty": (0,)}
STEPS = 20
BF16, F16, F32 = jnp.bfloat16, jnp.float16, jnp.float32
# (params and gradients, mu, nu, stochastic rounding, optimizer)
CASES = {
    "bf16_params_f32_moments": (BF16, F32, F32, False, optadam.adam),
    "bf16_params_default_moments": (BF16, None, None, False, optadam.adam),
    "f16_params_f32_moments": (F16, F32, F32, False, optadam.adam),
    "bf16_moments_nearest": (F32, BF16, BF16, False, optadam.adam),
    "bf16_moments_stochastic": (F32, BF16, BF16, True, optadam.adam),
    "bf16_everything_stochastic_nadam": (BF16, BF16, BF16, True, optadam.nadam),
    "f16_params_bf16_moments_stochastic": (F16, BF16, BF16, True, optadam.adam),
    "f16_params_bf16_nu_nesterov": (F16, F32, BF16, False, optadam.nadam),
    "f32_params_bf16_mu_adamw": (F32, BF16, F32, False, optadam.adamw),
}


def make(case: str) -> Callable[[], Any]:
    _, mu, nu, stochastic, factory = CASES[case]
    extra = {"weight_decay": 0.3} if factory is optadam.adamw else {}
    return lambda: factory(0.1, mu_dtype=mu, nu_dtype=nu, stochastic_rounding=stochastic, **extra)


def problem(dtype: Any, seed: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    params = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}
    grads = [
        {
            k: jnp.asarray(rng.normal(size=s) * 10.0 ** rng.integers(-3, 2), dtype)
            for k, s in SHAPES.items()
        }
        for _ in range(STEPS)
    ]
    return params, grads


def run(tx_of: Callable[[], Any], native: bool, params: dict, grads: list, step: bool) -> tuple:
    """Updates (or params, with ``step``) of every step, the final state, and the jaxpr."""
    optadam.set_native_enabled(native)
    tx = tx_of()
    state = tx.init(params)
    if step:
        fn = jax.jit(lambda g, s, p: optadam.step(tx, g, s, p))
    else:
        fn = jax.jit(lambda g, s, p: tx.update(g, s, p))
    out, p = [], params
    for g in grads:
        a, state = fn(g, state, p)
        if step:
            p = a
        out.append(a)
    jaxpr = str(jax.make_jaxpr(fn)(grads[0], tx.init(params), params))
    return out, state, jaxpr


def bits(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_bitwise(a: Any, b: Any) -> None:
    """Same bits, except that any NaN equals any NaN (payloads are not compared)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype
    nan_a, nan_b = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(bits(a)[~nan_a], bits(b)[~nan_b])


def assert_close_in_ulps(a: Any, b: Any, n: int, floor: float = 0.0, slack: float = 0.0) -> None:
    """``a`` within ``n`` ulp of its dtype at ``b``'s largest magnitude, or at ``floor`` if
    larger, plus ``slack`` (same NaN and inf)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    np.testing.assert_array_equal(np.isfinite(a32), np.isfinite(b32))
    finite = np.isfinite(b32)
    np.testing.assert_array_equal(a32[~finite & ~np.isnan(b32)], b32[~finite & ~np.isnan(b32)])
    scale = np.max(np.abs(b32[finite]), initial=floor).astype(a.dtype)
    ulp = float(np.spacing(scale)) if a.dtype != ml_dtypes.bfloat16 else float(scale) * 2.0**-7
    atol = n * max(ulp, 1e-30) + slack
    np.testing.assert_allclose(a32[finite], b32[finite], rtol=0, atol=atol)


def ulps_for(dtype: Any) -> int:
    return 4 if jnp.dtype(dtype) == jnp.float32 else 2


@needs_kernels
@pytest.mark.parametrize("step", [False, True], ids=["update", "step"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_xla_path_moments_bitwise(case: str, step: bool) -> None:
    dtype = CASES[case][0]
    params, grads = problem(dtype, seed=len(case))
    kernel = run(make(case), True, params, grads, step)
    xla = run(make(case), False, params, grads, step)
    target = "optadam_adam_step_lowp" if step else "optadam_adam_lowp"
    assert target in kernel[2]
    assert "optadam_adam" not in xla[2]
    for a, b in zip(jax.tree.leaves(kernel[1]), jax.tree.leaves(xla[1]), strict=True):
        assert_bitwise(a, b)  # every moment, every leaf (and the counts)
    for k, (ours, theirs) in enumerate(zip(kernel[0], xla[0], strict=True)):
        # update: the XLA path's jnp direction on the same moments, bitwise; step: params add up
        # each step's difference in the update (and one rounding of θ)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            if step:
                assert_close_in_ulps(a, b, (ulps_for(dtype) + 1) * (k + 1))
            else:
                assert_bitwise(a, b)


@needs_kernels
@pytest.mark.parametrize(
    "case", ["bf16_params_default_moments", "bf16_everything_stochastic_nadam"]
)
def test_one_pass_step_equals_kernel_update_and_apply_updates_bitwise(case: str) -> None:
    params, grads = problem(CASES[case][0], seed=3)
    one_pass = run(make(case), True, params, grads, step=True)
    optadam.set_native_enabled(True)
    tx = make(case)()
    state, p = tx.init(params), params

    @jax.jit
    def two_calls(g: Any, s: Any, p: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for g, expected in zip(grads, one_pass[0], strict=True):
        p, state = two_calls(g, state, p)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(p), strict=True):
            assert_bitwise(a, b)
    for a, b in zip(jax.tree.leaves(one_pass[1]), jax.tree.leaves(state), strict=True):
        assert_bitwise(a, b)


@needs_kernels
def test_stochastic_rounding_uses_the_xla_bits_and_differs_from_nearest() -> None:
    params, grads = problem(F32, seed=11)
    stochastic = run(make("bf16_moments_stochastic"), True, params, grads, step=True)
    xla = run(make("bf16_moments_stochastic"), False, params, grads, step=True)
    nearest = run(make("bf16_moments_nearest"), True, params, grads, step=True)
    for a, b in zip(jax.tree.leaves(stochastic[1]), jax.tree.leaves(xla[1]), strict=True):
        assert_bitwise(a, b)
    big = np.asarray(stochastic[1][0].nu["big"], np.float32)
    assert np.mean(big != np.asarray(nearest[1][0].nu["big"], np.float32)) > 0.1


SPECIAL = np.array(
    [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-40, -3e-39, 1e-45, 3e38, -3.3e38, 6e4, 7e4, 1e-7, 1e-5],
    np.float32,
)
SPECIAL = np.concatenate([SPECIAL, [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 2.0**-149, 65519, 65520]])
SPECIAL = SPECIAL.astype(np.float32)


@needs_kernels
@pytest.mark.parametrize(
    "case",
    [
        "bf16_params_f32_moments",
        "f16_params_f32_moments",
        "bf16_moments_nearest",
        "f16_params_bf16_moments_stochastic",
    ],
)
def test_nan_inf_zero_and_subnormal_gradients_as_on_the_xla_path(case: str) -> None:
    dtype = CASES[case][0]
    rng = np.random.default_rng(5)
    g = np.concatenate([SPECIAL, rng.normal(size=77).astype(np.float32) * 1e-3])
    params = {"x": jnp.asarray(rng.normal(size=g.size), dtype)}
    with np.errstate(over="ignore"):  # float16 gradients: 3e38 and 7e4 overflow to inf
        grads = [{"x": jnp.asarray(x, dtype)} for x in (g, -g[::-1], np.zeros_like(g))]
    for step in (False, True):
        kernel = run(make(case), True, params, grads, step)
        xla = run(make(case), False, params, grads, step)
        assert "_lowp" in kernel[2]
        for a, b in zip(jax.tree.leaves(kernel), jax.tree.leaves(xla), strict=False):
            if isinstance(a, str):
                continue
            assert_close_in_ulps(a, b, ulps_for(dtype))
        for a, b in zip(jax.tree.leaves(kernel[1]), jax.tree.leaves(xla[1]), strict=True):
            assert_bitwise(a, b)


@needs_kernels
def test_stored_moments_round_as_xla_converts_special_values() -> None:
    """Moments of value x after one step from zero are (1 − β)·x: the conversions of specials."""
    x = np.concatenate([SPECIAL, -SPECIAL, SPECIAL * 2.0**-100])
    g = {"x": jnp.asarray(x / np.float32(1 - 0.9), F32)}
    outs = []
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optadam.scale_by_adam(mu_dtype=BF16, nu_dtype=BF16)
        outs.append(jax.jit(tx.update)(g, tx.init(g))[1])
    assert_bitwise(outs[0].mu["x"], outs[1].mu["x"])
    assert_bitwise(outs[0].nu["x"], outs[1].nu["x"])


@needs_kernels
def test_what_the_lowp_kernels_leave_to_the_xla_path() -> None:
    params = {"w": jnp.ones(9, F16)}
    default = optadam.adam(0.1)  # float16 params keep mu in float16: no kernel
    optadam.set_native_enabled(True)
    assert "optadam_adam" not in str(jax.make_jaxpr(default.update)(params, default.init(params)))
    bf = {"w": jnp.ones(9, BF16)}
    for tx in (
        optadam.adamw(0.1, weight_decay=0.1),  # a decay of bfloat16 params runs in bfloat16
        optadam.chain(optadam.clip_by_global_norm(1.0), optadam.adam(0.1)),
    ):
        stepped = str(
            jax.make_jaxpr(lambda g, s, p, tx=tx: optadam.step(tx, g, s, p))(bf, tx.init(bf), bf)
        )
        assert "optadam_adam_step" not in stepped
        assert "optadam_adam_lowp" in stepped  # the update still takes the kernel


def constant(value: Any, count: Any) -> jax.Array:
    del count
    return jnp.float32(value)


@needs_kernels
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_params_round_as_xla_converts_special_values(dtype: Any) -> None:
    """With β1 = β2 = ε = 0 the direction is sign(g) = ±1 exactly, so one step from θ = 0 stores
    round(−η) in the params' dtype: the kernel's conversion of any float32, NaN payloads too."""
    params = {"x": jnp.zeros(2, dtype)}
    grads = {"x": jnp.asarray([1.0, -1.0], dtype)}
    for lr in np.concatenate([SPECIAL, SPECIAL * 2.0**-100, [np.float32(0.1)]]):
        got = []
        for native in (True, False):
            optadam.set_native_enabled(native)
            # a schedule's values are not checked (a number η must be finite and >= 0)
            tx = optadam.adam(partial(constant, lr), b1=0.0, b2=0.0, eps=0.0, mu_dtype=F32)
            step = jax.jit(lambda g, s, p, tx=tx: optadam.step(tx, g, s, p))
            got.append(step(grads, tx.init(params), params)[0]["x"])
            assert (
                "optadam_adam_step_lowp"
                in str(jax.make_jaxpr(step)(grads, tx.init(params), params))
            ) == native
        np.testing.assert_array_equal(bits(got[0]), bits(got[1]), err_msg=f"η = {lr!r}")
