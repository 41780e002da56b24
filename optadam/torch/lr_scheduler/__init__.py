"""torch.optim.lr_scheduler for optadam.torch's optimizers: the same classes, arguments and
defaults, and torch's numbers.

A scheduler is built from the optimizer, as in torch, and gives the transformation to train with::

    tx = optadam.torch.SGD([{"params": "*/w"}, {"params": "*/b", "lr": 0.01}], lr=0.1, momentum=0.9)
    sched = optadam.torch.lr_scheduler.OneCycleLR(tx, max_lr=1.0, total_steps=1000)
    state = sched.init(params)
    updates, state = sched.update(grads, state, params)  # optimizer.step(); scheduler.step()

Its state is ``ScheduledState(optimizer, scheduler)``: the optimizer's state, which holds each
param group's ``lr`` (and momentum or β1) as arrays, and the scheduler's. ``init`` sets the group
values as torch's constructor does; each ``update`` is the optimizer's step with the current values,
then the scheduler's step, which writes the values of the next update. Every value is an array,
so a jitted update never recompiles as the LR changes.

* One LR per param group, from the group's own LR (torch's ``initial_lr``), and one scheduler
  step per update: for a scheduler stepped once per epoch, see the README.
* ``LambdaLR``'s and ``MultiplicativeLR``'s ``lr_lambda`` and ``CyclicLR``'s ``scale_fn`` receive
  the step as a JAX integer array (int64 with ``jax_enable_x64``), not a Python int: they must be
  traceable -- ``jnp.minimum``, ``jnp.cos``, ``jnp.where`` where torch's lambdas use ``min``,
  ``math.cos``, ``if``. Tracing them keeps the step on the device and compiled once; a host
  callback would accept any Python function but stall every step on a device round trip.
* ``ReduceLROnPlateau`` takes the metric as ``update(grads, state, params, value=loss)``, optax's
  extra-arguments convention.
* ``OneCycleLR`` stepped past ``total_steps`` raises a ValueError as torch does; under ``jit`` the
  check runs on the host when the step runs, and the error comes out of the jitted call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam.torch.lr_scheduler import _base, _composite, _cyclic, _decay, _plateau
from optadam.torch.lr_scheduler._base import SchedulerState


class ScheduledState(NamedTuple):
    """State of an optimizer driven by an LR scheduler."""

    optimizer: optax.OptState  # the optimizer's state, with the group values for the next update
    scheduler: SchedulerState  # the scheduler's (torch's scheduler.state_dict(), as arrays)


class LRScheduler(optax.GradientTransformationExtraArgs):
    """An optimizer stepped with a torch LR scheduler: an optax transformation (init, update)
    that also offers torch's ``get_last_lr`` and ``state_dict`` / ``load_state_dict``."""

    optimizer: Any  # the optadam.torch optimizer it was built from
    schedule: _base.Schedule  # the scheduler's arithmetic

    def get_last_lr(self, state: ScheduledState) -> list[jax.Array]:
        """The LR of each param group for the next update (torch's ``get_last_lr()``)."""
        return list(state.scheduler.last_lr)

    def state_dict(self, state: ScheduledState) -> dict[str, Any]:
        """torch's ``scheduler.state_dict()``: a dict a torch scheduler of the same class and
        arguments takes with ``load_state_dict``. Lambdas are stored as None, as torch stores
        them."""
        return self.schedule.to_torch(state.scheduler)

    def load_state_dict(self, state: ScheduledState, state_dict: dict[str, Any]) -> ScheduledState:
        """``state`` with the scheduler's part taken from torch's ``scheduler.state_dict()``.

        As in torch, the group values (``lr``, momentum) are the optimizer's: load them with
        :func:`optadam.torch.load_state_dict` into ``state.optimizer``. Arguments that differ
        from this scheduler's (they are fixed when it is built) raise a ValueError naming them.
        """
        where = f"{self.schedule.torch_name} state_dict"
        return state._replace(scheduler=self.schedule.from_torch(dict(state_dict), where))

    def optimizer_state_dict(self, state: ScheduledState, params: optax.Params) -> dict[str, Any]:
        """torch's ``optimizer.state_dict()`` for the optimizer driven by this scheduler:
        :func:`optadam.torch.state_dict` of ``state.optimizer``, with the entries torch's scheduler
        adds to each param group (``initial_lr``; OneCycleLR's ``max_lr``, ``min_lr``, and the
        momentum bounds), which torch's scheduler reads after ``optimizer.load_state_dict``."""
        from optadam.torch._state_dict import state_dict

        torch_dict = state_dict(self.optimizer, state.optimizer, params)
        for group, entries in zip(torch_dict["param_groups"], self._group_entries(), strict=True):
            group.update(entries)
        return torch_dict

    def _group_entries(self) -> list[dict[str, Any]]:
        groups = _param_groups(self.optimizer)
        hp = _hyperparams_of(self.optimizer, groups)
        _, hp = self.schedule.construct(hp)
        entries: list[dict[str, Any]] = [{} for _ in groups]
        for k, group in enumerate(entries):
            if hp["initial_lr"] is not None:
                group["initial_lr"] = float(hp["initial_lr"][k])
            group.update({key: v[k] for key, v in self.schedule.group_entries().items()})
        return entries

    def __repr__(self) -> str:
        return f"optadam.torch.lr_scheduler.{self.schedule.torch_name}({self.optimizer!r}, ...)"


