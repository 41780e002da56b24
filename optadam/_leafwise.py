"""Lifting per-leaf optimizer math over pytrees: the one place every update goes through.

Each optimizer writes its per-leaf math as two plain functions of arrays, the paper's equations in
order: ``moments(g, *old) -> new`` (the moving averages) and ``direction(g, *new) -> u`` (the step
they give), and hands both to :func:`map_leaves`, which

* checks that the gradients have the state's tree structure and leaf shapes, and names the first
  mismatching path if not (instead of a deep JAX traceback);
* lifts every input to at least float32 and rounds every output once, to its storage dtype (the
  update to the gradient's dtype, each moment to its own) -- see :mod:`optadam._dtypes` -- and
  computes the direction from the moments *as stored* (see :func:`map_leaves` for why); moments
  stored as 8-bit codes (:class:`optadam._quantize.QuantizedArray`) are dequantized on the way in
  and requantized on the way out, so ``step`` only ever sees float arrays and the whole update
  stays one jitted computation; given a ``rounding_seed``, bfloat16 moments are rounded
  stochastically (8-bit second moments always are, and need it);
* lets ``None`` gradient leaves through (no update, state kept as it was) and, since it only visits
  leaves, leaves ``optax.MaskedNode`` and empty subtrees alone.

Performance work that concerns every optimizer (grouping leaves, fusing passes) belongs here, so the
optimizer modules stay a transcription of their papers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.interpreters.partial_eval import DynamicJaxprTracer
from jax.sharding import NamedSharding, PartitionSpec

from optadam import _dtypes, _native, _quantize
from optadam._quantize import QuantizedArray


def is_none(x: Any) -> bool:
    """``is_leaf`` for tree functions that must see None leaves (no gradient, no state)."""
    return x is None


def _is_state_leaf(x: Any) -> bool:
    """A state tree's leaves, matched one to one with the gradients' leaves."""
    return x is None or isinstance(x, QuantizedArray)


def zeros_like(params: optax.Params, dtype_of: Callable[[Any], Any]) -> optax.Params:
    """Zeros shaped and sharded like each parameter, in ``dtype_of(param.dtype)``."""
    return full_like(params, 0, dtype_of)


def full_like(params: optax.Params, value: Any, dtype_of: Callable[[Any], Any]) -> optax.Params:
    """``value`` broadcast to each parameter's shape and sharding, in ``dtype_of(param.dtype)``.

    Eagerly, and under ``jit`` over Explicit mesh axes (where the sharding is part of the traced
    type), ``jnp.full_like`` takes the parameter's sharding. Under ``jit`` over Auto axes a tracer
    carries no sharding and a constant gives XLA nothing to propagate from, so the state would
    come out replicated or on one device. ``where(False, param, value)`` has the parameter as an
    operand: XLA's sharding propagation gives the result the parameter's sharding, then the
    simplifier folds the select to the broadcast constant -- the values are exactly ``value``
    (whatever the parameter holds, inf and NaN included) and the parameter is never read. See
    BUILD_NOTES.md ("Sharding") for the alternatives tried.
    """

    def like(p: Any) -> Any:
        dtype = dtype_of(jnp.asarray(p).dtype)
        leaf = jnp.full_like(p, value, dtype=dtype)
        if isinstance(p, jax.core.Tracer):
            leaf = jnp.where(jnp.zeros(jnp.shape(p), bool), _cast(p, dtype), leaf)
        return leaf

    return jax.tree.map(like, params)


def _cast(p: Any, dtype: Any) -> Any:
    """``p`` in ``dtype``; complex to real keeps the real part (only a sharding carrier here)."""
    if jnp.iscomplexobj(p) and not jnp.issubdtype(dtype, jnp.complexfloating):
        p = p.real
    return p.astype(dtype)


def zero_count(params: optax.Params) -> jax.Array:
    """A zero int32 step counter, replicated like :func:`replicated_scalar`."""
    return replicated_scalar(params, 0, jnp.int32)


def replicated_scalar(params: optax.Params, value: Any, dtype: Any) -> jax.Array:
    """A scalar state entry, replicated over the mesh of the params' first sharded leaf.

    Inside ``jit`` a scalar output is replicated over the computation's devices anyway; outside it
    ``jnp.full`` would put the scalar on one default device, away from a sharded state.
    """
    scalar = jnp.full([], value, dtype)
    for p in jax.tree.leaves(params):
        if isinstance(p, jax.core.Tracer):
            break
        sharding = getattr(p, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return jax.device_put(scalar, NamedSharding(sharding.mesh, PartitionSpec()))
    return scalar


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping to a negative step."""
    return jnp.where(count < jnp.iinfo(count.dtype).max, count + 1, count)


def _shape(x: Any) -> Any:
    return None if x is None else jnp.shape(x)


def _mismatch(grads: Any, state: Any) -> ValueError:
    """An error naming the first leaf path where the gradients and the state disagree."""
    g_paths, _ = jax.tree_util.tree_flatten_with_path(grads, is_leaf=is_none)
    s_paths, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_state_leaf)
    for (g_path, g), (s_path, s) in zip(g_paths, s_paths, strict=False):
        g_key, s_key = jax.tree_util.keystr(g_path), jax.tree_util.keystr(s_path)
        if g_key != s_key:
            return ValueError(
                "the gradients' tree structure differs from the optimizer state's: first "
                f"difference at gradient leaf {g_key} (shape {_shape(g)}) vs state leaf {s_key} "
                f"(shape {_shape(s)})"
            )
        if g is not None and s is None:
            return ValueError(
                f"the gradient at {g_key or 'the root'} has shape {jnp.shape(g)} but the optimizer "
                "state holds None there (the params had None at this leaf when init was called)"
            )
        if g is not None and jnp.shape(g) != jnp.shape(s):
            return ValueError(
                f"the gradient at {g_key or 'the root'} has shape {jnp.shape(g)} but the optimizer "
                f"state there has shape {jnp.shape(s)} (was the state made from other params?)"
            )
    longer, side = (g_paths, "gradients") if len(g_paths) > len(s_paths) else (s_paths, "state")
    extra = jax.tree_util.keystr(longer[min(len(g_paths), len(s_paths))][0])
    return ValueError(
        "the gradients' tree structure differs from the optimizer state's: the "
        f"{side} have an extra leaf at {extra} ({len(g_paths)} gradient leaves, "
        f"{len(s_paths)} state leaves)"
    )


