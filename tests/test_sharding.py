"""Optimizer state on sharded params: it follows the params, can be split over the data axis
(ZeRO-1), and trains the same on one device, on a mesh, under pmap and across two processes.

The session has 8 host CPU devices (tests/conftest.py). Meshes 8, 4x2 and 2x4, with Auto and
Explicit axes; the references are single-device runs of the same optimizer on unsharded arrays.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _multiprocess_worker
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optadam
import optadam.sharding
import optadam.torch

OPTIMIZERS = {
    "sgd": lambda: optadam.sgd(0.1, momentum=0.9),
    "momentum": lambda: optadam.momentum(0.1),
    "adagrad": lambda: optadam.adagrad(0.1),
    "rmsprop": lambda: optadam.rmsprop(0.1, centered=True, bias_correction=True, momentum=0.5),
    "adam": lambda: optadam.adam(0.1),
    "adamw": lambda: optadam.adamw(0.1),
    "nadam": lambda: optadam.nadam(0.1),
    "amsgrad": lambda: optadam.amsgrad(0.1),
    "radam": lambda: optadam.radam(0.1),
    "adam_schedule": lambda: optadam.adam(optax.linear_schedule(0.1, 0.01, 10)),
    # the torch-porting layer's optimizers are optadam optimizers too
    "torch_sgd": lambda: optadam.torch.SGD(lr=0.1, momentum=0.9, dampening=0.1),
    "torch_adam": lambda: optadam.torch.Adam(lr=lambda k: 0.1, amsgrad=True),
    "torch_adamw": lambda: optadam.torch.AdamW(lr=0.1),
    "torch_nadam": lambda: optadam.torch.NAdam(lr=0.1),
    "torch_radam": lambda: optadam.torch.RAdam(lr=0.1),
    "torch_rmsprop": lambda: optadam.torch.RMSprop(lr=0.01, centered=True, momentum=0.5),
    "torch_adagrad": lambda: optadam.torch.Adagrad(lr=0.1, lr_decay=0.01),
}
MESHES = {
    "8": ((8,), ("data",)),
    "4x2": ((4, 2), ("data", "model")),
    "2x4": ((2, 4), ("data", "model")),
}
AXIS_TYPES = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}
SHAPES = {"w": (8, 16), "v": (16, 8), "u": (8, 4, 2), "b": (16,), "s": ()}
LAYOUTS = {  # several PartitionSpecs per mesh, every leaf divisible where it is split
    1: {"w": P("data"), "v": P(None, "data"), "u": P(), "b": P("data"), "s": P()},
    2: {
        "w": P("data", "model"),
        "v": P(None, ("data", "model")),
        "u": P("model"),
        "b": P("model"),
        "s": P(),
    },
}


def make_mesh(name: str, axis_type: str) -> jax.sharding.Mesh:
    shape, names = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(AXIS_TYPES[axis_type],) * len(shape))


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def shard(tree: dict[str, Any], mesh: jax.sharding.Mesh, specs: dict[str, P]) -> dict[str, Any]:
    return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}


def param_key(path: Any) -> str | None:
    """The params' key a state leaf belongs to (its last dict key naming a param), None for scalars
    (counts, and optadam.torch's per-group hyperparameters such as ``{"lr": ...}``)."""
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey) and k.key in SHAPES]
    return keys[-1] if keys else None


def assert_state_follows_params(state: Any, params: dict[str, Any], mesh: Any) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        key, where = param_key(path), jax.tree_util.keystr(path)
        if key is None:
            assert leaf.ndim == 0, where
            assert leaf.sharding.is_fully_replicated, (where, leaf.sharding)
            assert leaf.sharding.device_set == set(mesh.devices.flat), (where, leaf.sharding)
        else:
            expected = params[key].sharding
            assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (where, leaf.sharding)


def loss(params: dict[str, Any]) -> jax.Array:
    """Elementwise in every param, so the gradients are the same on any layout."""
    return sum(jnp.sum(jnp.sin(p) + 0.25 * p**2) for p in params.values())  # type: ignore[return-value]


