"""8-bit state through ``optadam.step``: one pass of ``optadam/_native/adam8.cc`` (Adam, AdamW,
NAdam) or of ``block8.h``'s generic kernel (RAdam, AMSGrad, SGD with momentum, RMSProp) per step
gives the XLA path's 8-bit codes and scales exactly, and its params within Adam's bound; and,
for Adam, through
``tx.update``'s 8-bit kernel (``optadam_adam8_f32``): the same codes and scales, and updates
within 4 float32 ulp of the leaf's largest update (XLA rewrites some of the direction's
divisions and contracts the moving averages per program; measured at most 4 over these tests).

The XLA path is the definition: ``update`` + ``apply_updates`` with kernels off (``map_leaves``
dequantizes, steps, and requantizes with the second moment's random bits). Each path builds its
transformation anew: ``jax.jit`` caches traces per function, so a transformation traced on one
path keeps it.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import needs_kernels, random_tree
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optadam
from optadam._quantize import MIN_QUANTIZED_SIZE, QuantizedArray, decode

# Rows of 300 (a short last block), a 1-D leaf, 3-D leaves whose rows are the last axis (700) or
# the last two merged (16 · 16), one split over the thread pool (> 65,536 elements, rows of 301),
# and two leaves under MIN_QUANTIZED_SIZE, whose moments stay float32.
SHAPES = {
    "rows": (33, 300),
    "flat": (5000,),
    "cube": (3, 7, 700),
    "merged": (4, 16, 16),
    "pooled": (300, 301),
    "small": (7, 5),
    "bias": (100,),
}
STEPS = 20
EIGHT_BIT = {
    "adam": lambda: optadam.adam(0.01, state_bits=8),
    "adamw": lambda: optadam.adamw(0.01, weight_decay=0.1, state_bits=8),
    "nadam": lambda: optadam.nadam(0.01, state_bits=8),
    "adamw_schedules": lambda: optadam.adamw(
        optax.linear_schedule(0.01, 0.001, 10),
        weight_decay=optax.linear_schedule(0.1, 0.0, 8),
        state_bits=8,
    ),
    "adam_clipped": lambda: optadam.chain(
        optadam.clip_by_global_norm(0.5), optadam.adam(0.01, state_bits=8)
    ),
    # XLA contracts these programs' moving averages into other FMAs than the ones above (β1 = ½
    # becomes (m + g)·½ with the dequantizing product fused; with 100-element blocks the FMA
    # takes (1 − β2)·g² instead of β2·v): m or v then differs by 1 ulp, now and then a code
    "adam_eps_root": lambda: optadam.adam(0.01, b1=0.5, eps=0.0, eps_root=1e-8, state_bits=8),
    "adam_block_100": lambda: optadam.adam(0.01, state_bits=8, block_size=100),
}
# Every other family with 8-bit state and its kernel (block8.h's Call8; RMSProp with a momentum
# trace through lowp.h's Traced).
FAMILIES = {
    "radam": (lambda: optadam.radam(0.01, state_bits=8), "radam8"),
    "radam_nesterov": (lambda: optadam.radam(0.01, nesterov=True, state_bits=8), "radam8"),
    "amsgrad": (lambda: optadam.amsgrad(0.01, state_bits=8), "amsgrad8"),
    "amsgrad_schedule": (
        lambda: optadam.amsgrad(optax.linear_schedule(0.01, 0.001, 10), state_bits=8),
        "amsgrad8",
    ),
    "sgd_momentum": (lambda: optadam.sgd(0.01, momentum=0.9, state_bits=8), "momentum8"),
    "sgd_nesterov": (
        lambda: optadam.sgd(0.01, momentum=0.9, nesterov=True, state_bits=8),
        "momentum8",
    ),
    "rmsprop": (lambda: optadam.rmsprop(0.01, state_bits=8), "rms8"),
    "rmsprop_eps_outside": (
        lambda: optadam.rmsprop(0.01, eps_in_sqrt=False, bias_correction=True, state_bits=8),
        "rms8",
    ),
    "rmsprop_centered": (lambda: optadam.rmsprop(0.01, centered=True, state_bits=8), "rms8"),
    "rmsprop_momentum": (
        lambda: optadam.rmsprop(0.01, momentum=0.9, state_bits=8),
        "rms_momentum8",
    ),
    "rmsprop_centered_nesterov_clipped": (
        lambda: optadam.chain(
            optadam.clip_by_global_norm(0.5),
            optadam.rmsprop(0.01, centered=True, momentum=0.9, nesterov=True, state_bits=8),
        ),
        "rms_momentum8",
    ),
    "sgd_clipped": (
        lambda: optadam.chain(
            optadam.clip_by_global_norm(0.5), optadam.sgd(0.01, momentum=0.9, state_bits=8)
        ),
        "momentum8",
    ),
    "radam_clipped": (
        lambda: optadam.chain(optadam.clip_by_global_norm(0.5), optadam.radam(0.01, state_bits=8)),
        "radam8",
    ),
    "amsgrad_clipped": (
        lambda: optadam.chain(
            optadam.clip_by_global_norm(0.5), optadam.amsgrad(0.01, state_bits=8)
        ),
        "amsgrad8",
    ),
    "rmsprop_centered_clipped": (
        lambda: optadam.chain(
            optadam.clip_by_global_norm(0.5), optadam.rmsprop(0.01, centered=True, state_bits=8)
        ),
        "rms8",
    ),
}
# XLA contracts a clipped program's moving averages otherwise, as adam_clipped's (the clipped
# SGD's trace has no product to contract: bit for bit). AMSGrad's v_max = max(v_max, v / c2) then
# takes v's 1-ulp difference through a division and a square root: its scales 2 ulp apart.
SCALE_ULPS = {"amsgrad_clipped": 2}
# RMSProp's momentum trace follows the direction, which the kernel divides as the Python is
# written and XLA rewrites (as for the float32 one pass, tests/test_native_rms.py): the trace's
# scales (and the small leaves' float32 trace) a few ulp of the leaf's largest apart, now and then
# a code one value apart (traces_alike); every other moment bit for bit.
TRACED = ("rmsprop_momentum", "rmsprop_centered_nesterov_clipped")
CONTRACTED_OTHERWISE = (
    "adam_clipped",
    "adam_eps_root",
    "adam_block_100",
    "radam_clipped",
    "amsgrad_clipped",
    "rmsprop_centered_clipped",
)


def gradients(rng: np.random.Generator, shapes: dict = SHAPES) -> dict:
    """Gradients whose scale differs by row (by 6 orders of magnitude), as a network's do: the
    codes then span the map's decades."""
    out = {}
    for k, s in shapes.items():
        scale = np.exp(rng.uniform(-10, 4, s[:1] + (1,) * (len(s) - 1)))
        out[k] = jnp.asarray(rng.normal(size=s) * scale, jnp.float32)
    return out


