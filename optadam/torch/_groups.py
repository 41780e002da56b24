"""torch.optim's param groups over a JAX pytree, and the one state of every optadam.torch optimizer.

torch's first constructor argument is either the parameters (one group) or a list of group dicts,
``[{"params": ..., "weight_decay": 0.0}, {"params": ..., "lr": 1e-4}]``, the keyword arguments
being the defaults of every group. Here ``"params"`` is a *selector* of leaves of the params
pytree:

* a glob on the leaf's key path joined with "/" (``"*/bias"``, ``"encoder/**"``): ``*`` and ``?``
  match within one path component, ``**`` any number of whole components;
* a callable ``(path, leaf) -> bool`` (``path`` as ``jax.tree_util`` gives it; ``leaf`` the
  parameter, or its gradient when ``update`` is called without params);
* a list of these (a leaf is selected if any selects it).

As in torch, leaves in no group are not optimized (zero update, no state), a leaf in two groups is
an error, and so is a group that selects nothing.

The state (:class:`TorchState`) keeps one step count for all groups and parameters, each group's
schedulable hyperparameters (``lr``; ``momentum`` or ``betas``) as arrays -- runtime operands, as
torch keeps them in ``optimizer.param_groups``, so that an LR scheduler can change them without a
recompile -- and each group's per-parameter state, over the group's leaves (``optax.MaskedNode``
at the others, so the state of a leaf sits where the leaf does and is sharded like it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam._leafwise import replicated_scalar

# Group keys that are not hyperparameters: the selector, and a label for logs and errors.
_NOT_HYPERPARAMETERS = ("params", "name")


class TorchState(NamedTuple):
    """State of every optadam.torch optimizer."""

    count: jax.Array  # type: ignore[assignment]  # torch's step: the updates taken (0 before the first), one for all
    hyperparams: tuple[dict[str, Any], ...]  # per group: lr, momentum / betas, as float arrays
    groups: tuple[optax.OptState, ...]  # per group: its chain's state over the group's leaves


def _is_none(x: Any) -> bool:
    return x is None


def path_name(path: Sequence[Any]) -> str:
    """A key path as "/"-joined components: ``{"enc": [w]}``'s leaf is ``"enc/0"``."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _glob(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _glob(rest, parts[1:])


def _selects(selector: Any, path: Sequence[Any], leaf: Any) -> bool:
    if isinstance(selector, str):
        return _glob(selector.split("/"), path_name(path).split("/") if path else [])
    if callable(selector):
        return bool(selector(path, leaf))
    return any(_selects(s, path, leaf) for s in selector)


def _check_selector(where: str, selector: Any) -> None:
    if isinstance(selector, str) or callable(selector):
        return
    if isinstance(selector, (list, tuple)) and selector:
        for s in selector:
            if not (isinstance(s, str) or callable(s)):
                raise TypeError(
                    f"{where}: a selector is a glob string, a callable (path, leaf) -> bool, or a "
                    f"list of these; the list holds {s!r}"
                )
        return
    if isinstance(selector, set):
        raise TypeError(
            f"{where}: parameters need to be organized in ordered collections (as in torch), got "
            "a set: use a list"
        )
    raise TypeError(
        f"{where}: a selector is a glob string, a callable (path, leaf) -> bool, or a non-empty "
        f"list of these, got {selector!r}"
    )


def _select_all(path: Any, leaf: Any) -> bool:
    return True


