"""``optadam.step``: one pass through the native step kernel for Adam, NAdam and AdamW, the same
numbers as ``tx.update`` + ``optax.apply_updates``, and that two-call form for everything else.

Each path builds its transformation anew: ``jax.jit`` caches traces per function, so a
transformation traced on one path keeps it.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import (
    assert_kernel_paths_agree,
    assert_same,
    needs_kernels,
    random_tree,
    trajectory,
    wide,
)
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optadam

SHAPES = {"s": (), "one": (1,), "odd": (7,), "w": (33, 5), "t": (4, 3, 2)}
STEPS = 15
ONE_PASS = {
    "adam": lambda: optadam.adam(0.1),
    "adam_eps_root": lambda: optadam.adam(0.05, b1=0.5, b2=0.9, eps=0.0, eps_root=1e-6),
    "nadam": lambda: optadam.nadam(0.1),
    "adamw": lambda: optadam.adamw(0.1, weight_decay=0.3),
    "adamw_no_decay": lambda: optadam.adamw(0.1, weight_decay=0.0),
    "adam_schedule": lambda: optadam.adam(optax.linear_schedule(0.1, 0.01, 5)),
    "adamw_schedules": lambda: optadam.adamw(
        optax.cosine_decay_schedule(0.1, 10), weight_decay=optax.linear_schedule(0.3, 0.0, 8)
    ),
    "adamw_array_lr": lambda: optadam.adamw(jnp.asarray(0.05), weight_decay=0.1),
    # global-norm clipping joins the pass (‖g‖ is about 14 here: 1.0 clips every step, 1e3 none)
    "adam_clipped": lambda: optadam.chain(optadam.clip_by_global_norm(1.0), optadam.adam(0.1)),
    "adamw_schedules_clipped": lambda: optadam.chain(
        optadam.clip_by_global_norm(jnp.asarray(5.0)),
        optadam.adamw(optax.cosine_decay_schedule(0.1, 10), weight_decay=0.3),
    ),
    "nadam_below_max_norm": lambda: optadam.chain(
        optadam.clip_by_global_norm(1e3), optadam.nadam(0.1)
    ),
}
TWO_CALLS = {
    "adamw_masked": lambda: optadam.adamw(0.1, mask=lambda p: {k: k != "w" for k in p}),
    "optax_adam": lambda: optax.adam(0.1),
    "sgd_without_momentum": lambda: optadam.sgd(0.1),
    "adam_injected": lambda: optadam.inject_hyperparams(optadam.adam)(0.1),
    "adam_float16_moments": lambda: optadam.adam(0.1, mu_dtype=jnp.float16),
    # (8-bit state, clipped or not, takes a one pass of its own: tests/test_native_8bit.py)
    "adam_wrapped": lambda: optax.chain(optax.clip(1.0), optadam.adam(0.1)),
    "adam_optax_chain_clipped": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), optadam.adam(0.1)
    ),
}


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ONE_PASS)
def test_kernel_update_is_xla_path_and_one_pass_is_one_call(name, dtype, request):
    """The kernel-backed update + apply_updates is the XLA path bit for bit, clipped chains and
    schedules included; the one pass is one call for all leaves (no update buffer, no XLA loop),
    donated or not (tests/harness.py: assert_kernel_paths_agree)."""
    wide(dtype, request)
    rng = np.random.default_rng(0)
    params = random_tree(rng, dtype, SHAPES)
    grads = [random_tree(rng, dtype, SHAPES) for _ in range(STEPS)]
    assert_kernel_paths_agree(ONE_PASS[name], params, grads, "optadam_adam_step")


@needs_kernels
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ONE_PASS)
def test_one_pass_step_matches_xla_path_step_by_step(name, dtype, request):
    """Against the XLA path (kernels off), from the same params and state each step: moments
    bitwise in float32, params within 1 ulp of themselves plus the update's own bound (3 float32
    ulp of the leaf's largest step, 1e-14 of it in float64: tests/test_native.py)."""
    wide(dtype, request)
    rng = np.random.default_rng(1)
    params = random_tree(rng, dtype, SHAPES)
    grads = [random_tree(rng, dtype, SHAPES) for _ in range(STEPS)]
    p, s = params, ONE_PASS[name]().init(params)

    def compiled(native: bool) -> Any:  # traced now, under this switch (jit traces lazily)
        optadam.set_native_enabled(native)
        tx = ONE_PASS[name]()
        step = jax.jit(lambda p, s, g: optadam.step(tx, g, s, p)).lower(p, s, grads[0])
        assert ("_step_f" in step.as_text()) == native
        return step.compile()

    one, xla = compiled(True), compiled(False)
    for g in grads:
        p_one, s_one = one(p, s, g)
        p_x, s_x = xla(p, s, g)
        for a, b, old in zip(*(jax.tree.leaves(x) for x in (p_one, p_x, p)), strict=True):
            a, b, old = np.asarray(a), np.asarray(b), np.asarray(old)
            largest_step = np.max(np.abs(b - old), initial=0)
            own = 3 * np.spacing(largest_step) if dtype == "float32" else 1e-14 * largest_step
            assert np.all(np.abs(a - b) <= np.spacing(np.abs(b)) + own)
        if dtype == "float32":
            assert_same(s_one, s_x)
        p, s = p_x, s_x


