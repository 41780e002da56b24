"""Carrying an optimizer's state across: torch.optim's ``state_dict()`` to optadam.torch and back.

torch's ``optimizer.state_dict()`` is ``{"state": {i: {key: tensor, ...}}, "param_groups": [{...,
"params": [i, ...]}]}``: the state of each parameter under an integer index, the indices numbered
through the param groups in order. Here group k of the state dict is ``tx.param_groups[k]``, and its
indices are the leaves that group selects, in the order of ``jax.tree.leaves(params)``: with one
group, index i is leaf i. Register a model's parameters with torch in that order, or order the
pytree's leaves as ``model.parameters()`` does.

Each optadam state field has a torch name (:data:`PER_PARAMETER`, :data:`PER_GROUP`); the state's
one ``count`` is torch's ``step`` (torch keeps one per parameter, and they must agree). The
schedulable hyperparameters (lr, momentum, betas) travel both ways, with their current values.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optadam.adagrad import ScaleByAdagradState
from optadam.torch import _groups
from optadam.torch._common import MomentumBufferState, TorchOptimizer, TorchState
from optadam.torch.adagrad import Adagrad
from optadam.torch.adam import Adam, AdamMoments, AdamW, AmsgradMoments
from optadam.torch.nadam import NAdam, ScaleByNadamState
from optadam.torch.radam import RAdam
from optadam.torch.rmsprop import RMSprop, ScaleByRmsState
from optadam.torch.sgd import SGD

# For each state type in a group's chain: field -> torch's per-parameter key, for the fields that
# hold one array per parameter.
PER_PARAMETER: dict[type, dict[str, str]] = {
    AdamMoments: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    AmsgradMoments: {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
    ScaleByNadamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByRmsState: {"nu": "square_avg", "mu": "grad_avg"},
    MomentumBufferState: {"trace": "momentum_buffer"},
    ScaleByAdagradState: {"sum_of_squares": "sum"},
    optax.EmptyState: {},
}
# Fields that hold one scalar per group, which torch keeps per parameter (all equal in a group).
PER_GROUP: dict[type, dict[str, str]] = {ScaleByNadamState: {"mu_product": "mu_product"}}
# torch.optim classes whose per-parameter state has no "step".
STEPLESS = {"SGD"}
# Param-group keys that are not hyperparameters (torch's own, LR schedulers', ours).
_BOOKKEEPING = {"params", "param_names", "initial_lr", "name"}
# Implementation switches: they need not agree (see optadam.torch._common.check_switches).
_SWITCHES = {"foreach", "fused", "capturable", "differentiable"}
# Hyperparameters newer than some torch versions' state dicts; the others must be there.
_OPTIONAL = _SWITCHES | {"maximize", "decoupled_weight_decay"}

PerParameter = Callable[[str, Any], Any]  # (torch key, the field's tree) -> the new tree
Scalar = Callable[[str, Any], Any]  # (torch key, the field's value) -> the new value


def _rebuild(node: Any, per_parameter: PerParameter, scalar: Scalar) -> Any:
    """A group's chain state with each per-parameter field replaced by ``per_parameter(torch_key,
    tree)`` and each per-group scalar by ``scalar(torch_key, value)``; None fields stay None."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        if type(node) not in PER_PARAMETER:
            raise TypeError(f"optadam.torch has no torch equivalent of the state {type(node)}")
        keys, scalars = PER_PARAMETER[type(node)], PER_GROUP.get(type(node), {})
        fields = {
            name: None
            if value is None
            else per_parameter(keys[name], value)
            if name in keys
            else scalar(scalars[name], value)
            for name, value in zip(node._fields, node, strict=True)
        }
        return type(node)(**fields)
    if isinstance(node, tuple):
        return tuple(_rebuild(child, per_parameter, scalar) for child in node)
    raise TypeError(f"unexpected node in an optadam.torch state: {node!r}")


def _torch_keys(tx: TorchOptimizer, group_state: Any) -> set[str]:
    """The keys torch keeps per parameter for a group whose chain state is ``group_state``."""
    keys: set[str] = set() if tx.torch_name in STEPLESS else {"step"}

    def collect(key: str, value: Any) -> Any:
        keys.add(key)
        return value

    _rebuild(group_state, collect, collect)
    return keys


def _check_optimizer(tx: Any) -> TorchOptimizer:
    if not isinstance(tx, TorchOptimizer) or not hasattr(tx, "torch_name"):
        raise TypeError(
            "tx must be an optadam.torch optimizer, e.g. optadam.torch.Adam(lr=1e-3), got "
            f"{type(tx).__name__}; inside an optax.chain, pass that part and its part of the state"
        )
    return tx