def param_groups(params: Any, defaults: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """torch's ``param_groups`` for the first constructor argument, each with the defaults filled
    in (``"params"`` first, as torch orders them); None is one group of every leaf."""
    if params is None:
        return ({"params": _select_all, **defaults},)
    if isinstance(params, Mapping):
        raise TypeError(
            "params must be a selector or a list of param group dicts, got a dict: wrap one "
            "group in a list, [{'params': ...}]"
        )
    if isinstance(params, (list, tuple)) and not params:
        raise ValueError("optimizer got an empty parameter list (as torch says)")
    if not (isinstance(params, (list, tuple)) and isinstance(params[0], Mapping)):
        _check_selector("params", params)
        return ({"params": params, **defaults},)
    groups = []
    for i, group in enumerate(params):
        if not isinstance(group, Mapping):
            raise TypeError(f"param_group must be a dict, but got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"param_groups[{i}] has no 'params' (its selector of leaves)")
        unknown = sorted(set(group) - set(defaults) - set(_NOT_HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"param_groups[{i}] has unknown keys {unknown}: the groups of this optimizer take "
                f"{sorted(defaults)}, 'params' and 'name'"
            )
        _check_selector(f"param_groups[{i}]['params']", group["params"])
        groups.append({"params": group["params"], **defaults, **group})
    return tuple(groups)


def _label(groups: Sequence[Mapping[str, Any]], k: int) -> str:
    name = groups[k].get("name")
    return f"param_groups[{k}]" + (f" ({name!r})" if name is not None else "")


def owners(groups: Sequence[Mapping[str, Any]], params: optax.Params) -> list[int | None]:
    """For each leaf of ``params`` (None leaves included, as positions), the index of the group
    that selects it, or None. A leaf two groups select, and a group that selects nothing, are
    errors (the single default group may be empty: an empty tree)."""
    paths, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
    result: list[int | None] = []
    for path, leaf in paths:
        owner = None
        if leaf is not None:
            for k, group in enumerate(groups):
                if _selects(group["params"], path, leaf):
                    if owner is not None:
                        raise ValueError(
                            f"the leaf {path_name(path) or 'params'} is in {_label(groups, owner)} "
                            f"and in {_label(groups, k)}: some parameters appear in more than one "
                            "parameter group"
                        )
                    owner = k
        result.append(owner)
    if groups[0]["params"] is not _select_all:
        for k in range(len(groups)):
            if k not in result:
                raise ValueError(
                    f"{_label(groups, k)} selects no leaf of the params "
                    f"(params={groups[k]['params']!r}; leaves: "
                    f"{[path_name(p) for p, x in paths if x is not None][:20]})"
                )
    return result


def split(tree: Any, owner: list[int | None], k: int) -> Any:
    """``tree`` with the leaves of group ``k`` kept and ``optax.MaskedNode()`` at the others (None
    leaves stay None)."""
    leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
    kept = [
        x if x is None or o == k else optax.MaskedNode() for x, o in zip(leaves, owner, strict=True)
    ]
    return jax.tree.unflatten(treedef, kept)


def merge(parts: Sequence[Any], like: Any, owner: list[int | None]) -> Any:
    """The updates of each group's leaves put back in one tree like ``like`` (its leaves that no
    group holds get a zero update)."""
    leaves, treedef = jax.tree.flatten(like, is_leaf=_is_none)
    columns = [
        jax.tree.leaves(p, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode))
        for p in parts
    ]
    merged = [
        x if x is None else (jnp.zeros_like(x) if o is None else columns[o][i])
        for i, (x, o) in enumerate(zip(leaves, owner, strict=True))
    ]
    return jax.tree.unflatten(treedef, merged)


def hyperparameter_dtype() -> Any:
    """float64 when x64 is on, else float32: torch keeps Python floats (doubles)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_arrays(values: Mapping[str, Any], params: optax.Params) -> dict[str, Any]:
    """Hyperparameters as replicated float scalars (``betas`` a pair of them)."""
    dtype = hyperparameter_dtype()

    def one(v: Any) -> Any:
        if isinstance(v, jax.core.Tracer):
            return jnp.asarray(v, dtype)
        return replicated_scalar(params, v, dtype) if jnp.ndim(v) == 0 else jnp.asarray(v, dtype)

    return {k: tuple(one(b) for b in v) if k == "betas" else one(v) for k, v in values.items()}


def group_hyperparams(state: Any) -> tuple[dict[str, jax.Array], ...]:
    """Per param group, the current values of its schedulable hyperparameters, with torch's keys:
    ``"lr"``; ``"momentum"`` (SGD, RMSprop) or ``"betas"`` (a pair; Adam, AdamW, NAdam, RAdam).

    ``state`` is the state of an optadam.torch optimizer (``tx.init(params)`` or a later one).
    """
    return _torch_state(state).hyperparams


def with_group_hyperparams(state: Any, groups: Sequence[Mapping[str, Any]]) -> Any:
    """``state`` with the hyperparameters of :func:`group_hyperparams` replaced by ``groups``' (one
    dict per group, with some or all of its keys; values may be traced); same tree and dtypes.

    The next update uses them (as torch's ``step()`` reads ``group["lr"]``). A group whose ``lr``
    is a schedule (a callable) takes its lr from the schedule, not from here.
    """
    current = _torch_state(state).hyperparams
    if len(groups) != len(current):
        raise ValueError(f"the state has {len(current)} param groups, got {len(groups)} dicts")
    replaced = []
    for k, (old, new) in enumerate(zip(current, groups, strict=True)):
        unknown = sorted(set(new) - set(old))
        if unknown:
            raise ValueError(
                f"param_groups[{k}] has the schedulable hyperparameters {sorted(old)}, got "
                f"{unknown}"
            )

        def cast(value: Any, like: jax.Array) -> jax.Array:
            return jnp.asarray(value, like.dtype).reshape(like.shape)

        replaced.append(
            {
                key: jax.tree.map(cast, tuple(new[key]) if key == "betas" else new[key], value)
                if key in new
                else value
                for key, value in old.items()
            }
        )
    return _torch_state(state)._replace(hyperparams=tuple(replaced))


def _torch_state(state: Any) -> TorchState:
    if not isinstance(state, TorchState):
        raise TypeError(
            f"expected the state of an optadam.torch optimizer (a TorchState), got "
            f"{type(state).__name__}"
        )
    return state