@needs_kernels
@pytest.mark.parametrize("name", TWO_CALLS)
def test_other_transformations_take_update_then_apply_updates(name):
    optadam.set_native_enabled(True)
    rng = np.random.default_rng(2)
    shapes = {**SHAPES, "big": (64, 64)}  # 8-bit state: leaves under 4,096 elements stay float32
    params = random_tree(rng, jnp.float32, shapes)
    grads = [random_tree(rng, jnp.float32, shapes) for _ in range(4)]
    one, s_one, traced = trajectory(TWO_CALLS[name], True, True, params, grads, True)
    two, s_two, _ = trajectory(TWO_CALLS[name], True, False, params, grads, True)
    assert "_step_f" not in traced  # no one-pass kernel (optadam_adam_step_f32, ...)
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
def test_kernels_off_step_is_update_then_apply_updates():
    rng = np.random.default_rng(3)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [random_tree(rng, jnp.float32, SHAPES) for _ in range(3)]
    one, s_one, traced = trajectory(ONE_PASS["adamw"], False, True, params, grads, False)
    two, s_two, _ = trajectory(ONE_PASS["adamw"], False, False, params, grads, False)
    assert "optadam_adam" not in traced
    assert_same(one, two)
    assert_same(s_one, s_two)


@needs_kernels
def test_nan_inf_gradients_and_params_give_the_two_call_results():
    optadam.set_native_enabled(True)
    params = {"w": jnp.array([1.0, jnp.inf, 0.5, -2.0, 0.0]), "b": jnp.array([jnp.nan, 1.0])}
    grads = [
        {"w": jnp.array([jnp.nan, 1.0, jnp.inf, -jnp.inf, 0.0]), "b": jnp.array([1.0, 0.0])}
    ] * 2
    for make in (ONE_PASS["adamw"], ONE_PASS["adamw_no_decay"], ONE_PASS["nadam"]):
        one, s_one, traced = trajectory(make, True, True, params, grads, False)
        two, s_two, _ = trajectory(make, True, False, params, grads, False)
        assert "optadam_adam_step" in traced
        assert_same(one, two)
        assert_same(s_one, s_two)


@needs_kernels
def test_gradient_through_a_step_takes_the_xla_math():
    """Directly under ``jax.grad`` the step is the XLA path; a one-pass step traced under ``jit``
    and differentiated later uses the XLA math as its derivative."""
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = random_tree(rng, jnp.float32, SHAPES)

    def loss(native: bool) -> Any:
        optadam.set_native_enabled(native)
        tx = optadam.adamw(0.1, weight_decay=0.3)
        state = tx.init(params)

        def f(p: Any) -> Any:
            new, _ = jax.jit(lambda p: optadam.step(tx, grads, state, p))(p)
            return sum(jnp.sum(x**2) for x in jax.tree.leaves(new))

        return jax.grad(f)(params)

    for a, b in zip(jax.tree.leaves(loss(True)), jax.tree.leaves(loss(False)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@needs_kernels
def test_donated_one_pass_step_compiles_to_one_call_and_no_copy():
    """Params and state donated in the documented order: the kernel updates their buffers in
    place -- no copy, no update buffer, no XLA loop over the leaves."""
    optadam.set_native_enabled(True)
    params = random_tree(np.random.default_rng(5), jnp.float32, SHAPES)
    for make in (ONE_PASS["adamw"], ONE_PASS["adam_schedule"]):
        tx = make()
        step = jax.jit(lambda p, s, g, tx=tx: optadam.step(tx, g, s, p), donate_argnums=(0, 1))
        hlo = step.lower(params, tx.init(params), params).compile().as_text()
        assert hlo.count("custom-call(") == 1
        # (a scalar count may be copied; no array is)
        assert not re.search(r"= \w+\[\d[\d,]*\]\S* copy\(", hlo), hlo


@needs_kernels
def test_kernels_are_on_by_default_for_step_and_update_and_the_switches_turn_them_off(monkeypatch):
    params = random_tree(np.random.default_rng(6), jnp.float32, SHAPES)
    monkeypatch.delenv("OPTADAM_NATIVE", raising=False)

    def traced(via_step: bool) -> str:
        tx = optadam.adamw(0.1)
        if via_step:
            step = lambda p, s, g: optadam.step(tx, g, s, p)  # noqa: E731
        else:
            step = lambda p, s, g: tx.update(g, s, p)  # noqa: E731
        return str(jax.make_jaxpr(step)(params, tx.init(params), params))

    optadam.set_native_enabled(None)
    assert "optadam_adam_step" in traced(True)
    assert "optadam_adam_f32" in traced(False)  # tx.update's kernel: the moments
    for switch_off in (
        lambda: monkeypatch.setenv("OPTADAM_NATIVE", "0"),
        lambda: optadam.set_native_enabled(False),
    ):
        switch_off()
        assert "optadam_adam" not in traced(True) and "optadam_adam" not in traced(False)
        monkeypatch.delenv("OPTADAM_NATIVE", raising=False)


@needs_kernels
def test_none_leaves_in_gradients_params_and_state_keep_the_one_pass():
    """A model filtered to its arrays (``eqx.filter``) has None where it holds functions; those
    leaves have no param, gradient or moment, and the rest still takes the one pass."""
    rng = np.random.default_rng(7)
    arrays = random_tree(rng, jnp.float32, SHAPES)
    params = {**arrays, "activation": None}
    array_grads = [random_tree(rng, jnp.float32, SHAPES) for _ in range(4)]
    grads = [{**g, "activation": None} for g in array_grads]
    for make in (ONE_PASS["adamw"], lambda: optadam.sgd(0.1, momentum=0.9)):
        one, s_one, traced = trajectory(make, True, True, params, grads, False)
        arrays_only, s_arrays, _ = trajectory(make, True, True, arrays, array_grads, False)
        assert "_step_f32" in traced and traced.count("ffi_call") == 1
        assert all(p.pop("activation") is None for p in one)
        assert_same(one, arrays_only)  # the None leaf changes nothing about the others
        assert_same(jax.tree.leaves(s_one), jax.tree.leaves(s_arrays))  # (None: no leaf)


def sharded_problem(axis_type: AxisType, seed: int) -> tuple:
    """A 4x2 mesh of ``axis_type`` axes, each leaf's spec on it (split on both axes, on one, and
    replicated), params and gradients on one device, and ``place`` to put a tree on the mesh."""
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type,) * 2)
    specs = {"w": P("data", "model"), "b": P("data"), "r": P()}
    rng = np.random.default_rng(seed)
    shapes = {"w": (64, 8), "b": (40,), "r": (3,)}
    params, grads = random_tree(rng, jnp.float32, shapes), random_tree(rng, jnp.float32, shapes)

    def place(tree: dict) -> dict:
        return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

    return mesh, specs, params, grads, place


