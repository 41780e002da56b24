"""Many small leaves, few arrays: :func:`grouped` runs an optimizer on concatenated small leaves.

XLA compiles one loop per leaf and per output (Adam: the new ``mu``, the new ``nu``, and the
update fused into ``optax.apply_updates``) and pays a fixed cost per array at run time. For a
tree of thousands of small leaves (biases, norms, per-head weights, small MLPs) that cost is the
whole step: on 2,000 leaves of 1,000 parameters, ``optax.adam`` compiles for 11.6 s and steps in
40 ms on a 2-core CPU, 1.4 GB/s where one leaf of the same kind streams 28 GB/s.

``grouped(tx)`` concatenates small leaves into flat groups of ``group_size`` leaves and hands
``tx`` the params' own tree with each group's array in place of its first member and None (an
empty subtree) in place of the others; ``tx``'s updates are sliced back into the params' tree.
The moments of a group are one array each, so XLA makes one loop per group and moment, plus the
per-leaf slices that ``apply_updates`` needs. Measured on the case above: 3.0 s to compile and
14.4 ms per step (``python -m optadam.bench --rounds 5``, BUILD_NOTES.md, "Performance").

**Which leaves are grouped.** Only leaves that ``tx`` treats alike. At ``init``, ``grouped``
traces ``tx.update`` on the params (abstractly, nothing runs) and fingerprints each leaf's
computation: its operations, constants and the roles of its inputs, sizes aside. Leaves of one
dtype with the same fingerprint form a class, and groups are cut within a class, so masks and
labels (``mask=`` of ``adamw``, ``optax.masked``, ``optax.multi_transform``, anything looking at
paths, ranks or shapes) are resolved on the original tree: a decayed and an undecayed bias never
share a group. Each group is then checked the same way at its place in the packed tree; a group
that ``tx`` would treat unlike its members (a mask on ``x.ndim`` sees a 1-D group) is rebuilt from
members with the same trailing dimensions, concatenated along the first (keeping the rank), and
left ungrouped if that does not match either. Leaves whose update reads their leaf as a whole
(per-leaf norms: LARS, LAMB, ``optax.scale_by_trust_ratio``; 8-bit moments, quantized in blocks)
are never grouped. The result: the per-leaf numbers, to the last bits (next paragraph), for
whatever ``tx`` is; where grouping would change them, that leaf is not grouped. The probe costs
one abstract trace of ``tx`` over the whole tree at ``init`` (once per tree of shapes).

The arithmetic is the per-leaf one: Adam's results are equal bit for bit in our tests; elsewhere
XLA's vectorized loop over a group may fuse a multiply-add that a tiny leaf's scalar loop rounds
twice (10 of 14 optimizers tested are bit for bit, the rest within a few units in the last place,
``tests/test_grouping.py``). One difference is left on purpose: stochastic rounding's random bits
(seeded per leaf) are not part of the fingerprint, so a group draws other, equally random, bits.

Grouping pays only when there are many small leaves. A group's concatenation and slices cost XLA
more to compile than the loops they save when a dtype has a few dozen of them (a ResNet-50's 106
norm parameters: +0.4 s compile, the same step time), so by default a class is grouped only if
it has at least ``min_leaves`` leaves; if no dtype has that many small leaves, nothing is probed
and ``tx`` sees the params' tree unchanged.

Groups hold the small leaves of all devices' params in one array; give it leaves that are
replicated (as small leaves usually are). Leaves larger than ``max_leaf_size`` are never grouped,
so large sharded leaves keep their layout.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Hashable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.extend import core as jax_core

from optadam import _checks, _native
from optadam._leafwise import is_none

__all__ = ["GroupedState", "grouped"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which leaves of the params' tree are concatenated into which group (hashable, static).

    ``tx`` sees the params' own tree: a group's array sits at its first member's place, the other
    members' places hold None (an empty subtree), and every other leaf is the param's own.
    """

    treedef: Any  # the params' tree structure (None leaves included)
    shapes: tuple[tuple[int, ...] | None, ...]  # one per leaf; None where the param is None
    groups: tuple[tuple[int, ...], ...]  # the leaf indices concatenated into each group, in order
    group_shapes: tuple[tuple[int, ...], ...]  # each group's array: (elements,) or (rows, *dims)

    @property
    def rest(self) -> tuple[int, ...]:
        """The leaves ``tx`` sees as they are (large ones, None, ones it treats apart)."""
        grouped = {i for members in self.groups for i in members}
        return tuple(i for i in range(len(self.shapes)) if i not in grouped)

    def pack(self, tree: Any, what: str) -> Any:
        """``tree`` (shaped like the params) as the wrapped ``tx`` sees it (see the class)."""
        if not self.groups:
            return tree
        leaves = self._leaves(tree, what)
        for members, shape in zip(self.groups, self.group_shapes, strict=True):
            parts = [leaves[i] for i in members]
            if any(part is None for part in parts):
                raise ValueError(
                    f"optadam.grouped: the {what}' leaf at {self._path(members, parts)} is None, "
                    "but that leaf is grouped (its group needs every member); give it a zero "
                    "gradient, or raise min_leaves so that its dtype is not grouped"
                )
            if len({jnp.result_type(part) for part in parts}) > 1:
                raise ValueError(
                    f"optadam.grouped: the {what} of one group have different dtypes "
                    f"({sorted({str(jnp.result_type(p)) for p in parts})}) although their params "
                    "share one; concatenating them would promote some"
                )
            for i in members[1:]:
                leaves[i] = None
            leaves[members[0]] = jnp.concatenate([jnp.ravel(p) for p in parts]).reshape(shape)
        return jax.tree.unflatten(self.treedef, leaves)

    def unpack(self, packed: Any) -> Any:
        """``tx``'s output for :meth:`pack`'s tree, sliced back into the params' tree."""
        if not self.groups:
            return packed
        leaves = jax.tree.leaves(packed, is_leaf=is_none)
        for members in self.groups:
            flat = jnp.ravel(leaves[members[0]])
            start = 0
            for i in members:
                shape = self.shapes[i]
                assert shape is not None  # grouped leaves are arrays
                size = math.prod(shape)
                leaves[i] = flat[start : start + size].reshape(shape)
                start += size
        return jax.tree.unflatten(self.treedef, leaves)

    def _leaves(self, tree: Any, what: str) -> list[Any]:
        leaves, treedef = jax.tree.flatten(tree, is_leaf=is_none)
        shapes = [None if x is None else tuple(jnp.shape(x)) for x in leaves]
        if treedef == self.treedef and all(
            s is None or s == expected for s, expected in zip(shapes, self.shapes, strict=True)
        ):
            return leaves
        expected = jax.tree.unflatten(
            self.treedef,
            [None if s is None else jax.ShapeDtypeStruct(s, jnp.float32) for s in self.shapes],
        )
        got, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
        want, _ = jax.tree_util.tree_flatten_with_path(expected, is_leaf=is_none)
        for (g_path, g), (w_path, w) in zip(got, want, strict=False):
            g_shape, w_shape = (None if x is None else tuple(jnp.shape(x)) for x in (g, w))
            if g_path != w_path or (g_shape is not None and g_shape != w_shape):
                raise ValueError(
                    f"optadam.grouped: the {what} differ from the params the state was made for: "
                    f"first difference at {jax.tree_util.keystr(g_path)} (shape {g_shape}) vs "
                    f"{jax.tree_util.keystr(w_path)} (shape {w_shape})"
                )
        raise ValueError(
            f"optadam.grouped: the {what} have {len(got)} leaves, the params the state was made "
            f"for {len(want)}"
        )

    def _path(self, members: tuple[int, ...], parts: list[Any]) -> str:
        expected = jax.tree.unflatten(self.treedef, list(range(len(self.shapes))))
        paths = {
            i: jax.tree_util.keystr(p) for p, i in jax.tree_util.tree_leaves_with_path(expected)
        }
        return next(paths[i] for i, part in zip(members, parts, strict=True) if part is None)