def train(tx: optax.GradientTransformation, params: Any, state: Any, steps: int) -> Any:
    @jax.jit
    def step(params: Any, state: Any) -> Any:
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def assert_trees_close(actual: Any, expected: Any, rtol: float = 1e-6) -> None:
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# init follows the params' sharding; update keeps it.


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("where", ["eager", "jit"])
def test_init_puts_every_state_leaf_on_its_params_sharding(mesh_name, axis_type, where):
    mesh = make_mesh(mesh_name, axis_type)
    params = shard(initial_params(), mesh, LAYOUTS[len(mesh.shape)])
    for make in OPTIMIZERS.values():
        tx = make()
        state = tx.init(params) if where == "eager" else jax.jit(tx.init)(params)
        assert_state_follows_params(state, params, mesh)


TRAINED = {  # one optimizer per layout, to cover several without compiling every pair
    ("8", "auto"): "adam",
    ("8", "explicit"): "rmsprop",
    ("4x2", "auto"): "amsgrad",
    ("4x2", "explicit"): "adagrad",
    ("2x4", "auto"): "sgd",
    ("2x4", "explicit"): "radam",
}


@pytest.mark.parametrize(("mesh_name", "axis_type"), TRAINED)
def test_sharded_training_keeps_shardings_and_matches_single_device(mesh_name, axis_type):
    mesh = make_mesh(mesh_name, axis_type)
    specs = LAYOUTS[len(mesh.shape)]
    tx = OPTIMIZERS[TRAINED[mesh_name, axis_type]]()
    params = shard(initial_params(), mesh, specs)
    params, state = train(tx, params, jax.jit(tx.init)(params), steps=3)
    assert_state_follows_params(state, params, mesh)
    for k, s in SHAPES.items():
        assert params[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(s))
    single = jax.device_put(initial_params(), jax.devices()[0])
    expected, expected_state = train(tx, single, tx.init(single), steps=3)
    assert_trees_close(params, expected)
    assert_trees_close(state, expected_state)


def test_init_values_are_exact_whatever_the_params_hold():
    mesh = make_mesh("4x2", "auto")
    values = np.tile(
        np.array([1.0, np.inf, np.nan, -np.inf, -0.0, 3.0, -2.0, 0.0], np.float32), (8, 2)
    )
    params = {"w": jax.device_put(values, NamedSharding(mesh, P("data", "model")))}
    adam = jax.jit(optadam.adam(0.1).init)(params)[0]
    adagrad = jax.jit(optadam.adagrad(0.1, initial_accumulator_value=0.25).init)(params)[0]
    for zeros in (adam.mu["w"], adam.nu["w"]):
        assert np.all(np.asarray(zeros) == 0) and not np.any(np.signbit(np.asarray(zeros)))
    np.testing.assert_array_equal(np.asarray(adagrad.sum_of_squares["w"]), np.full((8, 16), 0.25))


def test_jitted_init_does_not_read_the_params():
    """The select that carries the sharding is folded away: the compiled init only broadcasts."""
    mesh = make_mesh("4x2", "auto")
    params = shard(initial_params(), mesh, LAYOUTS[2])
    hlo = jax.jit(optadam.rmsprop(0.1, centered=True).init).lower(params).compile().as_text()
    assert not any(op in hlo for op in ("select(", "compare(", "convert(")), hlo


