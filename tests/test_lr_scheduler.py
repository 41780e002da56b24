"""optadam.torch.lr_scheduler against torch.optim.lr_scheduler itself (torch 2.13).

The schedulers' arithmetic is driven on both sides from optimizers with three param groups of
different LRs, for at least 2,000 steps: the LR of every group after every step, and the cycled
momentum / β1, must equal torch's within 1e-12 relative in float64. (XLA contracts a·b + c into
one fused multiply-add where Python rounds twice, so a few values differ in the last bits: 4e-14 at
most in these runs. Settings keep the LRs away from 0, where a relative distance means nothing.)
"""

import inspect
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from optadam.torch import lr_scheduler

STEPS = 2000
LRS = [0.1, 0.03, 0.5]  # the three groups' own LRs
RTOL = 1e-12
TL = torch.optim.lr_scheduler


class _Groups:
    """Stands for an optadam.torch optimizer where only its param groups matter (the schedulers'
    arithmetic): "SGD" groups have a momentum, "Adam" groups betas."""

    def __init__(self, kind):
        extra = {"momentum": 0.9} if kind == "SGD" else {"betas": (0.9, 0.999)}
        self.param_groups = tuple(
            {"params": f"g{k}", "lr": lr, **extra} for k, lr in enumerate(LRS)
        )


def _torch_optimizer(kind):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]
    if kind == "SGD":
        return torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    return torch.optim.Adam(groups, lr=1.0)


def _torch_values(optimizer):
    groups = optimizer.param_groups
    momentum = [g["momentum"] if "momentum" in g else g["betas"][0] for g in groups]
    return [g["lr"] for g in groups], momentum


def torch_trajectory(make, kind, steps=STEPS, metrics=None):
    """Per step (the constructor's values first), each group's lr and momentum/β1 in torch."""
    optimizer = _torch_optimizer(kind)
    scheduler = make(optimizer)
    lrs, momenta = [], []
    for k in range(steps + 1):
        if k > 0:
            optimizer.step()
            scheduler.step() if metrics is None else scheduler.step(float(metrics[k - 1]))
        lr, momentum = _torch_values(optimizer)
        lrs.append(lr)
        momenta.append(momentum)
    return np.array(lrs), np.array(momenta)


def _initial_hp(kind):
    return {
        "lr": jnp.asarray(LRS, float),
        "initial_lr": None,
        "momentum": jnp.full(len(LRS), 0.9, float),
    }


def schedule_trajectory(schedule, kind, steps=STEPS, metrics=None):
    """The same with optadam's arithmetic (jitted, one scan)."""

    @jax.jit
    def run(metrics):
        state, hp = schedule.construct(_initial_hp(kind))

        def step(carry, metric):
            state, hp = schedule.step(*carry, metric)
            return (state, hp), (hp["lr"], hp["momentum"])

        _, (lrs, momenta) = jax.lax.scan(step, (state, hp), metrics)
        return (
            jnp.concatenate([hp["lr"][None], lrs]),
            jnp.concatenate([hp["momentum"][None], momenta]),
        )

    metrics = jnp.zeros(steps) if metrics is None else jnp.asarray(metrics, float)
    return tuple(np.asarray(x) for x in run(metrics))


def _warmup_cosine_torch(k):
    return min(1.0, (k + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(k, 2000) / 2000))


def _warmup_cosine_jax(k):
    return (
        jnp.minimum(1.0, (k + 1) / 100) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(k, 2000) / 2000))
    )


# (id, optimizer kind, torch factory, optadam factory): the same arguments on both sides.
def _same(name, kind="SGD", *args, **kwargs):
    return (
        f"{name}-{kind}-{args}-{kwargs}",
        kind,
        lambda o: getattr(TL, name)(o, *args, **kwargs),
        lambda o: getattr(lr_scheduler, name)(o, *args, **kwargs),
    )