def jitted_step(make: Callable[[], Any], native: bool) -> tuple[Any, Any]:
    """A transformation and its jitted ``optadam.step``, traced with the kernels on or off
    (``jax.jit`` traces at the first call: the switch is set again there)."""
    optadam.set_native_enabled(native)
    tx = make()
    jitted = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p))

    def step(p: Any, s: Any, g: Any) -> Any:
        optadam.set_native_enabled(native)
        return jitted(p, s, g)

    return tx, step


def traced(tx: Any, params: Any) -> str:
    return str(
        jax.make_jaxpr(lambda p, s, g: optadam.step(tx, g, s, p))(params, tx.init(params), params)
    )


def assert_states_equal(a: Any, b: Any) -> None:
    """Codes, scales, float32 moments and counts identical (NaN where the other has NaN)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def without_nonfinite_blocks(state: Any, previous: Any) -> Any:
    """``state`` with the codes and scales zeroed in every block whose scale in ``previous`` was
    inf or NaN. Such a block decodes to NaN (0 · inf), and the XLA path's block maximum over NaN
    depends on the CPU: XLA runs it in YNNPACK, which skips NaN lane by lane, so the vector width
    decides what it returns (inf on the AVX-512 machine these tests were written on, 0 on a
    2-core AVX2 EPYC for the same block; BUILD_NOTES "8-bit Adam", *NaN*). The kernel gives the
    same result on every CPU; elsewhere the states must still be equal."""

    def mask(q: Any, prev: Any) -> Any:
        if not isinstance(q, QuantizedArray) or q.codes.ndim != q.scales.ndim:
            return q
        bad = ~np.isfinite(np.asarray(prev.scales))
        per_element = np.repeat(bad, q.block_size, axis=-1)[..., : q.codes.shape[-1]]
        codes = np.where(per_element, 0, np.asarray(q.codes))
        return dataclasses.replace(q, codes=codes, scales=np.where(bad, 0, np.asarray(q.scales)))

    return jax.tree.map(mask, state, previous, is_leaf=lambda x: isinstance(x, QuantizedArray))


def assert_params_within_adam_bound(new: Any, reference: Any, old: Any, steps: int = 1) -> None:
    """Within 1 ulp of themselves plus 3 float32 ulp of the leaf's largest step (the Adam
    kernel's bound, tests/test_step.py), per step taken apart; NaN and inf where the reference
    has them."""
    for a, b, o in zip(*(jax.tree.leaves(x) for x in (new, reference, old)), strict=True):
        a, b, o = np.asarray(a), np.asarray(b), np.asarray(o)
        finite = np.isfinite(b)
        np.testing.assert_array_equal(a[~finite], b[~finite])
        with np.errstate(invalid="ignore"):  # inf − inf where b is not finite, masked here
            largest_step = np.max(np.abs(b - o)[finite], initial=0)
        bound = np.spacing(np.abs(b[finite])) + 3 * np.spacing(np.float32(largest_step))
        assert np.all(np.abs(a[finite] - b[finite]) <= steps * bound)


@needs_kernels
def test_the_8bit_state_is_what_the_kernel_reads():
    """The layout the kernel assumes: the big leaves' moments are codes, the small ones float32."""
    state = optadam.adam(0.01, state_bits=8).init(
        random_tree(np.random.default_rng(0), jnp.float32, SHAPES)
    )[0]
    for k, s in SHAPES.items():
        quantized = np.prod(s) >= MIN_QUANTIZED_SIZE
        assert isinstance(state.mu[k], QuantizedArray) == quantized
        assert isinstance(state.nu[k], QuantizedArray) == quantized


