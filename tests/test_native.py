"""Native CPU kernels (optadam/_native): the kernel path against the XLA path, which stays the
definition, and every way of falling back to it.

Each comparison builds the transformation anew for each path: ``jax.jit`` caches traces per
function, so a transformation traced on one path keeps it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_same, assert_step_close, needs_kernels, random_tree, updates_path
from jax import lax

import optadam
from optadam._leafwise import Kernel, _kernel_call

SHAPES = {"s": (), "one": (1,), "odd": (7,), "w": (33, 5), "t": (4, 3, 2)}
STEPS = 12
ADAM_FAMILY = {
    "adam": lambda: optadam.adam(0.1),
    "adam_eps_root": lambda: optadam.adam(0.05, b1=0.5, b2=0.9, eps=0.0, eps_root=1e-6),
    "nadam": lambda: optadam.nadam(0.1),
    "adamw": lambda: optadam.adamw(0.1, weight_decay=0.3),
    "adam_schedule": lambda: optadam.adam(optax.linear_schedule(0.1, 0.01, 5)),
    "adam_injected": lambda: optadam.inject_hyperparams(optadam.adam)(0.1, b1=0.8),
}


def kernels_available() -> bool:
    optadam.set_native_enabled(True)
    return optadam.native_status().enabled


def ulps(a: Any, b: Any) -> int:
    """Largest distance in units of the last place between two float32 arrays."""
    a, b = np.asarray(a, np.float32).ravel(), np.asarray(b, np.float32).ravel()
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, np.int64(-(2**31)) - ia, ia)  # order negative floats below positive
    ib = np.where(ib < 0, np.int64(-(2**31)) - ib, ib)
    return int(np.max(np.abs(ia - ib), initial=0))


def close_in_ulps(a: Any, b: Any, n: int) -> None:
    """``a`` within ``n`` float32 ulp of ``b``'s largest magnitude (same NaN and inf)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    finite = np.isfinite(b)
    np.testing.assert_array_equal(a[~finite], b[~finite])
    scale = np.max(np.abs(b[finite]), initial=0)
    np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=n * np.spacing(scale))


@needs_kernels
def test_status_says_kernels_are_in_use_with_a_compiler():
    assert kernels_available()
    status = optadam.native_status()
    assert status.library is not None and Path(status.library).exists()


@needs_kernels
@pytest.mark.parametrize("name", ADAM_FAMILY)
def test_adam_family_kernel_matches_xla_path_float32(name: str):
    assert kernels_available()
    rng = np.random.default_rng(0)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = [random_tree(rng, jnp.float32, SHAPES) for _ in range(STEPS)]
    u_k, s_k, traced_k = updates_path(ADAM_FAMILY[name], True, params, grads)
    u_x, s_x, traced_x = updates_path(ADAM_FAMILY[name], False, params, grads)
    assert "optadam_adam" in traced_k and "optadam_adam" not in traced_x
    # bitwise: the kernel advances the moments with XLA's multiply-adds, and the update is the
    # same jnp direction, fused by XLA after the call
    assert_same((u_k, s_k), (u_x, s_x))


@needs_kernels
@pytest.mark.parametrize("name", ["adam", "adam_eps_root", "nadam", "adam_injected"])
def test_adam_family_kernel_matches_xla_path_float64(name: str, x64):
    assert kernels_available()
    rng = np.random.default_rng(1)
    params = random_tree(rng, jnp.float64, SHAPES)
    grads = [random_tree(rng, jnp.float64, SHAPES) for _ in range(STEPS)]
    u_k, s_k, traced_k = updates_path(ADAM_FAMILY[name], True, params, grads)
    u_x, s_x, _ = updates_path(ADAM_FAMILY[name], False, params, grads)
    assert "optadam_adam" in traced_k
    assert_same((u_k, s_k), (u_x, s_x))


@needs_kernels
def test_odd_and_large_leaves_match_xla_path():
    assert kernels_available()
    rng = np.random.default_rng(10)
    shapes = {"a": (1,), "b": (3,), "c": (1023,), "d": (4097,), "e": (1 << 20 | 3,)}
    params = random_tree(rng, jnp.float32, shapes)
    grads = [random_tree(rng, jnp.float32, shapes) for _ in range(3)]
    u_k, s_k, traced = updates_path(ADAM_FAMILY["adam"], True, params, grads)
    u_x, s_x, _ = updates_path(ADAM_FAMILY["adam"], False, params, grads)
    assert "optadam_adam" in traced
    assert_same((u_k, s_k), (u_x, s_x))