CASES = [
    (
        "LambdaLR-warmup-cosine",
        "SGD",
        lambda o: TL.LambdaLR(o, _warmup_cosine_torch),
        lambda o: lr_scheduler.LambdaLR(o, _warmup_cosine_jax),
    ),
    (
        "LambdaLR-per-group",
        "Adam",
        lambda o: TL.LambdaLR(o, [lambda k: 0.999**k, lambda k: 1 / (1 + k), lambda k: 2.0]),
        lambda o: lr_scheduler.LambdaLR(
            o, [lambda k: 0.999**k, lambda k: 1 / (1 + k), lambda k: 2.0]
        ),
    ),
    (
        "MultiplicativeLR",
        "SGD",
        lambda o: TL.MultiplicativeLR(o, lambda k: 0.999 if k % 3 else 1.001),
        lambda o: lr_scheduler.MultiplicativeLR(o, lambda k: jnp.where(k % 3 != 0, 0.999, 1.001)),
    ),
    _same("StepLR", "SGD", 7, 0.99),
    _same("StepLR", "Adam", step_size=300),
    _same("MultiStepLR", "SGD", [3, 100, 100, 1500], 0.5),
    _same("ConstantLR", "SGD"),
    _same("ConstantLR", "Adam", factor=0.3, total_iters=1000),
    _same("LinearLR", "SGD"),
    _same("LinearLR", "Adam", start_factor=0.1, end_factor=0.9, total_iters=1000),
    _same("ExponentialLR", "SGD", 0.998),
    _same("PolynomialLR", "SGD", total_iters=1999, power=1.7),
    _same("PolynomialLR", "Adam"),
    _same("CosineAnnealingLR", "SGD", 300, 1e-3),
    _same("CosineAnnealingLR", "Adam", T_max=1000),
    _same("CosineAnnealingWarmRestarts", "SGD", 50, 2, 1e-4),
    _same("CosineAnnealingWarmRestarts", "Adam", T_0=77),
    _same("CyclicLR", "SGD", 0.01, [0.1, 0.2, 0.3], 100, 50, "triangular2"),
    _same("CyclicLR", "Adam", 0.01, 0.1, step_size_up=130, mode="exp_range", gamma=0.999),
    _same("CyclicLR", "SGD", 0.01, 0.1, 200, cycle_momentum=False),
    (
        "CyclicLR-scale_fn",
        "SGD",
        lambda o: TL.CyclicLR(
            o, 0.01, 0.1, 70, scale_fn=lambda x: 0.5 ** (x / 100), scale_mode="iterations"
        ),
        lambda o: lr_scheduler.CyclicLR(
            o, 0.01, 0.1, 70, scale_fn=lambda x: 0.5 ** (x / 100), scale_mode="iterations"
        ),
    ),
    _same("OneCycleLR", "SGD", [1.0, 0.5, 2.0], STEPS),
    _same(
        "OneCycleLR",
        "Adam",
        1.0,
        epochs=20,
        steps_per_epoch=100,
        anneal_strategy="linear",
        three_phase=True,
        pct_start=0.25,
    ),
    _same("OneCycleLR", "SGD", 1.0, STEPS, cycle_momentum=False, div_factor=10.0),
    (
        "SequentialLR-linear-cosine",
        "Adam",
        lambda o: TL.SequentialLR(
            o, [TL.LinearLR(o, 0.01, 1.0, 100), TL.CosineAnnealingLR(o, 1900, 1e-5)], [100]
        ),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, 0.01, 1.0, 100),
                lr_scheduler.CosineAnnealingLR(o, 1900, 1e-5),
            ],
            [100],
        ),
    ),
    (
        "SequentialLR-three",
        "SGD",
        lambda o: TL.SequentialLR(
            o,
            [
                TL.ConstantLR(o, 0.5, 10),
                TL.ExponentialLR(o, 0.99),
                TL.CosineAnnealingWarmRestarts(o, 100),
            ],
            [50, 300],
        ),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.ConstantLR(o, 0.5, 10),
                lr_scheduler.ExponentialLR(o, 0.99),
                lr_scheduler.CosineAnnealingWarmRestarts(o, 100),
            ],
            [50, 300],
        ),
    ),
    (
        "ChainedScheduler",
        "Adam",
        lambda o: TL.ChainedScheduler(
            [TL.ConstantLR(o, 0.5, 10), TL.ExponentialLR(o, 0.999), TL.CosineAnnealingLR(o, 500)]
        ),
        lambda o: lr_scheduler.ChainedScheduler(
            [
                lr_scheduler.ConstantLR(o, 0.5, 10),
                lr_scheduler.ExponentialLR(o, 0.999),
                lr_scheduler.CosineAnnealingLR(o, 500),
            ]
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "kind", "make_torch", "make_ours"), CASES, ids=[c[0] for c in CASES]
)
def test_lr_and_momentum_of_every_group_match_torch_float64(x64, name, kind, make_torch, make_ours):
    torch_lr, torch_momentum = torch_trajectory(make_torch, kind)
    lr, momentum = schedule_trajectory(make_ours(_Groups(kind)).schedule, kind)
    np.testing.assert_allclose(lr, torch_lr, rtol=RTOL, atol=0)
    np.testing.assert_allclose(momentum, torch_momentum, rtol=RTOL, atol=0)