@needs_kernels
@pytest.mark.parametrize("name", EIGHT_BIT)
def test_one_pass_8bit_step_gives_the_xla_path_codes_and_scales_every_step(name):
    """From the same params and state each step, 20 steps: the same codes (the second moment's
    stochastic ones included: the same random bits), scales and float32 moments, bit for bit,
    and params within Adam's bound. Where XLA contracts the moving averages otherwise, scales
    within 1 ulp and codes one map value apart, in under 1e-5 of the elements (measured: 1-3 in
    4.8 million)."""
    assert_one_pass_follows_the_xla_path(name, EIGHT_BIT[name], "adam8")


@needs_kernels
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_8bit_step_gives_the_xla_path_codes_and_scales_every_step(name):
    """As for Adam, through each family's 8-bit kernel: codes, scales and float32 moments bit
    for bit (AMSGrad's v_max and RMSProp's μ included), params within Adam's bound; the clipped
    chains' codes one map value apart in under 1e-5 of them (measured: under 1e-6)."""
    make, target = FAMILIES[name]
    assert_one_pass_follows_the_xla_path(name, make, target)


def assert_one_pass_follows_the_xla_path(name: str, make: Callable[[], Any], target: str) -> None:
    """The one pass's step through ``optadam_<target>_step_f32`` against the XLA path's, from
    the same params and state, for STEPS steps."""
    rng = np.random.default_rng(1)
    params = random_tree(rng, jnp.float32, SHAPES)
    tx, one = jitted_step(make, native=True)
    assert f"optadam_{target}_step_f32" in traced(tx, params)
    tx_xla, xla = jitted_step(make, native=False)
    assert "8_step" not in traced(tx_xla, params)
    p, s = params, tx.init(params)
    differing = total = 0
    for _ in range(STEPS):
        g = gradients(rng)
        p_one, s_one = one(p, s, g)
        p_xla, s_xla = xla(p, s, g)
        if name in CONTRACTED_OTHERWISE:
            differing += codes_one_value_apart(s_one, s_xla, SCALE_ULPS.get(name, 1))
            total += sum(x.size for x in jax.tree.leaves(s_xla) if x.dtype == jnp.uint8)
        elif name in TRACED:  # (a clip contracts the others otherwise, as for rmsprop_centered)
            differing += traces_alike(s_one, s_xla, exact_others="clipped" not in name)
            total += sum(x.size for x in jax.tree.leaves(s_xla) if x.dtype == jnp.uint8)
        else:
            assert_states_equal(s_one, s_xla)
        assert_params_within_adam_bound(p_one, p_xla, p)
        p, s = p_xla, s_xla
    assert differing <= 1e-5 * total