def _flatten_like(treedef: Any, grads: Any, state: Any) -> list[Any]:
    leaves, state_def = jax.tree.flatten(state, is_leaf=_is_state_leaf)
    if state_def != treedef:
        raise _mismatch(grads, state)
    return leaves


def _lift(x: Any) -> Any:
    """A gradient or stored moment as the float array the math runs on (>= float32)."""
    if isinstance(x, QuantizedArray):
        return _quantize.dequantize(x)
    return x.astype(_dtypes.compute_dtype(x.dtype))


def _store(value: Any, like: Any, seed: jax.Array | None) -> Any:
    """A result rounded once, to the storage of ``like`` (the leaf it replaces)."""
    if isinstance(like, QuantizedArray):
        return _quantize.quantize(value, like.moment, like.block_size, seed)
    if seed is not None and like.dtype == jnp.bfloat16:
        return _quantize.round_stochastic_bf16(value, seed)
    return value.astype(like.dtype)


def map_leaves(
    moments: Callable[..., Sequence[jax.Array]],
    direction: Callable[..., jax.Array],
    grads: optax.Updates,
    *states: optax.Params,
    rounding_seed: jax.Array | None = None,
    kernel: Kernel | None = None,
    eight_bit_only: bool = False,
) -> tuple[Any, ...]:
    """Per leaf: ``new = moments(g, *old)``, each rounded once to its storage, then
    ``u = direction(g, *new)``; return ``(updates, *new_states)``.

    ``direction`` sees each new moment as it is stored -- a bfloat16 moment after its rounding --
    as torch.optim does with low-precision state. That is also what lets XLA update a bfloat16
    moment in place: were the direction to use the unrounded float32 moment, the old moment would
    be read by two loops (the store's and the update's) and XLA copies it first, which made Adam
    with bfloat16 moments 2.3x slower than with float32 ones instead of on par (BUILD_NOTES.md,
    "Lean state"). Float32 and float64 moments are stored exactly, so for them nothing changes.
    8-bit codes are the exception: the direction uses the float32 moment before quantization (the
    paper's order), keeping the codes' rounding noise out of the step.

    ``rounding_seed`` (uint32, from ``optadam._quantize.rounding_seed``) seeds stochastic rounding,
    offset by each stored array's position (``optadam._quantize.array_seed``): moments stored in
    bfloat16 are then rounded stochastically, and 8-bit second moments need it.

    ``kernel`` names the optimizer's native kernel and this step's scalars: the leaves it applies
    to (see :func:`native_leaves`) have their moments advanced and stored by it instead, with the
    same results; the direction is this function's for every leaf, so XLA fuses it into whatever
    consumes the update (``optax.apply_updates``) and the update is never stored. The exception
    is Adam's 8-bit state, whose kernel returns the update too (:func:`_native_8bit_updates`).
    ``eight_bit_only``: only that 8-bit kernel runs (for ``grads`` that XLA would otherwise
    fuse, computed element-wise in the same chain: the other kernels need them written out).
    """
    g_leaves, treedef = jax.tree.flatten(grads, is_leaf=is_none)
    s_leaves = [_flatten_like(treedef, grads, s) for s in states]
    native = (
        {} if eight_bit_only else native_leaves(kernel, moments, g_leaves, s_leaves, rounding_seed)
    )
    native_8bit = _native_8bit_updates(
        kernel, moments, direction, g_leaves, s_leaves, rounding_seed
    )
    columns: list[list[Any]] = [[] for _ in range(1 + len(states))]
    position = 0  # elements of the moments so far (stochastic rounding hashes each one's position)
    for i, (g, *s) in enumerate(zip(g_leaves, *s_leaves, strict=True)):
        outs: Sequence[Any]
        if g is None:  # no gradient for this leaf: no update, state kept as it was
            outs = (None, *s)
        else:
            for state, x in zip(states, s, strict=True):
                if x is None or jnp.shape(x) != jnp.shape(g):
                    raise _mismatch(grads, state)
            g = jnp.asarray(g)
            if i in native_8bit:  # the kernel took the whole update, 8-bit moments stored
                u, *stored = native_8bit[i]
                outs = [u.astype(g.dtype), *stored]
            else:
                outs = _leaf_update(
                    moments, direction, g, s, native.get(i), rounding_seed, position
                )
            position += len(s) * g.size
        for column, out in zip(columns, outs, strict=True):
            column.append(out)
    return tuple(jax.tree.unflatten(treedef, column) for column in columns)


def _leaf_update(
    moments: Callable[..., Sequence[jax.Array]],
    direction: Callable[..., jax.Array],
    g: jax.Array,
    s: list[Any],
    stored: Sequence[Any] | None,
    rounding_seed: jax.Array | None,
    position: int,
) -> list[Any]:
    """One leaf of :func:`map_leaves`: ``[u, *new states as stored]``, the moments advanced here
    in jnp or, where ``stored`` holds them, by a native kernel; ``position`` is the leaf's first
    moment element among all of them (stochastic rounding's)."""
    g_wide = _lift(g)
    new: Sequence[Any]
    if stored is not None:  # the kernel advanced and stored the moments
        stored, new = list(stored), [None] * len(s)
    else:
        new = moments(g_wide, *(_lift(x) for x in s))
        seeds = [
            None
            if rounding_seed is None
            else _quantize.array_seed(rounding_seed, position + j * g.size)
            for j in range(len(s))
        ]
        stored = [_store(*args) for args in zip(new, s, seeds, strict=True)]
    seen = [
        value if isinstance(like, QuantizedArray) else _lift(kept)
        for value, kept, like in zip(new, stored, s, strict=True)
    ]
    return [direction(g_wide, *seen).astype(g.dtype), *stored]


