"""The public surface: every optax-named factory is a drop-in (same parameters, order, defaults)."""

import inspect

import optax
import pytest

import optadam

SAME_NAMED = [
    "sgd", "rmsprop", "adagrad", "adam", "adamw", "nadam", "amsgrad", "radam",
    "scale_by_adam", "scale_by_amsgrad", "scale_by_radam", "scale_by_rms", "inject_hyperparams",
    "clip_by_global_norm", "chain",
]  # fmt: skip


@pytest.mark.parametrize("name", SAME_NAMED)
def test_signature_extends_optax_without_changing_it(name):
    """optax's parameters come first, in order, with the same kind and default; ours may only
    add keyword-only parameters after them (so every optax call is a valid optadam call)."""
    theirs = list(inspect.signature(getattr(optax, name)).parameters.values())
    ours = list(inspect.signature(getattr(optadam, name)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [
        (p.name, p.kind, p.default) for p in theirs
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])


def test_momentum_signature_is_the_tutorials():
    params = inspect.signature(optadam.momentum).parameters
    assert [(p.name, p.default) for p in params.values()] == [
        ("learning_rate", inspect.Parameter.empty),
        ("beta", 0.9),
        ("nesterov", False),
    ]


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name in dir(optadam)
        if not name.startswith("_") and not inspect.ismodule(getattr(optadam, name))
    }
    assert set(optadam.__all__) == public
    assert all(hasattr(optadam, name) for name in optadam.__all__)


@pytest.mark.parametrize("name", [n for n in optadam.__all__ if n[0].islower()])
def test_every_public_function_has_type_hints_and_a_docstring(name):
    function = getattr(optadam, name)
    assert function.__doc__ and len(function.__doc__) > 80
    signature = inspect.signature(function)
    assert signature.return_annotation is not inspect.Signature.empty
    assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values())