# --- the optimizer's group values -------------------------------------------------------------


def _param_groups(optimizer: Any) -> tuple[dict[str, Any], ...]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(
            f"a scheduler is built from an optadam.torch optimizer (as torch's from a "
            f"torch.optim.Optimizer), got {type(optimizer).__name__}"
        )
    for k, group in enumerate(groups):
        if callable(group["lr"]):
            raise ValueError(
                f"param_groups[{k}]'s lr is a schedule (a callable), which a scheduler cannot "
                "set: give the optimizer a number and let the scheduler schedule it"
            )
    return tuple(groups)


def _momentum_key(optimizer: Any) -> str | None:
    """Which group value torch's ``cycle_momentum`` cycles: "betas" (its β1) or "momentum"."""
    group = _param_groups(optimizer)[0]
    return "betas" if "betas" in group else "momentum" if "momentum" in group else None


def _read(optimizer: Any, opt_state: optax.OptState) -> _base.Hyperparams:
    from optadam.torch._groups import group_hyperparams

    return _hyperparams_of(optimizer, group_hyperparams(opt_state))


def _hyperparams_of(optimizer: Any, groups: Sequence[Any]) -> _base.Hyperparams:
    """The schedulers' view of the groups' values: one array per key, one entry per group."""
    key = _momentum_key(optimizer)
    momentum = None
    if key == "betas":
        momentum = jnp.stack([jnp.asarray(g["betas"][0], float) for g in groups])
    elif key == "momentum":
        momentum = jnp.stack([jnp.asarray(g["momentum"], float) for g in groups])
    lr = jnp.stack([jnp.asarray(g["lr"], float) for g in groups])
    return {"lr": lr, "initial_lr": None, "momentum": momentum}


def _write(optimizer: Any, opt_state: optax.OptState, hp: _base.Hyperparams) -> optax.OptState:
    from optadam.torch._groups import group_hyperparams, with_group_hyperparams

    key = _momentum_key(optimizer)
    groups = []
    for k, old in enumerate(group_hyperparams(opt_state)):
        group = {"lr": hp["lr"][k]}
        if key == "betas":
            group["betas"] = (hp["momentum"][k], old["betas"][1])
        elif key == "momentum":
            group["momentum"] = hp["momentum"][k]
        groups.append(group)
    return with_group_hyperparams(opt_state, groups)


def _scheduler(optimizer: Any, schedule: _base.Schedule) -> LRScheduler:
    needs_metric = isinstance(schedule, _plateau.ReduceLROnPlateau)

    def init_fn(params: optax.Params) -> ScheduledState:
        opt_state = optimizer.init(params)
        sched_state, hp = schedule.construct(_read(optimizer, opt_state))
        return ScheduledState(_write(optimizer, opt_state, hp), sched_state)

    def update_fn(
        updates: optax.Updates,
        state: ScheduledState,
        params: optax.Params | None = None,
        *,
        value: Any = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, ScheduledState]:
        if needs_metric and value is None:
            raise ValueError(
                "ReduceLROnPlateau needs the metric at every step: call "
                "update(grads, state, params, value=loss), as torch's scheduler.step(loss)"
            )
        updates, opt_state = optimizer.update(updates, state.optimizer, params, **extra_args)
        sched_state, hp = schedule.step(state.scheduler, _read(optimizer, opt_state), value)
        return updates, ScheduledState(_write(optimizer, opt_state, hp), sched_state)

    scheduler = LRScheduler(init_fn, update_fn)
    scheduler.optimizer = optimizer
    scheduler.schedule = schedule
    return scheduler


