r"""``python -m optadam demo``: race optadam's optimizers on two small problems, print a table.

Why: a quick look at the optimizers side by side -- same problem, same start, same number of
steps -- that needs nothing beyond jax, optax and numpy, and doubles as a smoke test that each
optimizer trains something. The two tracks:

* **rosenbrock**: f(x, y) = (1 − x)² + 100 (y − x²)² from the classic start (−1.2, 1). A narrow,
  curved valley where plain gradient descent crawls; the minimum is f = 0 at (1, 1).
* **spirals**: 3 interleaved spiral arms (600 points drawn with ``jax.random``, no download) fit
  full-batch by a 2 → 32 → 32 → 3 tanh MLP with cross-entropy. Accuracy is on those same points:
  the race is about how fast each optimizer fits, not about generalisation.

Every optimizer keeps its library defaults except the learning rate, set per problem in
:data:`LEARNING_RATES`: a sensible value from a coarse sweep at the default step count, not a tuned
optimum, so the table compares optimizers at reasonable settings rather than at their best. All
steps run as one ``lax.scan`` under ``jit``, compiled ahead, run once, then timed, so steps/s
leaves compilation and first-call costs out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optadam

DEFAULT_STEPS = 2000  # the whole demo, compiles included, takes ~12 s on 2 idle CPU cores
SEED = 0  # one key for the spiral data and the MLP's initial weights: every run is the same
ROSENBROCK_START = (-1.2, 1.0)
ROSENBROCK_OPTIMUM = (1.0, 1.0)
SPIRAL_ARMS = 3
SPIRAL_POINTS_PER_ARM = 200
SPIRAL_TWIST = 8.0  # radians each arm winds from centre to rim (~1.3 turns)
SPIRAL_NOISE = 0.2  # standard deviation of the angle noise, radians
MLP_WIDTHS = (2, 32, 32, SPIRAL_ARMS)

# The racers, in race order, with their learning rates η (Rosenbrock, spirals): the best of a
# coarse 1-3-10 sweep at the default steps, kept off the edge of divergence. Rosenbrock's curvature
# is ~1300 at the start, so (heavy-ball) gradient descent needs η ≲ 1e-3. Adam and kin step about η
# per coordinate; AMSGrad needs 10× that, as its v_max keeps the start's huge gradient; RAdam's
# first steps are unnormalised momentum, so η > ~5e-3 diverges. AdaGrad's steps shrink as squares
# accumulate, so it starts large.
LEARNING_RATES: dict[str, tuple[float, float]] = {
    "sgd": (1e-3, 0.5),
    "momentum": (1e-3, 0.1),
    "adagrad": (1.0, 0.3),
    "rmsprop": (3e-3, 1e-2),
    "adam": (3e-2, 1e-2),
    "adamw": (3e-2, 1e-2),
    "nadam": (3e-2, 1e-2),
    "amsgrad": (0.3, 1e-2),
    "radam": (5e-3, 1e-2),
}
# Each racer is the optadam function of that name (a drop-in for optax's).
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    name: getattr(optadam, name) for name in LEARNING_RATES
}

Params = Any  # a pytree of arrays
Row = dict[str, Any]  # one optimizer's results, keyed as in COLUMNS


@dataclass(frozen=True)
class Problem:
    """One race track: a loss, the start shared by every optimizer, learning rates, metrics."""

    name: str
    title: str
    loss: Callable[[Params], jax.Array]
    start: Params
    learning_rates: dict[str, float]
    metrics: Callable[[Params], dict[str, float]]  # extra columns, from the final params


def learning_rates(column: int) -> dict[str, float]:
    """One problem's learning rates: column 0 (Rosenbrock) or 1 (spirals) of LEARNING_RATES."""
    return {name: lrs[column] for name, lrs in LEARNING_RATES.items()}


def rosenbrock(p: jax.Array) -> jax.Array:
    """Rosenbrock's banana: a classic, as its valley is easy to find and hard to follow."""
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rosenbrock_problem() -> Problem:
    """The Rosenbrock track; the distance to (1, 1) shows how far along the valley each one got."""

    def metrics(p: jax.Array) -> dict[str, float]:
        return {"distance_to_optimum": float(jnp.linalg.norm(p - jnp.array(ROSENBROCK_OPTIMUM)))}

    title = f"Rosenbrock from {ROSENBROCK_START}, optimum (1, 1)"
    start = jnp.array(ROSENBROCK_START)
    return Problem("rosenbrock", title, rosenbrock, start, learning_rates(0), metrics)