def traces_alike(a: Any, b: Any, exact_others: bool, ulps: int = 4) -> int:
    """How many codes differ between states ``a`` and ``b``: the traces' each one map value
    apart, their scales (and float32 traces) within ``ulps`` of the leaf's largest; everything
    else equal, or (not ``exact_others``) as ``codes_one_value_apart`` allows."""
    is_trace = lambda x: isinstance(x, optadam.ScaleByMomentumState)  # noqa: E731
    is_codes = lambda x: isinstance(x, QuantizedArray)  # noqa: E731
    split = [jax.tree.leaves(s, is_leaf=is_trace) for s in (a, b)]
    others = [[x.count if is_trace(x) else x for x in leaves] for leaves in split]
    differing = 0
    if exact_others:
        assert_states_equal(*others)
    else:
        differing += codes_one_value_apart(*others)
    traces = ([x.trace for x in leaves if is_trace(x)] for leaves in split)
    for u, v in zip(*(jax.tree.leaves(t, is_leaf=is_codes) for t in traces), strict=True):
        if is_codes(u):
            differing += int(np.sum(np.asarray(u.codes) != np.asarray(v.codes)))
            assert_one_value_apart(u, v)
            u, v = u.scales, v.scales
        u, v = np.asarray(u), np.asarray(v)
        top = np.float32(np.max(np.abs(v), initial=0))
        np.testing.assert_allclose(u, v, rtol=0, atol=ulps * np.spacing(top))
    return differing


def codes_one_value_apart(a: Any, b: Any, scale_ulps: int = 1) -> int:
    """How many codes differ between states ``a`` and ``b``, checking that each differs by one
    value of its map, each scale (and float32 moment) by at most ``scale_ulps`` ulp, and
    everything else not at all."""
    differing = 0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype == np.uint8:
            differing += int(np.sum(x != y))
            continue
        if x.dtype == np.float32 and x.ndim:
            assert np.all(np.abs(x.view(np.int32) - y.view(np.int32)) <= scale_ulps)
            continue
        np.testing.assert_array_equal(x, y)
    is_codes = lambda x: isinstance(x, QuantizedArray)  # noqa: E731
    pairs = zip(*(jax.tree.leaves(t, is_leaf=is_codes) for t in (a, b)), strict=True)
    for x, y in ((x, y) for x, y in pairs if is_codes(x)):
        assert_one_value_apart(x, y)
    return differing


def assert_one_value_apart(x: QuantizedArray, y: QuantizedArray) -> None:
    """Each code of ``x`` that of ``y`` or a neighbour of it in their map, by value."""
    order = np.argsort(np.asarray(decode(jnp.arange(256, dtype=jnp.uint8), x.moment == 1)))
    rank = np.argsort(order)  # a code's place in its map, by value
    assert np.all(np.abs(rank[np.asarray(x.codes)] - rank[np.asarray(y.codes)]) <= 1)


@needs_kernels
def test_one_kernel_call_for_the_8bit_leaves_and_one_for_the_float32_ones():
    optadam.set_native_enabled(True)
    tx = optadam.adam(0.01, state_bits=8)
    params = random_tree(np.random.default_rng(2), jnp.float32, SHAPES)
    jaxpr = traced(tx, params)
    assert jaxpr.count("ffi_call") == 2
    assert jaxpr.count("optadam_adam8_step_f32") == 1 and jaxpr.count("optadam_adam_step_f32") == 1
    big = {k: params[k] for k in ("rows", "flat")}
    assert traced(tx, big).count("ffi_call") == 1


