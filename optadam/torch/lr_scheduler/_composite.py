"""torch's schedulers made of schedulers: SequentialLR and ChainedScheduler."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from optadam.torch.lr_scheduler._base import (
    Hyperparams,
    Schedule,
    SchedulerState,
    check_config,
    entry,
    floats,
    int_array,
)


class _Composite(Schedule):
    """What SequentialLR and ChainedScheduler share: sub-schedulers, kept in ``extra``."""

    schedulers: list[Schedule]

    def group_entries(self):
        return {k: v for s in self.schedulers for k, v in s.group_entries().items()}

    def undo(self, state):
        undone = tuple(
            s.undo(x) for s, x in zip(self.schedulers, state.extra["schedulers"], strict=True)
        )
        return state._replace(extra={"schedulers": undone})

    def initial_step(self, state, hp):
        return self.step(state, hp)


class SequentialLR(_Composite):
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
            last_epoch=int_array(self.last_epoch + 1),
            step_count=int_array(0),
            base_lrs=hp["initial_lr"],
            last_lr=states[first].last_lr,
            extra={"schedulers": tuple(states)},
        )
        return state, hp

    def step(self, state, hp, metric=None):
        t = state.last_epoch + 1
        milestones = jnp.asarray(self.milestones, dtype=int)
        idx = jnp.sum(milestones <= t)  # bisect_right
        at_milestone = (idx > 0) & (jnp.concatenate([int_array([-1]), milestones])[idx] == t)

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
            "_last_lr": floats(state.last_lr),
            "_schedulers": subs,
        }

    def from_torch(self, torch_state, where):
        check_config({"_milestones": self.milestones}, torch_state, where)
        subs = _sub_states(self.schedulers, torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        last_epoch = int_array(entry(torch_state, "last_epoch", where))
        return SchedulerState(last_epoch, int_array(0), last_lr, last_lr, {"schedulers": subs})


class ChainedScheduler(_Composite):
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
        state = SchedulerState(
            int_array(0), int_array(0), hp["lr"], hp["lr"], {"schedulers": tuple(states)}
        )
        return state, hp

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
        return {"_last_lr": floats(state.last_lr), "_schedulers": subs}

    def from_torch(self, torch_state, where):
        subs = _sub_states(self.schedulers, torch_state, where)
        last_lr = self._group_floats(torch_state, "_last_lr", where)
        return SchedulerState(int_array(0), int_array(0), last_lr, last_lr, {"schedulers": subs})


def _sub_states(
    schedulers: list[Schedule], torch_state: dict[str, Any], where: str
) -> tuple[SchedulerState, ...]:
    subs = entry(torch_state, "_schedulers", where)
    if len(subs) != len(schedulers):
        raise ValueError(f"{where} holds {len(subs)} schedulers, this one {len(schedulers)}")
    return tuple(
        s.from_torch(sub, f"{where}['_schedulers'][{i}]")
        for i, (s, sub) in enumerate(zip(schedulers, subs, strict=True))
    )
