"""The demo's classifier track: a Flax NNX MLP on scikit-learn's bundled digits.

Imported by :mod:`optadam.demo` only once it knows the ``demo`` extra (flax, scikit-learn) is
installed, so ``optadam`` itself never needs them. ``load_digits`` reads a CSV shipped inside
scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

HIDDEN = 64
CLASSES = 10
TEST_FRACTION = 0.25
BATCH = (
    128  # minibatch size: a few hundred steps make several passes over the 1,347 training images
)


class MLP(nnx.Module):
    """64 pixels → 64 ReLU units → 10 logits: trains in a second, big enough to fit the digits."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hidden(x)))


def split_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1,797 8×8 images as pixels in [0, 1]; a fixed random 75/25 train/test split."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = round(TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def make_track(seed: int) -> dict[str, Any]:
    """The pieces :func:`optadam.demo.digits_problem` assembles: losses, metrics, initial params.

    The model is split once into its graph definition and its parameters (``nnx.split``); the
    training loop then works on the parameters as a plain pytree -- the functional pattern that lets
    the whole run be one ``lax.scan`` under ``jit`` -- and ``nnx.merge`` rebuilds the model inside
    the loss.
    """
    x_train, y_train, x_test, y_test = map(jnp.asarray, split_digits(seed))
    graphdef, params = nnx.split(MLP(nnx.Rngs(seed)), nnx.Param)
    batch_key = jax.random.key(seed)

    def logits(params: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    def cross_entropy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()

    def train_loss(params: Any) -> jax.Array:
        return cross_entropy(params, x_train, y_train)

    def step_loss(params: Any, t: jax.Array) -> jax.Array:
        # Step t's minibatch: drawn with replacement from a key folded with t, so every optimizer
        # sees the same batches in the same order.
        index = jax.random.randint(jax.random.fold_in(batch_key, t), (BATCH,), 0, len(y_train))
        return cross_entropy(params, x_train[index], y_train[index])

    def metrics(params: Any) -> dict[str, float]:
        predicted = jnp.argmax(logits(params, x_test), axis=-1)
        return {"test_accuracy": float(jnp.mean(predicted == y_test))}

    return {
        "loss": train_loss,
        "step_loss": step_loss,
        "start": params,
        "metrics": metrics,
        "sizes": (len(y_train), len(y_test)),
    }
