"""AdaGrad: against Duchi et al.'s equations (NumPy float64) and optax."""

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

CASES = [{}, {"initial_accumulator_value": 0.0, "eps": 1e-10}, {"initial_accumulator_value": 1.0}]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_matches_numpy_float64_transcription(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=20)
    expected = reference_run("adagrad", 0.1, params, grads, kwargs)
    assert_trajectories_close(run(optadam.adagrad(0.1, **kwargs), params, grads), expected, rtol)


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_matches_optax_adagrad(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=21)
    ours, theirs = optadam.adagrad(0.1, **kwargs), optax.adagrad(0.1, **kwargs)
    assert_trajectories_close(run(ours, params, grads), run(theirs, params, grads), rtol)
    assert state_shapes(ours.init(params)) == state_shapes(theirs.init(params))


def test_complex_params_match_reference_with_real_accumulator(x64):
    params, grads = problem(np.complex128, seed=22)
    expected = reference_run("adagrad", 0.1, params, grads, {})
    assert_trajectories_close(run(optadam.adagrad(0.1), params, grads), expected, 1e-12)
    state = optadam.scale_by_adagrad().init(jnp.zeros(3, jnp.complex64))
    assert state.sum_of_squares.dtype == jnp.float32


def test_zero_gradient_with_zero_accumulator_gives_zero_update_not_nan():
    tx = optadam.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)
    updates, _ = tx.update(jnp.zeros(4), tx.init(jnp.zeros(4)))
    np.testing.assert_array_equal(updates, np.zeros(4))


def test_bf16_params_accumulate_in_float32():
    """A bf16 sum of squares stops growing once g² < its spacing; float32 keeps counting."""
    tx = optadam.scale_by_adagrad(initial_accumulator_value=0.0)
    state = tx.init(jnp.zeros(1, jnp.bfloat16))
    for _ in range(1000):
        _, state = tx.update(jnp.full(1, 0.1, jnp.bfloat16), state)
    assert state.sum_of_squares.dtype == jnp.float32
    g = float(jnp.asarray(0.1, jnp.bfloat16))
    np.testing.assert_allclose(float(state.sum_of_squares[0]), 1000 * g * g, rtol=1e-4)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_duchi_et_al_figure_1_with_delta_0_is_adagrad_with_zero_accumulator_and_eps(
    x64, dtype, rtol
):
    """Duchi et al.'s H_t = δI + diag(‖g_{1:t,i}‖₂) with δ = 0 (their pseudo-inverse where a
    coordinate has seen only zeros) is ``adagrad(η, initial_accumulator_value=0, eps=0)``.
    Their δ > 0 adds outside the root; no argument does that (``eps`` is inside)."""
    params, grads = problem(dtype, seed=23)
    for step in grads[:3]:
        step[1][:2] = 0  # two coordinates see zero gradients first: H_t^{-1} is 0 there
    expected = stack_reference(reference.duchi_adagrad(params, grads, learning_rate=0.1))
    tx = optadam.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0)
    assert_trajectories_close(run(tx, params, grads), expected, rtol)
