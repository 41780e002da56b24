"""Every optimizer actually optimizes: a parabola and the Rosenbrock valley."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import minimise, parabola, rosenbrock

import optadam

# factory of the learning rate, learning rate on Rosenbrock, on the parabola. Each family has its
# own scale (found by a sweep); RAdam's first steps are plain momentum steps, so on Rosenbrock's
# steep walls (|∇f| ≈ 200 at the start) it needs gradient clipping, as it commonly gets in practice.
RACE = {
    "sgd": (lambda lr: optadam.sgd(lr, momentum=0.9), 1e-3, 3e-3),
    "nesterov": (lambda lr: optadam.sgd(lr, momentum=0.9, nesterov=True), 1e-3, 1e-3),
    "momentum": (lambda lr: optadam.momentum(lr, beta=0.9), 1e-3, 3e-3),
    "adagrad": (optadam.adagrad, 0.5, 0.3),
    "rmsprop": (lambda lr: optadam.rmsprop(lr, decay=0.99), 1e-3, 1e-2),
    "rmsprop_centered": (
        lambda lr: optadam.rmsprop(lr, decay=0.99, centered=True, momentum=0.5),
        3e-4,
        3e-3,
    ),
    "adam": (optadam.adam, 2e-2, 2e-2),
    "adamw": (lambda lr: optadam.adamw(lr, weight_decay=0.0), 2e-2, 2e-2),
    "nadam": (optadam.nadam, 1e-2, 2e-2),
    "amsgrad": (optadam.amsgrad, 0.5, 0.1),
    "radam": (
        lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optadam.radam(lr)),
        1e-2,
        2e-2,
    ),
    "tutorial_adam": (lambda lr: optadam.adam(lr, eps=0.0, eps_root=1e-8), 2e-2, 2e-2),
}


@pytest.mark.parametrize(("make", "lr", "_"), RACE.values(), ids=RACE.keys())
def test_reaches_rosenbrock_minimum(make, lr, _):
    x = minimise(make(lr), rosenbrock, jnp.array([-1.2, 1.0]), 5000)
    assert float(rosenbrock(x)) < 1e-3
    np.testing.assert_allclose(x, [1.0, 1.0], atol=0.1)


@pytest.mark.parametrize(("make", "_", "lr"), RACE.values(), ids=RACE.keys())
def test_reaches_parabola_minimum(make, _, lr):
    x0 = jnp.array([1.0, -2.0, 3.0, 0.5])
    x = minimise(make(lr), parabola, x0, 1000)
    assert float(parabola(x)) < 1e-3 * float(parabola(x0))
