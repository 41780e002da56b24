"""The arithmetic of torch.optim.lr_scheduler (2.13), as pure functions of arrays.

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

import bisect
import itertools
import math
from collections import Counter
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


def _int(value: Any) -> jax.Array:
    return jnp.asarray(value, dtype=int)  # int64 with jax_enable_x64, as torch's Python ints


def _float(value: Any) -> jax.Array:
    return jnp.asarray(value, dtype=float)  # float64 with jax_enable_x64, as torch's floats


def _opaque(value: Any) -> jax.Array:
    """A divisor XLA cannot see as a constant: it turns x / c into x · (1/c), which rounds
    differently from torch's division (and made 1 − t/T nonzero at t = T)."""
    return jax.lax.optimization_barrier(_float(value))


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
            last_epoch=_int(self.last_epoch),
            step_count=_int(0),
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
        return self._step(state._replace(step_count=_int(0)), hp, initial=True)

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
        state = state._replace(last_epoch=_int(0))
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
            "base_lrs": _floats(state.base_lrs),
            "last_epoch": int(state.last_epoch),
            "_step_count": int(state.step_count),
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": _floats(state.last_lr),
        }

    def from_torch(self, torch_state: dict[str, Any], where: str) -> SchedulerState:
        _check_config(self.config(), torch_state, where)
        return SchedulerState(
            last_epoch=_int(_entry(torch_state, "last_epoch", where)),
            step_count=_int(_entry(torch_state, "_step_count", where)),
            base_lrs=self._group_floats(torch_state, "base_lrs", where),
            last_lr=self._group_floats(torch_state, "_last_lr", where),
            extra=self.extra_state(),
        )

    def _group_floats(self, torch_state: dict[str, Any], key: str, where: str) -> jax.Array:
        values = _entry(torch_state, key, where)
        if len(values) != self.n_groups:
            raise ValueError(
                f"{where}[{key!r}] has {len(values)} values, the optimizer {self.n_groups} groups"
            )
        return _float([float(v) for v in values])


def _floats(array: jax.Array) -> list[float]:
    return [float(v) for v in array]


def _entry(torch_state: dict[str, Any], key: str, where: str) -> Any:
    if key not in torch_state:
        raise ValueError(f"{where} has no {key!r}: is it another scheduler's state_dict?")
    return torch_state[key]


def _check_config(config: dict[str, Any], torch_state: dict[str, Any], where: str) -> None:
    """The constructor's arguments are fixed (they shape the jitted step): a state dict that
    disagrees is refused, naming the argument, where torch would take the dict's value."""
    for key, value in config.items():
        theirs = _entry(torch_state, key, where)
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


def _traced(name: str, fn: Callable[..., Any], *args: Any) -> jax.Array:
    """Call a user function with traced arguments, saying what to do when it needs Python values."""
    try:
        return _float(fn(*args))
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


# --- the schedulers ---------------------------------------------------------------------------