def _numpy(value: Any) -> np.ndarray:
    """A torch tensor (torch is not imported for it), NumPy array or number, as a NumPy copy."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().resolve_conj().resolve_neg()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        return np.array(value.numpy())
    return np.array(value)


def _plain(value: Any) -> Any:
    """A hyperparameter as torch keeps it: Python numbers, tuples of them, bools, None.

    Without x64 the state keeps lr, momentum and betas in float32; torch keeps doubles.
    """
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        scalar = np.asarray(value)[()]
        if scalar.dtype == np.float32:  # the shortest decimal that rounds to it: 0.01, not
            return float(str(scalar))  # 0.009999999776, so torch gets the number it was given
        return scalar.item()
    return value


def _all_hyperparameters() -> set[str]:
    """Every hyperparameter name of the torch.optim classes optadam.torch reproduces."""
    factories: list[Callable[[], TorchOptimizer]] = [
        SGD,
        Adam,
        AdamW,
        RMSprop,
        Adagrad,
        RAdam,
        NAdam,
    ]
    return {key for factory in factories for key in factory().defaults}


class _Layout:
    """Which leaves are torch's parameters, and their torch indices: group by group, each group's
    leaves in leaf order."""

    def __init__(self, tx: TorchOptimizer, params: optax.Params) -> None:
        paths, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)
        owner = _groups.owners(tx.param_groups, params)
        self.members = [
            [i for i, o in enumerate(owner) if o == k] for k in range(len(tx.param_groups))
        ]
        self.leaves = [leaf for _, leaf in paths]
        self.names = [
            f"leaf {_groups.path_name(path) or 'params'}" for path, _ in paths
        ]  # for errors


# --- torch -> optadam --------------------------------------------------------------------------


def _check_torch_groups(
    tx: TorchOptimizer, torch_state_dict: Any, layout: _Layout
) -> list[dict[str, Any]]:
    """The state dict's param groups, after checking that they are ``tx``'s: the same class, the
    same number of groups, of parameters per group, and the same fixed hyperparameters."""
    if not isinstance(torch_state_dict, Mapping) or set(torch_state_dict) != {
        "state",
        "param_groups",
    }:
        keys = sorted(torch_state_dict) if isinstance(torch_state_dict, Mapping) else None
        raise ValueError(
            "expected a torch optimizer's state_dict(), a dict with the keys 'state' and "
            f"'param_groups', got {type(torch_state_dict).__name__} with keys {keys}"
        )
    groups = list(torch_state_dict["param_groups"])
    if len(groups) != len(tx.param_groups):
        raise ValueError(
            f"the torch state dict has {len(groups)} param groups, tx has "
            f"{len(tx.param_groups)}: build tx with torch's groups, in torch's order"
        )
    ours = set(tx.defaults)
    others = _all_hyperparameters() - ours
    for k, (theirs, mine) in enumerate(zip(groups, tx.param_groups, strict=True)):
        foreign, missing = sorted(set(theirs) & others), sorted(ours - _OPTIONAL - set(theirs))
        if foreign or missing:
            raise ValueError(
                f"param_groups[{k}] is not a torch.optim.{tx.torch_name} param group: "
                f"it has {foreign} (not {tx.torch_name}'s) and lacks {missing}"
            )
        fixed = ours - set(tx.schedulable) - _SWITCHES
        differ = sorted(
            key for key in fixed if key in theirs and _plain(theirs[key]) != _plain(mine[key])
        )
        if differ:
            raise ValueError(
                f"param_groups[{k}] differs from tx's in "
                + ", ".join(
                    f"{key} ({theirs[key]!r} in torch, {mine[key]!r} in tx)" for key in differ
                )
            )
        if len(theirs["params"]) != len(layout.members[k]):
            raise ValueError(
                f"param_groups[{k}] has {len(theirs['params'])} parameters in the torch state "
                f"dict, but tx's group selects {len(layout.members[k])} leaves: "
                f"{[layout.names[i] for i in layout.members[k]]}"
            )
    indices = [i for group in groups for i in group["params"]]
    unknown = sorted(set(torch_state_dict["state"]) - set(indices), key=str)
    if unknown:
        raise ValueError(f"the torch state dict has state for unknown parameter indices {unknown}")
    return groups


def _one_step(names: list[str], entries: list[dict[str, Any]]) -> int:
    """torch's per-parameter ``step``, the same for every parameter that has state."""
    steps = [(n, int(_numpy(d["step"]).item())) for n, d in zip(names, entries, strict=True) if d]
    for name, value in steps[1:]:
        if value != steps[0][1]:
            raise ValueError(
                f"optadam keeps one step for all parameters, but the torch state dict has step "
                f"{steps[0][1]} for {steps[0][0]} and {value} for {name}"
            )
    return steps[0][1] if steps else 0


