"""``python -m optadam.bench_lean``: the README's lean-state table, every row, from one command.

Trains float32 Adam and Adam with lean moments -- bfloat16 (stochastically rounded, and rounded to
nearest) and 8-bit (blocks of 256 and of 2048) -- on two small problems, from the same initial
parameters on the same minibatches, and prints each variant's final loss next to float32 Adam's:

* **digits MLP**: 64 → 512 → 10 on scikit-learn's bundled digits (1,797 8×8 images, nothing is
  downloaded), 400 steps of 128 images; the loss is the training loss on all 1,797 images.
* **char transformer**: a 2-layer character-level transformer language model (d = 64, 4 heads,
  context 32, about 109,000 parameters) trained 250 steps on windows of the first five paragraphs
  of :data:`TEXT`; the loss is nats per character on every window of the sixth paragraph, which it
  never trained on.

``tests/test_lean_state.py`` runs seed 0 of the float32, 8-bit and stochastic bfloat16 rows and
requires the lean ones within 2 % of float32; this command runs every row for each seed and
takes a few minutes on two CPU cores (``--seeds 0`` halves it).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optadam

Params = dict[str, Any]
Loss = Callable[[Params, Any], jax.Array]

BF16 = {"mu_dtype": jnp.bfloat16, "nu_dtype": jnp.bfloat16}
# row label in the README table: Adam's lean-state options
VARIANTS: dict[str, dict[str, Any]] = {
    "float32 (default)": {},
    "bfloat16, `stochastic_rounding=True`": {**BF16, "stochastic_rounding": True},
    "bfloat16, rounded to nearest": BF16,
    "`state_bits=8` (blocks of 256)": {"state_bits": 8},
    "`state_bits=8, block_size=2048`": {"state_bits": 8, "block_size": 2048},
}


def bytes_per_param(options: dict[str, Any]) -> float:
    """Adam's state bytes per parameter of a 1024 × 1024 leaf, without the step count."""
    params = jnp.zeros((1024, 1024))
    state = jax.eval_shape(optadam.adam(1e-3, **options).init, params)
    moments = [x for x in jax.tree.leaves(state) if x.ndim > 0]
    return sum(x.size * x.dtype.itemsize for x in moments) / params.size


def train(loss: Loss, params: Params, batches: Sequence[Any], tx: optax.GradientTransformation):
    """Minibatch training, one jitted optimizer step per batch."""
    grad = jax.jit(jax.grad(loss))

    @jax.jit
    def step(params: Params, state: Any, grads: Params) -> tuple[Params, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for batch in batches:
        params, state = step(params, state, grad(params, batch))
    return params


# --- the digits MLP ---------------------------------------------------------------------------


def digits() -> tuple[jax.Array, jax.Array]:
    """1,797 8×8 images as pixels in [0, 1], and their labels."""
    from sklearn.datasets import load_digits  # the demo/test extra; only this problem needs it

    data = load_digits()
    return jnp.asarray(data.data / 16.0, jnp.float32), jnp.asarray(data.target)


def digits_loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def digits_final_loss(options: dict[str, Any], seed: int = 0, steps: int = 400) -> float:
    """Training loss on all the digits after ``steps`` Adam steps (lr 1e-3) of 128 images."""
    x, y = digits()
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w1": jax.random.normal(k1, (64, 512)) / 8,  # 32,768 parameters, quantized
        "b1": jnp.zeros(512),
        "w2": jax.random.normal(k2, (512, 10)) / math.sqrt(512),  # 5,120, quantized
        "b2": jnp.zeros(10),
    }
    index = jax.random.randint(k3, (steps, 128), 0, x.shape[0])
    batches = [(x[i], y[i]) for i in index]
    trained = train(digits_loss, params, batches, optadam.adam(1e-3, **options))
    return float(jax.jit(digits_loss)(trained, (x, y)))


# --- the character-level transformer ----------------------------------------------------------

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


def lm_init(key: jax.Array) -> Params:
    keys = iter(jax.random.split(key, 8))

    def normal(shape: tuple[int, ...], scale: float) -> jax.Array:
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


def layer_norm(x: jax.Array, gain: jax.Array) -> jax.Array:
    return gain * (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)


