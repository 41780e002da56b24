"""optadam.torch against torch.optim itself (torch 2.13, CPU): trajectories on identical gradient
streams, LR schedulers, state dicts both ways, arguments and errors.

Deviations are ``harness.relative_deviation``'s: max over leaves and steps of the normwise relative
distance. Tolerances are the issue's: 1e-10 in float64, 1e-5 in float32. Params start at least 2
away from 0 so that no leaf (the scalar one included) crosses 0, where a relative distance means
nothing.
"""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import torch
from harness import relative_deviation
from hypothesis import given, settings
from hypothesis import strategies as st

import optadam
import optadam.torch

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
NAMES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam", "NAdam"]

# One configuration per optimizer with most of its options on, run for 1,000 steps.
REPRESENTATIVE = {
    "SGD": {"lr": 2e-3, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
    "Adam": {"lr": 1e-2, "weight_decay": 1e-2, "amsgrad": True},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1},
    "RMSprop": {"lr": 1e-3, "momentum": 0.9, "centered": True, "weight_decay": 1e-2},
    "Adagrad": {
        "lr": 0.1,
        "lr_decay": 1e-3,
        "initial_accumulator_value": 0.1,
        "weight_decay": 1e-2,
    },
    "RAdam": {"lr": 1e-2, "weight_decay": 1e-2, "decoupled_weight_decay": True},
    "NAdam": {"lr": 1e-2, "weight_decay": 1e-2},
}