def report_deviations():
    """Print each case's max relative deviation from torch (for BUILD_NOTES; needs x64 on)."""
    for name, kind, make_torch, make_ours in CASES:
        torch_lr, torch_momentum = torch_trajectory(make_torch, kind)
        lr, momentum = schedule_trajectory(make_ours(_Groups(kind)).schedule, kind)
        dev = np.max(np.abs(lr - torch_lr) / np.where(torch_lr == 0, 1, np.abs(torch_lr)))
        dev_m = np.max(np.abs(momentum - torch_momentum) / np.abs(torch_momentum))
        print(f"{name}: lr {dev:.1e} ({np.mean(lr == torch_lr):.0%} bitwise), momentum {dev_m:.1e}")


def _plateau_metrics(seed):
    """A loss that falls, then wanders (plateaus, with noise), so that every rule gets used."""
    rng = np.random.default_rng(seed)
    return 5 * np.exp(-np.arange(STEPS) / 200) + np.cumsum(rng.normal(0, 0.01, STEPS))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"patience": 5, "cooldown": 3, "min_lr": [0, 1e-4, 0]},
        {"mode": "max", "factor": 0.5, "patience": 3, "threshold": 1e-3, "threshold_mode": "abs"},
        {"mode": "max", "patience": 0, "eps": 1e-3},
        {"threshold_mode": "abs", "threshold": 0.0, "cooldown": 20, "min_lr": 1e-3},
    ],
)
def test_reduce_lr_on_plateau_matches_torch_float64(x64, kwargs):
    metrics = _plateau_metrics(len(kwargs))
    torch_lr, _ = torch_trajectory(
        lambda o: TL.ReduceLROnPlateau(o, **kwargs), "SGD", metrics=metrics
    )
    sched = lr_scheduler.ReduceLROnPlateau(_Groups("SGD"), **kwargs)
    lr, _ = schedule_trajectory(sched.schedule, "SGD", metrics=metrics)
    assert len(np.unique(torch_lr[:, 0])) > 2  # the LR was reduced more than once
    np.testing.assert_allclose(lr, torch_lr, rtol=RTOL, atol=0)


# --- last_epoch and state dicts: a run continued on the other side ---------------------------

RESUME_AT = 500
# One case per scheduler class (the state each keeps differs; the arithmetic is tested above).
RESUMED = (
    [CASES[0], CASES[2]]
    + [
        c
        for c in CASES
        if c[0]
        in {
            "StepLR-SGD-(7, 0.99)-{}",
            "MultiStepLR-SGD-([3, 100, 100, 1500], 0.5)-{}",
            "ConstantLR-Adam-()-{'factor': 0.3, 'total_iters': 1000}",
            "LinearLR-Adam-()-{'start_factor': 0.1, 'end_factor': 0.9, 'total_iters': 1000}",
            "ExponentialLR-SGD-(0.998,)-{}",
            "PolynomialLR-SGD-()-{'total_iters': 1999, 'power': 1.7}",
            "CosineAnnealingLR-SGD-(300, 0.001)-{}",
            "CosineAnnealingWarmRestarts-SGD-(50, 2, 0.0001)-{}",
            "CyclicLR-SGD-(0.01, [0.1, 0.2, 0.3], 100, 50, 'triangular2')-{}",
        }
    ]
    + [c for c in CASES if c[0].startswith(("OneCycleLR-Adam", "SequentialLR-three", "Chained"))]
)


def _continue(schedule, state, hp, steps, metrics=None):
    """optadam's values over ``steps`` more steps from (state, hp), and the final state."""

    @jax.jit
    def run(state, hp, metrics):
        def step(carry, metric):
            state, hp = schedule.step(*carry, metric)
            return (state, hp), (hp["lr"], hp["momentum"])

        return jax.lax.scan(step, (state, hp), metrics)

    metrics = jnp.zeros(steps) if metrics is None else jnp.asarray(metrics, float)
    (state, hp), (lrs, momenta) = run(state, hp, metrics)
    return state, hp, np.asarray(lrs), np.asarray(momenta)


