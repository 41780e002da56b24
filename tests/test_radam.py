"""RAdam: against Liu et al.'s Algorithm 2 (NumPy float64) and optax, on both sides of ρ_t = 5."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import assert_trajectories_close, problem, reference_run, run, state_shapes

import optadam

CASES = [{}, {"threshold": 4.0}, {"nesterov": True}, {"b2": 0.99, "eps_root": 1e-8}]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_matches_numpy_float64_transcription(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=40)
    expected = reference_run("radam", 0.01, params, grads, kwargs)
    assert_trajectories_close(run(optadam.radam(0.01, **kwargs), params, grads), expected, rtol)


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_matches_optax_radam(x64, kwargs, dtype, rtol):
    params, grads = problem(dtype, seed=41)
    ours, theirs = optadam.radam(0.01, **kwargs), optax.radam(0.01, **kwargs)
    assert_trajectories_close(run(ours, params, grads), run(theirs, params, grads), rtol)
    assert state_shapes(ours.init(params)) == state_shapes(theirs.init(params))


def test_first_steps_are_plain_momentum_until_rho_passes_threshold():
    """ρ_1 = 1 < 5: the first update is m̂_1 = g_1 itself (times −η)."""
    tx = optadam.radam(0.1)
    g = jnp.array([3.0, -0.5])
    updates, _ = tx.update(g, tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, -0.1 * g, rtol=1e-6)


def test_gradient_through_update_is_finite_before_rectification():
    def loss(lr, b2):
        tx = optadam.radam(lr, b2=b2)
        p = jnp.ones(3)
        state = tx.init(p)
        for _ in range(3):  # ρ_3 < 4: r_t² is negative here, and r_t is not used
            u, state = tx.update(p, state)
            p = optax.apply_updates(p, u)
        return jnp.sum(p**2)

    grads = jax.grad(loss, argnums=(0, 1))(0.1, 0.999)
    assert all(np.isfinite(g) for g in grads)
