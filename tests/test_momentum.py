"""SGD and Momentum (heavy-ball, Nesterov): against the equations (NumPy float64) and optax."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_trajectories_close, problem, reference_run, run, state_shapes

import optadam

# name, kwargs (shared by optadam, optax and the reference)
CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.5, "nesterov": True}),
    ("sgd", {"momentum": 0.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_matches_numpy_float64_transcription(x64, name, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=10)
    expected = reference_run(name, 0.05, params, grads, kwargs)
    assert_trajectories_close(
        run(getattr(optadam, name)(0.05, **kwargs), params, grads), expected, rtol
    )


@pytest.mark.parametrize(("name", "kwargs"), CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_matches_optax_same_named_optimizer(x64, name, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=11)
    ours, theirs = getattr(optadam, name)(0.05, **kwargs), getattr(optax, name)(0.05, **kwargs)
    assert_trajectories_close(run(ours, params, grads), run(theirs, params, grads), rtol)
    assert state_shapes(ours.init(params)) == state_shapes(theirs.init(params))


@pytest.mark.parametrize("nesterov", [False, True])
def test_tutorial_momentum_is_sgd_with_momentum(x64, nesterov):
    params, grads = problem(np.float64, seed=12)
    expected = reference_run("momentum", 0.05, params, grads, {"beta": 0.8, "nesterov": nesterov})
    tx = optadam.momentum(0.05, beta=0.8, nesterov=nesterov)
    assert_trajectories_close(run(tx, params, grads), expected, 1e-12)


def test_schedule_matches_reference(x64):
    params, grads = problem(np.float64, seed=13)
    expected = reference_run("sgd", lambda c: 0.1 / (1 + c), params, grads, {"momentum": 0.9})
    tx = optadam.sgd(lambda c: 0.1 / (1 + jnp.asarray(c, jnp.float64)), momentum=0.9)
    assert_trajectories_close(run(tx, params, grads), expected, 1e-12)


def test_accumulator_dtype_sets_trace_storage():
    tx = optadam.sgd(0.1, momentum=0.9, accumulator_dtype=jnp.bfloat16)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    assert state[0].trace["w"].dtype == jnp.bfloat16
    updates, state = tx.update({"w": jnp.ones(3)}, state)
    assert updates["w"].dtype == jnp.float32 and state[0].trace["w"].dtype == jnp.bfloat16