# --- which leaves tx treats alike: a fingerprint of each leaf's computation ---------------------

#: Primitives whose output element depends on other elements of an operand. On a leaf's own
#: values they make its update depend on the leaf as a whole (per-leaf norms, 8-bit blocks), which a
#: group would change.
_MIXING = re.compile(
    r"reduce_(?!precision)\w+|arg(max|min)|cum\w+|dot_general|sort|top_k|transpose|rev|"
    r"conv_general_dilated|fft|gather|scatter\w*|dynamic_\w*slice|slice|pad|concatenate|"
    r"select_and_\w+|reduce_window\w*|split"
)
#: Array sizes in printed types and parameters: a group is longer than its members.
_SIZES = re.compile(r"\[[\d,\s]*\]|\(\d+(?:,\s*\d+)*,?\)")
#: uint32 constants in printed jaxprs: the seeds of stochastic rounding, one per leaf.
_SEEDS = re.compile(r"\b\d+(?=:u32)")


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jax_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax_core.Jaxpr):
                yield v


def _mixes(eqn: Any) -> bool:
    return bool(_MIXING.fullmatch(eqn.primitive.name)) or any(
        _mixes(e) for sub in _sub_jaxprs(eqn.params) for e in sub.eqns
    )


def _owner(path: tuple[Any, ...], leaf_paths: dict[tuple[Any, ...], int]) -> tuple[int | None, str]:
    """The params leaf whose path occurs in ``path`` (a state's ``mu['w']``: ``['w']``), and
    ``path`` with it replaced by ``*`` (the role the value plays, the same for every leaf)."""
    for length in range(len(path), 0, -1):
        for start in reversed(range(len(path) - length + 1)):
            index = leaf_paths.get(path[start : start + length])
            if index is not None:
                role = (*path[:start], "*", *path[start + length :])
                return index, "".join(map(str, role))
    return None, jax.tree_util.keystr(path)


