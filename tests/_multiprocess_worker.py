"""One training run on a (data=2, model=2) mesh, in one process or as one of two processes.

``tests/test_sharding.py`` starts this file twice (``python _multiprocess_worker.py PROCESS_ID
PORT OUT``, each process with 2 host CPU devices) so that the 4-device mesh spans two processes
joined by ``jax.distributed`` with gloo collectives; process 0 writes the result to OUT (an .npz).
The test calls :func:`train` in its own process on 4 of its 8 devices and compares. Importing this
module does nothing; JAX is imported by the caller.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

STEPS = 4
SHAPES = {"w1": (8, 16), "b1": (16,), "w2": (16, 4)}
SPECS = {"w1": (None, "model"), "b1": ("model",), "w2": ("model", None)}


def problem() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s).astype(np.float32) / 4 for k, s in SHAPES.items()}
    x = rng.normal(size=(STEPS, 32, 8)).astype(np.float32)
    y = rng.normal(size=(STEPS, 32, 4)).astype(np.float32)
    return params, x, y


def train(devices: Any) -> dict[str, np.ndarray]:
    """Adam and ZeRO-1 Adam, state made inside jit, STEPS data-parallel steps; gathered results.

    Returns the final params of both runs, and 1.0/0.0 flags: every state leaf of the plain run
    on its param's sharding, and the ZeRO-1 moments split over ``data``.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import optadam
    import optadam.sharding

    mesh = jax.make_mesh(
        (2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices
    )

    def put(value: np.ndarray, spec: Any) -> jax.Array:
        sharding = NamedSharding(mesh, P(*spec))
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    params0, xs, ys = problem()
    x, y = put(xs, (None, "data")), put(ys, (None, "data"))

    def loss(params: Any, x: Any, y: Any) -> Any:
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    out: dict[str, np.ndarray] = {}
    for name, tx in [
        ("adam", optadam.adam(1e-2)),
        ("zero1", optadam.sharding.zero1(optadam.adam(1e-2), mesh)),
    ]:
        params = {k: put(v, SPECS[k]) for k, v in params0.items()}
        state = jax.jit(tx.init)(params)
        if name == "adam":  # made inside and outside jit, each moment on its param's sharding
            same = all(
                leaf.sharding.is_equivalent_to(params[k].sharding, leaf.ndim)
                for s in (state, tx.init(params))
                for k in params
                for leaf in (s[0].mu[k], s[0].nu[k])
            ) and all(
                s[0].count.sharding == NamedSharding(mesh, P()) for s in (state, tx.init(params))
            )
            out["adam_state_follows_params"] = np.float32(same)
        else:
            split = all("data" in str(m.sharding.spec) for m in state[0].mu.values())
            out["zero1_state_split_over_data"] = np.float32(split)

        @jax.jit
        def step(params: Any, state: Any, x: Any, y: Any, tx: Any = tx) -> Any:
            updates, state = tx.update(jax.grad(loss)(params, x, y), state, params)
            return optax.apply_updates(params, updates), state

        for i in range(STEPS):
            params, state = step(params, state, x[i], y[i])
        for k, v in params.items():
            out[f"{name}_{k}"] = np.asarray(multihost_utils.process_allgather(v, tiled=True))
    return out


def main(process_id: int, port: int, out_path: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
    result = train(jax.devices())
    if process_id == 0:
        np.savez(out_path, **result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