@needs_kernels
def test_kernel_is_one_call_for_all_leaves_of_a_dtype():
    assert kernels_available()
    params = random_tree(np.random.default_rng(2), jnp.float32, SHAPES)
    tx = optadam.adam(0.1)
    jaxpr = str(jax.make_jaxpr(tx.update)(params, tx.init(params)))
    assert jaxpr.count("optadam_adam_f32") == 1


@needs_kernels
def test_kernel_takes_hyperparameters_as_operands_so_injected_values_do_not_retrace():
    assert kernels_available()
    params = random_tree(np.random.default_rng(3), jnp.float32, SHAPES)
    tx = optadam.inject_hyperparams(optadam.adam)(0.1, b1=0.9)
    state = tx.init(params)
    traces = []
    update = jax.jit(lambda g, s: (traces.append(1), tx.update(g, s))[1])
    _, state = update(params, state)
    state.hyperparams["b1"] = jnp.asarray(0.5, state.hyperparams["b1"].dtype)
    state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
    _, state = update(params, state)
    assert len(traces) == 1


def _special_grads() -> tuple[dict, dict]:
    rng = np.random.default_rng(4)
    params = random_tree(rng, jnp.float32, {"w": (9,), "empty": (0, 3), "b": (2,)})
    g = dict(params)
    g["w"] = g["w"].at[0].set(jnp.nan).at[1].set(jnp.inf).at[2].set(-jnp.inf)
    return params, g


@needs_kernels
def test_nan_inf_and_zero_size_leaves_give_xla_path_results():
    assert kernels_available()
    params, g = _special_grads()
    u_k, s_k, traced = updates_path(lambda: optadam.adam(0.1), True, params, [g, g])
    u_x, s_x, _ = updates_path(lambda: optadam.adam(0.1), False, params, [g, g])
    assert "optadam_adam" in traced
    assert_same((u_k, s_k), (u_x, s_x))  # NaN and inf included


@needs_kernels
def test_none_and_masked_leaves_give_xla_path_results():
    assert kernels_available()
    params = random_tree(np.random.default_rng(5), jnp.float32, {"w": (5,), "b": (3,)})
    outs = []
    for native in (True, False):
        optadam.set_native_enabled(native)
        tx = optax.masked(optadam.adam(0.1), {"w": True, "b": False})
        state = tx.init(params)
        u1, state = jax.jit(tx.update)(params, state)
        tx2 = optadam.adam(0.1)
        u2, _ = tx2.update({"w": params["w"], "b": None}, tx2.init(params))
        outs.append((u1, u2))
    assert outs[0][1]["b"] is None
    assert_same(outs[0], outs[1])


@needs_kernels
def test_float16_moments_take_the_xla_path_and_8bit_state_its_own_kernel():
    assert kernels_available()
    params = random_tree(np.random.default_rng(6), jnp.float16, {"w": (5,)})  # mu in float16
    tx = optadam.adam(0.1)
    assert "optadam_adam" not in str(jax.make_jaxpr(tx.update)(params, tx.init(params)))
    big = {"w": jnp.ones(8192, jnp.float32)}
    for lean, name in (
        (optadam.adam(0.1, state_bits=8), "adam8"),  # adam8.cc
        (optadam.amsgrad(0.1, state_bits=8), "amsgrad8"),
    ):  # block8.h
        traced = str(jax.make_jaxpr(lean.update)(big, lean.init(big)))
        assert traced.count("optadam_") == 1 and f"optadam_{name}_f32" in traced


