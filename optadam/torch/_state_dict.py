"""Carrying an optimizer's state across: torch.optim's ``state_dict()`` to optadam.torch and back.

torch's ``optimizer.state_dict()`` is ``{"state": {i: {key: tensor, ...}}, "param_groups": [{...,
"params": [i, ...]}]}``: the state of each parameter under an integer index, the indices numbered
through the param groups in order. Index i here is the i-th leaf of ``jax.tree.leaves(params)``:
register a model's parameters with torch in that order (``torch.optim.Adam(list_of_tensors)``), or
order the pytree's leaves as ``model.parameters()`` does.

Each optadam state field has a torch name (:data:`TORCH_KEYS`); every step ``count`` is torch's
``step`` (one count for all parameters: torch keeps one per parameter, and they must agree).
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
from optadam.adam import ScaleByAdamState, ScaleByAmsgradState
from optadam.momentum import ScaleByMomentumState
from optadam.rmsprop import ScaleByRmsState
from optadam.torch._common import TorchOptimizer, value_at
from optadam.torch.adagrad import Adagrad
from optadam.torch.adam import Adam, AdamW
from optadam.torch.nadam import NAdam, ScaleByNadamState
from optadam.torch.radam import RAdam
from optadam.torch.rmsprop import RMSprop
from optadam.torch.sgd import SGD, ScaleByDampenedMomentumState

# For each state type in an optadam.torch optimizer: field -> torch's per-parameter key, for the
# fields that hold one array per parameter. The scalars are `count` (torch's `step`) and NAdam's
# `mu_product` (torch's `mu_product`).
TORCH_KEYS: dict[type, dict[str, str]] = {
    ScaleByAdamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByAmsgradState: {"mu": "exp_avg", "nu": "exp_avg_sq", "nu_max": "max_exp_avg_sq"},
    ScaleByNadamState: {"mu": "exp_avg", "nu": "exp_avg_sq"},
    ScaleByRmsState: {"mu": "grad_avg", "nu": "square_avg"},
    ScaleByMomentumState: {"trace": "momentum_buffer"},
    ScaleByDampenedMomentumState: {"trace": "momentum_buffer"},
    ScaleByAdagradState: {"sum_of_squares": "sum"},
    optax.ScaleByScheduleState: {},
    optax.EmptyState: {},
}
_SCALARS = {"count": "step", "mu_product": "mu_product"}
# Param-group keys that are not hyperparameters (torch's own, and LR schedulers').
_BOOKKEEPING = {"params", "param_names", "initial_lr"}
# Hyperparameters newer than some torch versions' state dicts; the others must be there.
_OPTIONAL = {
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "maximize",
    "decoupled_weight_decay",
}


def _rebuild(
    node: Any, per_parameter: Callable[[str, Any], Any], scalar: Callable[[str, Any], Any]
) -> Any:
    """The state tree with each per-parameter field replaced by ``per_parameter(torch_key, tree)``
    and each scalar by ``scalar(torch_key, value)``; fields that are None stay None."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        keys = TORCH_KEYS.get(type(node))
        if keys is None:
            raise TypeError(f"optadam.torch has no torch equivalent of the state {type(node)}")
        fields: dict[str, Any] = {}
        for name, value in zip(node._fields, node, strict=True):
            if value is None:
                fields[name] = None
            elif name in keys:
                fields[name] = per_parameter(keys[name], value)
            else:
                fields[name] = scalar(_SCALARS[name], value)
        return type(node)(**fields)
    if isinstance(node, tuple):
        return tuple(_rebuild(child, per_parameter, scalar) for child in node)
    raise TypeError(f"unexpected node in an optadam.torch state: {node!r}")


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


def _leaf_names(params: optax.Params) -> list[str]:
    paths, _ = jax.tree_util.tree_flatten_with_path(params)
    return [
        f"parameter {i} (leaf {jax.tree_util.keystr(path) or 'params'})"
        for i, (path, _) in enumerate(paths)
    ]