@pytest.mark.parametrize(
    ("name", "kind", "make_torch", "make_ours"), RESUMED, ids=[c[0] for c in RESUMED]
)
def test_state_dict_continues_a_run_either_way(x64, name, kind, make_torch, make_ours):
    torch_lr, torch_momentum = torch_trajectory(make_torch, kind)
    sched = make_ours(_Groups(kind))

    # torch's scheduler.state_dict() at step 500, and its groups' values, continue in optadam.
    optimizer = _torch_optimizer(kind)
    torch_sched = make_torch(optimizer)
    for _ in range(RESUME_AT):
        optimizer.step()
        torch_sched.step()
    fresh, _ = sched.schedule.construct(_initial_hp(kind))
    state = sched.load_state_dict(
        lr_scheduler.ScheduledState(None, fresh), torch_sched.state_dict()
    )
    lr, momentum = _torch_values(optimizer)
    hp = {
        "lr": jnp.asarray(lr, float),
        "initial_lr": None,
        "momentum": jnp.asarray(momentum, float),
    }
    _, _, lrs, momenta = _continue(sched.schedule, state.scheduler, hp, STEPS - RESUME_AT)
    np.testing.assert_allclose(lrs, torch_lr[RESUME_AT + 1 :], rtol=RTOL, atol=0)
    np.testing.assert_allclose(momenta, torch_momentum[RESUME_AT + 1 :], rtol=RTOL, atol=0)

    # optadam's state at step 500, through sched.state_dict(), continues in torch.
    state, hp = sched.schedule.construct(_initial_hp(kind))
    state, hp, _, _ = _continue(sched.schedule, state, hp, RESUME_AT)
    exported = sched.state_dict(lr_scheduler.ScheduledState(None, state))
    optimizer = _torch_optimizer(kind)
    torch_sched = make_torch(optimizer)
    torch_sched.load_state_dict(exported)
    for k, group in enumerate(optimizer.param_groups):  # as optimizer.load_state_dict does
        group["lr"] = float(hp["lr"][k])
        if "betas" in group:
            group["betas"] = (float(hp["momentum"][k]), group["betas"][1])
        else:
            group["momentum"] = float(hp["momentum"][k])
    continued = []
    for _ in range(STEPS - RESUME_AT):
        optimizer.step()
        torch_sched.step()
        continued.append(_torch_values(optimizer))
    np.testing.assert_allclose(
        [c[0] for c in continued], torch_lr[RESUME_AT + 1 :], rtol=RTOL, atol=0
    )
    np.testing.assert_allclose(
        [c[1] for c in continued], torch_momentum[RESUME_AT + 1 :], rtol=RTOL, atol=0
    )


def test_reduce_lr_on_plateau_state_dict_continues_either_way(x64):
    metrics = _plateau_metrics(7)
    kwargs = {"patience": 5, "cooldown": 3}
    torch_lr, _ = torch_trajectory(
        lambda o: TL.ReduceLROnPlateau(o, **kwargs), "SGD", metrics=metrics
    )
    sched = lr_scheduler.ReduceLROnPlateau(_Groups("SGD"), **kwargs)

    optimizer = _torch_optimizer("SGD")
    torch_sched = TL.ReduceLROnPlateau(optimizer, **kwargs)
    for k in range(RESUME_AT):
        optimizer.step()
        torch_sched.step(float(metrics[k]))
    fresh, _ = sched.schedule.construct(_initial_hp("SGD"))
    state = sched.load_state_dict(
        lr_scheduler.ScheduledState(None, fresh), torch_sched.state_dict()
    )
    hp = {**_initial_hp("SGD"), "lr": jnp.asarray(_torch_values(optimizer)[0], float)}
    _, _, lrs, _ = _continue(
        sched.schedule, state.scheduler, hp, STEPS - RESUME_AT, metrics[RESUME_AT:]
    )
    np.testing.assert_allclose(lrs, torch_lr[RESUME_AT + 1 :], rtol=RTOL, atol=0)

    state, hp = sched.schedule.construct(_initial_hp("SGD"))
    state, hp, _, _ = _continue(sched.schedule, state, hp, RESUME_AT, metrics[:RESUME_AT])
    optimizer = _torch_optimizer("SGD")
    torch_sched = TL.ReduceLROnPlateau(optimizer, **kwargs)
    torch_sched.load_state_dict(sched.state_dict(lr_scheduler.ScheduledState(None, state)))
    for k, group in enumerate(optimizer.param_groups):
        group["lr"] = float(hp["lr"][k])
    continued = []
    for k in range(RESUME_AT, STEPS):
        optimizer.step()
        torch_sched.step(float(metrics[k]))
        continued.append(_torch_values(optimizer)[0])
    np.testing.assert_allclose(continued, torch_lr[RESUME_AT + 1 :], rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("StepLR", (7, 0.9)),
        ("MultiStepLR", ([600, 700, 700], 0.5)),
        ("ConstantLR", (0.5, 520)),
        ("LinearLR", (0.2, 1.0, 900)),
        ("ExponentialLR", (0.999,)),
        ("PolynomialLR", (1500, 2.0)),
        ("CosineAnnealingLR", (300, 1e-3)),
        ("CosineAnnealingWarmRestarts", (60, 2, 1e-4)),
        ("CyclicLR", (0.01, 0.1, 70)),
    ],
)
def test_last_epoch_in_the_constructor_resumes_as_torch(x64, name, args):
    """torch resumes a scheduler with ``last_epoch=k`` from the groups' ``initial_lr`` (loaded with
    the optimizer); here the groups' own lr stands for it."""

    def make_torch(optimizer):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return getattr(TL, name)(optimizer, *args, last_epoch=RESUME_AT)

    torch_lr, torch_momentum = torch_trajectory(make_torch, "SGD")
    sched = getattr(lr_scheduler, name)(_Groups("SGD"), *args, last_epoch=RESUME_AT)
    lr, momentum = schedule_trajectory(sched.schedule, "SGD")
    np.testing.assert_allclose(lr, torch_lr, rtol=RTOL, atol=0)
    np.testing.assert_allclose(momentum, torch_momentum, rtol=RTOL, atol=0)