def make_8bit(name: str) -> Callable[[], Any]:
    """The transformation of an 8-bit case, Adam's (EIGHT_BIT) or another family's."""
    return EIGHT_BIT[name] if name in EIGHT_BIT else FAMILIES[name][0]


@needs_kernels
@pytest.mark.parametrize("name", ["adamw", "amsgrad", "rmsprop_centered", "sgd_momentum"])
def test_nan_and_inf_gradients_give_the_xla_path_codes_scales_and_params(name):
    rng = np.random.default_rng(3)
    params = random_tree(rng, jnp.float32, SHAPES)
    tx, one = jitted_step(make_8bit(name), native=True)
    _, xla = jitted_step(make_8bit(name), native=False)
    p, s = params, tx.init(params)
    for t in range(4):
        g = gradients(rng)
        if t == 1:  # one NaN and one inf in a block of "rows", an inf in "flat", NaN in "small"
            g["rows"] = g["rows"].at[2, 10].set(jnp.nan).at[5, 290].set(jnp.inf)
            g["flat"] = g["flat"].at[4095].set(-jnp.inf)
            g["small"] = g["small"].at[0, 0].set(jnp.nan)
        p_one, s_one = one(p, s, g)
        p_xla, s_xla = xla(p, s, g)
        assert_states_equal(without_nonfinite_blocks(s_one, s), without_nonfinite_blocks(s_xla, s))
        assert_params_within_adam_bound(p_one, p_xla, p)
        p, s = p_xla, s_xla
    assert np.isnan(np.asarray(p["rows"])[2, 10])  # the NaN reached the params


@needs_kernels
@pytest.mark.parametrize("donate", [False, True], ids=["kept", "donated"])
def test_one_pass_trajectory_equals_update_then_apply_updates(donate):
    """Run on its own for 20 steps, the one pass follows the two-call form's trajectory: the
    same codes and scales throughout (they do not depend on the params), params within Adam's
    bound for each step taken."""
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [gradients(rng) for _ in range(STEPS)]
    runs = []
    for native in (True, False):
        tx, _ = jitted_step(EIGHT_BIT["nadam"], native)
        step = jax.jit(
            lambda p, s, g, tx=tx: optadam.step(tx, g, s, p),
            donate_argnums=(0, 1) if donate else (),
        )
        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for g in grads:
            old = p if not donate else jax.tree.map(jnp.copy, p)
            p, s = step(p, s, g)
        runs.append((p, s, old))
    (p_one, s_one, _), (p_xla, s_xla, old) = runs
    assert_states_equal(s_one, s_xla)
    assert_params_within_adam_bound(p_one, p_xla, old, steps=STEPS)


@needs_kernels
@pytest.mark.parametrize("name", ["adam", "amsgrad"])
def test_donated_8bit_step_updates_params_and_state_in_place(name):
    """Params and state donated in the documented order: two custom calls (the 8-bit leaves',
    the small float32 ones') and no array copy."""
    optadam.set_native_enabled(True)
    tx = make_8bit(name)()
    params = random_tree(np.random.default_rng(5), jnp.float32, SHAPES)
    step = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p), donate_argnums=(0, 1))
    hlo = step.lower(params, tx.init(params), params).compile().as_text()
    assert hlo.count("custom-call(") == 2
    assert not re.search(r"= \w+\[\d[\d,]*\]\S* copy\(", hlo), hlo