def test_pmap_with_state_made_inside_pmap_matches_single_device():
    n, tx = jax.device_count(), optadam.adam(0.1)
    params = initial_params()
    batches = np.random.default_rng(1).normal(size=(n, 3, 16)).astype(np.float32)

    def batch_loss(params: Any, x: Any) -> Any:
        return loss(params) + jnp.sum(params["b"] * x)

    def step(params: Any, state: Any, x: Any) -> Any:
        grads = jax.lax.pmean(jax.grad(batch_loss)(params, x), axis_name="devices")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def averaged_step(params: Any, state: Any, xs: Any) -> Any:
        grads = jax.vmap(jax.grad(batch_loss), in_axes=(None, 0))(params, xs)
        grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    replicated = jax.tree.map(lambda x: np.stack([x] * n), params)
    p_params, p_state = replicated, jax.pmap(tx.init)(replicated)
    s_params, s_state = params, tx.init(params)
    pstep = jax.pmap(step, axis_name="devices")
    for i in range(3):
        p_params, p_state = pstep(p_params, p_state, batches[:, i])
        s_params, s_state = averaged_step(s_params, s_state, batches[:, i])
    for leaf in jax.tree.leaves((p_params, p_state)):  # replicas identical
        np.testing.assert_array_equal(np.asarray(leaf), np.broadcast_to(leaf[:1], leaf.shape))
    assert_trees_close(jax.tree.map(lambda x: x[0], (p_params, p_state)), (s_params, s_state))


# --------------------------------------------------------------------------------------------------
# Abstract state and per-device bytes.


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
def test_abstract_state_is_what_jitted_init_returns(axis_type):
    mesh = make_mesh("4x2", axis_type)
    params = shard(initial_params(), mesh, LAYOUTS[2])
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
    )
    tx = optadam.adamw(0.1)
    state = jax.jit(tx.init)(params)
    for given in (params, abstract_params):
        abstract = optadam.sharding.abstract_state(tx, given)
        shardings = optadam.sharding.state_shardings(tx, given)
        assert jax.tree.structure(abstract) == jax.tree.structure(state)
        for a, s, real in zip(
            jax.tree.leaves(abstract),
            jax.tree.leaves(shardings),
            jax.tree.leaves(state),
            strict=True,
        ):
            assert isinstance(a, jax.ShapeDtypeStruct)
            assert (a.shape, a.dtype, a.sharding) == (real.shape, real.dtype, real.sharding)
            assert s == real.sharding
    out = jax.jit(tx.init, out_shardings=optadam.sharding.state_shardings(tx, params))(params)
    assert_state_follows_params(out, params, mesh)


def test_per_device_state_bytes_counts_the_shards_on_each_device():
    mesh = make_mesh("4x2", "auto")
    params = {
        "w": jax.device_put(np.ones((8, 16), np.float32), NamedSharding(mesh, P("data", "model"))),
        "b": jax.device_put(np.ones((16,), np.float32), NamedSharding(mesh, P())),
    }
    tx = optadam.adam(0.1)
    # per device: mu and nu of w are 2x8 float32 shards, of b full 16 float32; count 4 bytes
    expected = {d: 2 * (2 * 8 * 4) + 2 * (16 * 4) + 4 for d in mesh.devices.flat}
    assert optadam.sharding.per_device_state_bytes(tx.init(params)) == expected
    assert optadam.sharding.per_device_state_bytes(jax.jit(tx.init)(params)) == expected
    assert (
        optadam.sharding.per_device_state_bytes(optadam.sharding.abstract_state(tx, params))
        == expected
    )


# --------------------------------------------------------------------------------------------------
# ZeRO-1: the state split over the data axis.

ZERO1_LAYOUTS = {  # params replicated or on the model axis only; first free dim divisible
    1: {"w": P(), "v": P(), "u": P(), "b": P(), "s": P()},
    2: {"w": P(None, "model"), "v": P(None, "model"), "u": P(None, "model"), "b": P(), "s": P()},
}


def moment_bytes(state: Any) -> int:
    """Bytes on the first device of the state's array leaves (the scalars cannot be split)."""
    arrays = [x for x in jax.tree.leaves(state) if x.ndim]
    return next(iter(optadam.sharding.per_device_state_bytes(arrays).values()))