def stored_step(
    moments: Callable[..., Sequence[jax.Array]],
    direction: Callable[..., jax.Array],
    g: jax.Array,
    p: jax.Array,
    s: list[Any],
    minus_lr: Any,
    then: tuple[Callable[..., Sequence[jax.Array]], Callable[..., jax.Array], list[Any]]
    | None = None,
) -> list[Any]:
    """One leaf of ``update`` + ``apply_updates`` in jnp, ``[θ_t, *new states as stored]``:
    :func:`map_leaves`' update (moments rounded to nearest), then ``scale_by_learning_rate``'s
    ``(−η)·u`` and ``θ + that``, each rounded as those round it -- identities in float32 and
    float64. The one passes' derivative rule, low-precision storage included.

    ``then``: ``(moments, direction, states)`` of one more :func:`map_leaves` transformation
    over the scaled update (rmsprop's momentum trace); its new states follow the others."""
    u, *stored = _leaf_update(moments, direction, g, s, None, None, 0)
    step = (u.astype(_dtypes.compute_dtype(u.dtype)) * minus_lr).astype(u.dtype)
    if then is not None:
        step, *more = _leaf_update(then[0], then[1], step, then[2], None, None, 0)
        stored += more
    return [(p + step).astype(p.dtype), *stored]


def low_precision(params: optax.Params) -> bool:
    """Some params narrower than float32 (bfloat16, float16): a one pass then takes no clip or
    decay (``update`` + ``apply_updates`` would round c, λ and the products to their dtype)."""
    return any(jnp.dtype(jnp.result_type(p)).itemsize < 4 for p in jax.tree.leaves(params))


def abs_sq(x: jax.Array) -> jax.Array:
    """|x|², real even for complex x (so second moments of complex parameters are real arrays)."""
    return (x.conj() * x).real if jnp.iscomplexobj(x) else x * x


# --------------------------------------------------------------------------------------------------
# Native kernels: the one place that decides whether leaves go through C++ (optadam/_native).


class Kernel(NamedTuple):
    """An optimizer's native kernel and this step's runtime scalars, for :func:`map_leaves`."""

    name: str  # the family, as in optadam/_native/<name>.cc: "adam"
    scalars: tuple[Any, ...]  # numbers or 0-d arrays, in the order of the kernel's scalar struct
    options: tuple[tuple[str, bool], ...] = ()  # the kernel's static switches, e.g. nesterov


_NATIVE_DTYPES = {jnp.dtype(jnp.float32): "f32", jnp.dtype(jnp.float64): "f64"}
# Kernels with an ``optadam_<name>_lowp`` variant (tx.update's), and those also with an
# ``optadam_<name>_step_lowp``: gradients (and params) in float32, bfloat16 or float16, moments in
# float32 or bfloat16, math in float32 (optadam/_native/lowp.h).
_LOWP_KERNELS = ("adam", "momentum", "rms", "adagrad", "amsgrad", "radam")
_LOWP_STEP_KERNELS = (*_LOWP_KERNELS, "rms_momentum")
_LOWP_GRADIENTS = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_LOWP_MOMENTS = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def native_leaves(
    kernel: Kernel | None,
    moments: Callable[..., Sequence[jax.Array]],
    g_leaves: list[Any],
    s_leaves: list[list[Any]],
    rounding_seed: jax.Array | None = None,
) -> dict[int, Sequence[Any]]:
    """``{leaf index: new states as stored}`` for the leaves whose moments a native kernel
    advances; the other leaves (and all of them when the kernels are off or do not apply) stay on
    the XLA path. The kernel computes ``moments`` and their storage rounding only: the direction
    stays jnp (:func:`map_leaves`), which XLA fuses into the loop that consumes the update.

    A kernel call takes the leaves of one dtype (at most ``_native.LEAVES_PER_CALL`` each). It
    applies on CPU to non-empty float32/float64 leaves whose state is plain arrays of the same
    dtype, on one device, eagerly or under ``jit`` (whose tracers stand for such arrays), when no
    hyperparameter is wider than the leaves (the XLA path would then compute in the wider dtype).
    Directly under ``jax.grad``, ``jax.jvp`` or ``jax.vmap`` it does not: the XLA path is the
    definition there. A kernel call traced first and differentiated later (``grad`` of a ``scan``
    or of a ``jit``) takes the XLA math as its derivative rule (:func:`_kernel_call`); one vmapped
    later runs once per element. Kernels in ``_LOWP_KERNELS`` also take bfloat16/float16
    gradients and bfloat16 moments (any mix with float32, one call per mix): they lift, compute
    in float32 and round as :func:`map_leaves` does, stochastically with its bits given
    ``rounding_seed``.
    """
    if kernel is None or not _native.enabled() or jax.default_backend() != "cpu":
        return {}
    every = (*g_leaves, *(x for leaves in s_leaves for x in leaves), *kernel.scalars)
    if not all(_kernel_traceable(x) for x in every):
        return {}
    groups = _kernel_groups(kernel, g_leaves, s_leaves)
    if groups is None:
        return {}
    done: dict[int, Sequence[Any]] = {}
    for key, indices in groups.items():
        leaves = [[jnp.asarray(g_leaves[i]), *(s[i] for s in s_leaves)] for i in indices]
        name, call_kernel, scalars = _group_call(
            kernel,
            key,
            "",
            indices,
            _positions(g_leaves, (len(s_leaves),)),
            None if rounding_seed is None else [rounding_seed] * len(s_leaves),
        )

        def xla(g: Any, *s: Any) -> list[Any]:  # map_leaves' moments (nearest rounding)
            new = moments(_lift(g), *(_lift(x) for x in s))
            return [value.astype(x.dtype) for value, x in zip(new, s, strict=True)]

        in_place = {k: k - 1 for k in range(1, len(leaves[0]))}  # each state into its new value
        outs = _kernel_call(name, call_kernel, xla, scalars, leaves, in_place, len(in_place))
        done.update(zip(indices, outs, strict=True))
    return done