def _fingerprints(
    tx: optax.GradientTransformationExtraArgs,
    tree: Any,
    members: dict[int, tuple[int, ...]] | None = None,
) -> dict[int, Hashable]:
    """For each array leaf of ``tree`` (abstract), what ``tx.update`` computes for it: a hash of its
    operations, constants and the roles of its inputs (``mu['w']`` is ``mu[*]``), without sizes and
    stochastic-rounding seeds. A value computed from several leaves (a global norm) counts as the
    set of leaves it reads (``members``: the leaves a group stands for). Leaves whose update
    reads their leaf as a whole (a norm of it) are left out: a group would change it."""
    members = members or {}
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    leaf_paths = {tuple(p): i for i, (p, x) in enumerate(leaves_with_paths) if x is not None}
    try:  # the XLA path's operations: one native kernel call would take all leaves at once
        state = jax.eval_shape(tx.init, tree)
        with _native.disabled():
            closed, out = jax.make_jaxpr(lambda g, s, p: tx.update(g, s, p), return_shape=True)(
                tree, state, tree
            )
    except TypeError as error:
        raise TypeError(
            "optadam.grouped: init traces tx.update(gradients, state, params) to see which "
            f"leaves it treats alike, and that failed ({error}). A transformation that needs "
            "extra arguments goes outside: optax.chain(optadam.grouped(tx), other)"
        ) from error
    jaxpr = closed.jaxpr
    fingerprint: dict[Any, Hashable] = {}
    at: dict[Any, int | None] = {}  # the leaf whose elements a value holds (None: shared)
    spans: dict[Any, frozenset[int]] = {}  # values computed from several leaves: those leaves
    whole: set[Any] = set()  # leaf values that summarize their leaf (a norm of it)
    inputs, _ = jax.tree_util.tree_flatten_with_path((tree, state, tree))
    for var, (path, _) in zip(jaxpr.invars, inputs, strict=True):
        at[var], role = _owner(tuple(path[1:]), leaf_paths)
        fingerprint[var] = ("in", path[0].idx, role)
    for k, var in enumerate(jaxpr.constvars):
        at[var], fingerprint[var] = None, ("const", k)
    printed: dict[int, str] = {}

    def param(value: Any) -> str:
        key = id(value)
        if key not in printed:
            # without sizes, seeds and line breaks (a printed jaxpr wraps lines by their length)
            printed[key] = " ".join(_SEEDS.sub("#", _SIZES.sub("#", str(value))).split())
        return printed[key]

    def get(atom: Any) -> Hashable:
        if isinstance(atom, jax_core.Literal):
            dtype = jnp.result_type(atom.val)
            return ("lit", str(dtype), None if dtype == jnp.uint32 else str(atom.val))
        return fingerprint[atom]

    for eqn in jaxpr.eqns:
        vars_in = [a for a in eqn.invars if not isinstance(a, jax_core.Literal)]
        leaves = {i for i in (at[a] for a in vars_in) if i is not None}
        summary = any(a in whole for a in vars_in)
        span_in = [spans[a] for a in vars_in if a in spans]
        if len(leaves) > 1 or (span_in and summary):  # a sum over leaves, say
            span = frozenset(j for i in leaves for j in members.get(i, (i,))).union(*span_in)
            for var in eqn.outvars:
                at[var], spans[var], fingerprint[var] = None, span, ("many", span)
            continue
        leaf = leaves.pop() if leaves else None
        key = hash(
            (
                eqn.primitive.name,
                tuple(sorted((k, param(v)) for k, v in eqn.params.items())),
                tuple(get(a) for a in eqn.invars),
            )
        )
        summarizes = leaf is not None and (summary or _mixes(eqn))
        for j, var in enumerate(eqn.outvars):
            at[var], fingerprint[var] = leaf, (key, j)
            if summarizes:
                whole.add(var)
    per_leaf: dict[int, list[Any]] = {}
    skipped: set[int] = set()
    outputs, _ = jax.tree_util.tree_flatten_with_path(out)
    for var, (path, _) in zip(jaxpr.outvars, outputs, strict=True):
        index, role = _owner(tuple(path[1:]), leaf_paths)
        if index is None:
            continue
        per_leaf.setdefault(index, []).append((path[0].idx, role, hash(get(var))))
        if not isinstance(var, jax_core.Literal) and var in whole:
            skipped.add(index)
    return {i: hash(tuple(sorted(v))) for i, v in per_leaf.items() if i not in skipped}


