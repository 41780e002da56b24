"""Lean optimizer state in the optimizers: 8-bit moments (``state_bits=8``), bfloat16 moments and
stochastic rounding. Bytes per parameter and layouts, validation, every optimizer next to its
float32 self, transformations, and training quality against float32 Adam on two small problems: an
MLP on scikit-learn's bundled digits and a character-level transformer language model trained on
the text below (nothing is downloaded).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from harness import run
from sklearn.datasets import load_digits

import optadam
from optadam._quantize import QuantizedArray

BF16 = {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}


def state_bytes(state) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(state))


# --- memory and layout ------------------------------------------------------------------------

BIG = {"w": jnp.ones((1024, 1024))}


@pytest.mark.parametrize(
    ("make", "bytes_per_param"),
    [
        (lambda: optadam.adam(1e-3), 8.0),
        (lambda: optadam.adam(1e-3, **BF16), 4.0),
        (lambda: optadam.adam(1e-3, state_bits=8), 2 + 2 * 4 / 256),  # codes + a scale per block
        (lambda: optadam.adam(1e-3, state_bits=8, block_size=2048), 2 + 2 * 4 / 2048),
        (lambda: optadam.amsgrad(1e-3, state_bits=8), 3 + 3 * 4 / 256),
        (lambda: optadam.rmsprop(1e-3, state_bits=8), 1 + 4 / 256),
        (lambda: optadam.sgd(1e-3, momentum=0.9, state_bits=8), 1 + 4 / 256),
    ],
    ids=["adam", "adam_bf16", "adam_8bit", "adam_8bit_2048", "amsgrad_8bit", "rmsprop_8bit", "sgd"],
)
def test_state_bytes_per_parameter(make, bytes_per_param):
    state = make().init(BIG)
    counts = [x for x in jax.tree.leaves(state) if x.ndim == 0]  # step counts: 4 bytes in all
    assert (state_bytes(state) - state_bytes(counts)) / 2**20 == pytest.approx(bytes_per_param)


def test_eight_bit_adam_quantizes_big_real_leaves_and_keeps_the_rest_in_float32():
    params = {
        "big": jnp.ones((64, 128), jnp.bfloat16),
        "small": jnp.ones(4095, jnp.bfloat16),  # under 4,096 elements
        "complex": jnp.ones(5000, jnp.complex64),
    }
    state = optadam.adam(1e-3, state_bits=8).init(params)[0]
    assert isinstance(state.mu["big"], QuantizedArray) and state.mu["big"].moment == 1
    assert isinstance(state.nu["big"], QuantizedArray) and state.nu["big"].moment == 2
    assert state.mu["small"].dtype == state.nu["small"].dtype == jnp.float32
    assert state.mu["complex"].dtype == jnp.complex64  # no map for complex first moments
    assert isinstance(state.nu["complex"], QuantizedArray)  # |g|² is real


@pytest.mark.parametrize(
    ("make", "formats"),
    [
        (lambda: optadam.amsgrad(1e-3, state_bits=8), {"mu": 1, "nu": 2, "nu_max": 2}),
        (lambda: optadam.radam(1e-3, state_bits=8), {"mu": 1, "nu": 2}),
        (lambda: optadam.rmsprop(1e-3, centered=True, state_bits=8), {"mu": 1, "nu": 2}),
        (lambda: optadam.sgd(1e-3, momentum=0.9, state_bits=8), {"trace": 1}),
    ],
    ids=["amsgrad", "radam", "rmsprop_centered", "sgd"],
)
def test_every_moment_is_stored_in_its_format(make, formats):
    state = make().init(BIG)[0]
    for field, moment in formats.items():
        assert getattr(state, field)["w"].moment == moment


def test_rmsprop_initial_scale_is_stored_exactly():
    state = optadam.rmsprop(1e-3, initial_scale=0.3, state_bits=8).init(BIG)[0]
    np.testing.assert_allclose(state.nu["w"].dequantize(), 0.3, rtol=1e-6)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"state_bits": 4}, ValueError, r"state_bits must be None .* or 8 .*, got 4"),
        ({"state_bits": 8.0}, TypeError, r"state_bits .* must be a Python int, got 8\.0"),
        ({"block_size": 0}, ValueError, r"block_size must be >= 1, got 0"),
        ({"block_size": 2.5}, TypeError, r"block_size .* must be a Python int, got 2\.5"),
        ({"state_bits": 8, "nu_dtype": jnp.bfloat16}, ValueError, r"nu_dtype cannot be combined"),
        ({"state_bits": 8, "stochastic_rounding": True}, ValueError, r"stochastic_rounding"),
        ({"stochastic_rounding": 1}, TypeError, r"stochastic_rounding must be True or False"),
    ],
)
def test_rejects_bad_lean_state_options_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        optadam.adam(1e-3, **kwargs)


def test_plain_sgd_has_no_state_to_make_lean():
    with pytest.raises(ValueError, match="need momentum, got momentum=None"):
        optadam.sgd(0.1, state_bits=8)


def test_inject_hyperparams_needs_the_layout_options_static():
    with pytest.raises(TypeError, match=r"static_args=\('state_bits', 'block_size'\)"):
        optadam.inject_hyperparams(optadam.adam)(learning_rate=1e-3, state_bits=8).init(BIG)
    tx = optadam.inject_hyperparams(optadam.adam, static_args=("state_bits",))
    tx = tx(learning_rate=1e-3, state_bits=8)
    state = tx.init(BIG)
    assert isinstance(state.inner_state[0].mu["w"], QuantizedArray)
    jax.jit(tx.update)(BIG, state, BIG)


# --- every optimizer next to its float32 self -------------------------------------------------

SHAPES = [(16, 512), (5000,), (3, 4)]  # two quantized leaves (one with a short block), one not
BF16_STOCHASTIC = {**BF16, "stochastic_rounding": True}
# name: (factory taking the lean options, its options for bfloat16 moments)
LEAN = {
    "adam": (lambda **kw: optadam.adam(0.01, **kw), BF16_STOCHASTIC),
    "adamw": (lambda **kw: optadam.adamw(0.01, weight_decay=0.1, **kw), BF16_STOCHASTIC),
    "nadam": (lambda **kw: optadam.nadam(0.01, **kw), BF16_STOCHASTIC),
    "amsgrad": (lambda **kw: optadam.amsgrad(0.01, **kw), BF16_STOCHASTIC),
    "radam": (lambda **kw: optadam.radam(0.01, **kw), BF16_STOCHASTIC),
    "rmsprop": (lambda **kw: optadam.rmsprop(0.01, **kw), BF16_STOCHASTIC),
    "rmsprop_centered_momentum": (
        lambda **kw: optadam.rmsprop(0.01, centered=True, momentum=0.9, **kw),
        BF16_STOCHASTIC,
    ),
    "sgd_momentum": (
        lambda **kw: optadam.sgd(0.01, momentum=0.9, **kw),
        {"accumulator_dtype": jnp.bfloat16, "stochastic_rounding": True},
    ),
}


@functools.cache
def gradient_stream() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    # Gradients whose scale differs by leaf, row and step, as a network's do.
    scales = [np.exp(rng.uniform(-3, 1, s[:1] + (1,) * (len(s) - 1))) for s in SHAPES]
    pairs = list(zip(SHAPES, scales, strict=True))
    grads = [
        [np.float32(rng.standard_normal(s) * c * (1 + t % 7)) for s, c in pairs] for t in range(60)
    ]
    return params, grads


def rowwise_deviation(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """max over leaves, steps and rows of ||a − e||₂ / ||e||₂ (arrays stacked over steps)."""
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        a, e = (x.reshape(x.shape[0], x.shape[1] if x.ndim > 2 else 1, -1) for x in (a, e))
        norm = np.linalg.norm(e, axis=-1)
        worst = max(worst, float(np.max(np.linalg.norm(a - e, axis=-1) / np.maximum(norm, 1e-30))))
    return worst


@pytest.mark.parametrize("name", list(LEAN))
@pytest.mark.parametrize(("lean", "rtol"), [("8bit", 0.08), ("bf16_stochastic", 0.02)])
def test_lean_state_follows_the_float32_trajectory(name, lean, rtol):
    """On a stream of random gradients (scaled per row and step), the distance each row has
    travelled after each of 60 steps is within 8 % (8-bit) or 2 % (bfloat16) of the float32
    run's, in Euclidean norm. (Measured: 2.2-5.6 % and 0.4-1.7 %; random gradients keep m small
    against its block's maximum, where the map is coarsest, and the bfloat16 step reads the
    moments as stored, rounding noise included -- training is the better judge, below.)
    """
    make, bf16_options = LEAN[name]
    options = {"state_bits": 8} if lean == "8bit" else bf16_options
    params, grads = gradient_stream()
    plain, slim = run(make(), params, grads), run(make(**options), params, grads)
    moved = [p - p0 for p, p0 in zip(plain, params, strict=True)]
    slim_moved = [p - p0 for p, p0 in zip(slim, params, strict=True)]
    assert rowwise_deviation(slim_moved, moved) <= rtol


def test_runs_are_reproducible_bit_for_bit():
    params, grads = gradient_stream()
    for options in ({"state_bits": 8}, {**BF16, "stochastic_rounding": True}):
        first = run(optadam.adam(0.01, **options), params, grads)
        again = run(optadam.adam(0.01, **options), params, grads)
        jax.tree.map(np.testing.assert_array_equal, first, again)


# --- transformations --------------------------------------------------------------------------


def test_eight_bit_adam_under_vmap_over_learning_rates_matches_separate_runs():
    params, grads = gradient_stream()
    rates = jnp.asarray([0.01, 0.003])
    batched = jax.vmap(lambda lr: run_jax(optadam.adam(lr, state_bits=8), params, grads))(rates)
    for i, lr in enumerate([0.01, 0.003]):
        single = run_jax(optadam.adam(lr, state_bits=8), params, grads)
        for b, s in zip(batched, single, strict=True):
            np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-6)


def run_jax(tx, params, grads):
    """``harness.run``'s final params, traceable (for vmap)."""
    stacked = [jnp.stack([g[i] for g in grads]) for i in range(len(params))]

    def step(carry, g):
        p, state = carry
        updates, state = tx.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (final, _), _ = jax.lax.scan(step, ([jnp.asarray(p) for p in params], tx.init(params)), stacked)
    return final