@pytest.mark.parametrize("axis_type", AXIS_TYPES)
@pytest.mark.parametrize("mesh_name", MESHES)
def test_zero1_cuts_state_bytes_by_the_data_axis_size_and_trains_the_same(mesh_name, axis_type):
    mesh = make_mesh(mesh_name, axis_type)
    specs = ZERO1_LAYOUTS[len(mesh.shape)]
    params = shard(initial_params(), mesh, specs)
    plain, zero1 = optadam.adam(0.1), optadam.sharding.zero1(optadam.adam(0.1), mesh)
    plain_state, zero1_state = jax.jit(plain.init)(params), jax.jit(zero1.init)(params)
    assert moment_bytes(zero1_state) * mesh.shape["data"] == moment_bytes(plain_state)
    for moment in (zero1_state[0].mu, zero1_state[0].nu):
        assert all("data" in str(m.sharding.spec) for m in jax.tree.leaves(moment) if m.ndim)

    trained, trained_state = train(zero1, params, zero1_state, steps=3)
    for k, s in SHAPES.items():  # params stay where they were; the state stays split
        assert trained[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), len(s))
    for before, after in zip(
        jax.tree.leaves(zero1_state), jax.tree.leaves(trained_state), strict=True
    ):
        assert after.sharding.is_equivalent_to(before.sharding, after.ndim)
    single = jax.device_put(initial_params(), jax.devices()[0])
    expected, expected_state = train(plain, single, plain.init(single), steps=3)
    assert_trees_close(trained, expected)
    assert_trees_close(trained_state, expected_state)


def test_zero1_uses_the_first_free_divisible_dimension_and_leaves_the_rest():
    mesh = make_mesh("4x2", "explicit")
    specs = {"model_first": P("model", None), "data_sharded": P("data"), "odd": P(), "s": P()}
    shapes = {"model_first": (4, 12), "data_sharded": (8,), "odd": (6, 3), "s": ()}
    params = shard({k: np.ones(s, np.float32) for k, s in shapes.items()}, mesh, specs)
    tx = optadam.sharding.zero1(optadam.sgd(0.1, momentum=0.9), mesh)
    for state in (tx.init(params), jax.jit(tx.init)(params)):
        trace = state[0].trace
        assert trace["model_first"].sharding.spec == P("model", "data")
        assert trace["data_sharded"].sharding.spec == P("data")
        assert trace["odd"].sharding.is_fully_replicated
        assert trace["s"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="data_axis 'batch' is not an axis"):
        optadam.sharding.zero1(optadam.adam(0.1), mesh, data_axis="batch")


# --------------------------------------------------------------------------------------------------
# Two processes with two devices each, joined by jax.distributed over gloo.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_process_on_four_devices(tmp_path: Path):
    out = tmp_path / "result.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["JAX_PLATFORMS"] = "cpu"
    worker = Path(_multiprocess_worker.__file__)
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), str(i), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    try:
        logs = [p.communicate(timeout=deadline - time.monotonic())[0].decode() for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(logs)[-4000:]

    multi = dict(np.load(out))
    single = _multiprocess_worker.train(jax.devices()[:4])
    assert sorted(multi) == sorted(single)
    assert multi["adam_state_follows_params"] == 1 and multi["zero1_state_split_over_data"] == 1
    for k in single:  # the README says bitwise: the same program, the same reductions
        np.testing.assert_array_equal(multi[k], single[k], err_msg=k)


def test_readme_scaling_out_steps_run_as_written():
    """Steps 2 and 3 of README's "Scaling out", with the arrays they assume."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Scaling out", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict[str, Any] = {
        "jax": jax, "optadam": optadam, "tx": optadam.adam(0.1),
        "w": np.ones((8, 16), np.float32), "b": np.ones(16, np.float32),
        "batch": np.ones((8, 8), np.float32),
    }  # fmt: skip
    exec(blocks[0], namespace)
    params, state = namespace["params"], namespace["state"]
    assert_state_follows_params(state, params, namespace["mesh"])
    exec(blocks[1] + "\nstate = jax.jit(tx.init)(params)", namespace)
    assert namespace["state"][0].mu["w"].sharding.spec == P("data", "model")
