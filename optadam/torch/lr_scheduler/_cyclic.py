"""torch's cycling schedulers, which also cycle the momentum (or β1): CyclicLR and OneCycleLR."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optadam.torch.lr_scheduler._base import (
    Schedule,
    float_array,
    opaque,
    per_group,
    refuse_past_total_steps,
    traced,
)


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
            return traced("scale_fn", self.scale_fn_custom, x)
        if self.mode == "triangular":
            return float_array(1.0)
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def before_construct(self, hp):
        if self.last_epoch == -1:
            hp["lr"] = float_array(self.base_lrs_arg)
            if self.cycle_momentum:
                hp["momentum"] = float_array(self.max_momentums)
        return hp

    def construct(self, hp):
        # torch sets base_lrs to base_lr after LRScheduler.__init__, so the initial step ran with
        # the groups' initial_lr (the same numbers unless last_epoch >= 0 or initial_lr was set)
        state, hp = super().construct(hp)
        return state._replace(base_lrs=float_array(self.base_lrs_arg)), hp

    def get_lr(self, state, hp, initial):
        t = state.last_epoch
        cycle = jnp.floor(1 + t / opaque(self.total_size)).astype(t.dtype)
        x = 1.0 + t / opaque(self.total_size) - cycle
        scale_factor = jnp.where(
            x <= self.step_ratio, x / opaque(self.step_ratio), (x - 1) / opaque(self.step_ratio - 1)
        )
        scale = self.scale_fn(cycle if self.scale_mode == "cycle" else t)
        base_height = (float_array(self.max_lrs) - state.base_lrs) * scale_factor
        lr = state.base_lrs + base_height * scale
        if self.cycle_momentum:
            max_m = float_array(self.max_momentums)
            base_height = (max_m - float_array(self.base_momentums)) * scale_factor
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
            hp["initial_lr"] = float_array(self.group_values["initial_lr"])
            if self.cycle_momentum:
                hp["momentum"] = float_array(self.group_values["max_momentum"])
        return hp

    def get_lr(self, state, hp, initial):
        t = state.last_epoch
        value = {k: float_array(v) for k, v in self.group_values.items()}
        starts = [0.0] + [phase["end_step"] for phase in self.phases[:-1]]
        annealed = []  # per phase: (lr, momentum) as that phase would give them at t
        for phase, start_step in zip(self.phases, starts, strict=True):
            pct = (t - start_step) / opaque(phase["end_step"] - start_step)
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
