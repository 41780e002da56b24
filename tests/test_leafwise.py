"""What every optimizer inherits from the shared lifting: clear tree errors, None/MaskedNode
leaves, empty trees, zero-size arrays, dtypes kept, and a step counter that cannot overflow."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optadam

ALL = {
    "sgd": lambda: optadam.sgd(0.1, momentum=0.9),
    "momentum": lambda: optadam.momentum(0.1),
    "adagrad": lambda: optadam.adagrad(0.1),
    "rmsprop": lambda: optadam.rmsprop(0.1, centered=True, bias_correction=True),
    "adam": lambda: optadam.adam(0.1),
    "adamw": lambda: optadam.adamw(0.1),
    "nadam": lambda: optadam.nadam(0.1),
    "amsgrad": lambda: optadam.amsgrad(0.1),
    "radam": lambda: optadam.radam(0.1),
}
every_optimizer = pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())

PARAMS = {"layer": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}, "scale": jnp.ones(())}


@every_optimizer
def test_grads_with_wrong_leaf_shape_name_the_path_and_both_shapes(make):
    tx = make()
    grads = {"layer": {"w": jnp.ones((4, 3)), "b": jnp.zeros(4)}, "scale": jnp.ones(())}
    with pytest.raises(ValueError, match=r"\['layer'\]\['w'\] has shape \(4, 3\) but .* \(3, 4\)"):
        tx.update(grads, tx.init(PARAMS), PARAMS)


@every_optimizer
def test_grads_with_other_tree_structure_name_the_first_differing_path(make):
    tx = make()
    grads = {"layer": {"w": jnp.ones((3, 4)), "bias": jnp.zeros(4)}, "scale": jnp.ones(())}
    with pytest.raises(ValueError, match=r"tree structure differs.*\['layer'\]\['bias'\]"):
        tx.update(grads, tx.init(PARAMS), PARAMS)


def test_missing_leaf_is_reported_with_leaf_counts():
    tx = optadam.adam(0.1)
    with pytest.raises(ValueError, match=r"extra leaf at \['scale'\] \(2 gradient leaves, 3 state"):
        tx.update({"layer": PARAMS["layer"]}, tx.init(PARAMS))


def test_mismatch_is_reported_under_jit_too():
    tx = optadam.adam(0.1)
    state = tx.init(PARAMS)
    with pytest.raises(ValueError, match=r"\['layer'\]\['b'\] has shape \(5,\)"):
        jax.jit(tx.update)({**PARAMS, "layer": {"w": jnp.ones((3, 4)), "b": jnp.ones(5)}}, state)


def _state_of(state, key):
    """The state leaves that belong to the parameter ``PARAMS["layer"][key]`` (mu, nu, trace...)."""
    return [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
        if jax.tree_util.keystr(path).endswith(f"['layer']['{key}']")
    ]


@every_optimizer
def test_none_gradient_leaves_pass_through_and_keep_their_state(make):
    tx = make()
    full = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)
    _, state = tx.update(full, tx.init(PARAMS), PARAMS)  # two steps: state away from its start
    _, state = tx.update(full, state, PARAMS)
    grads = {"layer": {"w": jnp.ones((3, 4)), "b": None}, "scale": jnp.ones(())}
    updates, new_state = tx.update(grads, state, PARAMS)
    assert updates["layer"]["b"] is None and updates["layer"]["w"].shape == (3, 4)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    kept, before = _state_of(new_state, "b"), _state_of(state, "b")
    assert kept, "no state found for ['layer']['b']"
    for new, old in zip(kept, before, strict=True):
        np.testing.assert_array_equal(new, old)  # bit for bit what it was
    # ... while the leaf that had a gradient moved on (so the check above can tell them apart).
    assert any(
        not np.array_equal(new, old)
        for new, old in zip(_state_of(new_state, "w"), _state_of(state, "w"), strict=True)
    )


@every_optimizer
def test_none_params_have_no_state_and_no_update(make):
    tx = make()
    params = {"w": jnp.ones(3), "frozen": None}
    updates, _ = tx.update({"w": jnp.ones(3), "frozen": None}, tx.init(params), params)
    assert updates["frozen"] is None


@every_optimizer
def test_masked_nodes_pass_through_optax_masked(make):
    tx = optax.masked(make(), {"layer": {"w": True, "b": False}, "scale": False})
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(updates["layer"]["b"], grads["layer"]["b"])  # untouched
    assert not np.allclose(updates["layer"]["w"], grads["layer"]["w"])


@every_optimizer
@pytest.mark.parametrize(
    "params", [{}, [], {"empty": jnp.zeros((0, 3))}], ids=["dict", "list", "0-size"]
)
def test_empty_trees_and_zero_size_arrays_work(make, params):
    tx = make()
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


@every_optimizer
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_updates_keep_the_gradients_dtype(make, dtype):
    tx = make()
    params = {"w": jnp.ones((2, 3), dtype)}
    updates, state = tx.update({"w": jnp.full((2, 3), 0.5, dtype)}, tx.init(params), params)
    assert updates["w"].dtype == dtype
    assert bool(jnp.all(jnp.isfinite(updates["w"])))
    _, again = tx.update({"w": jnp.full((2, 3), 0.5, dtype)}, state, params)
    assert jax.tree.map(jnp.result_type, again) == jax.tree.map(jnp.result_type, state)


@pytest.mark.parametrize("factory", [optadam.scale_by_adam, optadam.scale_by_amsgrad,
                                     optadam.scale_by_radam])  # fmt: skip
def test_step_counter_saturates_and_updates_stay_finite_near_int32_max(factory):
    tx = factory()
    params = jnp.ones(3)
    state = tx.init(params)._replace(count=jnp.asarray(2**31 - 3, jnp.int32))
    for _ in range(5):
        updates, state = tx.update(jnp.array([1.0, -2.0, 0.0]), state)
        assert bool(jnp.all(jnp.isfinite(updates)))
    assert int(state.count) == 2**31 - 1


def test_rms_and_schedule_counters_saturate_too():
    tx = optadam.rmsprop(lambda c: 0.1, bias_correction=True)
    state = tx.init(jnp.ones(2))
    top = jnp.asarray(2**31 - 1, jnp.int32)
    state = (state[0]._replace(count=top), state[1]._replace(count=top), state[2])
    updates, state = tx.update(jnp.ones(2), state)
    assert int(state[0].count) == 2**31 - 1 and int(state[1].count) == 2**31 - 1
    assert bool(jnp.all(jnp.isfinite(updates)))