# --- bad input --------------------------------------------------------------------------------


def test_rejects_unknown_arguments_by_name():
    with pytest.raises(TypeError, match="gama"):
        lr_scheduler.StepLR(_Groups("SGD"), 5, gama=0.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: lr_scheduler.MultiStepLR(o, [30, 10]),
        lambda o: lr_scheduler.SequentialLR(
            o,
            [lr_scheduler.ConstantLR(o), lr_scheduler.ConstantLR(o), lr_scheduler.ConstantLR(o)],
            [20, 10],
        ),
    ],
)
def test_rejects_milestones_out_of_order(make):
    with pytest.raises(ValueError, match=r"milestones must be in increasing order, got \[.*\]"):
        make(_Groups("SGD"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda o: lr_scheduler.LambdaLR(o, [lambda k: 1.0] * 2), "Expected 3 lr_lambdas"),
        (
            lambda o: lr_scheduler.OneCycleLR(o, [1.0, 2.0], 100),
            "max_lr must have one value per param group",
        ),
        (
            lambda o: lr_scheduler.CyclicLR(o, 0.1, 1.0, base_momentum=[0.8]),
            "base_momentum must have one value",
        ),
        (lambda o: lr_scheduler.ReduceLROnPlateau(o, min_lr=[0.0]), "expected 3 min_lrs"),
        (lambda o: lr_scheduler.OneCycleLR(o, 1.0), "total_steps, or epochs and steps_per_epoch"),
        (lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=0), "positive integer total_steps"),
        (lambda o: lr_scheduler.OneCycleLR(o, 1.0, 100, pct_start=1), "pct_start"),
        (lambda o: lr_scheduler.OneCycleLR(o, 1.0, 100, anneal_strategy="exp"), "anneal_strategy"),
        (lambda o: lr_scheduler.CyclicLR(o, 0.1, 1.0, mode="square"), "mode must be"),
        (lambda o: lr_scheduler.ConstantLR(o, factor=1.5), "factor must be in"),
        (lambda o: lr_scheduler.LinearLR(o, start_factor=0), "start_factor must be in"),
        (lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=0), "positive integer T_0"),
        (lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=1.0), "factor must be < 1.0"),
        (lambda o: lr_scheduler.ReduceLROnPlateau(o, threshold_mode="pct"), "threshold_mode"),
        (
            lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.ConstantLR(o)], [5]),
            "one milestone fewer",
        ),
        (
            lambda o: lr_scheduler.SequentialLR(
                o, [lr_scheduler.ReduceLROnPlateau(o), lr_scheduler.ConstantLR(o)], [5]
            ),
            "does not support ReduceLROnPlateau",
        ),
        (
            lambda o: lr_scheduler.ChainedScheduler(
                [lr_scheduler.ConstantLR(o), lr_scheduler.ConstantLR(_Groups("SGD"))]
            ),
            "same optimizer",
        ),
    ],
)
def test_rejects_bad_arguments_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make(_Groups("SGD"))


def test_cycle_momentum_needs_a_momentum():
    class NoMomentum:
        param_groups = ({"params": "*", "lr": 0.1},)

    with pytest.raises(ValueError, match="cycle_momentum"):
        lr_scheduler.OneCycleLR(NoMomentum(), 1.0, 100)
    lr_scheduler.OneCycleLR(NoMomentum(), 1.0, 100, cycle_momentum=False)  # fine without

    class ZeroMomentum:  # SGD(momentum=0) keeps no buffer for the scheduler to drive
        param_groups = ({"params": "*", "lr": 0.1, "momentum": 0},)

    with pytest.raises(ValueError, match=r"param_groups\[0\] has momentum=0"):
        lr_scheduler.CyclicLR(ZeroMomentum(), 0.01, 0.1)


def test_refuses_an_optimizer_whose_lr_is_a_schedule():
    class Scheduled:
        param_groups = ({"params": "*", "lr": lambda count: 0.1, "momentum": 0.9},)

    with pytest.raises(ValueError, match=r"param_groups\[0\]'s lr is a schedule"):
        lr_scheduler.StepLR(Scheduled(), 10)