def _meta(native: bool) -> tuple[Any, Any]:
    """d(loss after 6 steps)/d(b1) and vmap over the learning rate, both through a scan."""
    optadam.set_native_enabled(native)
    rng = np.random.default_rng(7)
    params = random_tree(rng, jnp.float32, {"w": (6,)})
    target = jnp.asarray(rng.normal(size=6), jnp.float32)

    def train(lr: jax.Array, b1: jax.Array) -> jax.Array:
        tx = optadam.inject_hyperparams(optadam.adam)(lr, b1=b1)

        def body(carry: Any, _: Any) -> Any:
            p, s = carry
            g = jax.grad(lambda q: jnp.sum((q["w"] - target) ** 2))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = lax.scan(body, (params, tx.init(params)), None, length=6)
        return jnp.sum((p["w"] - target) ** 2)

    meta_grad = jax.jit(jax.grad(train, argnums=1))(0.1, 0.9)
    swept = jax.jit(jax.vmap(train, in_axes=(0, None)))(jnp.asarray([0.05, 0.1, 0.2]), 0.9)
    return meta_grad, swept


@needs_kernels
def test_meta_gradient_and_vmap_through_a_traced_kernel_equal_the_xla_path():
    assert kernels_available()
    grad_k, swept_k = _meta(True)
    grad_x, swept_x = _meta(False)
    np.testing.assert_allclose(grad_k, grad_x, rtol=1e-6)
    np.testing.assert_allclose(swept_k, swept_x, rtol=1e-6)


@needs_kernels
def test_sharded_step_has_no_all_gather_and_keeps_the_sharding():
    assert kernels_available()
    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = {"w": jax.device_put(jnp.arange(64.0, dtype=jnp.float32), sharding)}
    tx = optadam.adam(0.1)
    state = tx.init(params)
    update = jax.jit(tx.update)
    hlo = update.lower(params, state).compile().as_text()
    assert "all-gather" not in hlo
    u, state = update(params, state)
    assert state[0].mu["w"].sharding == sharding
    optadam.set_native_enabled(False)
    reference = optadam.adam(0.1)
    u_ref, _ = jax.jit(reference.update)(params, reference.init(params))
    close_in_ulps(u["w"], u_ref["w"], 3)


@needs_kernels
def test_step_equals_update_then_apply_updates_with_donation():
    assert kernels_available()
    rng = np.random.default_rng(8)
    params = random_tree(rng, jnp.float32, SHAPES)
    grads = random_tree(rng, jnp.float32, SHAPES)
    for make in (lambda: optadam.adamw(0.1), lambda: optax.sgd(0.1, momentum=0.9)):
        tx = make()
        state = tx.init(params)

        @jax.jit
        def two_calls(g: Any, s: Any, p: Any, tx: Any = tx) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        p_two, s_two = two_calls(grads, state, params)
        donated = jax.tree.map(jnp.copy, (params, state))
        # params then state, as returned: each donated buffer pairs with its own result
        step = jax.jit(lambda p, s, g, tx=tx: optadam.step(tx, g, s, p), donate_argnums=(0, 1))
        p_one, s_one = step(donated[0], donated[1], grads)
        # the two calls are XLA's (the update kernel leaves the direction to XLA): the state
        # bitwise, the params within the one pass's bound (3 ulp of the step, 1 of themselves)
        assert_same(s_one, s_two)
        assert_step_close(p_one, p_two, params, 3)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    full = {k: v for k, v in os.environ.items() if k not in ("CXX", "OPTADAM_NATIVE")}
    full.update(PYTHONPATH=str(root), **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, check=False
    )


STATUS = "import optadam; s = optadam.native_status(); print(s.enabled, '|', s.reason)"
# The tests of how the library is built and shared build one of their own into an empty cache:
# unoptimized (-O0 after the default -O3), since they check the building, not the kernels' speed;
# it takes a fifth of the time.
QUICK_BUILD = (os.environ.get("OPTADAM_NATIVE_CFLAGS", "") + " -O0").strip()


def test_environment_variable_turns_kernels_off():
    out = _python(STATUS, OPTADAM_NATIVE="0")
    assert out.stdout.strip() == "False | turned off by OPTADAM_NATIVE=0", out.stderr


@needs_kernels
def test_kernels_are_on_by_default_and_say_where_the_library_is():
    out = _python(STATUS)
    enabled, reason = out.stdout.strip().split(" | ")
    assert enabled == "True" and reason.endswith(".so"), out.stderr
    assert reason.startswith(("built: ", "loaded from the cache: "))