def _count(tx: TorchOptimizer, names: list[str], entries: list[dict[str, Any]], step: Any) -> int:
    """The state's count: torch's step, or for SGD (which keeps none) ``step`` or what the
    momentum buffers tell."""
    stepped = any(entries)
    if tx.torch_name not in STEPLESS:
        torch_step = _one_step(names, entries)
        if step is not None and step != torch_step:
            raise ValueError(f"step={step} but the torch state dict's step is {torch_step}")
        return torch_step
    if step is not None:
        if stepped and step == 0:
            raise ValueError("step=0, but the torch state dict has momentum buffers")
        return int(step)
    if any(callable(group["lr"]) for group in tx.param_groups):
        raise ValueError(
            "torch's SGD keeps no step count and this SGD's lr is a schedule: pass step= "
            "(the number of steps taken, e.g. the LR scheduler's last_epoch)"
        )
    return 1 if stepped else 0  # the momentum buffer exists from the first step


def _loaded(key: str, name: str, value: Any, param: Any, like: Any) -> jax.Array:
    """torch's ``key`` tensor of a parameter as the state leaf ``like``, checked against it."""
    value = _numpy(value)
    if jnp.iscomplexobj(param) != np.iscomplexobj(value):
        raise ValueError(
            f"torch's {key} for {name} is {value.dtype} but the parameter is "
            f"{jnp.result_type(param)}"
        )
    shape = value.shape
    if np.iscomplexobj(value):  # optadam.torch holds complex leaves as (real, imag) pairs
        value = np.stack([value.real, value.imag], axis=-1)
    if value.shape != like.shape:
        raise ValueError(
            f"torch's {key} for {name} has shape {shape}, the parameter has shape "
            f"{jnp.shape(param)}"
        )
    return jnp.asarray(value, like.dtype)


def _load_group(
    tx: TorchOptimizer,
    template: Any,
    names: list[str],
    params: list[Any],
    entries: list[dict[str, Any]],
) -> Any:
    """A group's chain state from torch's per-parameter entries (its members, in order)."""
    expected = _torch_keys(tx, template)
    for name, d in zip(names, entries, strict=True):
        if d and set(d) != expected:
            raise ValueError(
                f"torch.optim.{tx.torch_name} state for {name}: unknown keys "
                f"{sorted(set(d) - expected)}, missing keys {sorted(expected - set(d))} "
                f"(expected {sorted(expected)})"
            )
    if not any(entries):  # torch creates its state at the first step
        return template
    if not all(entries):
        raise ValueError(
            f"the torch state dict has state for {sum(map(bool, entries))} of {len(entries)} "
            f"parameters of a group (none for {names[[bool(d) for d in entries].index(False)]}, "
            "which never had a gradient?); optadam keeps one step count for all parameters"
        )

    def per_parameter(key: str, like: Any) -> Any:
        leaves, treedef = jax.tree.flatten(like)
        loaded = [
            _loaded(key, n, d[key], p, x)
            for n, d, p, x in zip(names, entries, params, leaves, strict=True)
        ]
        return jax.tree.unflatten(treedef, loaded)

    def scalar(key: str, like: Any) -> Any:
        values = {_numpy(d[key]).item() for d in entries}
        if len(values) > 1:
            raise ValueError(
                f"optadam keeps one {key} per group, the torch state dict has {values}"
            )
        return jnp.asarray(values.pop(), like.dtype)

    return _rebuild(template, per_parameter, scalar)