@needs_kernels
@pytest.mark.parametrize("name", ["adam", "rmsprop_centered"])
def test_gradient_through_a_traced_8bit_step_takes_the_xla_math(name):
    rng = np.random.default_rng(6)
    params = random_tree(rng, jnp.float32, {"w": (64, 80), "b": (10,)})
    grads = gradients(rng, {"w": (64, 80), "b": (10,)})

    def derivative(native: bool) -> Any:
        tx, _ = jitted_step(make_8bit(name), native)
        state = tx.init(params)

        def loss(p: Any) -> Any:
            new, _ = jax.jit(lambda p: optadam.step(tx, grads, state, p))(p)
            return sum(jnp.sum(x**2) for x in jax.tree.leaves(new))

        return jax.grad(loss)(params)

    for a, b in zip(*(jax.tree.leaves(derivative(n)) for n in (True, False)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@needs_kernels
def test_vmap_of_a_traced_8bit_step_runs_it_per_element():
    rng = np.random.default_rng(7)
    shapes = {"w": (64, 80)}
    params = random_tree(rng, jnp.float32, shapes)
    grads = jax.tree.map(lambda *x: jnp.stack(x), *(gradients(rng, shapes) for _ in range(3)))
    outs = []
    for native in (True, False):
        tx, _ = jitted_step(EIGHT_BIT["adam"], native)
        state = tx.init(params)
        step = jax.jit(lambda g, tx=tx, state=state: optadam.step(tx, g, state, params))
        outs.append(jax.vmap(step)(grads))
    assert_states_equal(outs[0][1], outs[1][1])
    assert_params_within_adam_bound(outs[0][0], outs[1][0], jax.tree.map(lambda x: x[None], params))


FALLBACKS = {
    "kernels_off": (lambda: optadam.adam(0.01, state_bits=8), jnp.float32, False),
    "bfloat16_params": (lambda: optadam.adam(0.01, state_bits=8), jnp.bfloat16, True),
    "masked_decay": (
        lambda: optadam.adamw(0.01, state_bits=8, mask=lambda p: {k: k != "flat" for k in p}),
        jnp.float32,
        True,
    ),
    "radam_bfloat16_params": (lambda: optadam.radam(0.01, state_bits=8), jnp.bfloat16, True),
    "wrapped": (
        lambda: optax.chain(optax.clip(1.0), optadam.adam(0.01, state_bits=8)),
        jnp.float32,
        True,
    ),
}


@needs_kernels
@pytest.mark.parametrize("name", FALLBACKS)
def test_what_the_8bit_kernel_does_not_cover_takes_update_then_apply_updates(name):
    """No 8-bit kernel in the step, and the step's numbers are the two-call form's (traced with
    the same switch)."""
    make, dtype, native = FALLBACKS[name]
    shapes = {"rows": (33, 300), "flat": (5000,), "small": (7, 5)}
    rng = np.random.default_rng(8)
    params = random_tree(rng, dtype, shapes)
    tx, one = jitted_step(make, native)
    assert "8_step" not in traced(tx, params)
    optadam.set_native_enabled(native)
    tx_two = make()
    two = jax.jit(lambda p, s, g: optax.apply_updates(p, tx_two.update(g, s, p)[0]))
    s = tx.init(params)
    g = jax.tree.map(lambda x: x.astype(dtype), gradients(rng, shapes))
    stepped = one(params, s, g)[0]
    optadam.set_native_enabled(native)
    both = (jax.tree.leaves(stepped), jax.tree.leaves(two(params, s, g)))
    for a, b in zip(*both, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@needs_kernels
def test_float64_params_take_the_xla_path(x64):
    optadam.set_native_enabled(True)
    tx = optadam.adam(0.01, state_bits=8)
    params = random_tree(np.random.default_rng(9), jnp.float64, {"w": (64, 80)})
    assert "adam8" not in traced(tx, params)


@needs_kernels
def test_params_on_a_mesh_take_the_xla_path_and_keep_their_sharding():
    """The 8-bit call has no sharding rule: a jit over params placed on several devices takes the
    XLA path (no all-gather, the state stays sharded like the params)."""
    optadam.set_native_enabled(True)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    params = {"w": jax.device_put(jnp.ones((64, 512), jnp.float32), sharding)}
    tx = optadam.adam(0.01, state_bits=8)
    state = jax.jit(tx.init)(params)
    step = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p))
    assert "adam8" not in traced(tx, params)
    hlo = step.lower(params, state, params).compile().as_text()
    assert "all-gather" not in hlo
    new_params, new_state = step(params, state, params)
    assert new_params["w"].sharding.is_equivalent_to(sharding, 2)
    assert new_state[0].mu["w"].codes.sharding.is_equivalent_to(sharding, 2)


# --- tx.update's 8-bit kernel ----------------------------------------------------------------


def jitted_update(make: Callable[[], Any], native: bool) -> tuple[Any, Any, str]:
    """A transformation, its jitted ``update`` (traced with the kernels on or off) and the
    traced update's jaxpr."""
    optadam.set_native_enabled(native)
    tx = make()
    params = random_tree(np.random.default_rng(0), jnp.float32, SHAPES)
    jaxpr = str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))
    jitted = jax.jit(tx.update)

    def update(g: Any, s: Any, p: Any) -> Any:
        optadam.set_native_enabled(native)
        return jitted(g, s, p)

    return tx, update, jaxpr