def test_one_cycle_refuses_to_step_past_total_steps_eagerly_and_under_jit():
    sched = lr_scheduler.OneCycleLR(_Groups("SGD"), 1.0, total_steps=5)
    state, hp = sched.schedule.construct(_initial_hp("SGD"))
    step = jax.jit(sched.schedule.step)
    for _ in range(5):  # torch allows total_steps steps
        state, hp = step(state, hp)
    with pytest.raises(Exception, match="stepped 6 times, past its total_steps=5"):
        jax.block_until_ready(step(state, hp))
    with pytest.raises(ValueError, match="stepped 6 times, past its total_steps=5"):
        sched.schedule.step(state, hp)


def test_reduce_lr_on_plateau_needs_the_metric():
    sched = lr_scheduler.ReduceLROnPlateau(_Groups("SGD"))
    with pytest.raises(ValueError, match=r"value=loss"):
        sched.update({}, None)


def test_lambda_that_needs_python_ints_gets_a_clear_error():
    sched = lr_scheduler.LambdaLR(_Groups("SGD"), lambda k: min(1.0, k / 10))
    with pytest.raises(TypeError, match="lr_lambda must be traceable by JAX"):
        jax.jit(sched.schedule.construct)(_initial_hp("SGD"))


def test_load_state_dict_names_an_argument_that_differs():
    sched = lr_scheduler.StepLR(_Groups("SGD"), 7, 0.5)
    state = lr_scheduler.ScheduledState(None, sched.schedule.construct(_initial_hp("SGD"))[0])
    torch_dict = TL.StepLR(_torch_optimizer("SGD"), 7, 0.1).state_dict()
    with pytest.raises(
        ValueError, match=r"\['gamma'\] is 0.1, but this scheduler was built with 0.5"
    ):
        sched.load_state_dict(state, torch_dict)
    with pytest.raises(ValueError, match="no 'step_size'"):
        sched.load_state_dict(state, TL.ExponentialLR(_torch_optimizer("SGD"), 0.5).state_dict())


# --- whole recipes: optimizer, param groups, clipping and a scheduler, against torch ------------

import optax  # noqa: E402

import optadam.torch  # noqa: E402

RECIPE_STEPS = 1000
RECIPE_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
# A small MLP: two dense layers and a LayerNorm (leaf order: jax.tree.leaves, keys sorted).
MLP = {
    "dense1": {"b": (8,), "w": (4, 8)},
    "dense2": {"b": (2,), "w": (8, 2)},
    "ln": {"bias": (8,), "scale": (8,)},
}
NAMES = [f"{layer}/{leaf}" for layer in sorted(MLP) for leaf in sorted(MLP[layer])]
NO_DECAY = ["*/b", "ln/*"]  # biases and LayerNorm weights, the Hugging Face recipe's second group


def _no_decay(name):
    return name.endswith("/b") or name.startswith("ln/")


def _recipe_problem(dtype, seed=0):
    """Initial params (at least 1 away from 0) and a gradient stream, both by leaf name."""
    rng = np.random.default_rng(seed)
    shapes = {f"{layer}/{leaf}": MLP[layer][leaf] for layer in MLP for leaf in MLP[layer]}
    params = {
        n: (rng.normal(size=shapes[n]) + np.sign(rng.normal(size=shapes[n])) * 2).astype(dtype)
        for n in NAMES
    }
    grads = [
        {n: (0.3 * rng.normal(size=shapes[n])).astype(dtype) for n in NAMES}
        for _ in range(RECIPE_STEPS)
    ]
    return params, grads


def _tree(flat):
    tree = {}
    for name, value in flat.items():
        layer, leaf = name.split("/")
        tree.setdefault(layer, {})[leaf] = value
    return tree