def test_eight_bit_adam_under_pmap_with_pmean_matches_one_device_on_the_mean_gradient():
    n = 4
    tx = optadam.adam(0.01, state_bits=8)
    params = {"w": jnp.ones((64, 128))}
    grads = np.random.default_rng(5).standard_normal((3, n, 64, 128)).astype(np.float32)

    def step(params, state, g, mean):
        updates, state = tx.update({"w": mean(g)}, state, params)
        return optax.apply_updates(params, updates), state

    pmapped = jax.pmap(
        functools.partial(step, mean=lambda g: jax.lax.pmean(g, "d")),
        axis_name="d",
        devices=jax.local_devices()[:n],
    )
    one_device = jax.jit(functools.partial(step, mean=lambda g: g.mean(0)))
    replicas = jax.tree.map(lambda x: np.stack([np.asarray(x)] * n), (params, tx.init(params)))
    single = (params, tx.init(params))
    for g in grads:
        replicas, single = pmapped(*replicas, g), one_device(*single, g)
    for leaf in jax.tree.leaves(replicas):  # replicas round alike: they stay bit-identical
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    assert isinstance(replicas[1][0].nu["w"], QuantizedArray)
    np.testing.assert_allclose(replicas[0]["w"][0], single[0]["w"], rtol=0, atol=1e-4)