class LambdaLR(Schedule):
    """lr = base_lr · λ(last_epoch)."""

    torch_name = "LambdaLR"

    def __init__(self, n_groups: int, lr_lambdas: list[Callable[[Any], Any]], last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.lr_lambdas = lr_lambdas

    def get_lr(self, state, hp, initial):
        factors = jnp.stack([_traced("lr_lambda", f, state.last_epoch) for f in self.lr_lambdas])
        return state.base_lrs * factors, hp

    def config(self):
        return {}

    def to_torch(self, state):
        return {**super().to_torch(state), "lr_lambdas": [None] * self.n_groups}


class MultiplicativeLR(LambdaLR):
    """lr ← lr · λ(last_epoch), the initial step excepted."""

    torch_name = "MultiplicativeLR"

    def get_lr(self, state, hp, initial):
        if initial:
            return hp["lr"], hp
        factors = jnp.stack([_traced("lr_lambda", f, state.last_epoch) for f in self.lr_lambdas])
        return hp["lr"] * factors, hp


class StepLR(Schedule):
    """lr ← lr · γ every ``step_size`` steps."""

    torch_name = "StepLR"

    def __init__(self, n_groups, step_size: int, gamma: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.step_size, self.gamma = step_size, gamma

    def get_lr(self, state, hp, initial):
        t = state.last_epoch
        keep = (t == 0) | (t % self.step_size != 0)
        return jnp.where(keep, hp["lr"], hp["lr"] * self.gamma), hp

    def closed_form(self, state):
        return state.base_lrs * self.gamma ** (state.last_epoch // self.step_size)

    def config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(Schedule):
    """lr ← lr · γ^(times last_epoch is a milestone)."""

    torch_name = "MultiStepLR"

    def __init__(self, n_groups, milestones: Sequence[int], gamma: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.milestones = Counter(milestones)
        self.gamma = gamma
        self._at = jnp.asarray(sorted(self.milestones), dtype=int)
        self._times = jnp.asarray([self.milestones[m] for m in sorted(self.milestones)], dtype=int)
        self._sorted = jnp.asarray(sorted(self.milestones.elements()), dtype=int)

    def get_lr(self, state, hp, initial):
        times = jnp.sum(jnp.where(self._at == state.last_epoch, self._times, 0))
        return jnp.where(times > 0, hp["lr"] * self.gamma**times, hp["lr"]), hp

    def closed_form(self, state):
        passed = jnp.sum(self._sorted <= state.last_epoch)  # bisect_right
        return state.base_lrs * self.gamma**passed

    def config(self):
        return {"milestones": self.milestones, "gamma": self.gamma}


class ConstantLR(Schedule):
    """lr = base_lr · factor until ``total_iters``, then base_lr."""

    torch_name = "ConstantLR"

    def __init__(self, n_groups, factor: float, total_iters: int, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.factor, self.total_iters = factor, total_iters

    def get_lr(self, state, hp, initial):
        t, lr = state.last_epoch, hp["lr"]
        lr = jnp.where(t == self.total_iters, lr * (1.0 / self.factor), lr)
        return jnp.where(t == 0, hp["lr"] * self.factor, lr), hp

    def closed_form(self, state):
        done = state.last_epoch >= self.total_iters
        return state.base_lrs * (self.factor + done * (1 - self.factor))

    def config(self):
        return {"factor": self.factor, "total_iters": self.total_iters}


class LinearLR(Schedule):
    """lr from base_lr · start_factor to base_lr · end_factor over ``total_iters`` steps, each
    step multiplying the previous lr (torch's recursive form)."""

    torch_name = "LinearLR"

    def __init__(self, n_groups, start_factor, end_factor, total_iters: int, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.start_factor, self.end_factor = start_factor, end_factor
        self.total_iters = total_iters

    def get_lr(self, state, hp, initial):
        t, lr = state.last_epoch, hp["lr"]
        start, end, n = self.start_factor, self.end_factor, self.total_iters
        ratio = 1.0 + (end - start) / (n * start + (t - 1) * (end - start))
        moved = lr if initial else jnp.where(t > n, lr, lr * ratio)
        return jnp.where(t == 0, lr * start, moved), hp

    def closed_form(self, state):
        start, end, n = self.start_factor, self.end_factor, self.total_iters
        return state.base_lrs * (
            start + (end - start) * jnp.minimum(n, state.last_epoch) / _opaque(n)
        )

    def config(self):
        return {
            "start_factor": self.start_factor,
            "end_factor": self.end_factor,
            "total_iters": self.total_iters,
        }


class ExponentialLR(Schedule):
    """lr ← lr · γ every step."""

    torch_name = "ExponentialLR"

    def __init__(self, n_groups, gamma: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.gamma = gamma

    def get_lr(self, state, hp, initial):
        return (hp["lr"] if initial else hp["lr"] * self.gamma), hp

    def closed_form(self, state):
        return state.base_lrs * self.gamma**state.last_epoch

    def config(self):
        return {"gamma": self.gamma}


class PolynomialLR(Schedule):
    """lr ← lr · ((1 − t/T) / (1 − (t−1)/T))^power, to 0 at t = T (torch's recursive form)."""

    torch_name = "PolynomialLR"

    def __init__(self, n_groups, total_iters: int, power: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.total_iters, self.power = total_iters, power

    def get_lr(self, state, hp, initial):
        t, n = state.last_epoch, self.total_iters
        if initial:
            return hp["lr"], hp
        decay = ((1.0 - t / _opaque(n)) / (1.0 - (t - 1) / _opaque(n))) ** self.power
        return jnp.where(t > n, hp["lr"], hp["lr"] * decay), hp

    def closed_form(self, state):
        n = self.total_iters
        return state.base_lrs * (1.0 - jnp.minimum(n, state.last_epoch) / _opaque(n)) ** self.power

    def config(self):
        return {"total_iters": self.total_iters, "power": self.power}


class CosineAnnealingLR(Schedule):
    """η_t = η_min + (η_{t−1} − η_min)·(1 + cos(πt/T))/(1 + cos(π(t−1)/T)) -- torch's recursive
    form, which keeps going past T (back up, as a cosine does)."""

    torch_name = "CosineAnnealingLR"

    def __init__(self, n_groups, T_max: int, eta_min: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.T_max, self.eta_min = T_max, eta_min

    def get_lr(self, state, hp, initial):
        if initial:
            return hp["lr"], hp
        t, lr, base = state.last_epoch, hp["lr"], state.base_lrs
        T, eta_min = self.T_max, self.eta_min
        restart = eta_min + (base - eta_min) * (1 + jnp.cos(t * math.pi / _opaque(T))) / 2
        at_bottom = lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
        recursive = (1 + jnp.cos(math.pi * t / _opaque(T))) / (
            1 + jnp.cos(math.pi * (t - 1) / _opaque(T))
        ) * (lr - eta_min) + eta_min
        lr = jnp.where((t - 1 - T) % (2 * T) == 0, at_bottom, recursive)
        return jnp.where((state.step_count == 1) & (t > 0), restart, lr), hp

    def closed_form(self, state):
        t, T, eta_min = state.last_epoch, self.T_max, self.eta_min
        return eta_min + (state.base_lrs - eta_min) * (1 + jnp.cos(math.pi * t / _opaque(T))) / 2

    def config(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class CosineAnnealingWarmRestarts(Schedule):
    """η = η_min + (base_lr − η_min)·(1 + cos(π·T_cur/T_i))/2, restarting when T_cur reaches T_i
    (and then T_i ← T_i · T_mult). torch overrides ``step``: no ``_step_count``."""

    torch_name = "CosineAnnealingWarmRestarts"

    def __init__(self, n_groups, T_0: int, T_mult: int, eta_min: float, last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.T_0, self.T_mult, self.eta_min = T_0, T_mult, eta_min

    def extra_state(self):
        return {"T_cur": _int(self.last_epoch), "T_i": _int(self.T_0)}

    def initial_step(self, state, hp):
        return self.step(state._replace(step_count=_int(0)), hp)

    def step(self, state, hp, metric=None):
        t_cur, t_i = state.extra["T_cur"] + 1, state.extra["T_i"]
        wrap = t_cur >= t_i
        t_cur, t_i = jnp.where(wrap, t_cur % t_i, t_cur), jnp.where(wrap, t_i * self.T_mult, t_i)
        first = state.last_epoch < 0  # torch: step(epoch=0), T_i = T_0, T_cur = 0
        t_cur, t_i = jnp.where(first, 0, t_cur), jnp.where(first, self.T_0, t_i)
        state = state._replace(
            last_epoch=jnp.where(first, 0, state.last_epoch + 1), extra={"T_cur": t_cur, "T_i": t_i}
        )
        lr, hp = self.get_lr(state, hp, initial=False)
        return state._replace(last_lr=lr), {**hp, "lr": lr}

    def get_lr(self, state, hp, initial):
        t_cur, t_i, eta_min = state.extra["T_cur"], state.extra["T_i"], self.eta_min
        return eta_min + (state.base_lrs - eta_min) * (1 + jnp.cos(math.pi * t_cur / t_i)) / 2, hp

    def config(self):
        return {"T_0": self.T_0, "T_mult": self.T_mult, "eta_min": self.eta_min}

    def to_torch(self, state):
        extra = {"T_i": int(state.extra["T_i"]), "T_cur": int(state.extra["T_cur"])}
        return {**super().to_torch(state), **extra}

    def from_torch(self, torch_state, where):
        state = super().from_torch(torch_state, where)
        extra = {key: _int(_entry(torch_state, key, where)) for key in ("T_cur", "T_i")}
        return state._replace(extra=extra)


class CyclicLR(Schedule):
    """Triangular cycles between base_lr and max_lr (Smith 2017), momentum cycled the other way."""

    torch_name = "CyclicLR"

    def __init__(
        self,
        n_groups,
        base_lr,
        max_lr,
        step_size_up: int,
        step_size_down: int | None,
        mode: str,
        gamma: float,
        scale_fn: Callable[[Any], Any] | None,
        scale_mode: str,
        cycle_momentum: bool,
        base_momentum,
        max_momentum,
        use_beta1: bool,
        last_epoch: int,
    ):
        super().__init__(n_groups, last_epoch)
        self.use_beta1 = use_beta1
        self.base_lrs_arg = per_group("base_lr", base_lr, n_groups)
        self.max_lrs = per_group("max_lr", max_lr, n_groups)
        up = float(step_size_up)
        down = float(step_size_down) if step_size_down is not None else up
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode, self.gamma, self.scale_fn_custom = mode, gamma, scale_fn
        self.scale_mode = scale_mode if scale_fn is not None else _MODE_SCALE[mode]
        self.cycle_momentum = cycle_momentum
        self.base_momentums = per_group("base_momentum", base_momentum, n_groups)
        self.max_momentums = per_group("max_momentum", max_momentum, n_groups)

    def group_entries(self):
        if not self.cycle_momentum:
            return {}
        return {"max_momentum": self.max_momentums, "base_momentum": self.base_momentums}

    def scale_fn(self, x: jax.Array) -> jax.Array:
        if self.scale_fn_custom is not None:
            return _traced("scale_fn", self.scale_fn_custom, x)
        if self.mode == "triangular":
            return _float(1.0)
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def before_construct(self, hp):
        if self.last_epoch == -1:
            hp["lr"] = _float(self.base_lrs_arg)
            if self.cycle_momentum:
                hp["momentum"] = _float(self.max_momentums)
        return hp

    def construct(self, hp):
        # torch sets base_lrs to base_lr after LRScheduler.__init__, so the initial step ran with
        # the groups' initial_lr (the same numbers unless last_epoch >= 0 or initial_lr was set)
        state, hp = super().construct(hp)
        return state._replace(base_lrs=_float(self.base_lrs_arg)), hp

    def get_lr(self, state, hp, initial):
        t = state.last_epoch
        cycle = jnp.floor(1 + t / _opaque(self.total_size)).astype(t.dtype)
        x = 1.0 + t / _opaque(self.total_size) - cycle
        scale_factor = jnp.where(
            x <= self.step_ratio,
            x / _opaque(self.step_ratio),
            (x - 1) / _opaque(self.step_ratio - 1),
        )
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else t)
        base_height = (_float(self.max_lrs) - state.base_lrs) * scale_factor
        lr = state.base_lrs + base_height * scale
        if self.cycle_momentum:
            max_m = _float(self.max_momentums)
            base_height = (max_m - _float(self.base_momentums)) * scale_factor
            hp = {**hp, "momentum": max_m - base_height * scale}
        return lr, hp

    def config(self):
        config = {
            "max_lrs": self.max_lrs,
            "total_size": self.total_size,
            "step_ratio": self.step_ratio,
            "mode": self.mode,
            "gamma": self.gamma,
            "scale_mode": self.scale_mode,
            "cycle_momentum": self.cycle_momentum,
        }
        if self.cycle_momentum:
            config.update(
                use_beta1=self.use_beta1,
                base_momentums=self.base_momentums,
                max_momentums=self.max_momentums,
            )
        return config

    def to_torch(self, state):
        return {**super().to_torch(state), "_scale_fn_custom": None}


_MODE_SCALE = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


class OneCycleLR(Schedule):
    """The 1cycle policy (Smith & Topin 2018): lr from max_lr/div_factor up to max_lr, then down
    to initial_lr/final_div_factor, annealed by cosine or linearly; momentum the other way."""

    torch_name = "OneCycleLR"

    def __init__(
        self,
        n_groups,
        max_lr,
        total_steps: int,
        pct_start: float,
        anneal_strategy: str,
        cycle_momentum: bool,
        base_momentum,
        max_momentum,
        div_factor: float,
        final_div_factor: float,
        three_phase: bool,
        use_beta1: bool,
        last_epoch: int,
    ):
        super().__init__(n_groups, last_epoch)
        self.use_beta1 = use_beta1
        self.total_steps = total_steps
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = cycle_momentum
        max_lrs = per_group("max_lr", max_lr, n_groups)
        initial = [m / div_factor for m in max_lrs]
        self.group_values = {  # what torch writes into each param group
            "initial_lr": initial,
            "max_lr": max_lrs,
            "min_lr": [i / final_div_factor for i in initial],
            "max_momentum": per_group("max_momentum", max_momentum, n_groups),
            "base_momentum": per_group("base_momentum", base_momentum, n_groups),
        }
        end_up = float(pct_start * total_steps) - 1
        if three_phase:
            self.phases = [
                _phase(end_up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(
                    float(2 * pct_start * total_steps) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),
                _phase(total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self.phases = [
                _phase(end_up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]

    def group_entries(self):
        keys = ["max_lr", "min_lr"] + (
            ["max_momentum", "base_momentum"] if self.cycle_momentum else []
        )
        return {key: self.group_values[key] for key in keys}

    def anneal(self, start: Any, end: Any, pct: jax.Array) -> jax.Array:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def before_construct(self, hp):
        if self.last_epoch == -1:
            hp["initial_lr"] = _float(self.group_values["initial_lr"])
            if self.cycle_momentum:
                hp["momentum"] = _float(self.group_values["max_momentum"])
        return hp

    def get_lr(self, state, hp, initial):
        t = state.last_epoch
        value = {k: _float(v) for k, v in self.group_values.items()}
        starts = [0.0] + [phase["end_step"] for phase in self.phases[:-1]]
        annealed = []  # per phase: (lr, momentum) as that phase would give them at t
        for phase, start_step in zip(self.phases, starts, strict=True):
            pct = (t - start_step) / _opaque(phase["end_step"] - start_step)
            annealed.append(
                (
                    self.anneal(value[phase["start_lr"]], value[phase["end_lr"]], pct),
                    self.anneal(value[phase["start_momentum"]], value[phase["end_momentum"]], pct),
                )
            )
        lr, momentum = annealed[-1]  # torch: the first phase with t <= end_step, else the last
        for phase, (phase_lr, phase_m) in reversed(
            list(zip(self.phases[:-1], annealed[:-1], strict=True))
        ):
            holds = t <= phase["end_step"]
            lr, momentum = jnp.where(holds, phase_lr, lr), jnp.where(holds, phase_m, momentum)
        if self.cycle_momentum:
            hp = {**hp, "momentum": momentum}
        return lr, hp

    def _step(self, state, hp, initial):
        refuse_past_total_steps(state.last_epoch + 1, self.total_steps)
        return super()._step(state, hp, initial)

    def config(self):
        config = {
            "total_steps": self.total_steps,
            "_schedule_phases": self.phases,
            "_anneal_func_type": self.anneal_strategy,
            "cycle_momentum": self.cycle_momentum,
        }
        if self.cycle_momentum:
            config["use_beta1"] = self.use_beta1
        return config


def _phase(end_step: float, start_lr: str, end_lr: str, start_m: str, end_m: str) -> dict[str, Any]:
    """One of torch's ``_schedule_phases``: the step it ends at, and the group values it goes
    between."""
    return {
        "end_step": end_step,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "start_momentum": start_m,
        "end_momentum": end_m,
    }


class ReduceLROnPlateau(Schedule):
    """lr ← max(lr · factor, min_lr) after more than ``patience`` steps without improvement of the
    metric, then ``cooldown`` steps without counting. torch's constructor takes no step."""

    torch_name = "ReduceLROnPlateau"
    chainable = False

    def __init__(
        self,
        n_groups,
        mode: str,
        factor: float,
        patience: int,
        threshold: float,
        threshold_mode: str,
        cooldown: int,
        min_lr,
        eps: float,
    ):
        super().__init__(n_groups, 0)
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.eps = cooldown, eps
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else min_lr
        self.min_lrs = per_group("min_lr", min_lr, n_groups)
        self.mode_worse = math.inf if mode == "min" else -math.inf

    def extra_state(self):
        return {
            "best": _float(self.mode_worse),
            "num_bad_epochs": _int(0),
            "cooldown_counter": _int(0),
        }

    def construct(self, hp):
        state = SchedulerState(_int(0), _int(0), hp["lr"], hp["lr"], self.extra_state())
        return state, dict(hp)

    def is_better(self, a: jax.Array, best: jax.Array) -> jax.Array:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, state, hp, metric=None):
        current = _float(metric)
        best, bad, cooldown = (
            state.extra[k] for k in ("best", "num_bad_epochs", "cooldown_counter")
        )
        better = self.is_better(current, best)
        best, bad = jnp.where(better, current, best), jnp.where(better, 0, bad + 1)
        in_cooldown = cooldown > 0
        cooldown, bad = (
            jnp.where(in_cooldown, cooldown - 1, cooldown),
            jnp.where(in_cooldown, 0, bad),
        )
        reduce = bad > self.patience
        old_lr = hp["lr"]
        new_lr = jnp.maximum(old_lr * self.factor, _float(self.min_lrs))
        lr = jnp.where(reduce & (old_lr - new_lr > self.eps), new_lr, old_lr)
        cooldown, bad = jnp.where(reduce, self.cooldown, cooldown), jnp.where(reduce, 0, bad)
        extra = {"best": best, "num_bad_epochs": bad, "cooldown_counter": cooldown}
        state = state._replace(last_epoch=state.last_epoch + 1, last_lr=lr, extra=extra)
        return state, {**hp, "lr": lr}

    def config(self):
        return {
            "factor": self.factor,
            "default_min_lr": self.default_min_lr,
            "min_lrs": self.min_lrs,
            "patience": self.patience,
            "cooldown": self.cooldown,
            "eps": self.eps,
            "mode_worse": self.mode_worse,
            "mode": self.mode,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
        }

    def to_torch(self, state):
        return {
            **self.config(),
            "last_epoch": int(state.last_epoch),
            "_last_lr": _floats(state.last_lr),
            "best": float(state.extra["best"]),
            "cooldown_counter": int(state.extra["cooldown_counter"]),
            "num_bad_epochs": int(state.extra["num_bad_epochs"]),
        }

    def from_torch(self, torch_state, where):
        _check_config(self.config(), torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        extra = {
            "best": _float(_entry(torch_state, "best", where)),
            "num_bad_epochs": _int(_entry(torch_state, "num_bad_epochs", where)),
            "cooldown_counter": _int(_entry(torch_state, "cooldown_counter", where)),
        }
        return SchedulerState(
            _int(_entry(torch_state, "last_epoch", where)), _int(0), last_lr, last_lr, extra
        )


class SequentialLR(Schedule):
    """One scheduler after another: at milestone m_i the next one takes over from its epoch 0."""

    torch_name = "SequentialLR"

    def __init__(self, n_groups, schedulers: list[Schedule], milestones: list[int], last_epoch):
        super().__init__(n_groups, last_epoch)
        self.schedulers, self.milestones = schedulers, list(milestones)

    def construct(self, hp):
        hp, states = dict(hp), []
        for scheduler in self.schedulers:  # torch builds them first, in this order
            state, hp = scheduler.construct(hp)
            states.append(state)
        hp["lr"] = hp["initial_lr"]
        states = [s.undo(state) for s, state in zip(self.schedulers, states, strict=True)]
        first = bisect.bisect_right(self.milestones, 0)
        states[first], hp = self.schedulers[first].initial_step(states[first], hp)
        state = SchedulerState(
            last_epoch=_int(self.last_epoch + 1),
            step_count=_int(0),
            base_lrs=hp["initial_lr"],
            last_lr=states[first].last_lr,
            extra={"schedulers": tuple(states)},
        )
        return state, hp

    def group_entries(self):
        return {k: v for s in self.schedulers for k, v in s.group_entries().items()}

    def undo(self, state):
        undone = tuple(
            s.undo(x) for s, x in zip(self.schedulers, state.extra["schedulers"], strict=True)
        )
        return state._replace(extra={"schedulers": undone})

    def initial_step(self, state, hp):
        return self.step(state, hp)

    def step(self, state, hp, metric=None):
        t = state.last_epoch + 1
        milestones = jnp.asarray(self.milestones, dtype=int)
        idx = jnp.sum(milestones <= t)  # bisect_right
        at_milestone = (idx > 0) & (jnp.concatenate([_int([-1]), milestones])[idx] == t)

        def branch(i: int, restart: bool) -> Callable[..., Any]:
            def run(states: tuple[SchedulerState, ...], hp: Hyperparams) -> Any:
                s = self.schedulers[i]
                if restart:
                    new, hp = s.update_lr_at_zero(states[i], hp)
                else:
                    new, hp = s.step(states[i], hp)
                return (*states[:i], new, *states[i + 1 :]), hp

            return run

        branches = [branch(i, r) for i in range(len(self.schedulers)) for r in (False, True)]
        states, hp = jax.lax.switch(2 * idx + at_milestone, branches, state.extra["schedulers"], hp)
        state = state._replace(last_epoch=t, last_lr=hp["lr"], extra={"schedulers": states})
        return state, hp

    def to_torch(self, state):
        subs = [
            s.to_torch(x) for s, x in zip(self.schedulers, state.extra["schedulers"], strict=True)
        ]
        return {
            "_milestones": self.milestones,
            "last_epoch": int(state.last_epoch),
            "_last_lr": _floats(state.last_lr),
            "_schedulers": subs,
        }

    def from_torch(self, torch_state, where):
        _check_config({"_milestones": self.milestones}, torch_state, where)
        subs = _sub_states(self.schedulers, torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        last_epoch = _int(_entry(torch_state, "last_epoch", where))
        return SchedulerState(last_epoch, _int(0), last_lr, last_lr, {"schedulers": subs})


class ChainedScheduler(Schedule):
    """Every scheduler steps, in order, each on the LRs the previous one left."""

    torch_name = "ChainedScheduler"

    def __init__(self, n_groups, schedulers: list[Schedule]):
        super().__init__(n_groups)
        self.schedulers = schedulers

    def construct(self, hp):
        hp, states = dict(hp), []
        for scheduler in self.schedulers:
            state, hp = scheduler.construct(hp)
            states.append(state)
        state = SchedulerState(_int(0), _int(0), hp["lr"], hp["lr"], {"schedulers": tuple(states)})
        return state, hp

    def group_entries(self):
        return {k: v for s in self.schedulers for k, v in s.group_entries().items()}

    def undo(self, state):
        undone = tuple(
            s.undo(x) for s, x in zip(self.schedulers, state.extra["schedulers"], strict=True)
        )
        return state._replace(extra={"schedulers": undone})

    def initial_step(self, state, hp):
        return self.step(state, hp)

    def step(self, state, hp, metric=None):
        states = []
        for scheduler, sub in zip(self.schedulers, state.extra["schedulers"], strict=True):
            sub, hp = scheduler.step(sub, hp)
            states.append(sub)
        return state._replace(last_lr=hp["lr"], extra={"schedulers": tuple(states)}), hp

    def to_torch(self, state):
        subs = [
            s.to_torch(x) for s, x in zip(self.schedulers, state.extra["schedulers"], strict=True)
        ]
        return {"_last_lr": _floats(state.last_lr), "_schedulers": subs}

    def from_torch(self, torch_state, where):
        subs = _sub_states(self.schedulers, torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        return SchedulerState(_int(0), _int(0), last_lr, last_lr, {"schedulers": subs})


def _sub_states(
    schedulers: list[Schedule], torch_state: dict[str, Any], where: str
) -> tuple[SchedulerState, ...]:
    subs = _entry(torch_state, "_schedulers", where)
    if len(subs) != len(schedulers):
        raise ValueError(f"{where} holds {len(subs)} schedulers, this one {len(schedulers)}")
    return tuple(
        s.from_torch(sub, f"{where}['_schedulers'][{i}]")
        for i, (s, sub) in enumerate(zip(schedulers, subs, strict=True))
    )
