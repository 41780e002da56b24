"""The arithmetic of torch.optim.lr_scheduler (2.13), as pure functions of arrays: what every
scheduler shares (torch's ``LRScheduler``) here; the schedulers in ``_decay``, ``_cyclic``,
``_plateau`` and ``_composite``.

Each class mirrors one torch scheduler: ``construct`` is its constructor (which ends with a first
``step``), ``step`` is ``scheduler.step()``. They take and return the group values a scheduler
reads and writes -- ``hp["lr"]`` (one entry per param group), ``hp["momentum"]`` (SGD's momentum
or Adam's β1, when the optimizer has one) and ``hp["initial_lr"]`` (None until a scheduler sets
it, as torch's ``group.setdefault("initial_lr", ...)``) -- so that schedulers chained on the same
groups see each other's values, as in torch.

Every formula is written as torch writes it, operation by operation: torch's ``get_lr`` uses
recursive forms (lr_t from lr_{t−1}) that round differently from the closed forms, and the values
agree with torch's to the last bit only if the operations are the same. Branches become
``jnp.where``; the state is arrays, so a jitted step never recompiles when the LR changes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Hyperparams = dict[str, Any]  # "lr", "initial_lr", "momentum": arrays of one entry per group


class SchedulerState(NamedTuple):
    """What torch keeps in a scheduler's ``__dict__`` that changes as it steps."""

    last_epoch: jax.Array  # torch's last_epoch: the scheduler steps taken, −1 before the first
    step_count: jax.Array  # torch's _step_count (read by CosineAnnealingLR)
    base_lrs: jax.Array  # torch's base_lrs, one per group
    last_lr: jax.Array  # torch's _last_lr: the group LRs after this scheduler's last step
    extra: dict[str, Any]  # what one scheduler adds (T_cur, best, the sub-schedulers' states, ...)


def int_array(value: Any) -> jax.Array:
    return jnp.asarray(value, dtype=int)  # int64 with jax_enable_x64, as torch's Python ints


def float_array(value: Any) -> jax.Array:
    return jnp.asarray(value, dtype=float)  # float64 with jax_enable_x64, as torch's floats


def opaque(value: Any) -> jax.Array:
    """A divisor XLA cannot see as a constant: it turns x / c into x · (1/c), which rounds
    differently from torch's division (and made 1 − t/T nonzero at t = T)."""
    return jax.lax.optimization_barrier(float_array(value))


class Schedule:
    """A torch scheduler's arithmetic. Subclasses define ``get_lr`` (and ``closed_form`` where
    torch has ``_get_closed_form_lr``); the stepping is torch's ``LRScheduler``."""

    torch_name = "LRScheduler"
    chainable = True  # SequentialLR and ChainedScheduler accept it (not ReduceLROnPlateau)

    def __init__(self, n_groups: int, last_epoch: int = -1) -> None:
        self.n_groups = n_groups
        self.last_epoch = last_epoch

    # -- torch's LRScheduler ------------------------------------------------------------------

    def before_construct(self, hp: Hyperparams) -> Hyperparams:
        """What a subclass's constructor does to the groups before ``LRScheduler.__init__``."""
        return hp

    def extra_state(self) -> dict[str, Any]:
        return {}

    def construct(self, hp: Hyperparams) -> tuple[SchedulerState, Hyperparams]:
        """torch's constructor: initial_lr and base_lrs, then ``_initial_step``."""
        hp = self.before_construct(dict(hp))
        if hp["initial_lr"] is None:
            # torch: group.setdefault("initial_lr", lr); with last_epoch >= 0 torch requires an
            # initial_lr from a loaded optimizer, and here the group's own lr stands for it.
            hp["initial_lr"] = hp["lr"]
        state = SchedulerState(
            last_epoch=int_array(self.last_epoch),
            step_count=int_array(0),
            base_lrs=self.base_lrs(hp),
            last_lr=hp["lr"],
            extra=self.extra_state(),
        )
        return self.initial_step(state, hp)

    def base_lrs(self, hp: Hyperparams) -> jax.Array:
        return hp["initial_lr"]

    def initial_step(
        self, state: SchedulerState, hp: Hyperparams
    ) -> tuple[SchedulerState, Hyperparams]:
        """torch's ``_initial_step``: ``_step_count = 0``, then a step in "initial mode"."""
        return self._step(state._replace(step_count=int_array(0)), hp, initial=True)

    def step(
        self, state: SchedulerState, hp: Hyperparams, metric: Any = None
    ) -> tuple[SchedulerState, Hyperparams]:
        """torch's ``scheduler.step()``."""
        return self._step(state, hp, initial=False)

    def _step(
        self, state: SchedulerState, hp: Hyperparams, initial: bool
    ) -> tuple[SchedulerState, Hyperparams]:
        state = state._replace(step_count=state.step_count + 1, last_epoch=state.last_epoch + 1)
        lr, hp = self.get_lr(state, hp, initial)
        return state._replace(last_lr=lr), {**hp, "lr": lr}

    def update_lr_at_zero(
        self, state: SchedulerState, hp: Hyperparams
    ) -> tuple[SchedulerState, Hyperparams]:
        """torch's ``_update_lr(0)`` (SequentialLR, at a milestone): the closed form at epoch 0
        where the scheduler has one, else ``get_lr``."""
        state = state._replace(last_epoch=int_array(0))
        lr = self.closed_form(state)
        if lr is None:
            lr, hp = self.get_lr(state, hp, initial=False)
        return state._replace(last_lr=lr), {**hp, "lr": lr}

    def undo(self, state: SchedulerState) -> SchedulerState:
        """SequentialLR's ``recursive_undo``: one step back on ``last_epoch``."""
        return state._replace(last_epoch=state.last_epoch - 1)

    def get_lr(
        self, state: SchedulerState, hp: Hyperparams, initial: bool
    ) -> tuple[jax.Array, Hyperparams]:
        raise NotImplementedError

    def closed_form(self, state: SchedulerState) -> jax.Array | None:
        return None

    def group_entries(self) -> dict[str, list[Any]]:
        """What the constructor writes into each param group besides lr, initial_lr and momentum
        (one value per group): torch's optimizer state dict carries it."""
        return {}

    # -- torch's state_dict --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as torch keeps them in ``state_dict()``."""
        return {}

    def to_torch(self, state: SchedulerState) -> dict[str, Any]:
        return {
            **self.config(),
            "base_lrs": floats(state.base_lrs),
            "last_epoch": int(state.last_epoch),
            "_step_count": int(state.step_count),
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": floats(state.last_lr),
        }

    def from_torch(self, torch_state: dict[str, Any], where: str) -> SchedulerState:
        check_config(self.config(), torch_state, where)
        return SchedulerState(
            last_epoch=int_array(entry(torch_state, "last_epoch", where)),
            step_count=int_array(entry(torch_state, "_step_count", where)),
            base_lrs=self._group_floats(torch_state, "base_lrs", where),
            last_lr=self._group_floats(torch_state, "_last_lr", where),
            extra=self.extra_state(),
        )

    def _group_floats(self, torch_state: dict[str, Any], key: str, where: str) -> jax.Array:
        values = entry(torch_state, key, where)
        if len(values) != self.n_groups:
            raise ValueError(
                f"{where}[{key!r}] has {len(values)} values, the optimizer {self.n_groups} groups"
            )
        return float_array([float(v) for v in values])


