"""Optimizer state on many devices: where it lives, what it costs, and ZeRO-1.

Every optadam optimizer's ``init`` puts each param-shaped state leaf (``mu``, ``nu``, ``trace``,
...) on exactly its parameter's sharding and replicates the scalars (step counts), called eagerly or
inside ``jax.jit``, with Auto or Explicit mesh axes -- no ``out_shardings`` needed (see
``optadam._leafwise.full_like`` for how). ``update`` keeps those shardings. This module adds:

* :func:`abstract_state` / :func:`state_shardings`: the state's shapes, dtypes and shardings without
  allocating it -- for ``jax.jit(..., out_shardings=...)``, checkpoint restore, huge models.
* :func:`zero1`: ZeRO stage 1 for any transformation: the state is additionally partitioned over
  the data-parallel mesh axis, so per-device optimizer memory falls with the number of replicas.
* :func:`per_device_state_bytes`: how many bytes of a (possibly abstract) state each device holds.

Example (on any number of devices that divides 8):
  >>> import jax, jax.numpy as jnp, optadam, optadam.sharding
  >>> from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
  >>> n = jax.device_count()
  >>> mesh = jax.make_mesh((n, 1), ("data", "model"), (AxisType.Auto,) * 2)
  >>> params = {"w": jax.device_put(jnp.ones((8, 6)), NamedSharding(mesh, P(None, "model")))}
  >>> state = jax.jit(optadam.adam(1e-3).init)(params)
  >>> state[0].mu["w"].sharding.is_equivalent_to(params["w"].sharding, 2)
  True
  >>> tx = optadam.sharding.zero1(optadam.adam(1e-3), mesh)
  >>> held = optadam.sharding.per_device_state_bytes(jax.jit(tx.init)(params))
  >>> set(held.values()) == {2 * 8 * 6 * 4 // n + 4}  # mu and nu split n ways, count replicated
  True
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from optadam._leafwise import is_none

__all__ = ["abstract_state", "per_device_state_bytes", "state_shardings", "zero1"]


def abstract_state(tx: optax.GradientTransformation, params: Any) -> Any:
    """``tx.init(params)`` as ``jax.ShapeDtypeStruct`` leaves with shardings; nothing allocated.

    ``params`` may be arrays or ``jax.ShapeDtypeStruct`` leaves carrying shardings (e.g. from a
    checkpoint's metadata). ``init`` is traced and compiled, never run, so the shardings are the
    ones a real ``jax.jit(tx.init)(params)`` returns. Use it to restore a checkpoint straight into
    its sharded layout, or as ``out_shardings``.
    """
    shapes, shardings = _trace_init(tx, params)
    return jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        shapes,
        shardings,
    )


def state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
    """The sharding of every leaf of ``tx.init(params)``, found without allocating the state."""
    return _trace_init(tx, params)[1]


def _trace_init(tx: optax.GradientTransformation, params: Any) -> tuple[Any, Any]:
    lowered = jax.jit(tx.init).lower(params)
    return lowered.out_info, lowered.compile().output_shardings


def per_device_state_bytes(state: Any) -> dict[Any, int]:
    """Bytes of ``state`` held on each device (every device of every process), summed over leaves.

    Leaves may be ``jax.Array`` or ``jax.ShapeDtypeStruct`` with a sharding (see
    :func:`abstract_state`); both are measured from the sharding, without touching the data.
    Replicated leaves count in full on every device.
    """
    held: dict[Any, int] = defaultdict(int)
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            raise ValueError(f"state leaf {leaf!r} has no sharding; pass arrays or abstract_state")
        itemsize = leaf.dtype.itemsize
        for device, index in sharding.devices_indices_map(leaf.shape).items():
            sizes = (len(range(*s.indices(n))) for s, n in zip(index, leaf.shape, strict=True))
            held[device] += math.prod(sizes) * itemsize
    return dict(held)


def zero1(
    tx: optax.GradientTransformation, mesh: Mesh, data_axis: str = "data"
) -> optax.GradientTransformationExtraArgs:
    """ZeRO stage 1: ``tx`` with its state partitioned over the data-parallel mesh axis.

    Params stay as they are (replicated, or sharded over other axes such as ``"model"``). ``init``
    splits every array leaf of the state over ``data_axis`` along its first dimension that no axis
    (of size > 1) splits yet and that the axis size divides -- a ``(1024, 512)`` moment whose param
    is ``P(None, "model")`` is stored as ``P("data", "model")``. Leaves with no such dimension, or
    already split over ``data_axis``, keep their sharding; scalars are replicated. Each device
    then holds and updates 1/|data| of the moments; ``update`` returns the state in the layout it
    came in and the updates sharded like the params (like the gradients when no params are
    passed) -- XLA inserts the gather. The numbers are ``tx``'s.

    The params' sharding is visible to this rule eagerly and, under ``jit``, with Explicit mesh
    axes (the default of ``jax.make_mesh``). Under ``jit`` with Auto axes a tracer carries no
    sharding: the data axis then goes on the first dimension it divides, other dimensions are left
    to XLA's propagation (which may drop a model axis that was on that dimension), and ``update``
    applies the same rule -- so with Auto axes run ``init`` under ``jit`` too.

    Args:
      tx: any optax transformation (an optadam optimizer, an ``optax.chain``, ...).
      mesh: the device mesh the params live on; it must have ``data_axis``.
      data_axis: the name of the data-parallel mesh axis.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``tx``'s state tree and values.
    """
    if data_axis not in mesh.axis_names:
        raise ValueError(f"data_axis {data_axis!r} is not an axis of the mesh {mesh.axis_names}")
    axis_type = dict(zip(mesh.axis_names, mesh.axis_types, strict=True))[data_axis]
    explicit = axis_type == AxisType.Explicit
    inner = optax.with_extra_args_support(tx)

    def constrain(x: Any, spec: PartitionSpec) -> Any:
        if explicit:
            return jax.sharding.reshard(x, NamedSharding(mesh, spec))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def known_spec(x: Any) -> PartitionSpec | None:
        """``x``'s PartitionSpec if it is known here, None if it is not (Auto axes, traced)."""
        if isinstance(x, jax.core.Tracer):
            return jax.typeof(x).sharding.spec if explicit else None
        sharding = getattr(x, "sharding", None)
        return sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()

    def partition(x: Any) -> Any:
        """A state leaf placed by the ZeRO-1 rule."""
        if not hasattr(x, "shape"):
            return x
        spec = _zero1_spec(x.shape, known_spec(x), data_axis, mesh.shape)
        return x if spec is None else constrain(x, spec)

    def keep(new: Any, old: Any) -> Any:
        """A new state leaf placed as the old one was (traced with Auto axes: by the rule)."""
        if not hasattr(new, "shape"):
            return new
        spec = known_spec(old)
        return partition(new) if spec is None else constrain(new, spec)

    def gather(u: Any, ref: Any) -> Any:
        """An update placed like its param or gradient ``ref``: ZeRO-1's all-gather."""
        if not hasattr(u, "shape"):
            return u
        spec = known_spec(ref)
        if spec is None:  # traced with Auto axes: undo the split the rule made
            split = _zero1_spec(u.shape, None, data_axis, mesh.shape)
            if split is None:
                return u
            spec = PartitionSpec(*(None if e == data_axis else e for e in split))
        return constrain(u, spec)

    def init_fn(params: optax.Params) -> Any:
        return jax.tree.map(partition, inner.init(params))

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra: Any
    ) -> tuple[optax.Updates, Any]:
        new_updates, new_state = inner.update(updates, state, params, **extra)
        like = updates if params is None else params
        new_updates = jax.tree.map(gather, new_updates, like, is_leaf=is_none)
        return new_updates, jax.tree.map(keep, new_state, state, is_leaf=is_none)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _zero1_spec(
    shape: tuple[int, ...], known: PartitionSpec | None, data_axis: str, axis_sizes: Any
) -> PartitionSpec | None:
    """Where ZeRO-1 puts a leaf of ``shape`` sharded as ``known`` (None: not known while tracing),
    or None to leave the leaf as it is. A dimension is free if no axis of size > 1 splits it."""
    if not shape:
        return PartitionSpec()
    if known is None:
        entries: list[Any] = [PartitionSpec.UNCONSTRAINED] * len(shape)
    else:
        entries = [*known, *[None] * (len(shape) - len(known))]

    def axes(entry: Any) -> tuple[str, ...]:
        if entry in (None, PartitionSpec.UNCONSTRAINED):
            return ()
        return entry if isinstance(entry, tuple) else (entry,)

    if any(data_axis in axes(e) for e in entries):
        return None
    size = axis_sizes[data_axis]
    for i, (n, entry) in enumerate(zip(shape, entries, strict=True)):
        free = math.prod(axis_sizes[a] for a in axes(entry)) == 1
        if free and n > 0 and n % size == 0:
            entries[i] = data_axis  # in place of nothing, or of axes of size 1
            return PartitionSpec(*entries)
    return None
