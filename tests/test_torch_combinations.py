"""optadam.torch against torch.optim 2.13 on combinations of options, not one option at a time.

For each torch optimizer, every option is a factor with a few values (the default among them), and
an all-pairs grid is built from them: every value of every option meets every value of every other
option in at least one configuration (``tests/test_torch.py`` runs single configurations and a grid
of one or two options at a time). Two more factors: the learning rate as a number or as a
schedule (torch's ``StepLR`` against its optadam formula) and torch's implementation (single
tensor, ``foreach``, ``fused`` where torch has it), which ours ignores -- so torch's own code paths
are paired with every option too.

Each configuration follows torch's trajectory on the same gradient stream for ``GRID_STEPS``
steps, in float64 to 1e-10 and in float32 to 1e-5 relative (``harness.relative_deviation``: max
over leaves and steps of the normwise relative distance); the configuration of each optimizer with
the most options away from their defaults also runs 1,000 steps. Params start at least 2 away from
0, so no leaf crosses 0, where a relative distance means nothing.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import torch
from harness import relative_deviation

import optadam.torch

SHAPES = [(3, 4), (5,), (), (2, 1, 3)]
GRID_STEPS = 200
LONG_STEPS = 1000
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SWITCHES = {"foreach", "fused", "capturable", "differentiable"}
STEP_SIZE, GAMMA = 40, 0.7  # the schedule: StepLR(optimizer, 40, 0.7)

BETAS = [(0.9, 0.999), (0.0, 0.99), (0.8, 0.9)]  # β1 = 0: torch's lerp at weight 1
BOOL = [False, True]

# Each factor's values; the first is torch's default where the option has one worth keeping.
# A value is one option's value, or a dict of options that only make sense together.
FACTORS: dict[str, dict[str, list[Any]]] = {
    "SGD": {
        "lr": [1e-2, 3e-3],
        "momentum": [  # nesterov needs momentum and no dampening, so the three go together
            {},
            {"momentum": 0.9},
            {"momentum": 0.5, "dampening": 0.3},
            {"momentum": 0.9, "dampening": 1.0},
            {"momentum": 0.9, "nesterov": True},
        ],
        "weight_decay": [0.0, 0.1],
        "maximize": BOOL,
    },
    "Adam": {
        "lr": [1e-2, 1e-3],
        "betas": BETAS,
        "eps": [1e-8, 1e-3],
        "weight_decay": [0.0, 0.1],
        "decoupled_weight_decay": BOOL,
        "amsgrad": BOOL,
        "maximize": BOOL,
    },
    "AdamW": {
        "lr": [1e-2, 1e-3],
        "betas": BETAS,
        "eps": [1e-8, 1e-3],
        "weight_decay": [1e-2, 0.0, 0.1],
        "amsgrad": BOOL,
        "maximize": BOOL,
    },
    "RMSprop": {
        "lr": [1e-3, 3e-3],  # with momentum 0.9, steps of ~10·lr: kept off the leaves' zeros
        "alpha": [0.99, 0.9, 0.5],
        "eps": [1e-8, 1e-3],
        "weight_decay": [0.0, 0.1],
        "momentum": [0.0, 0.9],
        "centered": BOOL,
        "maximize": BOOL,
    },
    "Adagrad": {
        "lr": [0.05, 0.01],
        "lr_decay": [0.0, 0.05],
        "weight_decay": [0.0, 0.1],
        "initial_accumulator_value": [0.0, 0.5],
        "eps": [1e-10, 1e-3],
        "maximize": BOOL,
    },
    "RAdam": {
        "lr": [1e-2, 1e-3],
        "betas": BETAS,
        "eps": [1e-8, 1e-3],
        "weight_decay": [0.0, 0.1],
        "decoupled_weight_decay": BOOL,
        "maximize": BOOL,
    },
    "NAdam": {
        "lr": [1e-2, 1e-3],
        "betas": BETAS,
        "eps": [1e-8, 1e-3],
        "weight_decay": [0.0, 0.1],
        "momentum_decay": [4e-3, 0.05],
        "decoupled_weight_decay": BOOL,
        "maximize": BOOL,
    },
}
NAMES = list(FACTORS)


def implementations(name: str) -> list[dict[str, bool]]:
    """torch's ways of computing a step: single tensor, foreach, and fused where it exists."""
    found = [{"foreach": False}, {"foreach": True}]
    if "fused" in inspect.signature(getattr(torch.optim, name)).parameters:
        found.append({"fused": True})
    return found