@needs_kernels
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_sharded_one_pass_step_has_no_all_gather_keeps_shardings_and_equals_one_device(axis_type):
    """The step kernel is element-wise: over a sharded mesh it runs on each device's shards --
    over Auto axes as XLA's partitioner leaves it (custom_partitioning), over Explicit axes, whose
    tracers carry their sharding, under shard_map."""
    optadam.set_native_enabled(True)
    mesh, specs, params, grads, place = sharded_problem(axis_type, seed=9)

    for make in (ONE_PASS["adamw"], lambda: optadam.sgd(0.1, momentum=0.9)):
        tx = make()
        step = jax.jit(lambda p, s, g, tx=tx: optadam.step(tx, g, s, p))
        sharded_params = place(params)
        state = tx.init(sharded_params)
        lowered = step.lower(sharded_params, state, place(grads))
        compiled = lowered.compile().as_text()  # (the kernel's name appears once partitioned)
        assert "_step_f32" in compiled and "all-gather" not in compiled
        new, new_state = step(sharded_params, state, place(grads))
        for k in specs:
            assert new[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), 1 + (k == "w"))
        for leaf, like in zip(
            jax.tree.leaves(new_state), jax.tree.leaves(tx.init(sharded_params)), strict=True
        ):
            assert leaf.sharding.is_equivalent_to(like.sharding, leaf.ndim)
        alone, alone_state = step(params, tx.init(params), grads)
        assert_same(new, alone)
        assert_same(new_state, alone_state)


@needs_kernels
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit], ids=["auto", "explicit"])
def test_sharded_kernel_update_has_no_all_gather_keeps_shardings_and_is_the_xla_path(axis_type):
    """tx.update's kernels on sharded params: one kernel call on each device's shards, shardings
    kept, the sharded XLA path's bits."""
    mesh, specs, params, grads, place = sharded_problem(axis_type, seed=10)

    makes = {
        "optadam_adam_f32": ONE_PASS["adamw"],
        "optadam_momentum_f32": lambda: optadam.sgd(0.1, momentum=0.9),
        "optadam_rms_f32": lambda: optadam.rmsprop(0.1, centered=True),
    }
    for kernel, make in makes.items():
        runs = []
        for native in (True, False):
            optadam.set_native_enabled(native)
            tx = make()

            def step(p: Any, s: Any, g: Any, tx: Any = tx) -> Any:
                u, s = tx.update(g, s, p)
                return optax.apply_updates(p, u), s

            p, g = place(params), place(grads)
            s = tx.init(p)
            jitted = jax.jit(step)
            compiled = jitted.lower(p, s, g).compile().as_text()
            assert (kernel in compiled) == native and "all-gather" not in compiled
            for _ in range(3):
                p, s = jitted(p, s, g)
            runs.append((p, s))
        (p, s), (p_xla, s_xla) = runs
        assert_same((p, s), (p_xla, s_xla))
        for k in specs:
            assert p[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), 1 + (k == "w"))
        for leaf, like in zip(jax.tree.leaves(s), jax.tree.leaves(s_xla), strict=True):
            assert leaf.sharding.is_equivalent_to(like.sharding, leaf.ndim)