def _n_groups(optimizer: Any) -> int:
    return len(_param_groups(optimizer))


def _lambdas(optimizer: Any, lr_lambda: Any) -> list[Callable[[Any], Any]]:
    n = _n_groups(optimizer)
    if isinstance(lr_lambda, (list, tuple)):
        if len(lr_lambda) != n:
            raise ValueError(
                f"Expected {n} lr_lambdas (one per param group), but got {len(lr_lambda)}"
            )
        lambdas = list(lr_lambda)
    else:
        lambdas = [lr_lambda] * n
    for f in lambdas:
        if not callable(f):
            raise TypeError(f"lr_lambda should be a function, but got {type(f).__name__}")
    return lambdas


def _use_beta1(optimizer: Any, cycle_momentum: bool) -> bool:
    key = _momentum_key(optimizer)
    if cycle_momentum and key is None:
        raise ValueError(
            "optimizer must support momentum or beta1 with `cycle_momentum` option enabled "
            f"({optimizer!r} has neither): pass cycle_momentum=False"
        )
    if cycle_momentum and key == "momentum":
        for k, group in enumerate(_param_groups(optimizer)):
            if isinstance(group["momentum"], (int, float)) and group["momentum"] == 0:
                raise ValueError(
                    f"cycle_momentum=True, but param_groups[{k}] has momentum=0, for which "
                    "the optimizer keeps no momentum buffer (torch's scheduler would switch "
                    "momentum on): build the optimizer with a momentum > 0 (the scheduler sets "
                    "its value from the first step), or pass cycle_momentum=False"
                )
    return key == "betas"


# --- torch's schedulers -----------------------------------------------------------------------


def LambdaLR(  # noqa: N802
    optimizer: Any,
    lr_lambda: Callable[[Any], Any] | Sequence[Callable[[Any], Any]],
    last_epoch: int = -1,
) -> LRScheduler:
    """lr = initial_lr · lr_lambda(epoch); ``lr_lambda`` traceable (see the module docstring)."""
    lambdas = _lambdas(optimizer, lr_lambda)
    return _scheduler(optimizer, _decay.LambdaLR(len(lambdas), lambdas, last_epoch))


def MultiplicativeLR(  # noqa: N802
    optimizer: Any,
    lr_lambda: Callable[[Any], Any] | Sequence[Callable[[Any], Any]],
    last_epoch: int = -1,
) -> LRScheduler:
    """lr ← lr · lr_lambda(epoch) at every step after the first."""
    lambdas = _lambdas(optimizer, lr_lambda)
    return _scheduler(optimizer, _decay.MultiplicativeLR(len(lambdas), lambdas, last_epoch))


def StepLR(  # noqa: N802
    optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
) -> LRScheduler:
    """lr ← lr · gamma every ``step_size`` steps."""
    _positive_int("step_size", step_size)
    return _scheduler(optimizer, _decay.StepLR(_n_groups(optimizer), step_size, gamma, last_epoch))


def MultiStepLR(  # noqa: N802
    optimizer: Any, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
) -> LRScheduler:
    """lr ← lr · gamma at each milestone (increasing step numbers)."""
    milestones = list(milestones)
    _base.check_increasing("milestones", milestones)
    schedule = _decay.MultiStepLR(_n_groups(optimizer), milestones, gamma, last_epoch)
    return _scheduler(optimizer, schedule)


def ConstantLR(  # noqa: N802
    optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1
) -> LRScheduler:
    """lr = initial_lr · factor for ``total_iters`` steps, then initial_lr."""
    if factor > 1.0 or factor < 0:
        raise ValueError(f"ConstantLR's factor must be in [0, 1], got {factor!r}")
    schedule = _decay.ConstantLR(_n_groups(optimizer), factor, total_iters, last_epoch)
    return _scheduler(optimizer, schedule)


def LinearLR(  # noqa: N802
    optimizer: Any,
    start_factor: float = 1.0 / 3,
    end_factor: float = 1.0,
    total_iters: int = 5,
    last_epoch: int = -1,
) -> LRScheduler:
    """lr from initial_lr · start_factor to initial_lr · end_factor over ``total_iters`` steps."""
    if start_factor > 1.0 or start_factor <= 0:
        raise ValueError(f"LinearLR's start_factor must be in (0, 1], got {start_factor!r}")
    if end_factor > 1.0 or end_factor < 0:
        raise ValueError(f"LinearLR's end_factor must be in [0, 1], got {end_factor!r}")
    schedule = _decay.LinearLR(
        _n_groups(optimizer), start_factor, end_factor, total_iters, last_epoch
    )
    return _scheduler(optimizer, schedule)