def assert_updates_within(a: Any, b: Any, ulps: int) -> None:
    """Within ``ulps`` float32 ulp of each leaf's largest update; NaN and inf where ``b`` has
    them. (The kernel divides as the Python is written; XLA rewrites some divisions.)"""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        finite = np.isfinite(y)
        np.testing.assert_array_equal(x[~finite], y[~finite])
        top = np.float32(np.max(np.abs(y[finite]), initial=0))
        np.testing.assert_allclose(x[finite], y[finite], rtol=0, atol=ulps * np.spacing(top))


@needs_kernels
@pytest.mark.parametrize("name", [*EIGHT_BIT, *(name for name in FAMILIES if name not in TRACED)])
def test_8bit_update_kernel_gives_the_xla_path_codes_scales_and_updates(name):
    """From the same state each step, 20 steps: ``update``'s codes, scales and float32 moments
    as the XLA path's, bit for bit (one map value apart in under 1e-5 of the codes where XLA
    contracts the moving averages otherwise, as for the one pass), updates within 4 ulp."""
    rng = np.random.default_rng(11)
    params = random_tree(rng, jnp.float32, SHAPES)
    target = "adam8" if name in EIGHT_BIT else FAMILIES[name][1]
    tx, native, jaxpr = jitted_update(make_8bit(name), True)
    _, xla, jaxpr_xla = jitted_update(make_8bit(name), False)
    assert jaxpr.count(f"optadam_{target}_f32") == 1 and "8_f32" not in jaxpr_xla
    s = tx.init(params)
    differing = total = 0
    for _ in range(STEPS):
        g = gradients(rng)
        u, s_native = native(g, s, params)
        u_xla, s_xla = xla(g, s, params)
        if name in CONTRACTED_OTHERWISE:
            differing += codes_one_value_apart(s_native, s_xla, SCALE_ULPS.get(name, 1))
            total += sum(x.size for x in jax.tree.leaves(s_xla) if x.dtype == jnp.uint8)
        else:
            assert_states_equal(s_native, s_xla)
            assert_updates_within(u, u_xla, 4)
        s = s_xla
    assert differing <= 1e-5 * total


@needs_kernels
@pytest.mark.parametrize("name", ["nadam", "amsgrad", "sgd_momentum"])
def test_8bit_update_with_nan_and_inf_gradients_as_on_the_xla_path(name):
    rng = np.random.default_rng(12)
    params = random_tree(rng, jnp.float32, SHAPES)
    tx, native, _ = jitted_update(make_8bit(name), True)
    _, xla, _ = jitted_update(make_8bit(name), False)
    s = tx.init(params)
    for t in range(4):
        g = gradients(rng)
        if t == 1:
            g["rows"] = g["rows"].at[2, 10].set(jnp.nan).at[5, 290].set(jnp.inf)
            g["pooled"] = g["pooled"].at[299, 300].set(-jnp.inf)
        u, s_native = native(g, s, params)
        u_xla, s_xla = xla(g, s, params)
        assert_states_equal(
            without_nonfinite_blocks(s_native, s), without_nonfinite_blocks(s_xla, s)
        )
        assert_updates_within(u, u_xla, 4)
        s = s_xla
        if t == 1:
            assert np.isnan(np.asarray(u["rows"])[2, 10])  # (later steps decode finite moments)