def factors(name: str) -> dict[str, list[Any]]:
    return {**FACTORS[name], "schedule": [False, True], "implementation": implementations(name)}


def all_pairs(factors: dict[str, list[Any]]) -> list[dict[str, int]]:
    """A small set of rows (factor -> value index) in which every pair of values of two factors
    appears at least once; built greedily, deterministically."""
    names = list(factors)
    sizes = [len(factors[n]) for n in names]

    def pairs(row: dict[int, int]) -> set[tuple[int, int, int, int]]:
        return {(a, row[a], b, row[b]) for a, b in itertools.combinations(sorted(row), 2)}

    uncovered = set().union(
        *(pairs({a: i, b: j}) for a, b in itertools.combinations(range(len(names)), 2)
          for i in range(sizes[a]) for j in range(sizes[b]))
    )  # fmt: skip
    rows = []
    while uncovered:
        a, i, b, j = min(uncovered)
        row = {a: i, b: j}
        for f in range(len(names)):
            if f not in row:
                row[f] = max(range(sizes[f]), key=lambda v: len(pairs({**row, f: v}) & uncovered))
        uncovered -= pairs(row)
        rows.append({names[f]: v for f, v in row.items()})
    return rows


def grid(name: str) -> list[dict[str, Any]]:
    """The configurations: torch keyword arguments, plus "schedule" (True: StepLR)."""
    chosen = factors(name)
    configs = []
    for row in all_pairs(chosen):
        kwargs: dict[str, Any] = {}
        for factor, index in row.items():
            value = chosen[factor][index]
            kwargs |= value if isinstance(value, dict) else {factor: value}
        configs.append(kwargs)
    return configs


def nondefaults(name: str, config: dict[str, Any]) -> int:
    """How many options (the schedule included) differ from torch's defaults."""
    defaults = {
        k: p.default for k, p in inspect.signature(getattr(torch.optim, name)).parameters.items()
    }
    return sum(1 for k, v in config.items() if k != "lr" and v != defaults.get(k, False))


def problem(dtype: Any, steps: int, seed: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    params = reference.make_grad_stream(SHAPES, 1, seed=seed + 100)[0]
    params = [(p + 2 * np.where(p < 0, -1, 1)).astype(dtype) for p in params]
    return params, reference.make_grad_stream(SHAPES, steps, seed=seed, dtype=dtype)


def torch_trajectory(name: str, config: dict[str, Any], params: Any, grads: Any) -> list[Any]:
    kwargs = {k: v for k, v in config.items() if k != "schedule"}
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    optimizer = getattr(torch.optim, name)(tensors, **kwargs)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, STEP_SIZE, GAMMA) if config["schedule"] else None
    )
    trajectory = []
    for g in grads:
        for p, g_leaf in zip(tensors, g, strict=True):
            p.grad = torch.tensor(g_leaf)
        optimizer.step()
        if scheduler:
            scheduler.step()
        trajectory.append([p.detach().numpy().copy() for p in tensors])
    return [np.stack([step[i] for step in trajectory]) for i in range(len(params))]


def optadam_tx(name: str, config: dict[str, Any]) -> optax.GradientTransformation:
    kwargs = {k: v for k, v in config.items() if k != "schedule"}
    if config["schedule"]:
        base = kwargs["lr"]
        # The count is int32; as a float first, so that float64 runs compute the rate in float64.
        kwargs["lr"] = lambda k: base * GAMMA ** jnp.floor(jnp.asarray(k, float) / STEP_SIZE)
    return getattr(optadam.torch, name)(**kwargs)


