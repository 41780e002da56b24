"""Bad hyperparameters fail at construction with a message naming parameter, value and range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optadam

UNIT_INTERVAL = [
    (optadam.adam, "b1"), (optadam.adam, "b2"), (optadam.adamw, "b1"), (optadam.nadam, "b2"),
    (optadam.amsgrad, "b1"), (optadam.radam, "b2"), (optadam.rmsprop, "decay"),
    (optadam.rmsprop, "momentum"), (optadam.sgd, "momentum"), (optadam.momentum, "beta"),
    (optadam.scale_by_momentum, "decay"),
]  # fmt: skip
NON_NEGATIVE = [
    (optadam.adam, "eps"), (optadam.adam, "eps_root"), (optadam.radam, "eps"),
    (optadam.rmsprop, "eps"), (optadam.rmsprop, "initial_scale"), (optadam.adagrad, "eps"),
    (optadam.adagrad, "initial_accumulator_value"), (optadam.adamw, "weight_decay"),
]  # fmt: skip
LEARNING_RATE = [
    optadam.sgd, optadam.momentum, optadam.adagrad, optadam.rmsprop, optadam.adam,
    optadam.adamw, optadam.nadam, optadam.amsgrad, optadam.radam,
]  # fmt: skip


def _build(factory, **kwargs):
    if "learning_rate" in factory.__code__.co_varnames[: factory.__code__.co_argcount]:
        kwargs.setdefault("learning_rate", 1e-3)
    return factory(**kwargs)


@pytest.mark.parametrize(("factory", "name"), UNIT_INTERVAL)
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan"), np.array([0.5, 1.0])])
def test_rejects_decay_rates_outside_unit_interval(factory, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\), got"):
        _build(factory, **{name: value})


@pytest.mark.parametrize(("factory", "name"), NON_NEGATIVE)
@pytest.mark.parametrize("value", [-1e-8, float("inf"), float("nan")])
def test_rejects_negative_or_non_finite_eps_and_friends(factory, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be finite and >= 0, got"):
        _build(factory, **{name: value})


@pytest.mark.parametrize("factory", LEARNING_RATE)
def test_learning_rate_must_be_number_array_or_schedule(factory):
    with pytest.raises(TypeError, match=r"learning_rate must be a number, an array or a schedule"):
        factory("0.1")
    with pytest.raises(ValueError, match=r"learning_rate must be finite and >= 0, got -0.1"):
        factory(-0.1)
    for ok in (0.1, 1, np.float32(0.1), jnp.asarray(0.1), lambda count: 0.1 / (count + 1)):
        factory(ok)


def test_error_message_names_parameter_value_and_range():
    with pytest.raises(ValueError) as error:
        optadam.adam(1e-3, b2=1.0)
    assert str(error.value) == "b2 must be in [0, 1), got 1.0"


def test_rejects_bool_and_string_hyperparameters_with_type_error():
    with pytest.raises(TypeError, match="b1 must be a real number or array, got the bool True"):
        optadam.adam(1e-3, b1=True)
    with pytest.raises(TypeError, match="eps must be a real number or array, got '1e-8'"):
        optadam.adam(1e-3, eps="1e-8")


def test_rejects_non_bool_switches_and_non_float_dtypes():
    with pytest.raises(TypeError, match="nesterov must be True or False, got 1"):
        optadam.adam(1e-3, nesterov=1)
    with pytest.raises(TypeError, match="centered must be True or False"):
        optadam.rmsprop(1e-3, centered="yes")
    with pytest.raises(TypeError, match="mu_dtype must be a floating dtype or None, got int32"):
        optadam.adam(1e-3, mu_dtype=jnp.int32)
    with pytest.raises(TypeError, match="nu_dtype must be a floating dtype or None"):
        optadam.adam(1e-3, nu_dtype="not-a-dtype")


def test_radam_threshold_must_be_finite():
    with pytest.raises(ValueError, match="threshold must be a finite real number, got inf"):
        optadam.radam(1e-3, threshold=float("inf"))


def test_traced_hyperparameters_are_not_checked_but_work():
    def first_update(b1):
        tx = optadam.adam(1e-3, b1=b1)
        return tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))[0]

    np.testing.assert_allclose(jax.jit(first_update)(0.9), first_update(0.9), rtol=1e-6)
    assert jax.vmap(first_update)(jnp.array([0.5, 0.9])).shape == (2, 2)