@needs_kernels
def test_8bit_update_kernel_trajectory_with_apply_updates_matches_the_xla_path():
    """Twenty steps of update + apply_updates, each path on its own, donated: the same codes and
    scales throughout, params within Adam's bound for each step taken."""
    rng = np.random.default_rng(13)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [gradients(rng) for _ in range(STEPS)]
    runs = []
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = EIGHT_BIT["adamw"]()

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def step(p: Any, s: Any, g: Any, tx: Any = tx) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p, s = jax.tree.map(jnp.copy, params), tx.init(params)
        for g in grads:
            p, s = step(p, s, g)
        runs.append((p, s))
    (p_native, s_native), (p_xla, s_xla) = runs
    assert_states_equal(s_native, s_xla)
    assert_params_within_adam_bound(p_native, p_xla, params, steps=STEPS)


@needs_kernels
def test_rmsprop_with_a_trace_updates_both_8bit_states_through_kernels():
    """``tx.update`` of RMSProp with momentum: ν and the trace are two transformations' states,
    each through its family's 8-bit update kernel (its one pass has no 8-bit kernel:
    FALLBACKS). ν's codes and scales are the XLA path's; the trace sums RMSProp's update, which
    is only within 4 ulp of XLA's, so its scales are within 4 ulp and its codes one map value
    apart in under 1e-5 of them (measured: 1 in 2.4 million)."""
    rng = np.random.default_rng(15)
    params = random_tree(rng, jnp.float32, SHAPES)
    make = lambda: optadam.rmsprop(0.01, momentum=0.9, state_bits=8)  # noqa: E731
    tx, native, jaxpr = jitted_update(make, True)
    _, xla, _ = jitted_update(make, False)
    assert jaxpr.count("optadam_rms8_f32") == 1 and jaxpr.count("optadam_momentum8_f32") == 1
    s = tx.init(params)
    differing = total = 0
    for _ in range(STEPS):
        g = gradients(rng)
        u, s_native = native(g, s, params)
        u_xla, s_xla = xla(g, s, params)
        assert_states_equal(s_native[0], s_xla[0])  # ν (scale_by_rms), and its count
        differing += codes_one_value_apart(s_native[2], s_xla[2], scale_ulps=4)  # the trace
        total += sum(x.size for x in jax.tree.leaves(s_xla[2]) if x.dtype == jnp.uint8)
        assert_updates_within(u, u_xla, 4)
        s = s_xla
    assert differing <= 1e-5 * total


@needs_kernels
def test_gradient_through_a_traced_8bit_update_takes_the_xla_math():
    """A meta-gradient through update, with respect to the gradients: the kernel's derivative
    rule is the XLA math."""
    rng = np.random.default_rng(14)
    shapes = {"w": (64, 80), "b": (10,)}
    params = random_tree(rng, jnp.float32, shapes)
    grads = gradients(rng, shapes)

    def derivative(native: bool) -> Any:
        tx, _, jaxpr = jitted_update(EIGHT_BIT["adam"], native)
        assert ("optadam_adam8_f32" in jaxpr) == native
        state = tx.init(params)

        def loss(g: Any) -> Any:
            u, _ = jax.jit(lambda g: tx.update(g, state, params))(g)
            return sum(jnp.sum(x**2) for x in jax.tree.leaves(u))

        optadam.set_native_enabled(native)
        return jax.grad(loss)(grads)

    for a, b in zip(*(jax.tree.leaves(derivative(n)) for n in (True, False)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@needs_kernels
def test_vmap_and_meshes_keep_the_8bit_update_on_the_xla_path():
    optadam.set_native_enabled(True)
    tx = optadam.adam(0.01, state_bits=8)
    params = {"w": jnp.ones((64, 512), jnp.float32)}
    state = tx.init(params)
    batched = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
    vmapped = jax.make_jaxpr(jax.vmap(lambda g: tx.update(g, state, params)))(batched)
    assert "adam8" not in str(vmapped)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharded = {"w": jax.device_put(params["w"], NamedSharding(mesh, P("data")))}
    state = jax.jit(tx.init)(sharded)
    assert "adam8" not in str(jax.make_jaxpr(tx.update)(sharded, state, sharded))
