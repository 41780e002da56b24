"""RMSProp, plain and centered, with and without momentum: against the equations and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from harness import (
    assert_trajectories_close,
    problem,
    reference_run,
    run,
    stack_reference,
    state_shapes,
)

import optadam

CASES = [
    {},
    {"decay": 0.99, "eps": 1e-6, "initial_scale": 0.5},
    {"eps_in_sqrt": False},
    {"bias_correction": True},
    {"centered": True, "initial_scale": 1.0},
    {"centered": True, "bias_correction": True, "eps_in_sqrt": False, "initial_scale": 0.1},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "centered": True, "initial_scale": 1.0},
]
IDS = ["-".join(f"{k}={v}" for k, v in case.items()) or "default" for case in CASES]


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_matches_numpy_float64_transcription(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=30)
    expected = reference_run("rmsprop", 0.01, params, grads, kwargs)
    assert_trajectories_close(run(optadam.rmsprop(0.01, **kwargs), params, grads), expected, rtol)


@pytest.mark.parametrize("kwargs", CASES, ids=IDS)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_matches_optax_rmsprop(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=31)
    ours, theirs = optadam.rmsprop(0.01, **kwargs), optax.rmsprop(0.01, **kwargs)
    assert_trajectories_close(run(ours, params, grads), run(theirs, params, grads), rtol)
    assert state_shapes(ours.init(params)) == state_shapes(theirs.init(params))


def test_schedule_matches_reference(x64):
    params, grads = problem(np.float64, seed=32)
    expected = reference_run("rmsprop", lambda c: 0.01 * 0.99**c, params, grads, {"momentum": 0.5})
    tx = optadam.rmsprop(lambda c: 0.01 * 0.99 ** jnp.asarray(c, jnp.float64), momentum=0.5)
    assert_trajectories_close(run(tx, params, grads), expected, 1e-12)


def test_centered_with_complex_params_matches_reference(x64):
    params, grads = problem(np.complex128, seed=33)
    kwargs = {"centered": True, "initial_scale": 1.0}
    expected = reference_run("rmsprop", 0.01, params, grads, kwargs)
    assert_trajectories_close(run(optadam.rmsprop(0.01, **kwargs), params, grads), expected, 1e-12)


def test_state_holds_only_what_the_variant_uses():
    params = {"w": jnp.zeros((2, 2), jnp.bfloat16)}
    plain = optadam.scale_by_rms().init(params)
    assert plain.count is None and plain.mu is None and plain.nu["w"].dtype == jnp.float32
    full = optadam.scale_by_rms(bias_correction=True, centered=True).init(params)
    assert full.count.dtype == jnp.int32 and full.mu["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_centered_variance_rounding_below_zero_does_not_give_nan(eps_in_sqrt):
    """With decay 0, ν = g² and μ = g: the variance is exactly 0, but rounding (and FMA
    contraction) can put ν − μ² a hair below 0; its root must not be NaN. (Found by hypothesis.)"""
    tx = optadam.rmsprop(0.01, decay=0.0, initial_scale=1.0, centered=True, eps_in_sqrt=eps_in_sqrt)
    rng = np.random.default_rng(0)
    params = jnp.zeros(())
    state = tx.init(params)
    for g in rng.standard_normal(200).astype(np.float32) * 3.7:
        updates, state = jax.jit(tx.update)(jnp.asarray(g), state)
        assert np.isfinite(updates)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_tieleman_hinton_lecture_is_rmsprop_with_eps_0(x64, dtype, rtol):
    """The lecture divides by sqrt(MeanSquare) itself, no ε: ``rmsprop(η, decay=0.9, eps=0)``."""
    params, grads = problem(dtype, seed=34)
    expected = reference.tieleman_hinton_rmsprop(params, grads, learning_rate=0.01)
    actual = run(optadam.rmsprop(0.01, decay=0.9, eps=0.0), params, grads)
    assert_trajectories_close(actual, stack_reference(expected), rtol)


@pytest.mark.parametrize("gimel", [1e-4, 1e-2])  # Graves's ג, and one that moves w further
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_graves_eqs_38_to_41_are_centered_rmsprop_with_momentum(x64, gimel, dtype, rtol):
    """Graves's Δ = ℶΔ − ג ε/sqrt(n − g² + ℷ) puts the learning rate inside the momentum trace,
    as optax and optadam do: ``rmsprop(ג, decay=ℵ, eps=ℷ, centered=True, momentum=ℶ)``."""
    params, grads = problem(dtype, seed=35)
    expected = reference.graves_rmsprop(params, grads, gimel=gimel)
    tx = optadam.rmsprop(gimel, decay=0.95, eps=1e-4, centered=True, momentum=0.9)
    assert_trajectories_close(run(tx, params, grads), stack_reference(expected), rtol)