def _torch_parameters(tx: TorchOptimizer, torch_state_dict: Any, n: int) -> list[dict[str, Any]]:
    """The per-parameter state dicts of a torch state dict, in index order, after checking that it
    comes from the same torch.optim class and holds ``n`` parameters."""
    if not isinstance(torch_state_dict, Mapping) or set(torch_state_dict) != {
        "state",
        "param_groups",
    }:
        keys = sorted(torch_state_dict) if isinstance(torch_state_dict, Mapping) else None
        raise ValueError(
            "expected a torch optimizer's state_dict(), a dict with the keys 'state' and "
            f"'param_groups', got {type(torch_state_dict).__name__} with keys {keys}"
        )
    groups = torch_state_dict["param_groups"]
    ours = set(tx.param_group)
    others = _all_hyperparameters() - ours
    for j, group in enumerate(groups):
        foreign = sorted(set(group) & others)
        missing = sorted(ours - _OPTIONAL - set(group))
        if foreign or missing:
            raise ValueError(
                f"param_groups[{j}] is not a torch.optim.{tx.torch_name} param group: "
                f"it has {foreign} (not {tx.torch_name}'s) and lacks {missing}"
            )
        differ = sorted(
            k
            for k in (set(group) | set(groups[0])) - _BOOKKEEPING
            if group.get(k) != groups[0].get(k)
        )
        if differ:
            raise ValueError(
                f"param_groups[0] and param_groups[{j}] differ in {differ}; one optadam.torch "
                "optimizer has one set of hyperparameters: give each group its own (e.g. with "
                "optax.multi_transform) and load each from a state dict of that group alone"
            )
    indices = [i for group in groups for i in group["params"]]
    if len(indices) != n:
        raise ValueError(
            f"the torch state dict has {len(indices)} parameters (param_groups' 'params': "
            f"{[group['params'] for group in groups]}) but params has {n} leaves"
        )
    state = torch_state_dict["state"]
    unknown = sorted(set(state) - set(indices), key=str)
    if unknown:
        raise ValueError(f"the torch state dict has state for unknown parameter indices {unknown}")
    return [dict(state.get(i, {})) for i in indices]


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
    return {key for factory in factories for key in factory().param_group}


def _one_value(name: str, values: list[tuple[str, Any]]) -> Any:
    first_where, first = values[0]
    for where, value in values[1:]:
        if not np.array_equal(value, first):
            raise ValueError(
                f"optadam keeps one {name} for all parameters, but the torch state dict has "
                f"{name} {first} for {first_where} and {value} for {where}"
            )
    return first


def load_state_dict(
    tx: optax.GradientTransformation,
    torch_state_dict: Mapping[str, Any],
    params: optax.Params,
    *,
    step: int | None = None,
) -> optax.OptState:
    """The optadam state of ``tx`` that continues a torch optimizer from its ``state_dict()``.

    ``tx`` is the optadam.torch optimizer built with the torch optimizer's arguments, ``params``
    the parameters (the state's shapes and dtypes; leaf i is torch's parameter index i). Values
    may be torch tensors or NumPy arrays. torch's state is lazily created, so a state dict with no
    per-parameter state (no step taken yet) gives ``tx.init(params)``.

    Hyperparameters are ``tx``'s: the state dict's ``param_groups`` are read for their parameter
    indices and checked to be the same torch.optim class, not for their values (torch would load
    them; set them in ``tx``).

    Args:
      tx: an optadam.torch optimizer, e.g. ``optadam.torch.Adam(lr=1e-3)``.
      torch_state_dict: ``torch_optimizer.state_dict()``.
      params: the parameters the state is for.
      step: the number of steps taken. Needed for SGD with a schedule, as torch's SGD keeps no step
        count (pass the LR scheduler's ``last_epoch``); elsewhere read from the state dict, and if
        given it must agree.

    Raises:
      ValueError: a state dict of another optimizer or another number of parameters, unknown or
        missing keys, shapes that differ from the parameters', or steps that differ between
        parameters.
    """
    tx = _check_optimizer(tx)
    template = tx.init(params)
    param_leaves = jax.tree.leaves(params)
    names = _leaf_names(params)
    torch_params = _torch_parameters(tx, torch_state_dict, len(param_leaves))

    expected: set[str] = set()

    def expect(key: str, value: Any) -> Any:
        expected.add(key)
        return value

    _rebuild(template, expect, expect)
    if tx.torch_name == "SGD":
        expected.discard("step")
    stepped = [bool(d) for d in torch_params]
    for name, d in zip(names, torch_params, strict=True):
        if d and set(d) != expected:
            raise ValueError(
                f"torch.optim.{tx.torch_name} state for {name}: unknown keys "
                f"{sorted(set(d) - expected)}, missing keys {sorted(expected - set(d))} "
                f"(expected {sorted(expected)})"
            )
    if any(stepped) and not all(stepped):
        raise ValueError(
            f"the torch state dict has state for {stepped.count(True)} of {len(stepped)} "
            f"parameters (none for {names[stepped.index(False)]}, which never had a gradient?); "
            "optadam keeps one step count for all parameters"
        )

    def one_value(key: str) -> Any:
        values = [(n, _numpy(d[key]).item()) for n, d in zip(names, torch_params, strict=True)]
        return _one_value(key, values)

    torch_step = None  # SGD keeps none
    if "step" in expected:
        torch_step = int(one_value("step")) if any(stepped) else 0
    if torch_step is not None:
        if step is not None and step != torch_step:
            raise ValueError(f"step={step} but the torch state dict's step is {torch_step}")
        count = torch_step
    elif step is not None:  # SGD
        if any(stepped) and step == 0:
            raise ValueError("step=0, but the torch state dict has momentum buffers")
        count = step
    elif callable(tx.param_group["lr"]):
        raise ValueError(
            "torch's SGD keeps no step count and this SGD's lr is a schedule: pass step= "
            "(the number of steps taken, e.g. the LR scheduler's last_epoch)"
        )
    else:
        count = 1 if any(stepped) else 0  # the momentum buffer exists from the first step

    def per_parameter(key: str, like: Any) -> Any:
        if not any(stepped):
            return like
        leaves, treedef = jax.tree.flatten(like)
        loaded = []
        for name, p, d, x in zip(names, param_leaves, torch_params, leaves, strict=True):
            value = _numpy(d[key])
            if jnp.iscomplexobj(p) != np.iscomplexobj(value):
                raise ValueError(
                    f"torch's {key} for {name} is {value.dtype} but the parameter is "
                    f"{jnp.result_type(p)}"
                )
            if np.iscomplexobj(value):  # optadam.torch holds complex leaves as (real, imag) pairs
                value = np.stack([value.real, value.imag], axis=-1)
            if value.shape != x.shape:
                shape = x.shape[:-1] if jnp.iscomplexobj(p) else x.shape
                raise ValueError(
                    f"torch's {key} for {name} has shape {_numpy(d[key]).shape}, the parameter "
                    f"has shape {shape}"
                )
            loaded.append(jnp.asarray(value, x.dtype))
        return jax.tree.unflatten(treedef, loaded)

    def scalar(key: str, like: Any) -> Any:
        if key == "step":
            return jnp.asarray(count, like.dtype)
        return jnp.asarray(one_value(key), like.dtype) if any(stepped) else like

    return _rebuild(template, per_parameter, scalar)


