"""Property-based: random tree shapes (0-size leaves included) and random hyperparameters, every
optimizer against its NumPy float64 transcription."""

import jax
import numpy as np
from harness import assert_trajectories_close, problem, reference_run, run
from hypothesis import given, settings
from hypothesis import strategies as st

import optadam

shapes = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), min_size=1, max_size=3)
decay = st.floats(0.0, 0.99)


def rmsprop_kwargs(draw):
    centered = draw(st.booleans())
    # Centered, a decay near 0 makes the variance ν − μ² a difference of nearly equal numbers
    # (exactly 0 at decay 0: ν = g², μ = g), and with ε outside the root the update amplifies its
    # rounding by 1/ε: XLA contracts g·g − μ·μ into a fused multiply-add, NumPy does not, so the
    # comparison would measure rounding, not the algorithm. test_rmsprop covers decay 0 itself.
    return {
        "decay": draw(st.floats(0.05, 0.99) if centered else decay),
        "initial_scale": draw(st.floats(0.5, 2.0)),
        "centered": centered,
        "eps_in_sqrt": draw(st.booleans()),
        "bias_correction": draw(st.booleans()),
    }


@st.composite
def optimizer_and_hyperparameters(draw):
    name = draw(
        st.sampled_from(["sgd", "adagrad", "rmsprop", "adamw", "nadam", "amsgrad", "radam"])
    )
    kwargs = {
        "sgd": lambda: {"momentum": draw(decay), "nesterov": draw(st.booleans())},
        "adagrad": lambda: {
            "initial_accumulator_value": draw(st.floats(0.01, 1.0)),
            "eps": draw(st.sampled_from([1e-7, 1e-3])),
        },
        "rmsprop": lambda: rmsprop_kwargs(draw),
        "adamw": lambda: {"b1": draw(decay), "weight_decay": draw(st.floats(0.0, 0.5))},
        "nadam": lambda: {"b1": draw(decay), "b2": draw(st.floats(0.5, 0.999))},
        "amsgrad": lambda: {
            "b2": draw(st.floats(0.5, 0.999)),
            "bias_correction_mu": draw(st.booleans()),
            "bias_correction_nu": draw(st.booleans()),
        },
        "radam": lambda: {
            "b2": draw(st.floats(0.9, 0.999)),
            "threshold": draw(st.floats(4.0, 6.0)),
        },
    }[name]()
    return name, kwargs


@settings(max_examples=12, deadline=None)
@given(case=optimizer_and_hyperparameters(), shapes=shapes, seed=st.integers(0, 2**16))
def test_random_trees_and_hyperparameters_match_reference(case, shapes, seed):
    name, kwargs = case
    with jax.enable_x64(True):
        params, grads = problem(np.float64, seed=seed, shapes=shapes, steps=20)
        expected = reference_run(name, 0.01, params, grads, kwargs)
        actual = run(getattr(optadam, name)(0.01, **kwargs), params, grads)
        assert_trajectories_close(actual, expected, 1e-10)