def _plan(
    tx: optax.GradientTransformationExtraArgs,
    params: Any,
    max_leaf_size: int,
    group_size: int,
    min_leaves: int,
) -> Layout:
    leaves, treedef = jax.tree.flatten(params, is_leaf=is_none)
    shapes = tuple(None if x is None else tuple(jnp.shape(x)) for x in leaves)
    small: dict[Any, list[int]] = {}  # dtype -> indices of its small leaves, in tree order
    for i, (x, shape) in enumerate(zip(leaves, shapes, strict=True)):
        if shape is not None and math.prod(shape) <= max_leaf_size:
            small.setdefault(jnp.result_type(x), []).append(i)
    if all(len(members) < min_leaves for members in small.values()):
        return Layout(treedef, shapes, (), ())
    sizes = {i: math.prod(shape) for i, shape in enumerate(shapes) if shape is not None}
    abstract = [
        None if x is None else jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
        for x in leaves
    ]
    kinds = _fingerprints(tx, jax.tree.unflatten(treedef, abstract))
    alike: dict[Any, list[int]] = {}  # the small leaves of one dtype that tx treats alike
    for dtype, members in small.items():
        for i in members:
            if i in kinds:
                alike.setdefault((dtype, kinds[i]), []).append(i)
    flat: list[Group] = [
        (group, (sum(sizes[i] for i in group),))
        for same in alike.values()
        if len(same) >= min_leaves
        for group in _chunks(same, group_size)
    ]
    kept, failed = _check(tx, treedef, abstract, flat, kinds)
    # tx may tell a group from its members by its shape (a mask on ``x.ndim``): group leaves
    # with the same trailing dimensions along their first, as an array of their rank.
    by_dims: dict[Any, list[int]] = {}
    for group, _ in failed:
        for i in group:
            shape, dtype = shapes[i], jnp.result_type(leaves[i])
            if shape is not None and len(shape) > 1:  # (a 1-D group of vectors failed already)
                by_dims.setdefault((dtype, kinds[i], shape[1:]), []).append(i)
    stacked = [
        (group, (sum(sizes[i] for i in group) // math.prod(dims), *dims))
        for (_, _, dims), same in by_dims.items()
        if len(same) > 1
        for group in _chunks(same, group_size)
    ]
    if stacked:
        kept = _check(tx, treedef, abstract, kept + stacked, kinds)[0]
    kept.sort()
    return Layout(treedef, shapes, tuple(g for g, _ in kept), tuple(s for _, s in kept))


def _chunks(members: list[int], size: int) -> list[tuple[int, ...]]:
    return [tuple(members[start : start + size]) for start in range(0, len(members), size)]


Group = tuple[tuple[int, ...], tuple[int, ...]]  # leaf indices, and the shape of their array


def _check(
    tx: optax.GradientTransformationExtraArgs,
    treedef: Any,
    abstract: list[Any],
    groups: list[Group],
    kinds: dict[int, Hashable],
) -> tuple[list[Group], list[Group]]:
    """The groups to which ``tx`` does what it does to each of their leaves, and the others."""
    if not groups:
        return [], []
    packed = list(abstract)
    for members, shape in groups:
        for i in members:
            packed[i] = None
        packed[members[0]] = jax.ShapeDtypeStruct(shape, abstract[members[0]].dtype)
    stands_for = {members[0]: members for members, _ in groups}
    seen = _fingerprints(tx, jax.tree.unflatten(treedef, packed), stands_for)
    alike = [seen.get(members[0]) == kinds[members[0]] for members, _ in groups]
    return (
        [g for g, ok in zip(groups, alike, strict=True) if ok],
        [g for g, ok in zip(groups, alike, strict=True) if not ok],
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupedState:
    """State of :func:`grouped`: the wrapped transformation's state, and where the groups are."""

    inner: Any  # tx's state for the params' tree with the groups in it (see Layout)
    layout: Layout = dataclasses.field(metadata={"static": True})  # fixed by init's params


def grouped(
    tx: optax.GradientTransformation,
    *,
    max_leaf_size: int = 65_536,
    group_size: int = 32,
    min_leaves: int = 256,
) -> optax.GradientTransformationExtraArgs:
    """``tx`` run on the params' small leaves concatenated into groups (see the module's docs).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optadam
      >>> params = {f"bias{i}": jnp.zeros(10) for i in range(300)}
      >>> tx = optadam.grouped(optadam.adam(1e-3))
      >>> state = tx.init(params)
      >>> [mu.shape for mu in jax.tree.leaves(state.inner[0].mu)]  # 300 leaves: 10 groups
      [(320,), (320,), (320,), (320,), (320,), (320,), (320,), (320,), (320,), (120,)]
      >>> updates, state = tx.update(params, state, params)
      >>> updates["bias0"].shape
      (10,)

    Args:
      tx: the transformation to run, any optax one; leaves it does not treat element-wise, or
        treats unlike the others, are left ungrouped (see above). Its ``update`` must trace
        without extra arguments, as ``init`` probes it so.
      max_leaf_size: leaves with more elements are never grouped (default 65,536: above it a leaf's
        loop costs more than its fixed overhead).
      group_size: leaves per group (default 32; 25 to 60 measured alike, fewer compile slower).
      min_leaves: small leaves that ``tx`` treats alike (and of one dtype) are grouped only if
        there are at least this many (default 256; 1 groups whatever it can).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`GroupedState`; extra
      arguments of ``update`` are passed on to ``tx``.
    """
    for name, value, low in [
        ("max_leaf_size", max_leaf_size, 0),
        ("group_size", group_size, 1),
        ("min_leaves", min_leaves, 1),
    ]:
        _checks.integer_at_least(name, value, low)
    inner = optax.with_extra_args_support(tx)

    layouts: dict[Any, Layout] = {}  # planned once per tree of shapes and dtypes

    def init_fn(params: optax.Params) -> GroupedState:
        leaves, treedef = jax.tree.flatten(params, is_leaf=is_none)
        key = (treedef, tuple(None if x is None else jax.typeof(x).str_short() for x in leaves))
        if key not in layouts:
            layouts[key] = _plan(inner, params, max_leaf_size, group_size, min_leaves)
        layout = layouts[key]
        return GroupedState(inner.init(layout.pack(params, "params")), layout)

    def update_fn(
        updates: optax.Updates,
        state: GroupedState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, GroupedState]:
        layout = state.layout
        packed_params = None if params is None else layout.pack(params, "params")
        packed, inner_state = inner.update(
            layout.pack(updates, "gradients"), state.inner, packed_params, **extra_args
        )
        return layout.unpack(packed), GroupedState(inner_state, layout)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