def test_no_compiler_falls_back_to_xla_path_with_the_reason(tmp_path: Path):
    bare = tmp_path / "bin"
    bare.mkdir()
    code = STATUS + "; import jax.numpy as jnp; tx = optadam.adam(0.1); p = jnp.ones(3)"
    code += "; print(tx.update(p, tx.init(p))[0])"
    out = _python(
        code, PATH=str(bare), OPTADAM_CACHE_DIR=str(tmp_path / "cache"), OPTADAM_NATIVE="1"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False | no C++ compiler found"), out.stdout
    assert "[-0.09999934 -0.09999934 -0.09999934]" in out.stdout  # Adam's first step, eps included


def fake_compiler(tmp_path: Path, refuse: str) -> str:
    """A ``$CXX`` that fails on any command line containing ``refuse`` and is g++ otherwise."""
    script = tmp_path / "cxx"
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *{refuse}*) echo "unsupported {refuse}" >&2; exit 1;; esac\n'
        'exec g++ "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


@needs_kernels
def test_a_compiler_refusing_march_native_gets_a_build_without_it(tmp_path: Path):
    cxx = fake_compiler(tmp_path, "-march=native")
    cache = str(tmp_path / "cache")
    out = _python(
        STATUS,
        CXX=cxx,
        OPTADAM_CACHE_DIR=cache,
        OPTADAM_NATIVE="1",
        OPTADAM_NATIVE_CFLAGS=QUICK_BUILD,
    )
    assert out.stdout.startswith("True | built: "), out.stdout + out.stderr


@needs_kernels
def test_a_failed_build_falls_back_to_xla_path_with_the_compiler_error(tmp_path: Path):
    cxx = fake_compiler(tmp_path, "-shared")
    code = STATUS + "; import jax.numpy as jnp; tx = optadam.adam(0.1); p = jnp.ones(3)"
    code += "; print(tx.update(p, tx.init(p))[0])"
    out = _python(code, CXX=cxx, OPTADAM_CACHE_DIR=str(tmp_path / "cache"), OPTADAM_NATIVE="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False | native kernels unavailable: "), out.stdout
    assert "unsupported -shared" in out.stdout
    assert "[-0.09999934 -0.09999934 -0.09999934]" in out.stdout
    assert not list((tmp_path / "cache").iterdir())  # no library, no temporary left


@needs_kernels
def test_two_processes_building_at_once_share_one_library(tmp_path: Path):
    code = "import optadam; print(optadam.native_status().enabled)"
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "OPTADAM_NATIVE")}
    root = str(Path(__file__).resolve().parents[1])
    env.update(PYTHONPATH=root, OPTADAM_CACHE_DIR=str(tmp_path), OPTADAM_NATIVE="1")
    env.update(OPTADAM_NATIVE_CFLAGS=QUICK_BUILD)
    runs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
        for _ in range(2)
    ]
    assert [p.communicate()[0].strip() for p in runs] == ["True", "True"]
    assert [f.suffix for f in tmp_path.iterdir()] == [".so"]  # one library, no temporary left


SHARED_POOL = """
import jax, jax.numpy as jnp, numpy as np, optadam
from jax.sharding import NamedSharding, PartitionSpec
assert jax.device_count() == 8 and optadam.native_status().enabled
n = 8 * (1 << 18)  # each device's shard is split over the pool, not run inline
p = jnp.asarray(np.random.default_rng(0).normal(size=n), jnp.float32)
g = jnp.asarray(np.random.default_rng(1).normal(size=n), jnp.float32)

def steps(tx, update, p, g, init=None, count=3):
    s = (init or tx.init)(p)
    assert "optadam_adam_f32" in update.lower(g, s, p).compile().as_text()
    for _ in range(count):
        u, s = update(g, s, p)
    return np.asarray(u), np.asarray(s[0].mu)

tx = optadam.adam(0.1)
assert "optadam_adam_f32" in str(jax.make_jaxpr(tx.update)(g, tx.init(p), p))
mesh = jax.make_mesh((8,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
shard = NamedSharding(mesh, PartitionSpec("d"))
sharded = steps(tx, jax.jit(tx.update), jax.device_put(p, shard), jax.device_put(g, shard))
rows = lambda x: x.reshape(8, -1)
mapped = steps(tx, jax.pmap(tx.update), rows(p), rows(g), init=jax.pmap(tx.init))
one_device = steps(tx, jax.jit(tx.update), p, g)  # the kernel, unsplit over devices
for got in (sharded, mapped):  # the kernel is element-wise: the same bits however it is split
    np.testing.assert_array_equal(got[1].ravel(), one_device[1])
    # the direction is XLA's, and XLA rewrites its divisions per program (a / b / c as
    # a / (b · c) here, as a · (1 / c) there): a few ulp apart between these programs
    np.testing.assert_allclose(got[0].ravel(), one_device[0], rtol=1e-6)
print("ok")
"""