def spirals(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Interleaved noisy spiral arms: not linearly separable, so the MLP must bend its boundary."""
    radius = jnp.tile(jnp.linspace(0.1, 1.0, SPIRAL_POINTS_PER_ARM), SPIRAL_ARMS)
    labels = jnp.repeat(jnp.arange(SPIRAL_ARMS), SPIRAL_POINTS_PER_ARM)
    noise = SPIRAL_NOISE * jax.random.normal(key, radius.shape)
    angle = labels * (2 * jnp.pi / SPIRAL_ARMS) + SPIRAL_TWIST * radius + noise
    return jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1), labels


def init_mlp(key: jax.Array, widths: Sequence[int]) -> list[dict[str, jax.Array]]:
    """LeCun-normal weights, zero biases: tanh units start in their near-linear range."""
    keys = jax.random.split(key, len(widths) - 1)
    return [
        {"w": jax.random.normal(k, (m, n)) / math.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, widths[:-1], widths[1:], strict=True)
    ]


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """Logits of a tanh MLP; the last layer stays linear so softmax sees unbounded scores."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def spirals_problem() -> Problem:
    """The classification track: full-batch cross-entropy, so runs are deterministic."""
    data_key, init_key = jax.random.split(jax.random.key(SEED))
    points, labels = spirals(data_key)

    def loss(params: Params) -> jax.Array:
        logits = mlp(params, points)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def metrics(params: Params) -> dict[str, float]:
        return {"accuracy": float(jnp.mean(jnp.argmax(mlp(params, points), -1) == labels))}

    widths = "-".join(map(str, MLP_WIDTHS))
    title = f"{SPIRAL_ARMS}-arm spirals, {len(labels)} points; tanh MLP {widths}"
    start = init_mlp(init_key, MLP_WIDTHS)
    return Problem("spirals", title, loss, start, learning_rates(1), metrics)


def train(problem: Problem, tx: optax.GradientTransformation, steps: int) -> tuple[Params, float]:
    """Run ``steps`` updates from the problem's start; return the final params and steps/s.

    The loop is one ``lax.scan``, compiled ahead (``lower().compile()``) and run once untimed, as
    an executable's first call pays one-off costs (a few ms); the timed second call is then pure
    execution, and ``block_until_ready`` waits out JAX's asynchronous dispatch before the clock
    stops. A Rosenbrock step is a few flops, so there steps/s mostly measures the cost of one call.
    """

    def step(carry: tuple[Params, Any], _: None) -> tuple[tuple[Params, Any], None]:
        params, state = carry
        updates, state = tx.update(jax.grad(problem.loss)(params), state, params)
        return (optax.apply_updates(params, updates), state), None

    def run(params: Params) -> Params:
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params

    compiled = jax.jit(run).lower(problem.start).compile()
    params = jax.block_until_ready(compiled(problem.start))
    start = time.perf_counter()
    jax.block_until_ready(compiled(problem.start))
    return params, steps / (time.perf_counter() - start)


def race(problem: Problem, names: Sequence[str], steps: int) -> list[Row]:
    """Train each named optimizer on ``problem`` with its learning rate; one row per optimizer."""
    rows = []
    for name in names:
        lr = problem.learning_rates[name]
        params, rate = train(problem, OPTIMIZERS[name](lr), steps)
        row = {"optimizer": name, "learning_rate": lr, "final_loss": float(problem.loss(params))}
        rows.append({**row, **problem.metrics(params), "steps_per_second": rate})
    return rows


# Column headers and cell formats; a row's keys pick the columns, in the row's order.
COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "optimizer": ("optimizer", str),
    "learning_rate": ("lr", "{:g}".format),
    "final_loss": ("final loss", "{:.3e}".format),
    "distance_to_optimum": ("dist to (1,1)", "{:.3e}".format),
    "accuracy": ("accuracy", "{:.1%}".format),
    "steps_per_second": ("steps/s", "{:,.0f}".format),
}


def format_table(rows: Sequence[Row]) -> str:
    """Plain-text table: names left-aligned, numbers right-aligned so their digits line up."""
    keys = list(rows[0])
    table = [[COLUMNS[k][0] for k in keys]]
    table += [[COLUMNS[k][1](row[k]) for k in keys] for row in rows]
    widths = [max(map(len, column)) for column in zip(*table, strict=True)]
    justify = [str.ljust] + [str.rjust] * (len(keys) - 1)
    cells = [zip(justify, line, widths, strict=True) for line in table]
    lines = ["  ".join(j(c, w) for j, c, w in row) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf; a diverged run's numbers are written as null instead."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _positive_int(text: str) -> int:
    """argparse type for --steps: a clear error instead of a zero-length or negative scan."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _optimizer_list(text: str) -> list[str]:
    """argparse type for --optimizers: comma-separated names, each checked against OPTIMIZERS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OPTIMIZERS]
    if unknown or not names:
        problem = f"unknown optimizer(s) {', '.join(map(repr, unknown))}" if unknown else "no names"
        raise argparse.ArgumentTypeError(f"{problem}; valid names: {', '.join(OPTIMIZERS)}")
    return list(dict.fromkeys(names))  # drop repeats, keep order


def build_parser() -> argparse.ArgumentParser:
    """The ``demo`` subcommand's options; ``python -m optadam demo --help`` prints them."""
    parser = argparse.ArgumentParser(
        prog="python -m optadam demo",
        description="Race optadam's optimizers on the Rosenbrock function and on a 3-arm spiral "
        "classification with a small MLP, and print a table per problem.",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        metavar="N",
        help="optimizer steps per run, full-batch (default: %(default)s)",
    )
    parser.add_argument(
        "--optimizers",
        type=_optimizer_list,
        default=list(OPTIMIZERS),
        metavar="A,B,...",
        help="comma-separated optimizers to race, in this order (default: all of "
        f"{', '.join(OPTIMIZERS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="also write the results as JSON to PATH (parent directories are created)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the demo with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is not None and args.out.is_dir():
        parser.error(f"argument --out: {args.out} is a directory; give a file path")
    results: dict[str, Any] = {"steps": args.steps, "backend": jax.default_backend()}
    for problem in (rosenbrock_problem(), spirals_problem()):
        rows = race(problem, args.optimizers, args.steps)
        print(f"\n{problem.title}: {args.steps} steps\n{format_table(rows)}", flush=True)
        start_loss = float(problem.loss(problem.start))
        clean = [{key: _finite_or_none(value) for key, value in row.items()} for row in rows]
        results[problem.name] = {"start_loss": start_loss, "results": clean}
    if args.out is not None:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        except OSError as error:
            print(f"{parser.prog}: error: cannot write {args.out}: {error}", file=sys.stderr)
            return 1
        print(f"\nwrote {args.out}")
    return 0
