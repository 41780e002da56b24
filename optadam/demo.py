r"""``python -m optadam demo``: race optadam's optimizers on three problems; draw and tabulate it.

Why: a look at the optimizers side by side -- same problem, same start, same number of steps --
that shows how each one moves, and doubles as a smoke test that each optimizer trains something.
The three tracks:

* **rosenbrock**: f(x, y) = (1 − x)² + 100 (y − x²)² from the classic start (−1.2, 1). A narrow,
  curved valley where plain gradient descent crawls; the minimum is f = 0 at (1, 1).
* **beale**: f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)² from (1, 1.5),
  the minimum f = 0 at (3, 0.5): steep walls, a flat floor and a bend on the way.
* **digits**: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download), a fixed
  75/25 train/test split, a Flax NNX MLP 64-64-10 trained on random minibatches of 128 with
  cross-entropy. The table reports the final training loss and the test accuracy.

Every optimizer keeps its library defaults except the learning rate, set per problem in
:data:`LEARNING_RATES`: a sensible value from a coarse sweep at the default step count, not a tuned
optimum, so the race compares optimizers at reasonable settings rather than at their best. Each run
is one ``lax.scan`` under ``jit``, compiled ahead, run once, then timed, so steps/s leaves
compilation out. The output is a table per problem and one figure (``--out``): each optimizer's
path over the contour plots of the two test functions, and the loss curves of all three problems.

The figure and the classifier need the ``demo`` extra (flax, scikit-learn, matplotlib, tqdm);
without it the demo says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
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
import numpy as np
import optax

import optadam

DEFAULT_STEPS = 2000  # the whole demo, imports and compiles included: ~20 s on 2 CPU cores
DEFAULT_OUT = Path("optadam-demo.png")
SEED = 0  # one seed for the digits split, the MLP's initial weights and its minibatches
ROSENBROCK_START, ROSENBROCK_OPTIMUM = (-1.2, 1.0), (1.0, 1.0)
BEALE_START, BEALE_OPTIMUM = (1.0, 1.5), (3.0, 0.5)

# The racers, in race order, with their learning rates η for (Rosenbrock, Beale, digits): the best
# of a coarse 1-3-10 sweep at the default steps, kept off the edge of divergence. Rosenbrock's
# curvature is ~1300 at the start, so (heavy-ball) gradient descent needs η ≲ 1e-3. Adam and kin
# step about η per coordinate; AMSGrad needs more, as its v_max keeps the start's huge gradient;
# RAdam's first steps are unnormalised momentum, so a large η diverges (on Rosenbrock 7e-3 already
# does). AdaGrad's steps shrink as squares accumulate, so it starts large. On digits every rate in
# the table reaches 97-98% test accuracy (one test image is 0.2%): the race there is about speed.
LEARNING_RATES: dict[str, tuple[float, float, float]] = {
    "sgd": (1e-3, 1e-2, 0.3),
    "momentum": (1e-3, 1e-3, 3e-2),
    "adagrad": (1.0, 0.3, 0.1),
    "rmsprop": (3e-3, 3e-3, 1e-3),
    "adam": (3e-2, 3e-2, 3e-3),
    "adamw": (3e-2, 3e-2, 3e-3),
    "nadam": (3e-2, 3e-2, 3e-3),
    "amsgrad": (0.3, 0.3, 1e-2),
    "radam": (5e-3, 1e-2, 1e-2),
}
# Each racer is the optadam function of that name (a drop-in for optax's).
OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    name: getattr(optadam, name) for name in LEARNING_RATES
}
# The demo extra: module to import → distribution to install.
DEMO_EXTRA = {"flax": "flax", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}

Params = Any  # a pytree of arrays
Row = dict[str, Any]  # one optimizer's results, keyed as in COLUMNS


@dataclass(frozen=True)
class Problem:
    """One race track: what is minimised, from where, with which learning rates and metrics."""

    name: str
    title: str
    loss: Callable[[Params], jax.Array]  # the objective the table reports, at the final params
    step_loss: Callable[[Params, jax.Array], jax.Array]  # what step t differentiates (minibatches)
    start: Params
    learning_rates: dict[str, float]
    metrics: Callable[[Params], dict[str, float]]  # extra columns, from the final params
    optimum: tuple[float, float] | None = None  # 2-D test functions: where f = 0; paths are kept


@dataclass(frozen=True)
class Run:
    """One optimizer's race on one problem: its table row and the curves the figure draws."""

    row: Row
    losses: np.ndarray  # step_loss before each step, shape (steps,)
    path: np.ndarray | None  # 2-D problems: the start and the point after each step, (steps + 1, 2)