def _kernel_groups(
    kernel: Kernel, g_leaves: list[Any], s_leaves: list[list[Any]], *, step: bool = False
) -> dict[Any, list[int]] | None:
    """The leaves a kernel call takes, by call: a dtype (one call per dtype) or, for a
    low-precision call, the tuple of the leaf's operand dtypes; None where ``step`` (params first
    among the states) and a leaf fits no call."""
    groups: dict[Any, list[int]] = {}
    for i, (g, *s) in enumerate(zip(g_leaves, *s_leaves, strict=True)):
        if _kernel_fits(g, s, kernel.scalars):
            groups.setdefault(jnp.dtype(g.dtype), []).append(i)
        elif _lowp_fits(kernel, g, s, step):
            key = tuple(jnp.dtype(jnp.result_type(x)) for x in (g, *s))
            groups.setdefault(key, []).append(i)
        elif step:
            return None
    return groups


class SeedGroups(NamedTuple):
    """Stochastic rounding's seeds for a chain's states in one pass (rmsprop with a momentum
    trace): ``seeds[j]`` (or None: rounded to nearest) seeds the next ``sizes[j]`` states, the
    states of one transformation, whose :func:`map_leaves` counts positions among its own."""

    seeds: tuple[jax.Array | None, ...]
    sizes: tuple[int, ...]


def _state_seeds(
    rounding_seed: jax.Array | SeedGroups | None, states: int
) -> tuple[list[Any] | None, tuple[int, ...]]:
    """Each state's seed (None where no state is rounded stochastically; a None entry, that
    state to nearest) and the sizes of the groups whose positions count together."""
    if not isinstance(rounding_seed, SeedGroups):
        return (None if rounding_seed is None else [rounding_seed] * states), (states,)
    if sum(rounding_seed.sizes) != states:
        raise ValueError(f"seeds for {sum(rounding_seed.sizes)} states, given {states}")
    seeds = [seed for seed, size in zip(*rounding_seed, strict=True) for _ in range(size)]
    return (None if all(x is None for x in seeds) else seeds), rounding_seed.sizes


def _positions(g_leaves: list[Any], sizes: Sequence[int]) -> list[list[int]]:
    """Each leaf's moments' first elements among the moments' elements, as map_leaves counts them
    for stochastic rounding (leaf by leaf, moment by moment; None gradients count none): per
    leaf, per state, its position among its group's (``sizes``: :class:`SeedGroups`)."""
    positions: list[list[int]] = [[] for _ in g_leaves]
    for moments in sizes:
        position = 0
        for i, g in enumerate(g_leaves):
            size = 0 if g is None else int(jnp.size(g))
            positions[i] += [position + j * size for j in range(moments)]
            position += moments * size
    return positions


def _group_call(
    kernel: Kernel,
    key: Any,
    suffix: str,
    indices: list[int],
    positions: list[list[int]],
    seeds: list[Any] | None,
) -> tuple[str, Kernel, jax.Array]:
    """The target, kernel (its options) and scalars operand of one call (``suffix`` "_step");
    ``seeds``: each state's (:func:`_state_seeds`), all given, or None."""
    if not isinstance(key, tuple):
        scalars = jnp.stack([jnp.asarray(x).astype(key) for x in kernel.scalars])
        return f"optadam_{kernel.name}{suffix}_{_NATIVE_DTYPES[key]}", kernel, scalars
    scalars = jnp.stack([jnp.asarray(x).astype(jnp.float32) for x in kernel.scalars])
    if seeds is not None:  # array_seed of each leaf's moments, in float32 slots
        offsets = np.array([positions[i] for i in indices], np.uint64) % 2**32
        bases = jnp.stack([jnp.asarray(x, jnp.uint32) for x in seeds])
        bits = (bases + offsets.astype(np.uint32)).ravel()
        scalars = jnp.concatenate([scalars, jax.lax.bitcast_convert_type(bits, jnp.float32)])
    options = (*kernel.options, ("stochastic", seeds is not None))
    return f"optadam_{kernel.name}{suffix}_lowp", kernel._replace(options=options), scalars


class OnePass(optax.GradientTransformationExtraArgs):
    """An ``optax`` transformation that also says how :func:`optadam.step` can run it in one pass.

    Its ``one_pass(grads, state, params)`` returns ``(new_params, new_state)`` through a native
    kernel, or None where the kernel does not apply (then ``step`` calls ``update`` and
    ``apply_updates``). A tuple like any other transformation otherwise; ``_replace`` and other
    copies drop ``one_pass``, and so the one-pass path, never the results.

    With ``takes_clip``, ``one_pass`` also takes ``clip=`` a global-norm clip of the gradients
    (:func:`optadam.clipping.chain`) and runs it in the same pass.
    """

    one_pass: Callable[..., tuple[Any, Any] | None] | None = None
    takes_clip: bool = False


def with_one_pass(
    tx: optax.GradientTransformationExtraArgs,
    one_pass: Callable[..., tuple[Any, Any] | None],
    *,
    takes_clip: bool = False,
) -> OnePass:
    out = OnePass(tx.init, tx.update)
    out.one_pass = one_pass
    out.takes_clip = takes_clip
    return out


