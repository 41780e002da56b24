"""Per-device Adam state of an 8-layer MLP (268M float32 params), with and without ZeRO-1.

Run: ``python tools/state_bytes.py`` (forces 8 host CPU devices). Nothing is allocated: the params
are ``jax.ShapeDtypeStruct``s and the state is ``optadam.sharding.abstract_state``. The numbers
are recorded in BUILD_NOTES.md.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optadam
import optadam.sharding

LAYER = {  # Megatron-style: w_in split by columns, w_out by rows over "model"
    "w_in": ((2048, 8192), P(None, "model")),
    "b": ((8192,), P("model")),
    "w_out": ((8192, 2048), P("model", None)),
    "ln": ((2048,), P()),
}

for axis_type in (AxisType.Explicit, AxisType.Auto):
    for shape in ((8, 1), (4, 2)):
        mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(axis_type,) * 2)
        params = [
            {
                name: jax.ShapeDtypeStruct(s, "float32", sharding=NamedSharding(mesh, spec))
                for name, (s, spec) in LAYER.items()
            }
            for _ in range(8)
        ]
        for label, tx in [
            ("adam", optadam.adam(1e-3)),
            ("zero1(adam)", optadam.sharding.zero1(optadam.adam(1e-3), mesh)),
        ]:
            held = optadam.sharding.per_device_state_bytes(
                optadam.sharding.abstract_state(tx, params)
            )
            print(
                f"{axis_type.name:8} mesh {shape[0]}x{shape[1]}  {label:12} "
                f"{max(held.values()) / 2**20:8.1f} MiB per device"
            )
