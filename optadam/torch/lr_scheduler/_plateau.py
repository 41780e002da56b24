"""torch's ReduceLROnPlateau: the LR follows a metric, not the step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from optadam.torch.lr_scheduler._base import (
    Schedule,
    SchedulerState,
    check_config,
    entry,
    float_array,
    floats,
    int_array,
    per_group,
)


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
            "best": float_array(self.mode_worse),
            "num_bad_epochs": int_array(0),
            "cooldown_counter": int_array(0),
        }

    def construct(self, hp):
        state = SchedulerState(int_array(0), int_array(0), hp["lr"], hp["lr"], self.extra_state())
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
        current = float_array(metric)
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
        new_lr = jnp.maximum(old_lr * self.factor, float_array(self.min_lrs))
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
            "_last_lr": floats(state.last_lr),
            "best": float(state.extra["best"]),
            "cooldown_counter": int(state.extra["cooldown_counter"]),
            "num_bad_epochs": int(state.extra["num_bad_epochs"]),
        }

    def from_torch(self, torch_state, where):
        check_config(self.config(), torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        extra = {
            "best": float_array(entry(torch_state, "best", where)),
            "num_bad_epochs": int_array(entry(torch_state, "num_bad_epochs", where)),
            "cooldown_counter": int_array(entry(torch_state, "cooldown_counter", where)),
        }
        return SchedulerState(
            int_array(entry(torch_state, "last_epoch", where)),
            int_array(0),
            last_lr,
            last_lr,
            extra,
        )