def load_state_dict(
    tx: optax.GradientTransformation,
    torch_state_dict: Mapping[str, Any],
    params: optax.Params,
    *,
    step: int | None = None,
) -> TorchState:
    """The optadam state of ``tx`` that continues a torch optimizer from its ``state_dict()``.

    ``tx`` is the optadam.torch optimizer built with the torch optimizer's arguments (its param
    groups in torch's order), ``params`` the parameters (the state's shapes and dtypes). Values may
    be torch tensors or NumPy arrays. torch's state is lazily created, so a state dict with no
    per-parameter state (no step taken yet) gives ``tx.init(params)`` with torch's hyperparameters.

    Each group's ``lr``, ``momentum`` or ``betas`` are loaded (as torch loads them; a group whose
    lr is a schedule keeps its schedule). Its other hyperparameters must be ``tx``'s.

    Args:
      tx: an optadam.torch optimizer, e.g. ``optadam.torch.Adam(lr=1e-3)``.
      torch_state_dict: ``torch_optimizer.state_dict()``.
      params: the parameters the state is for.
      step: the number of steps taken. Needed for SGD with a schedule, as torch's SGD keeps no step
        count (pass the LR scheduler's ``last_epoch``); elsewhere read from the state dict, and if
        given it must agree.

    Raises:
      ValueError: a state dict of another optimizer, other groups or another number of
        parameters in a group, other fixed hyperparameters, unknown or missing keys, shapes that
        differ from the parameters', or steps that differ between parameters; each names the group,
        the parameter or the key.
    """
    tx = _check_optimizer(tx)
    layout = _Layout(tx, params)
    groups = _check_torch_groups(tx, torch_state_dict, layout)
    state = torch_state_dict["state"]
    entries = [[dict(state.get(i, {})) for i in group["params"]] for group in groups]
    names = [
        [f"parameter {i} ({layout.names[leaf]})" for i, leaf in zip(g["params"], m, strict=True)]
        for g, m in zip(groups, layout.members, strict=True)
    ]
    flat_names = [n for group in names for n in group]
    count = _count(tx, flat_names, [d for group in entries for d in group], step)
    template = tx.init(params)
    group_states = tuple(
        _load_group(tx, s, n, [layout.leaves[i] for i in m], e)
        for s, n, m, e in zip(template.groups, names, layout.members, entries, strict=True)
    )
    hyperparams = []
    for theirs, mine in zip(groups, tx.param_groups, strict=True):
        values = {key: theirs[key] for key in tx.schedulable}
        if callable(mine["lr"]):
            values["lr"] = mine["lr"](jnp.asarray(count, jnp.int32))
        hyperparams.append(_groups.as_arrays(values, params))
    return TorchState(
        count=jnp.asarray(count, template.count.dtype),
        hyperparams=tuple(hyperparams),
        groups=group_states,
    )


# --- optadam -> torch --------------------------------------------------------------------------


def state_dict(
    tx: optax.GradientTransformation, state: optax.OptState, params: optax.Params
) -> dict[str, Any]:
    """The torch ``state_dict()`` of an optadam.torch optimizer's state, for
    ``torch_optimizer.load_state_dict``; needs torch.

    Group k is ``tx.param_groups[k]``, with the current lr, momentum or betas of the state (for a
    schedule, the lr of the next step); its parameter indices number its leaves, group after group.
    Before the first step the per-parameter state is empty, as torch's is (Adagrad's excepted,
    which torch creates with the optimizer).

    Args:
      tx: the optadam.torch optimizer, e.g. ``optadam.torch.Adam(lr=1e-3)``.
      state: its state (``tx.init(params)`` after any number of updates).
      params: the parameters (for the order of the leaves).

    Returns:
      ``{"state": {i: {key: torch.Tensor}}, "param_groups": [{..., "params": [i, ...]}, ...]}``.
    """
    tx = _check_optimizer(tx)
    torch = importlib.import_module("torch")
    expected: Any = jax.tree.structure(jax.eval_shape(tx.init, params))
    if jax.tree.structure(state) != expected:
        raise ValueError(
            f"state is not a state of {tx!r} for these params: its tree is "
            f"{jax.tree.structure(state)}, expected {expected}"
        )
    layout = _Layout(tx, params)
    scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    count = int(np.asarray(state.count))

    def tensor(x: Any, complex_param: bool) -> Any:
        array = np.asarray(x)
        if complex_param:
            array = array[..., 0] + 1j * array[..., 1]
            array = array.astype(np.result_type(x.dtype, np.complex64))
        if array.dtype == jnp.bfloat16:  # torch.from_numpy does not take bfloat16
            return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.array(array))

    entries: list[dict[str, Any]] = []
    param_groups = []
    for k, group_state in enumerate(state.groups):
        members = [layout.leaves[i] for i in layout.members[k]]
        mine: list[dict[str, Any]] = [{} for _ in members]
        if tx.torch_name not in STEPLESS:
            for d in mine:
                d["step"] = torch.tensor(float(count), dtype=scalar_dtype)

        def per_parameter(key: str, tree: Any, mine: Any = mine, members: Any = members) -> Any:
            for d, p, x in zip(mine, members, jax.tree.leaves(tree), strict=True):
                d[key] = tensor(x, jnp.iscomplexobj(p))
            return tree

        def scalar(key: str, value: Any, mine: Any = mine) -> Any:
            for d in mine:
                d[key] = torch.tensor(np.asarray(value).item(), dtype=scalar_dtype)
            return value

        _rebuild(group_state, per_parameter, scalar)
        if count == 0 and tx.torch_name != "Adagrad":  # torch creates its state at the first step
            mine = [{} for _ in members]
        first = len(entries)
        entries += mine
        group = {key: _plain(value) for key, value in tx.param_groups[k].items() if key != "params"}
        group |= {key: _plain(value) for key, value in state.hyperparams[k].items()}
        group["params"] = list(range(first, len(entries)))
        param_groups.append(group)
    return {"state": {i: d for i, d in enumerate(entries) if d}, "param_groups": param_groups}