def native_step(
    kernel: Kernel,
    xla: Callable[..., list[jax.Array]],
    grads: optax.Updates,
    params: optax.Params,
    *states: optax.Params,
    rounding_seed: jax.Array | SeedGroups | None = None,
) -> tuple[Any, ...] | None:
    """``(new_params, *new_states)`` of a whole step through ``kernel`` (``optadam_<name>_step_*``)
    in one pass, params and states in place; None unless every leaf fits the kernel (the same
    conditions as :func:`native_leaves`, the params included) or is None in the gradients, the
    params and the states alike (as ``eqx.filter`` leaves a model's non-arrays) or zero-size (they
    pass through), so the caller takes the XLA path.

    ``xla(g, p, *s)`` is the same step in jnp, ``[new p, *new s]``: the derivative rule.
    Low-precision leaves (see :func:`native_leaves`) need the params in the gradients' dtype;
    ``rounding_seed`` rounds bfloat16 moments stochastically, as ``update`` would (a
    :class:`SeedGroups` for a chain's states; one that leaves some states to nearest rounding
    keeps low-precision leaves on the XLA path). 8-bit state takes :func:`native_step_8bit`.
    """
    if not _native.enabled() or jax.default_backend() != "cpu":
        return None
    if any(_quantize.any_quantized(s) for s in states):  # state_bits=8: block by block
        return native_step_8bit(kernel, xla, grads, params, *states, rounding_seed=rounding_seed)
    g_leaves, treedef = jax.tree.flatten(grads, is_leaf=is_none)
    try:
        s_leaves = [_flatten_like(treedef, grads, s) for s in (params, *states)]
    except ValueError:
        return None
    every = (*g_leaves, *(x for leaves in s_leaves for x in leaves), *kernel.scalars)
    if not g_leaves or not all(_kernel_traceable(x) for x in every):
        return None
    done: dict[int, Sequence[Any]] = {}
    rest = []
    for i, (g, *s) in enumerate(zip(g_leaves, *s_leaves, strict=True)):
        if g is None and all(x is None for x in s):  # no param here (Equinox's non-arrays)
            done[i] = s
        elif _empty(g, s):  # nothing to update: the XLA path returns these arrays as they are
            done[i] = [jnp.asarray(x) for x in s]
        else:
            rest.append(i)
    groups = _kernel_groups(
        kernel, [g_leaves[i] for i in rest], [[s[i] for i in rest] for s in s_leaves], step=True
    )
    seeds, sizes = _state_seeds(rounding_seed, len(states))
    mixed = seeds is not None and None in seeds  # one call rounds all its moments alike
    if not groups or (mixed and any(isinstance(key, tuple) for key in groups)):
        return None
    positions = _positions(g_leaves, sizes)
    for key, members in groups.items():
        indices = [rest[m] for m in members]
        leaves = [[jnp.asarray(g_leaves[i]), *(s[i] for s in s_leaves)] for i in indices]
        name, call_kernel, scalars = _group_call(kernel, key, "_step", indices, positions, seeds)
        in_place = {k: k - 1 for k in range(1, len(leaves[0]))}  # params and states
        outs = _kernel_call(name, call_kernel, xla, scalars, leaves, in_place, len(in_place))
        done.update(zip(indices, outs, strict=True))
    columns = zip(*(done[i] for i in range(len(g_leaves))), strict=True)
    return tuple(jax.tree.unflatten(treedef, list(column)) for column in columns)


# Each family's 8-bit kernels, ``optadam_<name>8_f32`` (tx.update) and ``optadam_<name>8_step_f32``
# (optadam.step; adam8.cc for Adam, block8.h for the others): its moments' formats
# (QuantizedArray.moment: 1 signed, 2 the second-moment format), by kernel and moment count.
_8BIT_FORMATS: dict[tuple[str, int], tuple[int, ...]] = {
    ("adam", 2): (1, 2),
    ("radam", 2): (1, 2),
    ("amsgrad", 3): (1, 2, 2),
    ("momentum", 1): (1,),
    ("rms", 1): (2,),
    ("rms", 2): (1, 2),
    ("rms_momentum", 2): (2, 1),  # optadam.step only: rmsprop(momentum=β)'s ν, then the trace
    ("rms_momentum", 3): (1, 2, 1),
}


def _native_8bit_updates(
    kernel: Kernel | None,
    moments: Callable[..., Sequence[jax.Array]],
    direction: Callable[..., jax.Array],
    g_leaves: list[Any],
    s_leaves: list[list[Any]],
    rounding_seed: jax.Array | None,
) -> dict[int, list[Any]]:
    """``{leaf index: [u, *new moments]}`` for the leaves whose moments are all 8-bit codes
    (float32 gradients, on one CPU device), through one ``optadam_<name>8_f32`` call per block
    size: per block it decodes the moments, advances them, takes the direction from the float32
    moments and encodes them -- :func:`map_leaves`' order for 8-bit state, each second-format
    moment rounded with the bits ``map_leaves`` gives it. Unlike the other update kernels it
    writes the update: the direction needs the moments before quantization, which XLA cannot
    rebuild from the codes. Empty where the kernels are off or do not apply (the XLA path)."""
    formats = None if kernel is None else _8BIT_FORMATS.get((kernel.name, len(s_leaves)))
    if kernel is None or formats is None:
        return {}
    if not _native.enabled() or jax.default_backend() != "cpu":
        return {}
    seeds = () if rounding_seed is None else (rounding_seed,)
    every = (*jax.tree.leaves((g_leaves, s_leaves)), *kernel.scalars, *seeds)
    if not all(_kernel_traceable(x) for x in every):
        return {}
    by_block: dict[int, list[int]] = {}
    for i, (g, *s) in enumerate(zip(g_leaves, *s_leaves, strict=True)):
        if g is not None and _kernel_fits_8bit(g, g, s, formats, kernel.scalars):
            by_block.setdefault(s[0].block_size, []).append(i)

    def update(g: Any, *s: Any) -> list[Any]:  # map_leaves' u and moments, floats
        new = moments(g, *s)
        return [direction(g, *new), *new]

    done: dict[int, list[Any]] = {}
    for indices in by_block.values():
        seeds_8bit = _8bit_seeds(rounding_seed, g_leaves, indices, formats)
        if seeds_8bit is None:  # a second-format moment with no seed: the XLA path
            return {}
        outs = _call_8bit(
            f"optadam_{kernel.name}8_f32",
            kernel,
            update,
            [[jnp.asarray(g_leaves[i])] for i in indices],
            [[s[i] for s in s_leaves] for i in indices],
            seeds_8bit,
            head_in_place=False,
        )
        done.update(zip(indices, outs, strict=True))
    return done