def learning_rates(column: int) -> dict[str, float]:
    """One problem's learning rates: column 0, 1 or 2 of LEARNING_RATES."""
    return {name: lrs[column] for name, lrs in LEARNING_RATES.items()}


def rosenbrock(p: jax.Array) -> jax.Array:
    """Rosenbrock's banana: a classic, as its valley is easy to find and hard to follow."""
    x, y = p[0], p[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(p: jax.Array) -> jax.Array:
    """Beale's function: flat plateaus and sharp ridges around one narrow, bent minimum."""
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def surface_problem(
    name: str,
    f: Callable[[jax.Array], jax.Array],
    start: tuple[float, float],
    optimum: tuple[float, float],
    column: int,
) -> Problem:
    """A 2-D track; the distance to the optimum shows how far along each optimizer got."""

    def metrics(p: jax.Array) -> dict[str, float]:
        return {"distance_to_optimum": float(jnp.linalg.norm(p - jnp.array(optimum)))}

    title = f"{name.capitalize()} from {start}, optimum {optimum}"
    return Problem(
        name,
        title,
        f,
        lambda p, t: f(p),
        jnp.array(start),
        learning_rates(column),
        metrics,
        optimum,
    )


def rosenbrock_problem() -> Problem:
    return surface_problem("rosenbrock", rosenbrock, ROSENBROCK_START, ROSENBROCK_OPTIMUM, 0)


def beale_problem() -> Problem:
    return surface_problem("beale", beale, BEALE_START, BEALE_OPTIMUM, 1)


def digits_problem() -> Problem:
    """The classification track (needs the demo extra: flax and scikit-learn)."""
    from optadam import _demo_digits

    track = _demo_digits.make_track(SEED)
    n_train, n_test = track["sizes"]
    title = (
        f"digits, {n_train} train / {n_test} test images; Flax NNX MLP 64-"
        f"{_demo_digits.HIDDEN}-{_demo_digits.CLASSES}, minibatches of {_demo_digits.BATCH}"
    )
    return Problem(
        "digits",
        title,
        track["loss"],
        track["step_loss"],
        track["start"],
        learning_rates(2),
        track["metrics"],
    )


def train(
    problem: Problem, tx: optax.GradientTransformation, steps: int
) -> tuple[Params, np.ndarray, np.ndarray | None, float]:
    """Run ``steps`` updates from the problem's start: final params, losses, path and steps/s.

    The loop is one ``lax.scan``, compiled ahead (``lower().compile()``) and run once untimed, as
    an executable's first call pays one-off costs (a few ms); the timed second call is then pure
    execution, and ``block_until_ready`` waits out JAX's asynchronous dispatch before the clock
    stops. A test-function step is a few flops, so there steps/s mostly measures loop overhead.
    """
    keep_path = problem.optimum is not None

    def step(carry: tuple[Params, Any], t: jax.Array) -> tuple[tuple[Params, Any], Any]:
        params, state = carry
        loss, grads = jax.value_and_grad(problem.step_loss)(params, t)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), (loss, params if keep_path else None)

    def run(params: Params) -> tuple[Params, jax.Array, Any]:
        carry = (params, tx.init(params))
        (params, _), (losses, path) = jax.lax.scan(step, carry, jnp.arange(steps))
        return params, losses, path

    compiled = jax.jit(run).lower(problem.start).compile()
    params, losses, path = jax.block_until_ready(compiled(problem.start))
    start = time.perf_counter()
    jax.block_until_ready(compiled(problem.start))
    rate = steps / (time.perf_counter() - start)
    if keep_path:
        path = np.concatenate([np.asarray(problem.start)[None], np.asarray(path)])
    return params, np.asarray(losses), path, rate