# --- why stochastic rounding ------------------------------------------------------------------


def test_second_moment_sticks_when_rounded_to_nearest_and_is_unbiased_when_stochastic():
    """|g| drops tenfold after 500 steps: v should fall 100-fold over the next ~5,000 steps. A
    bfloat16 v rounded to nearest cannot decay by 0.1 % a step (its ulp is 0.4 %): it stays 6x
    too high. Rounded stochastically -- bfloat16 with ``stochastic_rounding``, and 8-bit always --
    it follows the float32 v, unbiased (per-element noise: 6 % in bfloat16, 1.4 % in 8 bits)."""
    params = {"w": jnp.zeros(4096)}
    g = jnp.asarray(np.random.default_rng(6).standard_normal(4096), jnp.float32)

    def final_nu(tx):
        def step(state, t):
            return tx.update({"w": jnp.where(t < 500, 1.0, 0.1) * g}, state, params)[1], None

        state, _ = jax.lax.scan(step, tx.init(params), jnp.arange(3000))
        nu = state[0].nu["w"]
        return np.asarray(nu.dequantize() if isinstance(nu, QuantizedArray) else nu, np.float64)

    exact = final_nu(optadam.adam(1e-3))
    nearest = final_nu(optadam.adam(1e-3, nu_dtype=jnp.bfloat16))
    assert np.median(nearest / exact) > 5
    for options in ({"nu_dtype": jnp.bfloat16, "stochastic_rounding": True}, {"state_bits": 8}):
        ratio = final_nu(optadam.adam(1e-3, **options)) / exact
        assert abs(np.mean(ratio) - 1) < 0.01 and abs(np.median(ratio) - 1) < 0.01
        assert np.median(np.abs(ratio - 1)) < 0.1