def _8bit_seeds(
    rounding_seed: jax.Array | SeedGroups | None,
    g_leaves: list[Any],
    indices: list[int],
    formats: tuple[int, ...],
) -> jax.Array | None:
    """Per listed leaf, the array_seed of each moment in the second-moment format (``formats``:
    each moment's ``QuantizedArray.moment``), shape (leaves, such moments): its seed plus the
    moment's position among its transformation's moments' elements, as :func:`map_leaves`
    counts them (:func:`_state_seeds`). None if such a moment has no seed."""
    roots = [k for k, moment in enumerate(formats) if moment == 2]
    if not roots:  # no stochastic rounding, no seed (which may be None)
        return jnp.zeros((len(indices), 0), jnp.uint32)
    seeds, sizes = _state_seeds(rounding_seed, len(formats))
    if seeds is None or any(seeds[k] is None for k in roots):
        return None
    positions = _positions(g_leaves, sizes)
    offsets = np.array([[positions[i][k] for k in roots] for i in indices], np.uint64) % 2**32
    offsets = offsets.reshape(len(indices), len(roots))
    bases = jnp.stack([jnp.asarray(seeds[k], jnp.uint32) for k in roots])
    return bases + offsets.astype(np.uint32)


def _call_8bit(
    name: str,
    kernel: Kernel,
    f: Callable[..., list[Any]],
    leads: list[list[Any]],
    moments: list[Sequence[QuantizedArray]],
    seeds: jax.Array,
    *,
    head_in_place: bool,
) -> list[list[Any]]:
    """One 8-bit kernel call (``optadam/_native/block8.h``) over leaves whose K moments are 8-bit
    codes of one block size, in one format per moment: per leaf ``[head, *new moments]``.
    Operands per leaf: ``lead`` (g, or g and θ), each moment's codes and scales, the seed of each
    second-format moment (``seeds``' row); results: the head (u, or θ updated in place of the
    lead's second operand with ``head_in_place``), then codes and scales in place.
    ``f(*lead, *moments) -> [head, *new moments]`` on float moments is the XLA math, run between
    dequantizing and quantizing (each second-format moment with its seed): the derivative rule."""
    block_size = moments[0][0].block_size
    formats = [q.moment for q in moments[0]]
    roots = [k for k, moment in enumerate(formats) if moment == 2]
    n_lead = len(leads[0])

    def xla_8bit(*operands: Any) -> list[Any]:
        lead = operands[:n_lead]
        stored = operands[n_lead : n_lead + 2 * len(formats)]
        seed_of = dict(zip(roots, operands[n_lead + 2 * len(formats) :], strict=True))
        floats = [
            _quantize.dequantize(QuantizedArray(codes, scales, moment, block_size))
            for codes, scales, moment in zip(stored[::2], stored[1::2], formats, strict=True)
        ]
        head, *new = f(*lead, *floats)
        quantized = [
            _quantize.quantize(x, moment, block_size, seed_of.get(k))
            for k, (x, moment) in enumerate(zip(new, formats, strict=True))
        ]
        return [head, *(a for q in quantized for a in (q.codes, q.scales))]

    leaves = [
        [*lead, *(a for q in qs for a in (q.codes, q.scales)), *seeds[k]]
        for k, (lead, qs) in enumerate(zip(leads, moments, strict=True))
    ]
    in_place = {n_lead + k: 1 + k for k in range(2 * len(formats))}  # codes and scales
    if head_in_place:
        in_place[1] = 0  # θ
    scalars = jnp.stack([jnp.asarray(x).astype(jnp.float32) for x in kernel.scalars])
    call = functools.partial(_native.call_blocks, block_size=block_size)
    outs = _kernel_call(
        name, kernel, xla_8bit, scalars, leaves, in_place, 1 + 2 * len(formats), call
    )
    return [
        [
            head,
            *(
                QuantizedArray(codes, scales, moment, block_size)
                for codes, scales, moment in zip(rest[::2], rest[1::2], formats, strict=True)
            ),
        ]
        for head, *rest in outs
    ]


