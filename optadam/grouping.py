"""Many small leaves, few arrays: :func:`grouped` runs an optimizer on concatenated small leaves.

XLA compiles one loop per leaf and per output (Adam: the new ``mu``, the new ``nu``, and the
update fused into ``optax.apply_updates``) and pays a fixed cost per array at run time. For a
tree of thousands of small leaves (biases, norms, per-head weights, small MLPs) that cost is the
whole step: on 2,000 leaves of 1,000 parameters, ``optax.adam`` compiles for ~12 s and steps in
~26 ms on a 2-core CPU, about 7x the time the same bytes take in one array.

``grouped(tx)`` concatenates the small leaves of each dtype into flat groups of ``group_size``
leaves, gives ``tx`` the groups instead of the leaves, and slices its updates back into the
params' tree. The moments of a group are one array each, so XLA makes one loop per group and
moment, plus the per-leaf slices that ``apply_updates`` needs. Measured on the case above: 2.0 s to
compile and 10-11 ms per step (BUILD_NOTES.md, "Performance").

Element-wise optimizers (all of optadam's with float moments, and optax's element-wise transforms)
do the same arithmetic as per leaf. The results are equal to the last bits: Adam's bit for bit in
our tests; elsewhere XLA's vectorized loop over a group may fuse a multiply-add that a tiny leaf's
scalar loop rounds twice (10 of 14 optimizers tested are bit for bit, the rest within a few units
in the last place, ``tests/test_grouping.py``). Transformations that reduce over a leaf
(per-leaf norms: LARS, LAMB, ``optax.scale_by_trust_ratio``) would see a group as one leaf: do not
group them. Two optadam options see the difference: 8-bit moments (``state_bits=8``) quantize a
group as one array (its blocks run over consecutive leaves, and the 4,096-element minimum applies
to the group), and stochastic rounding draws other (equally random) bits.

Grouping pays only when there are many small leaves. A group's concatenation and slices cost XLA
more to compile than the loops they save when a dtype has a few dozen of them (a ResNet-50's 106
norm parameters: +0.4 s compile, the same step time), so by default a dtype's small leaves are
grouped only if there are at least ``min_leaves`` of them; otherwise ``grouped(tx)`` is ``tx``.

Groups hold the small leaves of all devices' params in one array; give it leaves that are
replicated (as small leaves usually are). Leaves larger than ``max_leaf_size`` are never grouped,
so large sharded leaves keep their layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optadam import _checks
from optadam._leafwise import is_none

__all__ = ["GroupedState", "grouped"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which leaves of the params' tree are concatenated into which group (hashable, static)."""

    treedef: Any  # the params' tree structure (None leaves included)
    shapes: tuple[tuple[int, ...] | None, ...]  # one per leaf; None where the param is None
    groups: tuple[tuple[int, ...], ...]  # the leaf indices concatenated into each group, in order
    rest: tuple[int, ...]  # the leaves passed on as they are (large ones, None, few of a dtype)

    def pack(self, tree: Any, what: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """``tree`` (shaped like the params) as (groups, rest): what the wrapped ``tx`` sees."""
        leaves = self._leaves(tree, what)
        groups = []
        for members in self.groups:
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
            groups.append(jnp.concatenate([jnp.ravel(part) for part in parts]))
        return tuple(groups), tuple(leaves[i] for i in self.rest)

    def unpack(self, packed: tuple[tuple[Any, ...], tuple[Any, ...]]) -> Any:
        """The wrapped ``tx``'s output for (groups, rest), sliced back into the params' tree."""
        groups, rest = packed
        leaves: list[Any] = [None] * len(self.shapes)
        for members, flat in zip(self.groups, groups, strict=True):
            start = 0
            for i in members:
                shape = self.shapes[i]
                assert shape is not None  # grouped leaves are arrays
                size = math.prod(shape)
                leaves[i] = flat[start : start + size].reshape(shape)
                start += size
        for i, leaf in zip(self.rest, rest, strict=True):
            leaves[i] = leaf
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


def _plan(params: Any, max_leaf_size: int, group_size: int, min_leaves: int) -> Layout:
    leaves, treedef = jax.tree.flatten(params, is_leaf=is_none)
    shapes = tuple(None if x is None else tuple(jnp.shape(x)) for x in leaves)
    small: dict[Any, list[int]] = {}  # dtype -> indices of its small leaves, in tree order
    for i, (x, shape) in enumerate(zip(leaves, shapes, strict=True)):
        if shape is not None and math.prod(shape) <= max_leaf_size:
            small.setdefault(jnp.result_type(x), []).append(i)
    groups = tuple(
        tuple(members[start : start + group_size])
        for members in small.values()
        if len(members) >= min_leaves
        for start in range(0, len(members), group_size)
    )
    grouped_leaves = {i for members in groups for i in members}
    rest = tuple(i for i in range(len(leaves)) if i not in grouped_leaves)
    return Layout(treedef, shapes, groups, rest)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupedState:
    """State of :func:`grouped`: the wrapped transformation's state, over (groups, rest)."""

    inner: Any  # tx's state for the packed tree ((group arrays...), (ungrouped leaves...))
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
      >>> import jax.numpy as jnp, optax, optadam
      >>> params = {f"bias{i}": jnp.zeros(10) for i in range(300)}
      >>> tx = optadam.grouped(optadam.adam(1e-3))
      >>> state = tx.init(params)
      >>> [mu.shape for mu in jax.tree.leaves(state.inner[0].mu)]  # 300 leaves: 10 groups
      [(320,), (320,), (320,), (320,), (320,), (320,), (320,), (320,), (320,), (120,)]
      >>> updates, state = tx.update(params, state, params)
      >>> updates["bias0"].shape
      (10,)

    Args:
      tx: the transformation to run; element-wise, or its results change (see above).
      max_leaf_size: leaves with more elements are never grouped (default 65,536: above it a leaf's
        loop costs more than its fixed overhead).
      group_size: leaves per group (default 32; 25 to 60 measured alike, fewer compile slower).
      min_leaves: a dtype's small leaves are grouped only if there are at least this many
        (default 256; 1 groups whatever it can).

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

    def init_fn(params: optax.Params) -> GroupedState:
        layout = _plan(params, max_leaf_size, group_size, min_leaves)
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