# --- training quality -------------------------------------------------------------------------
#
# Each problem trains float32 Adam, 8-bit Adam and Adam with bfloat16 moments (stochastically
# rounded) from the same initial parameters on the same minibatches; final losses must agree
# within 2 %. BUILD_NOTES.md has the numbers (and bfloat16 rounded to nearest, which is not held
# to this: its v sticks, see the test above).

QUALITY = {
    "float32": {},
    "8bit": {"state_bits": 8},
    "bf16_stochastic": {**BF16, "stochastic_rounding": True},
}


def train(loss, params, batches, tx):
    """Minibatch training, one jitted optimizer step per batch; the gradient is jitted once."""

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for batch in batches:
        params, state = step(params, state, grad_fn(loss)(params, batch))
    return params


@functools.cache
def grad_fn(loss):
    return jax.jit(jax.grad(loss))


# The digits: 1,797 8×8 images (bundled with scikit-learn), an MLP 64 → 512 → 10.


@functools.cache
def digits():
    data = load_digits()
    return jnp.asarray(data.data / 16.0, jnp.float32), jnp.asarray(data.target)


def digits_loss(params, batch):
    x, y = batch
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def digits_final_loss(options, steps=400, batch=128, seed=0):
    x, y = digits()
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w1": jax.random.normal(k1, (64, 512)) / 8,  # 32,768 parameters, quantized
        "b1": jnp.zeros(512),
        "w2": jax.random.normal(k2, (512, 10)) / math.sqrt(512),  # 5,120, quantized
        "b2": jnp.zeros(10),
    }
    index = jax.random.randint(k3, (steps, batch), 0, x.shape[0])
    batches = [(x[i], y[i]) for i in index]
    trained = train(digits_loss, params, batches, optadam.adam(1e-3, **options))
    return float(jax.jit(digits_loss)(trained, (x, y)))


# A character-level transformer language model: 2 pre-norm blocks (d = 64, 4 heads, MLP 256),
# context 32, about 109,000 parameters, 98 % of them in quantized leaves.

TEXT = """\
The river starts in the hills above the town, where snow lies late into the spring. By the time it
reaches the mill it is wide and slow, and the children throw sticks from the bridge to see which
one comes out first on the other side. Nobody keeps score for long. The miller says the river was
faster when his grandmother was young, and that the stones on the bottom were sharper then. He
says many things. In the evening the light goes gold on the water and the swallows come down low
to drink, and the whole valley smells of cut grass and wood smoke.

A good teacher explains a hard idea twice: once in words, and once with a picture. The first time,
most of the class nods and writes it down. The second time, a few of them look up, because now
they see it. The picture does not have to be beautiful. A line for the hill, a dot for the ball,
an arrow for the way it rolls. The ball rolls down the hill, faster where the hill is steep and
slower where it is flat, and if it rolls too fast it runs past the bottom and up the other side.
That is the whole lesson, and the rest is only careful bookkeeping.

The baker opens at six. She has been up since three, and the first loaves come out of the oven as
the street lamps go off. Her bread is not fancy. Flour, water, salt, a little of yesterday's
dough, and time. She says the time is the part people forget. You cannot hurry the dough; you
can only give it a warm place and leave it alone. On Saturdays there is a queue by half past six,
and she knows most of the people in it by name, and what they will ask for before they ask.

When the storm came, the boats were already in the harbour. The fishermen had watched the sky all
afternoon and pulled their nets early. The wind rose after dark and the rain came sideways across
the quay, rattling the windows of the inn where the men sat with their coffee and told the same
stories they always told. By morning the sea was grey and heavy but quiet, and the gulls were
back on the roofs, shouting at each other as if nothing had happened at all.

Learning to play the violin takes a long time, and for the first year it sounds terrible. The bow
squeaks, the fingers land in the wrong place, and the neighbours close their windows. But every
day the sound gets a little less terrible, and one day, without noticing when it happened, you
play a simple tune and it sounds like music. Then you practise the tune again, slower, and find a
hundred small things to fix, and the next tune is a little harder, and so it goes for years.

In the library the clock ticks loudly, and the only other sound is pages turning. The librarian
knows where every book is, even the ones that are shelved in the wrong place, because she put
them there herself to see whether anyone would notice. Nobody has. Near the window there is a
table where an old man comes every morning to read the newspaper, all of it, from the front page
to the weather, and then he folds it neatly, puts it back on the rack, and goes home for lunch.
"""
VOCAB, WIDTH, HEADS, LAYERS, CONTEXT, HIDDEN = 64, 64, 4, 2, 32, 256