def ExponentialLR(optimizer: Any, gamma: float, last_epoch: int = -1) -> LRScheduler:  # noqa: N802
    """lr ← lr · gamma at every step."""
    return _scheduler(optimizer, _decay.ExponentialLR(_n_groups(optimizer), gamma, last_epoch))


def PolynomialLR(  # noqa: N802
    optimizer: Any, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
) -> LRScheduler:
    """lr = initial_lr · (1 − t/total_iters)^power, down to 0 at ``total_iters``."""
    _positive_int("total_iters", total_iters)
    schedule = _decay.PolynomialLR(_n_groups(optimizer), total_iters, power, last_epoch)
    return _scheduler(optimizer, schedule)


def CosineAnnealingLR(  # noqa: N802
    optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
) -> LRScheduler:
    """Cosine from initial_lr down to ``eta_min`` over ``T_max`` steps (and back up after)."""
    _positive_int("T_max", T_max)
    schedule = _decay.CosineAnnealingLR(_n_groups(optimizer), T_max, eta_min, last_epoch)
    return _scheduler(optimizer, schedule)


def CosineAnnealingWarmRestarts(  # noqa: N802
    optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1
) -> LRScheduler:
    """Cosine from initial_lr to ``eta_min`` over T_0 steps, restarting, each period T_mult
    times the last (SGDR, Loshchilov & Hutter 2017)."""
    if not isinstance(T_0, int) or T_0 <= 0:
        raise ValueError(f"Expected positive integer T_0, but got {T_0!r}")
    if not isinstance(T_mult, int) or T_mult < 1:
        raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult!r}")
    if not isinstance(eta_min, (float, int)):
        raise ValueError(f"Expected float or int eta_min, but got {eta_min!r}")
    schedule = _decay.CosineAnnealingWarmRestarts(
        _n_groups(optimizer), T_0, T_mult, eta_min, last_epoch
    )
    return _scheduler(optimizer, schedule)


def CyclicLR(  # noqa: N802
    optimizer: Any,
    base_lr: float | Sequence[float],
    max_lr: float | Sequence[float],
    step_size_up: int = 2000,
    step_size_down: int | None = None,
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
    gamma: float = 1.0,
    scale_fn: Callable[[Any], Any] | None = None,
    scale_mode: Literal["cycle", "iterations"] = "cycle",
    cycle_momentum: bool = True,
    base_momentum: float | Sequence[float] = 0.8,
    max_momentum: float | Sequence[float] = 0.9,
    last_epoch: int = -1,
) -> LRScheduler:
    """Cyclical LR (Smith 2017) between ``base_lr`` and ``max_lr``; with ``cycle_momentum``, the
    momentum (SGD, RMSprop) or β1 (Adam family) between ``max_momentum`` and ``base_momentum``.
    ``scale_fn`` traceable (see the module docstring)."""
    if mode not in ("triangular", "triangular2", "exp_range") and scale_fn is None:
        raise ValueError(
            f"CyclicLR's mode must be 'triangular', 'triangular2' or 'exp_range' (or give a "
            f"scale_fn), got {mode!r}"
        )
    if scale_mode not in ("cycle", "iterations"):
        raise ValueError(
            f"CyclicLR's scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}"
        )
    schedule = _cyclic.CyclicLR(
        _n_groups(optimizer),
        base_lr,
        max_lr,
        step_size_up,
        step_size_down,
        mode,
        gamma,
        scale_fn,
        scale_mode,
        cycle_momentum,
        base_momentum,
        max_momentum,
        _use_beta1(optimizer, cycle_momentum),
        last_epoch,
    )
    return _scheduler(optimizer, schedule)