def _grid(name):
    """Every combination of the options that change torch's algorithm (100 steps each)."""
    maximize = [False, True]
    decay = [{}, {"weight_decay": 0.1}]
    adam_decay = [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": True}]
    if name == "SGD":
        momenta = [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}]
        momenta += [{"momentum": 0.9, "dampening": 0.5}, {"momentum": 0.5, "dampening": 1.0}]
        options = [{"lr": 5e-3, **m, **d} for m in momenta for d in decay]
    elif name == "Adam":
        betas = [{}, {"betas": (0.0, 0.99), "eps": 1e-3}]  # β1 = 0: torch's lerp at weight 1
        options = [
            {"lr": 1e-2, "amsgrad": a, **d, **b}
            for a in [False, True]
            for d in adam_decay
            for b in (betas if not d else betas[:1])
        ]
    elif name == "AdamW":
        options = [{"lr": 1e-2, "amsgrad": a} for a in [False, True]]
        options += [
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "betas": (0.8, 0.9), "eps": 1e-4},
        ]
    elif name == "RMSprop":
        options = [
            {"lr": 1e-3, "centered": c, **m, **d}
            for c in [False, True]
            for m in [{}, {"momentum": 0.9}]
            for d in decay
        ]
        options += [{"lr": 1e-3, "alpha": 0.9, "eps": 1e-4}]
    elif name == "Adagrad":
        options = [
            {"lr": 0.05, **lr_decay, **s0, **d}
            for lr_decay in [{}, {"lr_decay": 0.05}]
            for s0 in [{}, {"initial_accumulator_value": 0.5}]
            for d in decay
        ]
        options += [{"lr": 0.05, "eps": 1e-3}]
    elif name == "RAdam":
        options = [{"lr": 1e-2, **d} for d in adam_decay]
        options += [{"lr": 1e-2, "betas": (0.9, 0.99)}, {"lr": 1e-2, "eps": 1e-2}]
    else:
        options = [
            {"lr": 1e-2, **d, **psi} for d in adam_decay for psi in [{}, {"momentum_decay": 0.05}]
        ]
        options += [{"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-4}]
    return [{**o, "maximize": m} for o in options for m in maximize]


def problem(dtype, steps, seed=0, shapes=SHAPES):
    """Initial params (at least 2 away from 0) and a fixed standard-normal gradient stream."""
    params = reference.make_grad_stream(shapes, 1, seed=seed + 100)[0]
    params = [(p + 2 * np.where(p < 0, -1, 1)).astype(dtype) for p in params]
    return params, reference.make_grad_stream(shapes, steps, seed=seed, dtype=dtype)


def torch_run(name, kwargs, params, grads, scheduler=None, state_dict=None):
    """torch.optim's trajectory (one array per leaf, stacked over steps) and the optimizer."""
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    if state_dict is not None:
        optimizer.load_state_dict(state_dict)
    lr_scheduler = scheduler(optimizer) if scheduler else None
    trajectory = []
    for g in grads:
        for p, g_leaf in zip(tensors, g, strict=True):
            p.grad = torch.tensor(g_leaf)
        optimizer.step()
        if lr_scheduler:
            lr_scheduler.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    if not trajectory:
        return [], optimizer
    return [np.stack([step[i] for step in trajectory]) for i in range(len(params))], optimizer


def jax_runs(runs, grads):
    """Each run's trajectory on the same gradient stream and its final state, from one compiled
    program for all. A run is ``(tx, params)`` or ``(tx, params, state to start from)``."""
    runs = [(tx, [jnp.asarray(p) for p in params], *rest) for tx, params, *rest in runs]
    stacked = [jnp.asarray(np.stack([g[i] for g in grads])) for i in range(len(grads[0]))]

    @jax.jit
    def scans(starts, stacked):
        outs = []
        for (tx, *_), (params, state) in zip(runs, starts, strict=True):

            def step(carry, g, tx=tx):
                p, state = carry
                updates, state = tx.update(g, state, p)
                p = optax.apply_updates(p, updates)
                return (p, state), p

            (_, state), trajectory = jax.lax.scan(step, (params, state), stacked)
            outs.append((trajectory, state))
        return outs

    starts = [(params, rest[0] if rest else tx.init(params)) for tx, params, *rest in runs]
    return [([np.asarray(x) for x in path], state) for path, state in scans(starts, stacked)]


def tolerance(dtype):
    return TOLERANCE[np.dtype(dtype).type]


def assert_all_close(cases, rtol):
    """``cases``: (label, actual, expected) trajectories; report every one over ``rtol``."""
    deviations = [(label, relative_deviation(a, e)) for label, a, e in cases]
    failures = [f"{label}: {d:.2e}" for label, d in deviations if not d <= rtol]
    assert not failures, "\n".join(failures)


def _x64_for(request, dtype):
    if np.dtype(dtype) in (np.dtype(np.float64), np.dtype(np.complex128)):
        request.getfixturevalue("x64")


# --- trajectories -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_configuration_of_each_optimizer_follows_torch_for_1000_steps(request, dtype):
    _x64_for(request, dtype)
    params, grads = problem(dtype, 1000)
    runs = jax_runs(
        [(getattr(optadam.torch, n)(**REPRESENTATIVE[n]), params) for n in NAMES], grads
    )
    cases = [
        (f"{n}({REPRESENTATIVE[n]})", actual, torch_run(n, REPRESENTATIVE[n], params, grads)[0])
        for n, (actual, _) in zip(NAMES, runs, strict=True)
    ]
    assert_all_close(cases, tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_every_option_combination_follows_torch(request, name, dtype):
    _x64_for(request, dtype)
    params, grads = problem(dtype, 100, seed=1)
    grid = _grid(name)
    runs = jax_runs([(getattr(optadam.torch, name)(**kwargs), params) for kwargs in grid], grads)
    cases = [
        (f"{name}({kwargs})", actual, torch_run(name, kwargs, params, grads)[0])
        for kwargs, (actual, _) in zip(grid, runs, strict=True)
    ]
    assert_all_close(cases, tolerance(dtype))


def test_option_grid_covers_every_option():
    switches = {
        "params",
        "foreach",
        "fused",
        "capturable",
        "differentiable",
    }  # params: groups' tests
    for name in NAMES:
        used = {key for kwargs in _grid(name) for key in kwargs}
        options = set(inspect.signature(getattr(optadam.torch, name)).parameters) - switches
        assert options <= used, (name, options - used)


def _loss(params, targets):
    """A quartic bowl with its minimum at ``targets``."""
    return sum(
        0.5 * (i + 1) * ((x - c) ** 2).sum() + 0.01 * (x**4).sum()
        for i, (x, c) in enumerate(zip(params, targets, strict=True))
    )


def _torch_descent(name, kwargs, params, targets, steps):
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    trajectory = []
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(tensors, [torch.tensor(c) for c in targets]).backward()
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    return [np.stack([step[i] for step in trajectory]) for i in range(len(params))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_of_a_loss_of_the_params_follow_torch(request, dtype):
    """Each side differentiates the loss at its own params: the runs feed back on themselves. The
    minimum is far (3·θ_0) so that 300 steps stay on the way there: at the minimum, adaptive
    methods bounce on gradients that are rounding noise, and any two implementations part."""
    _x64_for(request, dtype)
    params, _ = problem(dtype, 0, seed=3)
    targets = [3 * p for p in params]
    configs = {n: {**REPRESENTATIVE[n], "lr": REPRESENTATIVE[n]["lr"] / 2} for n in NAMES}
    txs = [getattr(optadam.torch, n)(**configs[n]) for n in NAMES]

    @jax.jit
    def descents(p):
        def step(carry, _):
            new = []
            for tx, (p, state) in zip(txs, carry, strict=True):
                updates, state = tx.update(jax.grad(_loss)(p, targets), state, p)
                new.append((optax.apply_updates(p, updates), state))
            return new, [p for p, _ in new]

        return jax.lax.scan(step, [(p, tx.init(p)) for tx in txs], None, length=300)[1]

    paths = descents([jnp.asarray(p) for p in params])
    cases = [
        (f"{n}({configs[n]})", path, _torch_descent(n, configs[n], params, targets, 300))
        for n, path in zip(NAMES, paths, strict=True)
    ]
    assert_all_close(cases, tolerance(dtype))


@pytest.mark.parametrize(("dtype", "rtol"), [(np.complex64, 1e-5), (np.complex128, 1e-10)])
def test_complex_parameters_follow_torch_view_as_real(request, dtype, rtol):
    _x64_for(request, dtype)
    shapes = [(3,), (2, 2)]
    params = reference.make_grad_stream(shapes, 1, seed=7, dtype=dtype)[0]
    params = [p + (2 + 2j) for p in params]
    grads = reference.make_grad_stream(shapes, 60, seed=8, dtype=dtype)
    runs = jax_runs(
        [(getattr(optadam.torch, n)(**REPRESENTATIVE[n]), params) for n in NAMES], grads
    )
    cases = [
        (n, actual, torch_run(n, REPRESENTATIVE[n], params, grads)[0])
        for n, (actual, _) in zip(NAMES, runs, strict=True)
    ]
    assert_all_close(cases, rtol)


# --- learning-rate schedules --------------------------------------------------------------------

LR_STEPS = 200


def _warmup(k):
    if isinstance(k, int):  # torch's LambdaLR
        return min(1.0, (k + 1) / 10)
    # The count is int32, and JAX computes (k + 1) / 10 in float32 even with x64 on; torch's
    # schedulers compute in double. So in float64 a schedule converts the count first.
    return jnp.minimum(1.0, (jnp.asarray(k, float) + 1) / 10)


def _schedules(base):
    """(name, torch scheduler factory, optadam lr as a function of the count)."""
    t_max, eta_min = 50, base / 10
    step_lr = optax.exponential_decay(base, 30, 0.5, staircase=True)

    def cosine(k):
        return (
            eta_min + (base - eta_min) * (1 + jnp.cos(jnp.pi * jnp.asarray(k, float) / t_max)) / 2
        )

    lr_scheduler = torch.optim.lr_scheduler
    return [
        ("LambdaLR", lambda o: lr_scheduler.LambdaLR(o, _warmup), lambda k: base * _warmup(k)),
        (
            "StepLR",
            lambda o: lr_scheduler.StepLR(o, 30, 0.5),
            lambda k: step_lr(jnp.asarray(k, float)),
        ),
        ("CosineAnnealingLR", lambda o: lr_scheduler.CosineAnnealingLR(o, t_max, eta_min), cosine),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lr_schedules_follow_torch_lr_schedulers(request, dtype):
    """``lr(k)`` is the rate of the update from count k to k + 1: torch's lr after k scheduler
    steps. Each scheduler is checked twice: as a formula, and as the table of torch's own rates.
    (Adagrad's configuration has an lr_decay, which torch applies on top of the scheduler.)"""
    _x64_for(request, dtype)
    params, grads = problem(dtype, LR_STEPS, seed=2)
    cases, runs = [], []
    for name in NAMES:
        kwargs = REPRESENTATIVE[name]
        base = kwargs["lr"]
        for label, scheduler, formula in _schedules(base):
            expected, _ = torch_run(name, kwargs, params, grads, scheduler)
            table = jnp.asarray(_recorded_rates(name, kwargs, params, scheduler))
            for how, lr in [("formula", formula), ("table", lambda k, table=table: table[k])]:
                cases.append((f"{name} with {label} as a {how}", expected))
                runs.append((getattr(optadam.torch, name)(**{**kwargs, "lr": lr}), params))
    actual = [path for path, _ in jax_runs(runs, grads)]
    assert_all_close(
        [(label, a, e) for (label, e), a in zip(cases, actual, strict=True)], tolerance(dtype)
    )


def _recorded_rates(name, kwargs, params, scheduler):
    """The lr torch uses at each step: the group's lr before ``optimizer.step()``."""
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    lr_scheduler = scheduler(optimizer)
    rates = []
    for _ in range(LR_STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: a no-op that keeps the scheduler from warning
        lr_scheduler.step()
    return rates


# --- state dicts --------------------------------------------------------------------------------

# Configurations whose state has every kind of field.
STATEFUL = {
    **REPRESENTATIVE,
    "SGD-nesterov": {"lr": 2e-3, "momentum": 0.9, "nesterov": True},
    "SGD-plain": {"lr": 2e-3},
    "Adam-plain": {"lr": 1e-2},
    "RMSprop-plain": {"lr": 1e-3},
    "NAdam-decoupled": {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
}


def _name(key):
    return key.split("-")[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_runs_resumed_in_jax_stay_on_torchs_trajectories(request, dtype):
    _x64_for(request, dtype)
    params, grads = problem(dtype, 80, seed=5)
    cases, runs = [], []
    for key, kwargs in STATEFUL.items():
        name = _name(key)
        uninterrupted, _ = torch_run(name, kwargs, params, grads)
        first, optimizer = torch_run(name, kwargs, params, grads[:40])
        middle = [leaf[-1] for leaf in first]
        tx = getattr(optadam.torch, name)(**kwargs)
        state = optadam.torch.load_state_dict(tx, optimizer.state_dict(), middle)
        cases.append((key, [leaf[40:] for leaf in uninterrupted]))
        runs.append((tx, middle, state))
    resumed = [path for path, _ in jax_runs(runs, grads[40:])]
    assert_all_close(
        [(key, r, e) for (key, e), r in zip(cases, resumed, strict=True)], tolerance(dtype)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jax_runs_resumed_in_torch_stay_on_jaxs_trajectories(request, dtype):
    _x64_for(request, dtype)
    params, grads = problem(dtype, 80, seed=6)
    txs = {key: getattr(optadam.torch, _name(key))(**kwargs) for key, kwargs in STATEFUL.items()}
    uninterrupted = jax_runs([(tx, params) for tx in txs.values()], grads)
    first = jax_runs([(tx, params) for tx in txs.values()], grads[:40])
    cases = []
    for (key, tx), (whole, _), (path, state) in zip(txs.items(), uninterrupted, first, strict=True):
        middle = [leaf[-1] for leaf in path]
        exported = optadam.torch.state_dict(tx, state, middle)
        resumed, _ = torch_run(_name(key), STATEFUL[key], middle, grads[40:], state_dict=exported)
        cases.append((key, resumed, [leaf[40:] for leaf in whole]))
    assert_all_close(cases, tolerance(dtype))


def _tensors_equal(a, b):
    return torch.equal(torch.as_tensor(a).to(torch.float64), torch.as_tensor(b).to(torch.float64))


@pytest.mark.parametrize("key", list(STATEFUL))
def test_state_dicts_round_trip_both_ways(key):
    name, kwargs = _name(key), STATEFUL[key]
    params, grads = problem(np.float32, 7, seed=7)
    _, optimizer = torch_run(name, kwargs, params, grads)
    theirs = optimizer.state_dict()
    tx = getattr(optadam.torch, name)(**kwargs)
    ours = optadam.torch.load_state_dict(tx, theirs, params)
    back = optadam.torch.state_dict(tx, ours, params)
    assert back["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert back["state"][i].keys() == entry.keys()
        for k, value in entry.items():
            assert _tensors_equal(back["state"][i][k], value), (i, k)
    assert back["param_groups"] == theirs["param_groups"]
    again = optadam.torch.load_state_dict(tx, back, params)
    assert jax.tree.structure(again) == jax.tree.structure(ours)
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(ours), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_fresh_state_dicts_match_torchs(name):
    params, _ = problem(np.float32, 0)
    tx = getattr(optadam.torch, name)()
    _, optimizer = torch_run(name, {}, params, [])
    theirs = optimizer.state_dict()
    ours = optadam.torch.state_dict(tx, tx.init(params), params)
    assert ours["state"].keys() == theirs["state"].keys()  # empty, but Adagrad's
    assert ours["param_groups"] == theirs["param_groups"]
    loaded = optadam.torch.load_state_dict(tx, theirs, params)
    for x, y in zip(jax.tree.leaves(loaded), jax.tree.leaves(tx.init(params)), strict=True):
        assert np.array_equal(x, y)


def test_complex_state_dicts_hold_torchs_complex_tensors():
    params = [np.array([1 + 2j, -3j], np.complex64), np.array(2.0, np.float32)]
    grads = [[np.array([0.5 - 1j, 2j], np.complex64), np.array(0.3, np.float32)]] * 3
    _, optimizer = torch_run("Adam", {"amsgrad": True}, params, grads)
    theirs = optimizer.state_dict()
    tx = optadam.torch.Adam(amsgrad=True)
    back = optadam.torch.state_dict(tx, optadam.torch.load_state_dict(tx, theirs, params), params)
    for key in ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]:
        assert back["state"][0][key].dtype == torch.complex64
        assert torch.equal(back["state"][0][key], theirs["state"][0][key])


def test_sgd_with_a_schedule_needs_the_step_torch_does_not_keep():
    params, grads = problem(np.float32, 5)
    _, optimizer = torch_run("SGD", {"lr": 0.1, "momentum": 0.9}, params, grads)
    tx = optadam.torch.SGD(lr=lambda k: 0.1 / (1 + k), momentum=0.9)
    with pytest.raises(ValueError, match="pass step="):
        optadam.torch.load_state_dict(tx, optimizer.state_dict(), params)
    state = optadam.torch.load_state_dict(tx, optimizer.state_dict(), params, step=5)
    assert int(state.count) == 5


def test_resumed_schedule_continues_where_torch_left_off(x64):
    params, grads = problem(np.float64, 60, seed=9)

    def scheduler(o):
        return torch.optim.lr_scheduler.LambdaLR(o, _warmup)

    uninterrupted, _ = torch_run("Adam", {"lr": 1e-2}, params, grads, scheduler)
    first, optimizer = torch_run("Adam", {"lr": 1e-2}, params, grads[:30], scheduler)
    middle = [leaf[-1] for leaf in first]
    tx = optadam.torch.Adam(lr=lambda k: 1e-2 * _warmup(k))
    state = optadam.torch.load_state_dict(tx, optimizer.state_dict(), middle)
    [(resumed, _)] = jax_runs([(tx, middle, state)], grads[30:])
    assert relative_deviation(resumed, [leaf[30:] for leaf in uninterrupted]) <= 1e-10


def _adam_state_dict(steps=3):
    params, grads = problem(np.float32, steps)
    _, optimizer = torch_run("Adam", {}, params, grads)
    return params, optimizer.state_dict()


def test_load_rejects_another_number_of_parameters():
    params, theirs = _adam_state_dict()
    with pytest.raises(ValueError, match=r"has 4 parameters .* tx's group selects 3 leaves"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params[:3])


def test_load_rejects_mismatched_shapes_naming_the_parameter():
    params, theirs = _adam_state_dict()
    params[1] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"exp_avg for parameter 1 .* shape \(5,\).* shape \(6,\)"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params)


def test_load_rejects_unknown_and_missing_keys():
    params, theirs = _adam_state_dict()
    theirs["state"][2]["surprise"] = torch.zeros(())
    with pytest.raises(ValueError, match=r"unknown keys \['surprise'\], missing keys \[\]"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params)
    params, theirs = _adam_state_dict()
    with pytest.raises(ValueError, match=r"differs from tx's in amsgrad \(False in torch, True"):
        optadam.torch.load_state_dict(optadam.torch.Adam(amsgrad=True), theirs, params)
    theirs["param_groups"][0]["amsgrad"] = True
    with pytest.raises(ValueError, match=r"missing keys \['max_exp_avg_sq'\]"):
        optadam.torch.load_state_dict(optadam.torch.Adam(amsgrad=True), theirs, params)


def test_load_rejects_another_optimizers_state_dict():
    params, theirs = _adam_state_dict()
    with pytest.raises(ValueError, match=r"not a torch.optim.SGD param group.*'amsgrad'"):
        optadam.torch.load_state_dict(optadam.torch.SGD(momentum=0.9), theirs, params)
    with pytest.raises(ValueError, match=r"not a torch.optim.NAdam param group"):
        optadam.torch.load_state_dict(optadam.torch.NAdam(), theirs, params)


def test_load_reads_param_groups_in_order_and_refuses_different_hyperparameters():
    params, grads = problem(np.float32, 3)
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = torch.optim.Adam([{"params": tensors[2:]}, {"params": tensors[:2]}], lr=1e-2)
    for g in grads:
        for p, g_leaf in zip(tensors, g, strict=True):
            p.grad = torch.tensor(g_leaf)
        optimizer.step()
    theirs = optimizer.state_dict()  # indices 0, 1 are tensors[2:], 2, 3 are tensors[:2]
    tx = optadam.torch.Adam([{"params": ["2", "3"]}, {"params": ["0", "1"]}], lr=1e-2)
    state = optadam.torch.load_state_dict(tx, theirs, params)
    mu = [*jax.tree.leaves(state.groups[0][0].mu), *jax.tree.leaves(state.groups[1][0].mu)]
    for leaf, tensor in zip(mu, tensors[2:] + tensors[:2], strict=True):
        assert np.array_equal(leaf, optimizer.state[tensor]["exp_avg"].numpy())
    theirs["param_groups"][1]["weight_decay"] = 0.1
    with pytest.raises(
        ValueError, match=r"param_groups\[1\] differs from tx's in weight_decay \(0.1 in torch, 0"
    ):
        optadam.torch.load_state_dict(tx, theirs, params)
    with pytest.raises(ValueError, match=r"torch state dict has 2 param groups, tx has 1"):
        optadam.torch.load_state_dict(optadam.torch.Adam(lr=1e-2), theirs, params)


def test_load_rejects_steps_that_differ_between_parameters():
    params, theirs = _adam_state_dict()
    theirs["state"][3]["step"] = torch.tensor(2.0)
    with pytest.raises(
        ValueError,
        match=r"one step for all parameters.* 3 for parameter 0 \(leaf 0\) and 2 for par",
    ):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params)
    params, theirs = _adam_state_dict()
    del theirs["state"][1]
    with pytest.raises(ValueError, match="state for 3 of 4 parameters"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params)


def test_load_rejects_what_is_not_a_torch_state_dict_or_optimizer():
    params, theirs = _adam_state_dict()
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs["state"], params)
    with pytest.raises(TypeError, match=r"optadam.torch optimizer"):
        optadam.torch.load_state_dict(optadam.adam(1e-3), theirs, params)
    with pytest.raises(ValueError, match="step=4 but the torch state dict's step is 3"):
        optadam.torch.load_state_dict(optadam.torch.Adam(), theirs, params, step=4)


def test_export_rejects_a_state_of_another_optimizer():
    params, _ = problem(np.float32, 0)
    with pytest.raises(ValueError, match=r"is not a state of optadam.torch.Adam"):
        optadam.torch.state_dict(optadam.torch.Adam(), optadam.torch.SGD().init(params), params)


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs_less_params(name):
    """torch's ``params`` has no default; here None means one group of every leaf."""
    theirs = list(inspect.signature(getattr(torch.optim, name).__init__).parameters.values())[1:]
    ours = list(inspect.signature(getattr(optadam.torch, name)).parameters.values())
    assert (ours[0].name, ours[0].kind, ours[0].default) == ("params", theirs[0].kind, None)
    assert [(p.name, p.kind, p.default) for p in ours[1:]] == [
        (p.name, p.kind, p.default) for p in theirs[1:]
    ]


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_torchs(name):
    _, optimizer = torch_run(name, {}, [np.ones(2, np.float32)], [])
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    assert getattr(optadam.torch, name)().defaults == optimizer.defaults == group


SWITCHES = {
    "SGD": ["foreach", "fused", "differentiable"],
    "Adam": ["foreach", "fused", "capturable", "differentiable"],
    "AdamW": ["foreach", "fused", "capturable", "differentiable"],
    "RMSprop": ["foreach", "capturable", "differentiable"],
    "Adagrad": ["foreach", "fused", "differentiable"],
    "RAdam": ["foreach", "capturable", "differentiable"],
    "NAdam": ["foreach", "capturable", "differentiable"],
}


def test_implementation_switches_are_accepted_and_change_nothing():
    """Ours ignores them: the same updates. torch's numbers with foreach or fused on are ours too
    (capturable needs a GPU, differentiable non-leaf params)."""
    params, grads = problem(np.float32, 50, seed=10)
    runs = jax_runs(
        [(getattr(optadam.torch, n)(**REPRESENTATIVE[n]), params) for n in NAMES], grads
    )
    tree, g = [jnp.asarray(p) for p in params], [jnp.asarray(x) for x in grads[0]]
    cases = []
    for name, (ours, _) in zip(NAMES, runs, strict=True):
        kwargs = REPRESENTATIVE[name]
        plain = getattr(optadam.torch, name)(**kwargs)
        expected, _ = plain.update(g, plain.init(tree), tree)
        for switch in SWITCHES[name]:
            tx = getattr(optadam.torch, name)(**kwargs, **{switch: True})
            updates, _ = tx.update(g, tx.init(tree), tree)
            assert all(np.array_equal(u, e) for u, e in zip(updates, expected, strict=True))
            if switch in ["foreach", "fused"]:
                theirs, _ = torch_run(name, {**kwargs, switch: True}, params, grads)
                cases.append((f"{name}({switch}=True)", ours, theirs))
    assert_all_close(cases, 1e-5)


def test_implementation_switches_are_checked_as_torch_checks_them():
    with pytest.raises(TypeError, match="foreach must be True or False"):
        optadam.torch.Adam(foreach="yes")
    with pytest.raises(ValueError, match="fused=True does not support differentiable=True"):
        optadam.torch.Adam(fused=True, differentiable=True)
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        optadam.torch.SGD(fused=True, foreach=True)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"),
    [
        ("SGD", {"lr": -0.1}, ValueError, "lr must be >= 0.*Invalid learning rate: -0.1"),
        ("SGD", {"momentum": -0.1}, ValueError, "momentum must be >= 0.*Invalid momentum value"),
        ("SGD", {"dampening": "none"}, TypeError, "dampening must be a real number"),
        ("SGD", {"nesterov": True}, ValueError, "nesterov=True requires a momentum > 0"),
        ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, "zero damp"),
        ("Adam", {"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be in \[0, 1\)"),
        ("Adam", {"betas": (0.9, -0.1)}, ValueError, r"betas\[1\] must be in \[0, 1\)"),
        ("Adam", {"betas": 0.9}, TypeError, "betas must be a pair"),
        ("Adam", {"eps": -1e-8}, ValueError, "eps must be >= 0.*Invalid epsilon value"),
        (
            "AdamW",
            {"weight_decay": -0.01},
            ValueError,
            "weight_decay must be >= 0.*Invalid weight_decay",
        ),
        ("Adam", {"amsgrad": 1}, TypeError, "amsgrad must be True or False"),
        ("Adam", {"maximize": None}, TypeError, "maximize must be True or False"),
        ("RMSprop", {"alpha": -0.5}, ValueError, "alpha must be >= 0.*Invalid alpha value"),
        ("RMSprop", {"centered": "no"}, TypeError, "centered must be True or False"),
        ("Adagrad", {"lr_decay": -1.0}, ValueError, "lr_decay must be >= 0"),
        ("Adagrad", {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_val"),
        ("RAdam", {"decoupled_weight_decay": "yes"}, TypeError, "decoupled_weight_decay must be"),
        ("NAdam", {"momentum_decay": -4e-3}, ValueError, "momentum_decay must be >= 0"),
        ("NAdam", {"lr": "fast"}, TypeError, "lr must be a number, an array or a schedule"),
    ],
)
def test_rejects_bad_hyperparameters(name, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(optadam.torch, name)(**kwargs)


def test_refuses_none_gradients_torch_would_skip():
    tx = optadam.torch.Adam()
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"gradient at \['b'\] is None"):
        tx.update({"a": jnp.ones(2), "b": None}, tx.init(params), params)
    tree = {"a": jnp.ones(2), "b": None}  # a leaf that is None in the params too is no parameter
    updates, _ = tx.update(tree, tx.init(tree), tree)
    assert updates["b"] is None


# --- packaging ----------------------------------------------------------------------------------


def test_importing_optadam_torch_does_not_import_torch():
    code = "import sys, optadam.torch; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_optadam_all_still_lists_the_public_non_module_names():
    public = {
        name
        for name in dir(optadam)
        if not name.startswith("_") and not inspect.ismodule(getattr(optadam, name))
    }
    assert inspect.ismodule(optadam.torch) and set(optadam.__all__) == public


PORTING = (
    (Path(__file__).resolve().parents[1] / "README.md")
    .read_text()
    .split("## Porting from PyTorch", 1)[1]
    .split("\n## ", 1)[0]
)


def test_readme_porting_example_runs_as_torch_would():
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", PORTING, re.S).group(1), namespace)
    w = torch.ones(3, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.AdamW([w, b], lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    w.grad, b.grad = torch.full((3,), 0.5), torch.ones(())
    optimizer.step()
    params = namespace["params"]
    np.testing.assert_allclose(params["w"], w.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(params["b"], b.detach().numpy(), rtol=1e-6)


def test_readme_maps_every_torch_option():
    section = PORTING
    for name in NAMES:
        assert f"`{name}`" in section
        for option in inspect.signature(getattr(optadam.torch, name)).parameters:
            assert f"`{option}`" in section, option


# --- random trees and hyperparameters -----------------------------------------------------------

shapes = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=3)


@st.composite
def torch_configurations(draw):
    name = draw(st.sampled_from(NAMES))
    kwargs = {"lr": draw(st.floats(1e-4, 1e-2)), "maximize": draw(st.booleans())}
    if name != "AdamW":
        kwargs["weight_decay"] = draw(st.sampled_from([0.0, 0.05]))
    if name in ["Adam", "AdamW", "RAdam", "NAdam"]:
        kwargs["betas"] = (draw(st.floats(0.0, 0.95)), draw(st.floats(0.5, 0.999)))
        kwargs["eps"] = draw(st.sampled_from([1e-8, 1e-3]))
    if name in ["Adam", "AdamW"]:
        kwargs["amsgrad"] = draw(st.booleans())
    if name in ["Adam", "RAdam", "NAdam"]:
        kwargs["decoupled_weight_decay"] = draw(st.booleans())
    if name == "SGD":
        kwargs["momentum"] = draw(st.sampled_from([0.0, 0.5, 0.9]))
        kwargs["dampening"] = draw(st.sampled_from([0.0, 0.3]))
        kwargs["nesterov"] = kwargs["momentum"] > 0 and not kwargs["dampening"]
    if name == "RMSprop":
        kwargs |= {"alpha": draw(st.floats(0.5, 0.999)), "centered": draw(st.booleans())}
        kwargs["momentum"] = draw(st.sampled_from([0.0, 0.9]))
    if name == "Adagrad":
        kwargs |= {"lr_decay": draw(st.floats(0, 0.1)), "initial_accumulator_value": 0.1}
    if name == "NAdam":
        kwargs["momentum_decay"] = draw(st.floats(0, 0.1))
    return name, kwargs


@settings(max_examples=10, deadline=None)
@given(config=torch_configurations(), shapes=shapes, seed=st.integers(0, 2**16))
def test_random_trees_and_hyperparameters_follow_torch(config, shapes, seed):
    name, kwargs = config
    with jax.enable_x64(True):
        params, grads = problem(np.float64, 20, seed=seed, shapes=shapes)
        [(actual, _)] = jax_runs([(getattr(optadam.torch, name)(**kwargs), params)], grads)
    expected, _ = torch_run(name, kwargs, params, grads)
    assert relative_deviation(actual, expected) <= 1e-10, (name, kwargs)
