"""Each optimizer compiles to optax's XLA program (README, "Speed"), checked on the optimized HLO.

A jitted training step (``tx.update`` and ``optax.apply_updates``) of every optadam factory that
shares its name with an optax one is compiled for the same small float32 tree, and the optimized
HLO of both is reduced to a multiset of (operation, result type): names, layouts and metadata
dropped, fused computations included. The tree has no scalar leaves, so scalar operations are
exactly the step-count and hyperparameter arithmetic, and array operations the per-element math.

Where the programs differ on purpose, the test pins the difference to what the README says:
centered RMSProp clamps its variance estimate at 0 (one ``maximum`` per leaf) and RAdam picks
the rectification factor with a scalar ``select`` (finite meta-gradients before rectification).
"""

import re
from collections import Counter

import jax
import jax.numpy as jnp
import optax
import pytest

import optadam

PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "u": jnp.ones((2, 3, 2))}
GRADS = jax.tree.map(lambda p: 0.5 * p + 0.1, PARAMS)
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?\S+ = (.+?) ([a-z][\w\-]*)\(")


@pytest.fixture(autouse=True)
def _xla_path():
    """The claim is the XLA path's: on CPU, native kernels replace it (README, "Native kernels")."""
    optadam.set_native_enabled(False)
    yield
    optadam.set_native_enabled(None)


SAME_NAMED = {  # label: (factory name, positional args, keyword args), the same for both
    "sgd": ("sgd", (0.1,), {}),
    "sgd_momentum": ("sgd", (0.1,), {"momentum": 0.9}),
    "sgd_nesterov": ("sgd", (0.1,), {"momentum": 0.9, "nesterov": True}),
    "adagrad": ("adagrad", (0.1,), {}),
    "rmsprop": ("rmsprop", (0.1,), {}),
    "rmsprop_momentum": ("rmsprop", (0.1,), {"momentum": 0.9, "nesterov": True}),
    "rmsprop_bias_correction": ("rmsprop", (0.1,), {"bias_correction": True}),
    "adam": ("adam", (0.1,), {}),
    "adam_nesterov_eps_root": ("adam", (0.1,), {"nesterov": True, "eps_root": 1e-8}),
    "adamw": ("adamw", (0.1,), {"weight_decay": 0.1}),
    "nadam": ("nadam", (0.1,), {}),
    "amsgrad": ("amsgrad", (0.1,), {}),
    "scale_by_adam": ("scale_by_adam", (), {}),
    "scale_by_amsgrad": ("scale_by_amsgrad", (), {}),
    "scale_by_rms": ("scale_by_rms", (), {}),
    "clip_by_global_norm": ("clip_by_global_norm", (1.0,), {}),
    # the same parts chained by each: optadam.chain's update is optax.chain's
    "chain": ("chain", (optadam.clip_by_global_norm(1.0), optadam.adam(0.1)), {}),
}
# The documented departures: operations optadam adds (its program minus optax's; nothing less).
# Centered RMSProp: per leaf, a maximum with a broadcast 0 (a scalar constant in each fusion).
CLAMPS = Counter(
    {
        (op, f"f32{list(p.shape)}".replace(" ", "")): 1
        for p in PARAMS.values()
        for op in ("maximum", "broadcast")
    }
) + Counter({("constant", "f32[]"): len(PARAMS)})
# RAdam: r = sqrt(where(ρ_t >= threshold, r², 1)), on scalars.
SCALAR_WHERE = Counter({("constant", "f32[]"): 2, ("compare", "pred[]"): 1, ("select", "f32[]"): 1})
EXTRA = {
    "rmsprop_centered": (("rmsprop", (0.1,), {"centered": True}), CLAMPS),
    "radam": (("radam", (0.1,), {}), SCALAR_WHERE),
    "scale_by_radam": (("scale_by_radam", (), {}), SCALAR_WHERE),
}


def operations(tx: optax.GradientTransformation) -> Counter:
    """(operation, result type without layout) -> count, over the optimized HLO of one step."""

    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    hlo = jax.jit(step).lower(GRADS, tx.init(PARAMS), PARAMS).compile().as_text()
    found: Counter = Counter()
    for line in hlo.splitlines():
        if match := INSTRUCTION.match(line):
            result_type = re.sub(r"\{[^}]*\}", "", match.group(1))  # drop layouts
            found[(match.group(2), result_type)] += 1
    assert found[("parameter", "f32[3,4]")] >= 2, hlo  # the parser saw the program
    return found


def both(spec: tuple) -> tuple[Counter, Counter]:
    name, args, kwargs = spec
    return operations(getattr(optadam, name)(*args, **kwargs)), operations(
        getattr(optax, name)(*args, **kwargs)
    )


def arrays_only(ops: Counter) -> Counter:
    return Counter({op: n for op, n in ops.items() if not op[1].endswith("[]")})


@pytest.mark.parametrize("label", SAME_NAMED)
def test_compiles_to_the_same_operations_as_its_optax_twin(label):
    ours, theirs = both(SAME_NAMED[label])
    assert ours == theirs, f"optadam adds {ours - theirs}, optax adds {theirs - ours}"


@pytest.mark.parametrize("label", EXTRA)
def test_documented_departures_add_exactly_their_operations(label):
    spec, extra = EXTRA[label]
    ours, theirs = both(spec)
    assert theirs - ours == Counter(), f"optax has operations optadam lacks: {theirs - ours}"
    assert ours - theirs == extra


def test_with_a_schedule_the_array_operations_are_the_same():
    """A schedule's rate is negated as a scalar (optax multiplies by a constant -1): scalar
    bookkeeping differs, the per-element program does not."""
    schedule = optax.linear_schedule(0.1, 0.01, 10)
    ours, theirs = operations(optadam.adam(schedule)), operations(optax.adam(schedule))
    assert arrays_only(ours) == arrays_only(theirs)


def test_every_same_named_optimizer_is_compared():
    compared = {spec[0] for spec in SAME_NAMED.values()} | {s[0] for s, _ in EXTRA.values()}
    functions = {name for name in optadam.__all__ if name[0].islower()}
    same_named = {name for name in functions if hasattr(optax, name)} - {"inject_hyperparams"}
    assert same_named <= compared, same_named - compared