def OneCycleLR(  # noqa: N802
    optimizer: Any,
    max_lr: float | Sequence[float],
    total_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    pct_start: float = 0.3,
    anneal_strategy: Literal["cos", "linear"] = "cos",
    cycle_momentum: bool = True,
    base_momentum: float | Sequence[float] = 0.85,
    max_momentum: float | Sequence[float] = 0.95,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
    last_epoch: int = -1,
) -> LRScheduler:
    """The 1cycle policy (Smith & Topin 2018): lr from max_lr/div_factor up to max_lr over
    ``pct_start`` of the steps, then down to max_lr/(div_factor·final_div_factor); with
    ``cycle_momentum``, momentum or β1 the other way."""
    if total_steps is not None:
        _positive_int("total_steps", total_steps)
    elif epochs is not None and steps_per_epoch is not None:
        _positive_int("epochs", epochs)
        _positive_int("steps_per_epoch", steps_per_epoch)
        total_steps = epochs * steps_per_epoch
    else:
        raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
    if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start!r}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(
            f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy!r}"
        )
    schedule = _cyclic.OneCycleLR(
        _n_groups(optimizer),
        max_lr,
        total_steps,
        pct_start,
        anneal_strategy,
        cycle_momentum,
        base_momentum,
        max_momentum,
        div_factor,
        final_div_factor,
        three_phase,
        _use_beta1(optimizer, cycle_momentum),
        last_epoch,
    )
    return _scheduler(optimizer, schedule)


def ReduceLROnPlateau(  # noqa: N802
    optimizer: Any,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: int = 0,
    min_lr: float | Sequence[float] = 0,
    eps: float = 1e-8,
) -> LRScheduler:
    """lr ← max(lr · factor, min_lr) once the metric (``update(..., value=metric)``) has not
    improved for more than ``patience`` steps; then ``cooldown`` steps before counting again."""
    if factor >= 1.0:
        raise ValueError(f"ReduceLROnPlateau's factor must be < 1.0, got {factor!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"ReduceLROnPlateau's mode must be 'min' or 'max', got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(
            f"ReduceLROnPlateau's threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}"
        )
    if isinstance(min_lr, (list, tuple)) and len(min_lr) != _n_groups(optimizer):
        raise ValueError(
            f"expected {_n_groups(optimizer)} min_lrs (one per param group), got {len(min_lr)}"
        )
    schedule = _plateau.ReduceLROnPlateau(
        _n_groups(optimizer),
        mode,
        factor,
        patience,
        threshold,
        threshold_mode,
        cooldown,
        min_lr,
        eps,
    )
    return _scheduler(optimizer, schedule)


def _same_optimizer(name: str, optimizer: Any, schedulers: Sequence[LRScheduler]) -> None:
    if not schedulers:
        raise ValueError(f"{name} expects at least one scheduler, but got none")
    for i, s in enumerate(schedulers):
        if not isinstance(s, LRScheduler):
            raise TypeError(f"{name}'s schedulers[{i}] is not an optadam.torch.lr_scheduler: {s!r}")
        if not s.schedule.chainable:
            raise ValueError(
                f"{name} does not support ReduceLROnPlateau (schedulers[{i}]): it needs the "
                "metric at every step"
            )
        if s.optimizer is not optimizer:
            raise ValueError(
                f"{name} expects all schedulers to belong to the same optimizer, but "
                f"schedulers[{i}] was built from {s.optimizer!r}"
            )


def SequentialLR(  # noqa: N802
    optimizer: Any,
    schedulers: Sequence[LRScheduler],
    milestones: Sequence[int],
    last_epoch: int = -1,
) -> LRScheduler:
    """``schedulers[i]`` from step ``milestones[i-1]`` on, restarted at its epoch 0 there.

    The sub-schedulers are built from the same optimizer, as in torch, and are taken to have been
    built in the order listed (their constructors change the groups' LRs in that order).
    """
    _same_optimizer("SequentialLR", optimizer, schedulers)
    milestones = list(milestones)
    if len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"SequentialLR expects one milestone fewer than schedulers, but got "
            f"{len(schedulers)} schedulers and {len(milestones)} milestones"
        )
    _base.check_increasing("milestones", milestones)
    schedule = _composite.SequentialLR(
        _n_groups(optimizer), [s.schedule for s in schedulers], milestones, last_epoch
    )
    return _scheduler(optimizer, schedule)


def ChainedScheduler(  # noqa: N802
    schedulers: Sequence[LRScheduler], optimizer: Any = None
) -> LRScheduler:
    """Every scheduler steps at every step, in order, each from the LRs the previous left."""
    if not schedulers:
        raise ValueError("ChainedScheduler expects at least one scheduler, but got none")
    optimizer = optimizer if optimizer is not None else schedulers[0].optimizer
    _same_optimizer("ChainedScheduler", optimizer, schedulers)
    schedule = _composite.ChainedScheduler(_n_groups(optimizer), [s.schedule for s in schedulers])
    return _scheduler(optimizer, schedule)


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"Expected positive integer {name}, but got {value!r}")


__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "ScheduledState",
    "SchedulerState",
    "SequentialLR",
    "StepLR",
]