def native_step_8bit(
    kernel: Kernel,
    xla: Callable[..., list[jax.Array]],
    grads: optax.Updates,
    params: optax.Params,
    *states: optax.Params,
    rounding_seed: jax.Array | SeedGroups | None,
) -> tuple[Any, ...] | None:
    """:func:`native_step` for 8-bit state (``state_bits=8``): ``(new_params, *new_states)``.

    The leaves whose moments are 8-bit codes go through one ``optadam_<name>8_step_f32`` call
    (``kernel``'s scalars and options; ``optadam/_native/block8.h``, Adam's ``adam8.cc``), which
    per block decodes the moments, takes the step, and encodes the new ones as
    :func:`map_leaves` does -- each second-format moment rounded with the bits
    :func:`map_leaves` gives it (``rounding_seed`` offset by the array's position,
    ``optadam._quantize.array_seed``). The small leaves, whose moments stay float32, go through
    :func:`native_step`'s kernel. None unless every leaf fits one of the two (float32 params and
    gradients, on one CPU device: the 8-bit call has no sharding rule, so a jit over sharded
    params takes the XLA path) and the family has an 8-bit kernel for its moments, so the caller
    takes that path.

    ``xla(g, p, *moments)`` is the step on float moments, as for :func:`native_step`.
    """
    formats = _8BIT_FORMATS.get((kernel.name, len(states)))
    if formats is None or not _native.enabled() or jax.default_backend() != "cpu":
        return None
    g_leaves, treedef = jax.tree.flatten(grads, is_leaf=is_none)
    try:
        p_leaves, *s_leaves = [_flatten_like(treedef, grads, x) for x in (params, *states)]
    except ValueError:
        return None
    every = (*jax.tree.leaves((g_leaves, p_leaves, s_leaves)), *kernel.scalars)
    seeds = _state_seeds(rounding_seed, len(states))[0] or []
    if not all(_kernel_traceable(x) for x in (*every, *(x for x in seeds if x is not None))):
        return None
    quantized: list[int] = []
    plain: list[int] = []
    for i, (g, p, *s) in enumerate(zip(g_leaves, p_leaves, *s_leaves, strict=True)):
        if g is None:  # no param here (native_step passes it through) or no gradient (XLA path)
            plain.append(i)
        elif any(isinstance(x, QuantizedArray) for x in s):
            if not _kernel_fits_8bit(g, p, s, formats, kernel.scalars):
                return None
            quantized.append(i)
        else:
            plain.append(i)
    block_sizes = {s_leaves[0][i].block_size for i in quantized}
    if not quantized or len(block_sizes) != 1:
        return None
    seeds_8bit = _8bit_seeds(rounding_seed, g_leaves, quantized, formats)
    if seeds_8bit is None:
        return None
    done: dict[int, Sequence[Any]] = {}
    if plain:
        pick = [[leaves[i] for i in plain] for leaves in (g_leaves, p_leaves, *s_leaves)]
        floats = native_step(kernel, xla, *pick)
        if floats is None:
            return None
        done.update(zip(plain, zip(*floats, strict=True), strict=True))
    outs = _call_8bit(
        f"optadam_{kernel.name}8_step_f32",
        kernel,
        xla,
        [[jnp.asarray(g_leaves[i]), p_leaves[i]] for i in quantized],
        [[s[i] for s in s_leaves] for i in quantized],
        seeds_8bit,
        head_in_place=True,
    )
    done.update(zip(quantized, outs, strict=True))
    columns = zip(*(done[i] for i in range(len(g_leaves))), strict=True)
    return tuple(jax.tree.unflatten(treedef, list(column)) for column in columns)


def _kernel_fits_8bit(
    g: Any, p: Any, moments: Sequence[Any], formats: tuple[int, ...], scalars: tuple[Any, ...]
) -> bool:
    """A float32 leaf whose moments are all 8-bit codes of one block size in ``formats``, on one
    CPU device and not sharded."""
    if not all(isinstance(q, QuantizedArray) for q in moments):
        return False
    if tuple(q.moment for q in moments) != formats:
        return False
    if len({q.block_size for q in moments}) != 1:
        return False
    f32 = jnp.dtype(jnp.float32)
    if any(jnp.result_type(x) != f32 for x in (g, p)) or jnp.shape(p) != jnp.shape(g):
        return False
    if any(q.shape != jnp.shape(g) for q in moments):
        return False
    if any(jnp.result_type(x, f32) != f32 for x in scalars):
        return False
    arrays = (g, p, *(a for q in moments for a in (q.codes, q.scales)))
    return all(_on_one_cpu(x) and _on_no_mesh(x) for x in arrays)


def _on_no_mesh(x: Any) -> bool:
    """Not a ``jit`` tracer of an array placed on a mesh of several devices (whose type names
    the mesh even over Auto axes, where it does not say how the array is split)."""
    if not isinstance(x, jax.core.Tracer):
        return True
    mesh = getattr(jax.typeof(x).sharding, "mesh", None)
    return mesh is None or math.prod(mesh.shape.values()) <= 1


def _empty(g: Any, s: list[Any]) -> bool:
    """A zero-size leaf whose params and states are plain arrays of its shape."""
    if g is None or jnp.size(g) != 0:
        return False
    return all(isinstance(x, jax.Array | np.ndarray) and jnp.shape(x) == jnp.shape(g) for x in s)


def _kernel_traceable(x: Any) -> bool:
    """A concrete value or a ``jit`` tracer; not a tracer of ``grad``/``jvp``/``vmap``."""
    return not isinstance(x, jax.core.Tracer) or isinstance(x, DynamicJaxprTracer)


def _kernel_fits(g: Any, s: list[Any], scalars: tuple[Any, ...]) -> bool:
    if g is None or jnp.dtype(jnp.result_type(g)) not in _NATIVE_DTYPES or jnp.size(g) == 0:
        return False
    dtype = jnp.result_type(g)
    if any(jnp.result_type(x, dtype) != dtype for x in scalars):
        return False
    for x in s:
        if isinstance(x, QuantizedArray) or x is None or jnp.result_type(x) != dtype:
            return False
        if jnp.shape(x) != jnp.shape(g):
            return False
    return _placed_alike(g, *s)


def _lowp_fits(kernel: Kernel, g: Any, s: list[Any], step: bool) -> bool:
    """A leaf for an ``optadam_<name>[_step]_lowp`` call: float32/bfloat16/float16 gradients,
    the params (``step``: the first state) in their dtype, moments float32 or bfloat16, no
    hyperparameter wider than float32, on one CPU."""
    if kernel.name not in (_LOWP_STEP_KERNELS if step else _LOWP_KERNELS):
        return False
    if g is None or jnp.size(g) == 0:
        return False
    dtype = jnp.dtype(jnp.result_type(g))
    if dtype not in _LOWP_GRADIENTS:
        return False
    if any(jnp.result_type(x, jnp.float32) != jnp.float32 for x in kernel.scalars):
        return False
    for k, x in enumerate(s):
        if isinstance(x, QuantizedArray) or x is None or jnp.shape(x) != jnp.shape(g):
            return False
        wanted = (dtype,) if step and k == 0 else _LOWP_MOMENTS
        if jnp.dtype(jnp.result_type(x)) not in wanted:
            return False
    return _placed_alike(g, *s)


def _placed_alike(*arrays: Any) -> bool:
    """One leaf's operands, each on one CPU device or a ``jit`` tracer (see :func:`_on_one_cpu`),
    and the tracers split over Explicit mesh axes all split alike (the kernel then runs under
    ``shard_map``, :func:`_explicit_specs`)."""
    if not all(_on_one_cpu(x) for x in arrays):
        return False
    return len({_explicit_spec(x) for x in arrays}) == 1


