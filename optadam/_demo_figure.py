"""The demo's figure: each optimizer's path over the test functions' contours, and loss curves.

Imported by :mod:`optadam.demo` only once it knows matplotlib (the ``demo`` extra) is installed.
It draws on a bare ``matplotlib.figure.Figure`` -- no pyplot, so no GUI backend and no global
state; ``Figure.savefig`` picks the writer (Agg for PNG) from the file's suffix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from optadam.demo import Problem, Run

# The window each contour plot shows, (x range, y range): the start, the optimum and the detours.
VIEWS = {"rosenbrock": ((-2.0, 2.0), (-1.0, 3.0)), "beale": ((-0.5, 4.0), (-1.0, 2.0))}
CURVE_WINDOW = 25  # minibatch losses are noisy: the digits curve is a moving average of 25 steps


def supported_formats() -> set[str]:
    """File suffixes (without the dot) that ``Figure.savefig`` can write."""
    return set(FigureCanvasBase.get_supported_filetypes())


def colours(names: Sequence[str]) -> dict[str, str]:
    """One fixed colour per optimizer, so it is the same line in every panel."""
    return {name: f"C{i}" for i, name in enumerate(names)}


def draw_paths(ax: Axes, problem: Problem, runs: Sequence[Run], colour: Mapping[str, str]) -> None:
    """Log-spaced contours of f, then each optimizer's path from the start (○) to its end (•)."""
    assert problem.optimum is not None
    (x0, x1), (y0, y1) = VIEWS.get(problem.name, ((-3.0, 3.0), (-3.0, 3.0)))
    x, y = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    z = np.asarray(problem.loss(jnp.stack([jnp.asarray(x), jnp.asarray(y)])))  # f reads p[0], p[1]
    levels = np.logspace(-2, np.log10(z.max()), 18)
    ax.contour(x, y, z, levels=levels, norm=LogNorm(), cmap="Greys_r", linewidths=0.6, alpha=0.6)
    for run in runs:
        assert run.path is not None
        name = run.row["optimizer"]
        ax.plot(run.path[:, 0], run.path[:, 1], color=colour[name], linewidth=1.4, label=name)
        ax.plot(*run.path[-1], "o", color=colour[name], markersize=4)
    ax.plot(*problem.start, "o", markerfacecolor="white", markeredgecolor="black", markersize=7)
    ax.plot(*problem.optimum, "*", color="crimson", markersize=14, markeredgecolor="black")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y")
    ax.set_title(f"{problem.name.capitalize()}: paths from ○ to the optimum ★")


def draw_losses(ax: Axes, problem: Problem, runs: Sequence[Run], colour: Mapping[str, str]) -> None:
    """Loss per step on a log scale; the minibatch losses of the classifier are smoothed."""
    for run in runs:
        losses = run.losses
        window = min(CURVE_WINDOW, len(losses)) if problem.optimum is None else 1
        if window > 1:
            losses = np.convolve(losses, np.ones(window) / window, mode="valid")
        steps = np.arange(len(losses)) + window
        ax.plot(steps, losses, color=colour[run.row["optimizer"]], linewidth=1.2)
    ax.set_yscale("log")
    ax.set(xlabel="step", xlim=(0, len(runs[0].losses)) if runs else None)
    if problem.optimum is None:
        ax.set(ylabel=f"cross-entropy (minibatch, mean of {CURVE_WINDOW} steps)")
        ax.set_title("Digits MLP: training loss")
    else:
        ax.set(ylabel="f(x, y)")
        ax.set_title(f"{problem.name.capitalize()}: loss")
    ax.grid(True, which="major", alpha=0.3)


def draw_accuracy(ax: Axes, runs: Sequence[Run], colour: Mapping[str, str]) -> None:
    """Test accuracy per optimizer as dots with their values: the differences are a few percent,
    which bars from zero would hide, so the axis starts just below the worst finite accuracy."""
    names = [run.row["optimizer"] for run in runs]
    accuracy = np.array([run.row.get("test_accuracy", np.nan) for run in runs], dtype=float)
    positions = np.arange(len(names))[::-1]  # first optimizer on top, as in the tables
    finite = accuracy[np.isfinite(accuracy)]
    left = max(0.0, np.floor((finite.min() if finite.size else 0.0) * 50 - 1) / 50)
    for y, name, value in zip(positions, names, accuracy, strict=True):
        if np.isfinite(value):
            ax.hlines(y, left, value, color=colour[name], linewidth=2)
            ax.plot(value, y, "o", color=colour[name], markersize=9)
        text = f"{value:.1%}" if np.isfinite(value) else "diverged"
        ax.annotate(
            text,
            (value if np.isfinite(value) else left, y),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
        )
    ax.set(yticks=positions, yticklabels=names, xlim=(left, 1.0), ylim=(-0.7, len(names) - 0.3))
    ax.set(xlabel="accuracy on the held-out test images")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Digits MLP: test accuracy")


def draw(problems: Sequence[Problem], runs: Mapping[str, Sequence[Run]], steps: int) -> Figure:
    """One figure: a column per problem; paths (or accuracy) on top, loss curves below."""
    names = [run.row["optimizer"] for run in runs[problems[0].name]]
    colour = colours(names)
    figure = Figure(figsize=(5.2 * len(problems), 9.5), layout="constrained")
    axes = figure.subplots(2, len(problems), squeeze=False)
    for column, problem in enumerate(problems):
        top, bottom = axes[0, column], axes[1, column]
        if problem.optimum is not None:
            draw_paths(top, problem, runs[problem.name], colour)
        else:
            draw_accuracy(top, runs[problem.name], colour)
        draw_losses(bottom, problem, runs[problem.name], colour)
    handles = [axes[1, 0].lines[i] for i in range(len(names))]
    figure.legend(handles, names, loc="outside lower center", ncols=len(names), frameon=False)
    figure.suptitle(f"optadam demo: {len(names)} optimizers, {steps} steps each", fontsize=14)
    return figure