def floats(array: jax.Array) -> list[float]:
    return [float(v) for v in array]


def entry(torch_state: dict[str, Any], key: str, where: str) -> Any:
    if key not in torch_state:
        raise ValueError(f"{where} has no {key!r}: is it another scheduler's state_dict?")
    return torch_state[key]


def check_config(config: dict[str, Any], torch_state: dict[str, Any], where: str) -> None:
    """The constructor's arguments are fixed (they shape the jitted step): a state dict that
    disagrees is refused, naming the argument, where torch would take the dict's value."""
    for key, value in config.items():
        theirs = entry(torch_state, key, where)
        if theirs != value:
            raise ValueError(
                f"{where}[{key!r}] is {theirs!r}, but this scheduler was built with {value!r}; "
                "build it with the same arguments as the torch scheduler"
            )


def per_group(name: str, value: Any, n_groups: int) -> list[Any]:
    """torch's ``_format_param``: one value for every group, or a list with one per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(
                f"{name} must have one value per param group: got {len(value)} values for "
                f"{n_groups} groups"
            )
        return list(value)
    return [value] * n_groups


def check_increasing(name: str, milestones: Sequence[int]) -> None:
    if any(b < a for a, b in itertools.pairwise(milestones)):
        raise ValueError(f"{name} must be in increasing order, got {list(milestones)}")


def traced(name: str, fn: Callable[..., Any], *args: Any) -> jax.Array:
    """Call a user function with traced arguments, saying what to do when it needs Python values."""
    try:
        return float_array(fn(*args))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerBoolConversionError) as error:
        raise TypeError(
            f"{name} must be traceable by JAX: it receives the step as an integer array, not a "
            "Python int, so write min/max/math.cos/`if` as jnp.minimum/jnp.maximum/jnp.cos/"
            "jnp.where"
        ) from error


def refuse_past_total_steps(step: jax.Array, total_steps: int) -> None:
    """torch's OneCycleLR raises when stepped past ``total_steps``. A traced step cannot raise
    while tracing, so the check runs on the host when the step executes, and only then (a
    ``jax.debug.callback`` under ``lax.cond``): the ValueError surfaces from the jitted call."""

    def fail(step: Any) -> None:
        raise ValueError(
            f"OneCycleLR was stepped {int(step)} times, past its total_steps={total_steps} "
            "(torch raises here too): raise total_steps, or epochs/steps_per_epoch"
        )

    if not isinstance(step, jax.core.Tracer):
        if int(step) > total_steps:
            fail(step)
        return
    jax.lax.cond(step > total_steps, lambda: jax.debug.callback(fail, step), lambda: None)