def race_one(problem: Problem, name: str, steps: int) -> Run:
    """Train optimizer ``name`` on ``problem`` with its learning rate: one row, its curves."""
    lr = problem.learning_rates[name]
    params, losses, path, rate = train(problem, OPTIMIZERS[name](lr), steps)
    row = {"optimizer": name, "learning_rate": lr, "final_loss": float(problem.loss(params))}
    row = {**row, **problem.metrics(params), "steps_per_second": rate}
    return Run(row, losses, path)


# Column headers and cell formats; a row's keys pick the columns, in the row's order.
COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "optimizer": ("optimizer", str),
    "learning_rate": ("lr", "{:g}".format),
    "final_loss": ("final loss", "{:.3e}".format),
    "distance_to_optimum": ("dist to optimum", "{:.3e}".format),
    "test_accuracy": ("test accuracy", "{:.1%}".format),
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


def missing_extras() -> list[str]:
    """The demo extra's distributions that cannot be imported here (empty when all are present)."""
    missing = []
    for module, distribution in DEMO_EXTRA.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    return missing


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
        description="Race optadam's optimizers on the Rosenbrock and Beale functions and on a "
        "Flax MLP classifying scikit-learn's digits; print a table per problem and write a figure "
        "of their paths and loss curves. Needs the demo extra: pip install -e '.[demo]'.",
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=DEFAULT_STEPS,
        metavar="N",
        help="optimizer steps per run on every problem (default: %(default)s)",
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
        default=DEFAULT_OUT,
        metavar="PATH",
        help="where to write the figure; the format follows the suffix, e.g. .png, .svg, .pdf "
        "(default: %(default)s; parent directories are created)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the table's numbers as JSON to PATH"
    )
    return parser


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fail before racing, not after: output paths must not be directories; a known figure type."""
    from optadam import _demo_figure

    for option, path in (("--out", args.out), ("--json", args.json)):
        if path is not None and path.is_dir():
            parser.error(f"argument {option}: {path} is a directory; give a file path")
    formats = _demo_figure.supported_formats()
    if args.out.suffix.lstrip(".").lower() not in formats:
        parser.error(
            f"argument --out: cannot tell the figure format from {str(args.out)!r}; "
            f"end it with one of {', '.join('.' + f for f in sorted(formats))}"
        )


def _write(path: Path, write: Callable[[Path], object], prog: str) -> bool:
    """Create ``path``'s parents and call ``write(path)``; on OSError print why, return False."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as error:
        print(f"{prog}: error: cannot write {path}: {error}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the demo with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = missing_extras()
    if missing:
        print(
            f"{parser.prog}: error: the demo needs the 'demo' extra; missing: {', '.join(missing)}."
            "\nInstall it from the repository root with:  pip install -e '.[demo]'",
            file=sys.stderr,
        )
        return 1
    _check_paths(parser, args)

    from tqdm import tqdm

    from optadam import _demo_figure

    problems = [rosenbrock_problem(), beale_problem(), digits_problem()]
    runs: dict[str, list[Run]] = {problem.name: [] for problem in problems}
    with tqdm(total=len(problems) * len(args.optimizers), unit="run", desc="racing") as bar:
        for problem in problems:
            for name in args.optimizers:
                bar.set_postfix_str(f"{problem.name}: {name}")
                runs[problem.name].append(race_one(problem, name, args.steps))
                bar.update()

    results: dict[str, Any] = {"steps": args.steps, "backend": jax.default_backend()}
    for problem in problems:
        rows = [run.row for run in runs[problem.name]]
        print(f"\n{problem.title}: {args.steps} steps\n{format_table(rows)}", flush=True)
        clean = [{key: _finite_or_none(value) for key, value in row.items()} for row in rows]
        start_loss = float(problem.loss(problem.start))
        results[problem.name] = {"start_loss": start_loss, "results": clean}

    figure = _demo_figure.draw(problems, runs, args.steps)
    if not _write(args.out, figure.savefig, parser.prog):
        return 1
    if args.json is not None:
        text = json.dumps(results, indent=2, allow_nan=False) + "\n"
        if not _write(args.json, lambda path: path.write_text(text), parser.prog):
            return 1
        print(f"\nwrote {args.json}")
    print(f"\nwrote the figure to {args.out}")
    return 0