def state_dict(
    tx: optax.GradientTransformation, state: optax.OptState, params: optax.Params
) -> dict[str, Any]:
    """The torch ``state_dict()`` of an optadam.torch optimizer's state, for
    ``torch_optimizer.load_state_dict``; needs torch.

    Leaf i of ``jax.tree.leaves(params)`` becomes torch's parameter index i, in one param group
    whose hyperparameters are ``tx``'s (for a schedule, ``lr`` is its value at the next step).
    Before the first step the per-parameter state is empty, as torch's is (Adagrad's excepted,
    which torch creates with the optimizer).

    Args:
      tx: the optadam.torch optimizer, e.g. ``optadam.torch.Adam(lr=1e-3)``.
      state: its state (``tx.init(params)`` after any number of updates).
      params: the parameters (for the order of the leaves).

    Returns:
      ``{"state": {i: {key: torch.Tensor}}, "param_groups": [{..., "params": [0, 1, ...]}]}``.
    """
    tx = _check_optimizer(tx)
    torch = importlib.import_module("torch")
    expected: Any = jax.tree.structure(jax.eval_shape(tx.init, params))
    if jax.tree.structure(state) != expected:
        raise ValueError(
            f"state is not a state of {tx!r} for these params: its tree is "
            f"{jax.tree.structure(state)}, expected {expected}"
        )
    param_leaves = jax.tree.leaves(params)
    per_param: list[dict[str, Any]] = [{} for _ in param_leaves]
    scalars: dict[str, set[Any]] = {}
    scalar_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

    def tensor(x: Any, complex_param: bool) -> Any:
        array = np.asarray(x)
        if complex_param:
            array = array[..., 0] + 1j * array[..., 1]
            array = array.astype(np.result_type(x.dtype, np.complex64))
        if array.dtype == jnp.bfloat16:  # torch.from_numpy does not take bfloat16
            return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.array(array))

    def per_parameter(key: str, tree: Any) -> Any:
        for d, p, x in zip(per_param, param_leaves, jax.tree.leaves(tree), strict=True):
            d[key] = tensor(x, jnp.iscomplexobj(p))
        return tree

    def scalar(key: str, value: Any) -> Any:
        scalars.setdefault(key, set()).add(np.asarray(value).item())
        return value

    _rebuild(state, per_parameter, scalar)
    if any(len(values) > 1 for values in scalars.values()):
        raise ValueError(f"the state's step counts differ ({scalars}): not a state tx.update made")
    count = int(*scalars["step"])
    for key, [value] in scalars.items():
        if key != "step" or tx.torch_name != "SGD":
            for d in per_param:
                d[key] = torch.tensor(float(value), dtype=scalar_dtype)
    if count == 0 and tx.torch_name != "Adagrad":  # torch creates its state at the first step
        per_param = [{} for _ in param_leaves]
    group = {k: _plain(v) for k, v in tx.param_group.items()}
    group["lr"] = _plain(value_at(tx.param_group["lr"], jnp.asarray(count, jnp.int32)))
    group["params"] = list(range(len(param_leaves)))
    return {"state": {i: d for i, d in enumerate(per_param) if d}, "param_groups": [group]}


def _plain(value: Any) -> Any:
    """A hyperparameter as torch keeps it: Python numbers, tuples of them, bools, None."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        return np.asarray(value).item()
    return value