def optadam_trajectories(
    txs: list[optax.GradientTransformation], params: Any, grads: Any
) -> list[list[np.ndarray]]:
    """Every transformation's trajectory on the same gradients, from one compiled program."""
    stacked = [jnp.asarray(np.stack([g[i] for g in grads])) for i in range(len(params))]
    start = [jnp.asarray(p) for p in params]

    @jax.jit
    def scans(start: Any, stacked: Any) -> Any:
        paths = []
        for tx in txs:

            def step(carry: Any, g: Any, tx: Any = tx) -> Any:
                p, state = carry
                updates, state = tx.update(g, state, p)
                p = optax.apply_updates(p, updates)
                return (p, state), p

            paths.append(jax.lax.scan(step, (start, tx.init(start)), stacked)[1])
        return paths

    return [[np.asarray(x) for x in path] for path in scans(start, stacked)]


def assert_follow_torch(name: str, configs: list[dict[str, Any]], dtype: Any, steps: int) -> None:
    params, grads = problem(dtype, steps, seed=NAMES.index(name))
    actual = optadam_trajectories([optadam_tx(name, c) for c in configs], params, grads)
    deviations = [
        (config, relative_deviation(path, torch_trajectory(name, config, params, grads)))
        for config, path in zip(configs, actual, strict=True)
    ]
    rtol = TOLERANCE[np.dtype(dtype).type]
    failures = [f"{name}({c}): {d:.2e}" for c, d in deviations if not d <= rtol]
    assert not failures, "\n".join(failures)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> Any:
    if request.param is np.float64:
        request.getfixturevalue("x64")
    return request.param


@pytest.mark.parametrize("name", NAMES)
def test_every_pair_of_option_values_follows_torch(name: str, dtype: Any) -> None:
    assert_follow_torch(name, grid(name), dtype, GRID_STEPS)


@pytest.mark.parametrize("name", NAMES)
def test_the_configuration_with_most_options_on_follows_torch_for_1000_steps_in_float64(
    name: str, x64: None
) -> None:
    busiest = max(grid(name), key=lambda config: nondefaults(name, config))
    assert_follow_torch(name, [busiest], np.float64, LONG_STEPS)


@pytest.mark.parametrize(
    "schedule",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.xfail(
                strict=True,
                reason="torch multiplies params by 1 - lr*weight_decay rounded to float32; "
                "optadam.torch does so for a constant lr but not under a schedule, where it is "
                "closer to exact arithmetic than torch: 1.9e-5 from torch's float32 run after "
                "1,000 steps (AdamW, NAdam and RAdam alike)",
            ),
        ),
    ],
)
def test_decoupled_weight_decay_follows_torch_in_float32_for_1000_steps(schedule: bool) -> None:
    config = {"lr": 1e-2, "weight_decay": 0.1, "schedule": schedule}
    assert_follow_torch("AdamW", [config], np.float32, LONG_STEPS)


@pytest.mark.parametrize("name", NAMES)
def test_the_grid_pairs_every_value_of_every_option_with_every_other(name: str) -> None:
    chosen = factors(name)
    rows = all_pairs(chosen)
    for a, b in itertools.combinations(chosen, 2):
        seen = {(row[a], row[b]) for row in rows}
        assert seen == set(itertools.product(range(len(chosen[a])), range(len(chosen[b])))), (a, b)
    # ... and far fewer rows than the full product, which is what makes 1e-10 over all pairs cheap
    assert len(rows) < np.prod([len(v) for v in chosen.values()])


@pytest.mark.parametrize("name", NAMES)
def test_every_torch_option_is_a_factor(name: str) -> None:
    options = set(inspect.signature(getattr(optadam.torch, name)).parameters) - SWITCHES
    covered = {key for config in grid(name) for key in config if key != "schedule"}
    assert options <= covered, options - covered
    for option in options:  # and takes more than one value
        assert len({repr(c.get(option)) for c in grid(name)}) > 1, option