def clip_grad_norm_like_torch(max_norm):
    """torch.nn.utils.clip_grad_norm_: g · min(1, max_norm / (‖g‖ + 1e-6)). (optax's
    clip_by_global_norm has no 1e-6, 1e-7 apart here.)"""

    def update(updates, state, params=None):
        norms = jnp.stack([jnp.linalg.norm(jnp.ravel(g)) for g in jax.tree.leaves(updates)])
        coef = jnp.minimum(max_norm / (jnp.linalg.norm(norms) + 1e-6), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def torch_recipe(
    params, grads, make_optimizer, make_scheduler, clip=None, metrics=None, start=None
):
    """torch's params after every step, by leaf name; ``start`` = (optimizer, scheduler) state
    dicts to load first. Returns the trajectory and the final (optimizer, scheduler)."""
    tensors = {n: torch.tensor(params[n], requires_grad=True) for n in NAMES}
    groups = [
        {"params": [tensors[n] for n in NAMES if not _no_decay(n)]},
        {"params": [tensors[n] for n in NAMES if _no_decay(n)], "weight_decay": 0.0},
    ]
    optimizer = make_optimizer(groups)
    scheduler = make_scheduler(optimizer)
    if start is not None:
        optimizer.load_state_dict(start[0])
        scheduler.load_state_dict(start[1])
    trajectory = []
    for k, g in enumerate(grads):
        for n in NAMES:
            tensors[n].grad = torch.tensor(g[n])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        optimizer.step()
        scheduler.step() if metrics is None else scheduler.step(float(metrics[k]))
        trajectory.append({n: tensors[n].detach().numpy().copy() for n in NAMES})
    return trajectory, (optimizer, scheduler)


def optadam_recipe(tx, params, grads, metrics=None, state=None):
    """optadam's params after every step, by leaf name, from one jitted scan, and the final state.
    ``metrics``: passed as ``value=`` (ReduceLROnPlateau); ``state``: the state to start from."""
    params = _tree({n: jnp.asarray(v) for n, v in params.items()})
    stacked = _tree({n: jnp.asarray(np.stack([g[n] for g in grads])) for n in NAMES})
    state = tx.init(params) if state is None else state

    @jax.jit
    def run(params, state, stacked, metrics):
        def step(carry, xs):
            params, state = carry
            g, metric = xs
            extra = {} if metric is None else {"value": metric}
            updates, state = tx.update(g, state, params, **extra)
            params = optax.apply_updates(params, updates)
            return (params, state), params

        return jax.lax.scan(step, (params, state), (stacked, metrics))

    (_, state), trajectory = run(
        params, state, stacked, None if metrics is None else jnp.asarray(metrics)
    )
    flat = {n: np.asarray(trajectory[n.split("/")[0]][n.split("/")[1]]) for n in NAMES}
    return [{n: flat[n][k] for n in NAMES} for k in range(len(grads))], state


def _deviation(ours, theirs):
    """max over steps and leaves of ‖ours − theirs‖∞ / ‖theirs‖∞."""
    return max(
        np.max(np.abs(a[n].astype(np.float64) - b[n])) / np.max(np.abs(b[n]))
        for a, b in zip(ours, theirs, strict=True)
        for n in NAMES
    )


WARMUP, TOTAL = 100, RECIPE_STEPS


def _hf_lambda_torch(k):
    """transformers' get_cosine_schedule_with_warmup, as torch's LambdaLR runs it."""
    if k < WARMUP:
        return k / max(1, WARMUP)
    progress = (k - WARMUP) / max(1, TOTAL - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _hf_lambda_jax(k):
    progress = (k - WARMUP) / max(1, TOTAL - WARMUP)
    return jnp.where(
        k < WARMUP, k / max(1, WARMUP), jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * progress)))
    )


RECIPES = {
    "adamw-lambda-warmup-cosine": (
        lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1),
        lambda o: TL.LambdaLR(o, _hf_lambda_torch),
        lambda: optadam.torch.AdamW(
            [{"params": "*/w"}, {"params": NO_DECAY, "weight_decay": 0.0}],
            lr=1e-2,
            weight_decay=0.1,
        ),
        lambda tx: lr_scheduler.LambdaLR(tx, _hf_lambda_jax),
    ),
    "adamw-sequential-linear-cosine": (
        lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1),
        lambda o: TL.SequentialLR(
            o,
            [TL.LinearLR(o, 1e-3, 1.0, WARMUP), TL.CosineAnnealingLR(o, TOTAL - WARMUP)],
            [WARMUP],
        ),
        lambda: optadam.torch.AdamW(
            [{"params": "*/w"}, {"params": NO_DECAY, "weight_decay": 0.0}],
            lr=1e-2,
            weight_decay=0.1,
        ),
        lambda tx: lr_scheduler.SequentialLR(
            tx,
            [
                lr_scheduler.LinearLR(tx, 1e-3, 1.0, WARMUP),
                lr_scheduler.CosineAnnealingLR(tx, TOTAL - WARMUP),
            ],
            [WARMUP],
        ),
    ),
    "sgd-one-cycle": (
        lambda groups: torch.optim.SGD(
            groups, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True
        ),
        lambda o: TL.OneCycleLR(o, max_lr=[0.05, 0.02], total_steps=TOTAL),
        lambda: optadam.torch.SGD(
            [{"params": "*/w"}, {"params": NO_DECAY, "weight_decay": 0.0}],
            lr=0.1,
            momentum=0.9,
            weight_decay=1e-3,
            nesterov=True,
        ),
        lambda tx: lr_scheduler.OneCycleLR(tx, max_lr=[0.05, 0.02], total_steps=TOTAL),
    ),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_with_groups_clipping_and_scheduler_follows_torch(request, dtype, recipe):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    make_torch_opt, make_torch_sched, make_tx, make_sched = RECIPES[recipe]
    params, grads = _recipe_problem(dtype)
    theirs, _ = torch_recipe(params, grads, make_torch_opt, make_torch_sched, clip=1.0)
    tx = optax.chain(clip_grad_norm_like_torch(1.0), make_sched(make_tx()))
    ours, _ = optadam_recipe(tx, params, grads)
    assert _deviation(ours, theirs) < RECIPE_TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_with_reduce_lr_on_plateau_on_a_recorded_loss_follows_torch(request, dtype):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    params, grads = _recipe_problem(dtype, seed=3)
    losses = _plateau_metrics(11)[:RECIPE_STEPS]
    kwargs = {"factor": 0.5, "patience": 20, "cooldown": 5, "min_lr": [1e-5, 0.0]}
    theirs, (optimizer, _) = torch_recipe(
        params,
        grads,
        lambda groups: torch.optim.Adam(groups, lr=1e-2, weight_decay=1e-2),
        lambda o: TL.ReduceLROnPlateau(o, **kwargs),
        metrics=losses,
    )
    assert optimizer.param_groups[0]["lr"] < 1e-3  # reduced more than three times
    tx = optadam.torch.Adam(
        [{"params": "*/w"}, {"params": NO_DECAY, "weight_decay": 0.0}], lr=1e-2, weight_decay=1e-2
    )
    ours, _ = optadam_recipe(
        lr_scheduler.ReduceLROnPlateau(tx, **kwargs), params, grads, metrics=losses.astype(dtype)
    )
    assert _deviation(ours, theirs) < RECIPE_TOLERANCE[dtype]