def lm_init(key):
    keys = iter(jax.random.split(key, 8))

    def normal(shape, scale):
        return jax.random.normal(next(keys), shape) * scale

    residual = WIDTH**-0.5 / math.sqrt(2 * LAYERS)
    return {
        "embed": normal((VOCAB, WIDTH), 0.02),
        "position": normal((CONTEXT, WIDTH), 0.02),
        "unembed": normal((WIDTH, VOCAB), WIDTH**-0.5),
        "norm": jnp.ones(WIDTH),
        "blocks": {  # stacked over layers, run by lax.scan
            "norm1": jnp.ones((LAYERS, WIDTH)),
            "qkv": normal((LAYERS, WIDTH, 3 * WIDTH), WIDTH**-0.5),
            "out": normal((LAYERS, WIDTH, WIDTH), residual),
            "norm2": jnp.ones((LAYERS, WIDTH)),
            "up": normal((LAYERS, WIDTH, HIDDEN), WIDTH**-0.5),
            "down": normal((LAYERS, HIDDEN, WIDTH), HIDDEN**-0.5 / math.sqrt(2 * LAYERS)),
        },
    }


def layer_norm(x, gain):
    return gain * (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)


def lm_logits(params, tokens):
    x = params["embed"][tokens] + params["position"]
    causal = jnp.tril(jnp.ones((CONTEXT, CONTEXT), bool))

    def block(x, p):
        heads = (*x.shape[:-1], HEADS, WIDTH // HEADS)
        q, k, v = (z.reshape(heads) for z in jnp.split(layer_norm(x, p["norm1"]) @ p["qkv"], 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(WIDTH // HEADS)
        attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", attention, v).reshape(x.shape) @ p["out"]
        return x + jax.nn.gelu(layer_norm(x, p["norm2"]) @ p["up"]) @ p["down"], None

    x, _ = jax.lax.scan(block, x, params["blocks"])
    return layer_norm(x, params["norm"]) @ params["unembed"]


def lm_loss(params, windows):
    logits = lm_logits(params, windows[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()


def lm_final_loss(options, steps=250, batch=8, seed=0):
    """Eval loss (nats per character) on 256 fixed windows of the text after training."""
    alphabet = sorted(set(TEXT))
    text = jnp.asarray([alphabet.index(c) for c in TEXT], jnp.int32)
    k1, k2 = jax.random.split(jax.random.key(seed))
    starts = np.asarray(jax.random.randint(k2, (steps, batch), 0, text.size - CONTEXT - 1))
    windows = np.asarray(text)[starts[..., None] + np.arange(CONTEXT + 1)]
    trained = train(lm_loss, lm_init(k1), list(windows), optadam.adam(3e-3, **options))
    held = np.arange(0, text.size - CONTEXT - 1, 7)[:256]
    return float(
        jax.jit(lm_loss)(trained, np.asarray(text)[held[:, None] + np.arange(CONTEXT + 1)])
    )


@functools.cache
def final_losses(problem: str) -> dict[str, float]:
    final_loss = {"digits_mlp": digits_final_loss, "char_transformer": lm_final_loss}[problem]
    return {name: final_loss(options) for name, options in QUALITY.items()}


@pytest.mark.parametrize("problem", ["digits_mlp", "char_transformer"])
@pytest.mark.parametrize("lean", ["8bit", "bf16_stochastic"])
def test_final_loss_within_two_percent_of_float32_adam(problem, lean):
    losses = final_losses(problem)
    assert losses[lean] == pytest.approx(losses["float32"], rel=0.02), losses
