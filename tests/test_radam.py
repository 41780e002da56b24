"""RAdam: against Liu et al.'s Algorithm 2 as printed (ρ_t > 4, no ε), optax's form of it (ρ_t ≥ 5)
and optax itself, on both sides of the threshold (NumPy float64 references)."""

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
    relative_deviation,
    run,
    stack_reference,
    state_shapes,
)

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


@pytest.mark.parametrize("b2", [0.999, 0.95])
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_liu_et_al_algorithm_2_is_radam_with_threshold_4_and_eps_0(x64, b2, dtype, rtol):
    """The paper rectifies from ρ_t > 4 with no ε: ``radam(α, threshold=4, eps=0)``. (ρ_5 is
    4.996 for β2 = 0.999 and 4.795 for 0.95, so step 5 tells 4 from optax's 5; ρ_t is never
    exactly 4 here, the one value where ``ρ_t >= 4`` and the paper's ``ρ_t > 4`` part, r_t = 0.)"""
    params, grads = problem(dtype, seed=42)
    expected = stack_reference(reference.liu_radam(params, grads, alpha=0.01, beta2=b2))
    tx = optadam.radam(0.01, b2=b2, eps=0.0, threshold=4.0)
    assert_trajectories_close(run(tx, params, grads), expected, rtol)


def test_default_threshold_5_departs_from_the_paper_at_step_5(x64):
    params, grads = problem(np.float64, seed=42, steps=5)
    expected = stack_reference(reference.liu_radam(params, grads, alpha=0.01))
    actual = run(optadam.radam(0.01, eps=0.0), params, grads)
    assert_trajectories_close([a[:4] for a in actual], [e[:4] for e in expected], 1e-12)
    assert relative_deviation([a[4:] for a in actual], [e[4:] for e in expected]) > 1e-4