@pytest.mark.parametrize("recipe", ["adamw-sequential-linear-cosine", "sgd-one-cycle"])
def test_recipe_resumes_at_500_either_way(x64, recipe):
    """torch's optimizer and scheduler state dicts at step 500 continue in optadam on torch's
    trajectory to step 1,000; optadam's, exported at 500, continue in torch."""
    make_torch_opt, make_torch_sched, make_tx, make_sched = RECIPES[recipe]
    params, grads = _recipe_problem(np.float64, seed=5)
    theirs, _ = torch_recipe(params, grads, make_torch_opt, make_torch_sched)
    half = RECIPE_STEPS // 2
    tree = _tree({n: jnp.asarray(v) for n, v in params.items()})

    # torch -> optadam: run torch to 500, load both dicts, continue in optadam from its params.
    _, (optimizer, scheduler) = torch_recipe(params, grads[:half], make_torch_opt, make_torch_sched)
    sched = make_sched(make_tx())
    state = sched.init(tree)
    state = state._replace(
        optimizer=optadam.torch.load_state_dict(sched.optimizer, optimizer.state_dict(), tree)
    )
    state = sched.load_state_dict(state, scheduler.state_dict())
    ours, _ = optadam_recipe(sched, theirs[half - 1], grads[half:], state=state)
    assert _deviation(ours, theirs[half:]) < 1e-10

    # optadam -> torch: run optadam to 500, export both dicts, continue in torch.
    sched = make_sched(make_tx())
    mine, state = optadam_recipe(sched, params, grads[:half])
    start = (
        sched.optimizer_state_dict(state, _tree({n: jnp.asarray(v) for n, v in mine[-1].items()})),
        sched.state_dict(state),
    )
    continued, _ = torch_recipe(
        mine[-1], grads[half:], make_torch_opt, make_torch_sched, start=start
    )
    assert _deviation(continued, theirs[half:]) < 1e-10


def test_readme_scheduler_example_runs_and_follows_torch():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### LR schedulers", 1)[1]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, re.S).group(1), namespace)

    w = torch.ones(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    scheduler = TL.OneCycleLR(optimizer, max_lr=1.0, total_steps=100)
    for _ in range(100):
        w.grad = 2 * w.detach()
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(namespace["params"]["w"], w.detach().numpy(), rtol=1e-5)
    # float32 (no x64 here): near the end of the cycle 1 + cos(πx) cancels, 3e-5 relative
    np.testing.assert_allclose(
        namespace["sched"].get_last_lr(namespace["state"]), scheduler.get_last_lr(), rtol=1e-4
    )


SCHEDULERS = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "OneCycleLR",
    "SequentialLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_arguments_and_defaults_are_torchs(name):
    theirs = inspect.signature(getattr(TL, name).__init__).parameters
    ours = inspect.signature(getattr(lr_scheduler, name)).parameters
    assert list(ours) == [p for p in theirs if p != "self"]
    assert {k: p.default for k, p in ours.items()} == {k: theirs[k].default for k in ours}