def lm_logits(params: Params, tokens: jax.Array) -> jax.Array:
    x = params["embed"][tokens] + params["position"]
    causal = jnp.tril(jnp.ones((CONTEXT, CONTEXT), bool))

    def block(x: jax.Array, p: Params) -> tuple[jax.Array, None]:
        heads = (*x.shape[:-1], HEADS, WIDTH // HEADS)
        q, k, v = (z.reshape(heads) for z in jnp.split(layer_norm(x, p["norm1"]) @ p["qkv"], 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(WIDTH // HEADS)
        attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        x = x + jnp.einsum("bhqk,bkhd->bqhd", attention, v).reshape(x.shape) @ p["out"]
        return x + jax.nn.gelu(layer_norm(x, p["norm2"]) @ p["up"]) @ p["down"], None

    x, _ = jax.lax.scan(block, x, params["blocks"])
    return layer_norm(x, params["norm"]) @ params["unembed"]


def lm_loss(params: Params, windows: jax.Array) -> jax.Array:
    logits = lm_logits(params, windows[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()


def text_split() -> tuple[np.ndarray, np.ndarray]:
    """The text as character codes: the first five paragraphs to train on, the sixth held out."""
    alphabet = sorted(set(TEXT))
    assert len(alphabet) <= VOCAB
    training, held_out = TEXT.rsplit("\n\n", 1)

    def codes(text: str) -> np.ndarray:
        return np.asarray([alphabet.index(c) for c in text], np.int32)

    return codes(training), codes(held_out)


def windows(codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The CONTEXT + 1 characters from each start (inputs and next-character targets)."""
    return codes[starts[..., None] + np.arange(CONTEXT + 1)]


def lm_final_loss(options: dict[str, Any], seed: int = 0, steps: int = 250) -> float:
    """Held-out loss (nats per character) after ``steps`` Adam steps (lr 3e-3) of 8 windows."""
    training, held_out = text_split()
    k1, k2 = jax.random.split(jax.random.key(seed))
    starts = np.asarray(jax.random.randint(k2, (steps, 8), 0, training.size - CONTEXT))
    batches = list(windows(training, starts))
    trained = train(lm_loss, lm_init(k1), batches, optadam.adam(3e-3, **options))
    every = np.arange(held_out.size - CONTEXT)
    return float(jax.jit(lm_loss)(trained, windows(held_out, every)))


PROBLEMS: dict[str, Callable[..., float]] = {
    "digits MLP": digits_final_loss,
    "char transformer": lm_final_loss,
}


# --- the table --------------------------------------------------------------------------------


def measure(seeds: Sequence[int], log: Callable[[str], Any] = print) -> dict[str, Any]:
    """``{problem: {variant: [final loss per seed]}}`` for every problem, variant and seed."""
    losses: dict[str, Any] = {}
    for problem, final_loss in PROBLEMS.items():
        losses[problem] = {}
        for variant, options in VARIANTS.items():
            start = time.perf_counter()
            losses[problem][variant] = [final_loss(options, seed=s) for s in seeds]
            seconds = time.perf_counter() - start
            log(f"{problem:17} {variant:40} {losses[problem][variant]} ({seconds:.0f} s)")
    return losses


def table(losses: dict[str, Any], seeds: Sequence[int]) -> str:
    """The README's markdown table: float32's losses, the others' as % off float32's."""
    which = " / ".join(f"seed {s}" for s in seeds)
    lines = [
        "| Adam state | bytes / param | digits MLP, training loss | char transformer, held-out |",
        "|---|---|---|---|",
    ]
    for row, (variant, options) in enumerate(VARIANTS.items()):
        cells = [f"{bytes_per_param(options):.4g}"]
        for problem in PROBLEMS:
            ours, base = losses[problem][variant], losses[problem]["float32 (default)"]
            if row == 0:
                unit = " nats" if problem == "char transformer" else ""
                cells.append(" / ".join(f"{x:.4g}" for x in ours) + f"{unit} ({which})")
            else:
                cells.append(
                    " / ".join(
                        f"{100 * (a / b - 1):+.2f} %" for a, b in zip(ours, base, strict=True)
                    )
                )
        lines.append(f"| {variant} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optadam.bench_lean", description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="default: 0 1")
    args = parser.parse_args(argv)
    losses = measure(args.seeds, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(losses, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