@needs_kernels
def test_kernel_split_over_a_pool_shared_by_8_host_devices_does_not_deadlock():
    # The kernel schedules its ranges on XLA's intra-op pool, which every host device shares, and
    # returns a Future instead of waiting on them: pmap and a sharded jit over 8 devices finish.
    code = SHARED_POOL
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "OPTADAM_NATIVE")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        OPTADAM_NATIVE="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the kernel deadlocked (or ran for over 300 s) under 8 host devices")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@needs_kernels
def test_many_leaves_are_cut_into_calls_of_leaves_per_call_with_the_same_results():
    """XLA compiles one custom call over thousands of operands in minutes: a tree is cut into
    calls of ``LEAVES_PER_CALL`` leaves (70 leaves: 3 calls), each leaf's results unchanged."""
    assert kernels_available()
    rng = np.random.default_rng(11)
    shapes = {f"w{i:02d}": (3 + i,) for i in range(70)}
    params = random_tree(rng, jnp.float32, shapes)
    grads = [random_tree(rng, jnp.float32, shapes) for _ in range(3)]
    u_k, s_k, _ = updates_path(ADAM_FAMILY["adam"], True, params, grads)
    u_x, s_x, _ = updates_path(ADAM_FAMILY["adam"], False, params, grads)
    tx = ADAM_FAMILY["adam"]()
    optadam.set_native_enabled(True)
    traced = str(jax.make_jaxpr(tx.update)(grads[0], tx.init(params), params))
    calls = -(-len(shapes) // optadam._native.LEAVES_PER_CALL)
    assert calls == 3 and traced.count("optadam_adam_f32") == calls
    assert_same((u_k, s_k), (u_x, s_x))


@needs_kernels
def test_kernel_derivative_rule_takes_integer_tracers_it_closes_over():
    """A kernel call whose XLA math reads an integer tracer (a ``scan``'s step count), traced in
    the scan and differentiated after: the count is an operand of the derivative rule, not a
    captured tracer (``jax.closure_convert`` would leave it captured and it would leak)."""
    optadam.set_native_enabled(True)
    beta = 0.9
    kernel = Kernel("momentum", (beta,), (("nesterov", False),))

    def trace_update(g: jax.Array, trace: jax.Array, k: jax.Array) -> jax.Array:
        def xla(g: Any, trace: Any) -> list[Any]:  # the kernel's math, gated on the count
            return [jnp.where(k >= 0, beta * trace + g, trace)]

        scalars = jnp.asarray([beta], jnp.float32)
        leaves = [[g, trace]]
        ((new,),) = _kernel_call("optadam_momentum_f32", kernel, xla, scalars, leaves, {1: 0}, 1)
        return new

    def loss(p: jax.Array) -> jax.Array:
        def body(carry: Any, _: Any) -> Any:
            trace, k = carry
            return (trace_update(2.0 * p, trace, k), k + 1), None

        (trace, _), _ = lax.scan(body, (jnp.zeros_like(p), jnp.int32(0)), None, length=3)
        return jnp.sum(trace * trace)

    p = jnp.asarray(np.random.default_rng(12).normal(size=7), jnp.float32)
    assert "optadam_momentum_f32" in str(jax.make_jaxpr(loss)(p))
    # trace_3 = 2p · (1 + β + β²): d/dp of its squared sum is 8 · (1 + β + β²)² · p
    expected = 8 * (1 + beta + beta**2) ** 2 * np.asarray(p, np.float64)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(p)), expected, rtol=1e-6)
