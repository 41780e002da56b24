"""torch's schedulers that decay (or warm up) the LR by a rule of the step: LambdaLR to
CosineAnnealingWarmRestarts. See ``_base`` for how each mirrors torch."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp

from optadam.torch.lr_scheduler._base import Schedule, entry, int_array, opaque, traced


class LambdaLR(Schedule):
    """lr = base_lr · λ(last_epoch)."""

    torch_name = "LambdaLR"

    def __init__(self, n_groups: int, lr_lambdas: list[Callable[[Any], Any]], last_epoch: int):
        super().__init__(n_groups, last_epoch)
        self.lr_lambdas = lr_lambdas

    def get_lr(self, state, hp, initial):
        factors = jnp.stack([traced("lr_lambda", f, state.last_epoch) for f in self.lr_lambdas])
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
        factors = jnp.stack([traced("lr_lambda", f, state.last_epoch) for f in self.lr_lambdas])
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
            start + (end - start) * jnp.minimum(n, state.last_epoch) / opaque(n)
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
        decay = ((1.0 - t / opaque(n)) / (1.0 - (t - 1) / opaque(n))) ** self.power
        return jnp.where(t > n, hp["lr"], hp["lr"] * decay), hp

    def closed_form(self, state):
        n = self.total_iters
        return state.base_lrs * (1.0 - jnp.minimum(n, state.last_epoch) / opaque(n)) ** self.power

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
        restart = eta_min + (base - eta_min) * (1 + jnp.cos(t * math.pi / opaque(T))) / 2
        at_bottom = lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
        recursive = (1 + jnp.cos(math.pi * t / opaque(T))) / (
            1 + jnp.cos(math.pi * (t - 1) / opaque(T))
        ) * (lr - eta_min) + eta_min
        lr = jnp.where((t - 1 - T) % (2 * T) == 0, at_bottom, recursive)
        return jnp.where((state.step_count == 1) & (t > 0), restart, lr), hp

    def closed_form(self, state):
        t, T, eta_min = state.last_epoch, self.T_max, self.eta_min
        return eta_min + (state.base_lrs - eta_min) * (1 + jnp.cos(math.pi * t / opaque(T))) / 2

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
        return {"T_cur": int_array(self.last_epoch), "T_i": int_array(self.T_0)}

    def initial_step(self, state, hp):
        return self.step(state._replace(step_count=int_array(0)), hp)

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
        extra = {key: int_array(entry(torch_state, key, where)) for key in ("T_cur", "T_i")}
        return state._replace(extra=extra)