def _explicit_spec(x: Any) -> Any:
    """The ``PartitionSpec`` of a ``jit`` tracer split over Explicit mesh axes, else None."""
    if not isinstance(x, jax.core.Tracer):
        return None
    spec = getattr(jax.typeof(x).sharding, "spec", None)
    return spec if spec is not None and any(axis is not None for axis in spec) else None


def _explicit_specs(leaves: list[list[Any]]) -> tuple[Any, list[Any]] | None:
    """The mesh and each leaf's ``PartitionSpec`` where some leaf is split over Explicit axes
    (all of a leaf's operands are, alike: :func:`_placed_alike`), else None."""
    specs = [_explicit_spec(leaf[0]) for leaf in leaves]
    sharded = [leaf[0] for leaf, spec in zip(leaves, specs, strict=True) if spec is not None]
    if not sharded:
        return None
    return jax.typeof(sharded[0]).sharding.mesh, [spec or PartitionSpec() for spec in specs]


def _on_one_cpu(x: Any) -> bool:
    """An array on one CPU device, or a ``jit`` tracer.

    Under ``jit`` over Auto mesh axes the tracer does not say how it is sharded; XLA's sharding
    propagation then keeps the kernel's operands as they are, one call per shard (tested in
    tests/test_native.py: no all-gather). Over Explicit axes the tracer's type says it, and the
    kernel runs under ``shard_map`` on each device's shards (:func:`_kernel_call`).
    """
    if isinstance(x, jax.core.Tracer):
        return True
    if isinstance(x, jax.Array):
        devices = list(x.sharding.device_set)
        return len(devices) == 1 and getattr(devices[0], "platform", None) == "cpu"
    return True


def _kernel_call(
    name: str,
    kernel: Kernel,
    xla_leaf: Callable[..., list[jax.Array]],
    scalars: jax.Array,
    leaves: list[list[Any]],
    in_place: dict[int, int],
    results: int,
    call: Callable[..., list[list[jax.Array]]] | None = None,
) -> list[list[jax.Array]]:
    """The kernel over ``leaves`` ([g, *others] each), differentiable by the XLA math.

    ``xla_leaf(g, *others)`` is one leaf's results in jnp. It closes over the hyperparameters
    and step counts, which may be tracers (a meta-gradient's, a ``scan``'s): every value it
    closes over becomes an explicit operand (:func:`_closure_operands`), so the derivative rule
    sees the floats' tangents and no tracer is captured. Each leaf gives ``results`` arrays;
    ``in_place`` maps a leaf's operand to the result it is updated into. ``call`` replaces
    ``_native.call`` (the 8-bit kernel's operands are not all shaped like the leaf).
    """

    reference, consts = _closure_operands(xla_leaf, leaves)

    explicit = _explicit_specs(leaves)

    @jax.custom_jvp
    def run(consts: list[Any], scalars: jax.Array, leaves: list[list[Any]]) -> Any:
        del consts  # they are the scalars' sources, seen by the derivative rule only
        run_kernel = _native.call if call is None else call

        def on(scalars: jax.Array, leaves: list[list[Any]]) -> Any:
            return run_kernel(name, scalars, leaves, results, in_place, **dict(kernel.options))

        if explicit is None:
            return on(scalars, leaves)
        # split over Explicit axes: the kernel is element-wise, so each device runs it on its
        # shards as they are (no all-gather; results sharded like their leaf)
        mesh, specs = explicit
        per_leaf = [[spec] * len(leaf) for spec, leaf in zip(specs, leaves, strict=True)]
        in_specs = (PartitionSpec(), per_leaf)
        out_specs = [[spec] * results for spec in specs]
        return jax.shard_map(on, mesh=mesh, in_specs=in_specs, out_specs=out_specs)(scalars, leaves)

    @run.defjvp
    def run_jvp(primals: Any, tangents: Any) -> Any:
        (consts, _, leaves), (d_consts, _, d_leaves) = primals, tangents
        return jax.jvp(lambda c, x: reference(x, *c), (consts, leaves), (d_consts, d_leaves))

    return run(list(consts), scalars, leaves)


def _closure_operands(
    xla_leaf: Callable[..., Any], leaves: list[list[Any]]
) -> tuple[Callable[..., Any], list]:
    """``[xla_leaf(*leaf) for leaf in leaves]`` as ``reference(leaves, *consts)``, and the values
    ``xla_leaf`` closes over, of every dtype.

    ``jax.closure_convert`` hoists only the values that may carry a tangent (floats) and leaves
    an integer or boolean tracer in the closure, where it leaks once the derivative rule runs
    under another trace (``grad`` of a ``scan`` whose step count the closure reads). Here every
    closed-over value is an operand; integers get ``float0`` tangents, as any integer input.
    ``xla_leaf`` is traced once per distinct leaf type (its operands' shapes and dtypes), not
    once per leaf: on 2,000 same-shaped leaves, tracing each took most of a step's trace time.
    """
    traced: dict[Any, tuple[Any, Any, int, int]] = {}
    consts: list[Any] = []
    per_leaf = []
    for leaf in leaves:
        key = tuple(jax.typeof(x) for x in leaf)
        if key not in traced:
            closed, shapes = jax.make_jaxpr(xla_leaf, return_shape=True)(*leaf)
            out_tree = jax.tree.structure(shapes)
            traced[key] = (closed.jaxpr, out_tree, len(consts), len(closed.consts))
            consts += closed.consts
        per_leaf.append(traced[key])

    def reference(leaves: list[list[Any]], *consts: Any) -> list[Any]:
        outs = []
        for leaf, (jaxpr, out_tree, start, count) in zip(leaves, per_leaf, strict=True):
            flat = jax.core.eval_jaxpr(jaxpr, consts[start : start + count], *leaf)
            outs.append(jax.tree.unflatten(out_tree, flat))
        return outs

    return reference, consts
