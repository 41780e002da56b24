r"""Lean storage for optimizer moments: block-wise 8-bit codes, and stochastic rounding to bfloat16.

A moment stored in 8 bits is a :class:`QuantizedArray`: one ``uint8`` code per element, in the
parameter's shape, and one float32 scale per *block* of ``block_size`` consecutive elements
(Dettmers, Lewis, Shleifer & Zettlemoyer, 2022, "8-bit Optimizers via Block-wise Quantization").
There are two formats, one per kind of moment::

    first moments (m, signed):      s_b = max_b |m|     m ≈ signed_map[code] · s_b     nearest
    second moments (v >= 0):        s_b = max_b √v      v ≈ (unsigned_map[code] · s_b)²  stochastic

The first-moment format is the paper's. The second-moment format departs from it twice, each for a
failure measured on the digits MLP of ``optadam/bench_lean.py`` (BUILD_NOTES.md has the
numbers):

* **It stores √v, not v.** A block's v spans the *square* of the range of its gradients, so the
  map's seven decades cover only three and a half decades of |g|: an element whose gradient is
  1e-4 of the block's largest has v below 1e-7 of the block's maximum and is stored as 0, while its
  m (whose map covers seven decades of |g|) is not -- and Adam's step m / (√v + ε) explodes
  (max |update| 2,000 against 2.6 in float32). √v has m's range.
* **It rounds stochastically, unbiased in v.** β2 = 0.999 changes v by 0.1 % per step, below half
  a bin of the map (0.35 % or more). Rounded to nearest, a code then sticks *relative to its
  block's scale*, so every element follows its block's maximum, whatever its own gradients do
  (Adam's steps grew 15-19 % too large within 400 steps). Rounding up with probability
  (v − lo) / (hi − lo) between the two neighbouring map values keeps E[v̂] = v.

Blocks run along the last axis (or the last few axes merged, when the last one is shorter than a
block), so a block never straddles two rows: scales have the parameter's leading dimensions and are
sharded like it, and quantizing a shard needs nothing from other devices. A row whose length is not
a multiple of ``block_size`` ends in a shorter block. One outlier costs the precision of only its
own block; an all-zero block has scale 0 and stores zeros (no division by zero).

**The dynamic map** (the paper's "dynamic tree quantization"; the same 256 values as
``bitsandbytes.functional.create_dynamic_map``). Magnitudes in [1e-7, 1] are split into decades
[10^-(E+1), 10^-E], E = 0..6; decade E is cut into 2^K equal bins and the map holds each bin's
centre. Big values get fine bins, tiny ones coarse bins, so the relative error is bounded over seven
orders of magnitude instead of one (a linear map rounds everything below 1/254 of the block maximum
to zero)::

    signed:    K = 6 − E  (64 bins in [0.1, 1] ... 1 bin in [1e-7, 1e-6]), ± each
    unsigned:  K = 7 − E  (the sign bit buys every decade one more bit)
    value(E, j) = 10^-E · (0.1 + 0.9 · (j + ½) / 2^K),   j = 0 .. 2^K − 1

plus 0 and 1.0 (so a block's maximum is stored exactly when it is positive). A code is the bin
index in "tree" form, n = 2^K + j: the position of its leading one bit gives the decade and the bits
after it the bin, and n grows with the value. Signed codes are ``sign · 128 + n`` (``128`` alone
is 1.0); unsigned codes are ``n − 1`` (``255`` is 1.0). Encoding is arithmetic -- the decade from
six comparisons, the bin from one multiply -- and picks the nearest map value exactly, or the
neighbour below or above (tested against a brute-force search).

**Stochastic rounding to bfloat16** (``stochastic_rounding=True``) rounds up with probability equal
to the fraction of the way to the next bfloat16 value: bfloat16's ulp is 0.4 %, so a β2 = 0.999
moving average rounded to nearest sticks the same way.

**Random bits** come from a counter-based hash of the element's position among all the moments'
elements (leaf by leaf, moment by moment) plus a 32-bit seed mixed from a fixed constant, the step
count and a per-optimizer stream: runs are reproducible bit for bit, no two elements of a step
share bits, the bits differ every step, and they are computed inside the update's fused loop (no
random tensor is materialized, nothing is communicated between shards).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

#: Leaves with fewer elements (biases, norms) stay unquantized: their moments cost little
#: (bitsandbytes' default ``min_8bit_size``).
MIN_QUANTIZED_SIZE = 4096

#: Fixed seed of the random rounding bits (mixed with the step count, so bits change per step).
ROUNDING_SEED = 0x0D7AD4


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A float32 moment stored as block-wise 8-bit codes (see :mod:`optadam._quantize`).

    A pytree whose leaves are two arrays, ``codes`` and ``scales``: it goes through ``jit``,
    ``vmap``, ``pmap``, ``jax.device_put``, ``jax.tree.map`` and checkpointing like any state.
    ``shape``, ``ndim``, ``size`` and ``dtype`` are those of the array it stands for.
    """

    codes: jax.Array  # uint8, the array's shape: one code per element
    scales: jax.Array  # float32, one per block (max |m| or max √v): shape[:-k] + (blocks per row,)
    moment: int = dataclasses.field(metadata={"static": True})  # the format: 1 (m) or 2 (v >= 0)
    block_size: int = dataclasses.field(metadata={"static": True})

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> Any:
        return jnp.dtype(jnp.float32)

    def dequantize(self) -> jax.Array:
        """The float32 array these codes stand for."""
        return dequantize(self)


# --- the dynamic map --------------------------------------------------------------------------


def _k_max(signed: bool) -> int:
    return 6 if signed else 7


def _pow10(exponent: Any, sign: int) -> Any:
    """10^(sign·E) for integer E in 0..7, exactly as float32 constants (no pow, no table)."""
    out = jnp.ones(exponent.shape, jnp.float32)
    for e in range(1, 8):
        out = jnp.where(exponent == e, jnp.float32(10.0 ** (sign * e)), out)
    return out


def _pow2(k: Any) -> Any:
    """2^k for integer k in -126..127, built from the float32 exponent bits."""
    return lax.bitcast_convert_type((k + 127) << 23, jnp.float32)


@functools.partial(jax.jit, static_argnames="signed")
def decode(codes: jax.Array, signed: bool) -> jax.Array:
    """The map's value of each code, float32 in [-1, 1] (signed) or [0, 1] (unsigned)."""
    c = codes.astype(jnp.int32)
    n = (c & 127) if signed else c + 1
    k = jnp.maximum(31 - lax.clz(n), 0)  # bit_length(n) - 1: n = 2^K + j
    j = (n - (1 << k)).astype(jnp.float32)
    value = _pow10(_k_max(signed) - k, -1) * (0.1 + 0.9 * (j + 0.5) * _pow2(-k))
    if signed:
        special = jnp.where(c == 128, 1.0, 0.0)
        return jnp.where(n == 0, special, jnp.where(c >= 128, -value, value))
    return jnp.where(c == 0, 0.0, jnp.where(c == 255, 1.0, value))


def _bins(a: Any, signed: bool) -> tuple[Any, Any, Any]:
    """For magnitudes a in [0, 1]: K (a's decade E is cut into 2^K bins), r = a · 10^E (a's place
    in its decade, in [0.1, 1] but under the last decade), and the bin width in units of r."""
    exponent, r = jnp.zeros(a.shape, jnp.int32), a
    for e in range(1, 7):
        smaller = a < 10.0**-e
        exponent, r = exponent + smaller, jnp.where(smaller, a * 10.0**e, r)
    k = _k_max(signed) - exponent
    return k, r, 0.9 * _pow2(-k)


@functools.partial(jax.jit, static_argnames="signed")
def encode(y: jax.Array, signed: bool) -> jax.Array:
    """The code of the map value nearest to each y (|y| <= 1; unsigned codes encode |y|)."""
    a = jnp.abs(y).astype(jnp.float32)
    k, r, width = _bins(a, signed)
    j = jnp.clip(jnp.floor((r - 0.1) / width).astype(jnp.int32), 0, (1 << k) - 1)
    # In its decade, r's nearest centre is its bin's. Below bin 0 lies the top centre of the next
    # decade down, 0.1 − width / 10 in units of r (0 under the last decade), which may be nearer;
    # above decade 0's top bin lies 1.0.
    last = k == _k_max(signed) - 6
    midpoint = jnp.where(last, (0.1 + width / 2) / 2, 0.1 + width / 5)
    n = (1 << k) + j - ((j == 0) & (r < midpoint))
    one = a > 1 - 0.225 * 2.0 ** -_k_max(signed)  # nearer 1.0 than the top centre, 1 − 0.45 / 2^K
    if signed:
        n = jnp.where(one & (y > 0), 128, n)
        n = jnp.where((y < 0) & (n > 0), n | 128, n)
    else:
        n = jnp.where(one, 256, n) - 1
    return n.astype(jnp.uint8)


@jax.jit
def encode_stochastic(a: jax.Array, uniform: jax.Array) -> jax.Array:
    """Unsigned codes for a in [0, 1] whose squares are unbiased: with lo <= a < hi the two map
    values around a, hi is chosen with probability (a² − lo²) / (hi² − lo²) (``uniform`` in
    [0, 1) supplies the chance)."""
    a = a.astype(jnp.float32)
    k, r, width = _bins(a, signed=False)
    top = (1 << k) - 1
    j = jnp.clip(jnp.floor((r - 0.1) / width - 0.5).astype(jnp.int32), -1, top)  # centre <= r
    # lo and hi in units of r: centres j and j + 1 of a's decade; below centre 0 the top centre
    # of the decade beneath, 0.1 − width / 10 (0 under the last decade); above the top centre
    # the first of the decade above, 1 + 2.5 · width (1.0 above decade 0).
    lo = 0.1 + (j.astype(jnp.float32) + 0.5) * width
    lo = jnp.where(j >= 0, lo, jnp.where(k == 1, 0.0, 0.1 - width / 10))
    hi = jnp.where(j < top, lo + width, jnp.where(k == 7, 1.0, 1 + 2.5 * width))
    hi = jnp.where(j >= 0, hi, 0.1 + width / 2)
    up = uniform * (hi * hi - lo * lo) < r * r - lo * lo
    return ((1 << k) + j - 1 + up).astype(jnp.uint8)  # code n − 1 of the centre at or below, + up


# --- random bits ------------------------------------------------------------------------------


def _mix(x: Any) -> Any:
    """A bijective 32-bit hash with full avalanche ("lowbias32", C. Wellons)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_bits(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """32 random bits per element: a hash of the element's index and ``seed`` (uint32; mixed
    already, see :func:`rounding_seed`, so one round of the hash suffices)."""
    index = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    return _mix(index + seed)


def _uniform(seed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform in [0, 1) on a 2^-24 grid (exact in float32)."""
    return (random_bits(seed, shape) >> 8).astype(jnp.float32) * 2.0**-24


def rounding_seed(count: jax.Array, stream: str) -> jax.Array:
    """One step's seed: the fixed seed, the step count, and a per-optimizer ``stream`` (so two
    optimizers in one chain do not round their moments with the same bits)."""
    base = _mix(jnp.uint32(ROUNDING_SEED ^ zlib.crc32(stream.encode())))
    return _mix(jnp.asarray(count).astype(jnp.uint32) ^ base)


def array_seed(seed: jax.Array, position: int) -> jax.Array:
    """The seed of one stored array: ``seed + position`` (mod 2^32), where ``position`` counts the
    elements of the arrays rounded before it in the same update (each leaf's moments in turn), so
    that :func:`random_bits` hashes every element's position among all of them: no two elements
    of one step share bits, whatever the leaves' shapes (up to 2^32 elements in all).

    ``position`` enters as a two-word array constant, not a Python scalar: XLA:CPU compiles scalar
    constants into each leaf's loop, so every leaf's loop would differ and be compiled on its own
    (bfloat16 + stochastic rounding on 2,000 leaves took minutes), while an array constant is
    handed to the loop as a buffer and the loops of same-shaped leaves, now identical, compile
    once. A one-element array would count as a scalar, hence the second (unused) word; adding
    the runtime seed before taking the first word keeps XLA from folding it back into one.
    """
    words = np.array([position % 2**32, 0], np.uint32)
    return (seed + words)[0]


# --- blocks -----------------------------------------------------------------------------------


def _layout(shape: tuple[int, ...], block_size: int) -> tuple[tuple[int, ...], int, int]:
    """(leading dims, row length, blocks per row): rows are the last k dims merged, the fewest
    whose product reaches a block (k = 1 for any matrix whose last dimension is >= block_size)."""
    k = 1
    while k < len(shape) and math.prod(shape[-k:]) < block_size:
        k += 1
    lead, row = tuple(shape[:-k]), math.prod(shape[-k:])
    return lead, row, -(-row // block_size)


def scales_shape(shape: tuple[int, ...], block_size: int) -> tuple[int, ...]:
    lead, _, blocks = _layout(shape, block_size)
    return (*lead, blocks)


def _to_blocks(x: jax.Array, block_size: int) -> jax.Array:
    """x as (*lead, blocks, block_size); a short last block per row is padded with zeros."""
    lead, row, blocks = _layout(x.shape, block_size)
    x = x.reshape(*lead, row)
    if blocks * block_size != row:
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, blocks * block_size - row)])
    return x.reshape(*lead, blocks, block_size)


def _from_blocks(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    lead, row, _ = _layout(shape, x.shape[-1])
    return x.reshape(*lead, -1)[..., :row].reshape(shape)


@functools.partial(jax.jit, static_argnames=("moment", "block_size"))
def quantize(
    x: jax.Array, moment: int, block_size: int, seed: jax.Array | None = None
) -> QuantizedArray:
    """``x`` in the first-moment (``moment=1``) or second-moment (``moment=2``, x >= 0) format.

    The second-moment format rounds stochastically: ``seed`` (uint32) chooses the bits.
    """
    x = jnp.asarray(x, jnp.float32)
    if moment == 2:
        x = jnp.sqrt(jnp.maximum(x, 0.0))
    blocks = _to_blocks(x, block_size)
    scales = jnp.max(jnp.abs(blocks), axis=-1)
    y = blocks / jnp.where(scales > 0, scales, 1.0)[..., None]  # a division: the maximum is 1.0
    if moment == 1:
        codes = encode(y, signed=True)
    elif seed is None:
        raise ValueError("the second-moment format rounds stochastically: it needs a seed")
    else:
        codes = encode_stochastic(y, _to_blocks(_uniform(seed, x.shape), block_size))
    return QuantizedArray(_from_blocks(codes, x.shape), scales, moment, block_size)


@jax.jit
def dequantize(q: QuantizedArray) -> jax.Array:
    """The float32 array ``q`` stands for."""
    values = _to_blocks(decode(q.codes, q.moment == 1), q.block_size) * q.scales[..., None]
    values = _from_blocks(values, q.shape)
    return values if q.moment == 1 else values * values


# --- initial state ----------------------------------------------------------------------------


def _scales_sharding(param: Any, shape: tuple[int, ...], block_size: int) -> Any:
    """The params' NamedSharding carried over to the scales: same spec on the leading dims, the
    row dimension's axis kept when the blocks divide evenly over it."""
    sharding = getattr(param, "sharding", None)
    if isinstance(param, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    lead, _, blocks = _layout(shape, block_size)
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    row_axes = spec[len(lead) :]
    names = row_axes[0] if len(row_axes) == 1 else None
    size = math.prod(sharding.mesh.shape[a] for a in jax.tree.leaves(names))
    row_spec = names if names is not None and blocks % size == 0 else None
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[: len(lead)], row_spec))


def quantized_full_like(
    param: Any, value: Any, moment: int, block_size: int, codes_like: Any
) -> QuantizedArray:
    """``value`` (a number >= 0) broadcast to ``param``'s shape, stored exactly as 8-bit codes.

    ``codes_like(param, code)`` makes the uint8 codes (so they are placed like the param; see
    ``optadam._leafwise.full_like``).
    """
    shape = tuple(jnp.shape(param))
    one = 128 if moment == 1 else 255  # the code of 1.0
    scale = abs(value) if moment == 1 else math.sqrt(value)
    scales = jnp.full(scales_shape(shape, block_size), scale, jnp.float32)
    sharding = _scales_sharding(param, shape, block_size)
    if sharding is not None:
        scales = jax.device_put(scales, sharding)
    elif isinstance(param, jax.core.Tracer):
        # Under jit, give XLA an operand to propagate the param's sharding from (the block view
        # of the param itself; never read: the select folds to the constant), as full_like does.
        carrier = _to_blocks(jnp.real(param).astype(jnp.float32), block_size)[..., 0]
        scales = jnp.where(jnp.zeros(carrier.shape, bool), carrier, scales)
    return QuantizedArray(codes_like(param, one if value else 0), scales, moment, block_size)


def any_quantized(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is stored as 8-bit codes."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, QuantizedArray))
    return any(isinstance(x, QuantizedArray) for x in leaves)


def should_quantize(param: Any, storage_dtype: Any) -> bool:
    """8-bit storage is for real floating moments of leaves with at least 4,096 elements."""
    return math.prod(jnp.shape(param)) >= MIN_QUANTIZED_SIZE and jnp.issubdtype(
        storage_dtype, jnp.floating
    )


def moments_like(
    params: Any, value: Any, dtype_of: Any, *, moment: int, state_bits: int | None, block_size: int
) -> Any:
    """An initial moment, ``value`` everywhere, stored as the optimizer's options say.

    ``state_bits=None``: in ``dtype_of(param.dtype)`` (the dtype policy, ``optadam._dtypes``).
    ``state_bits=8``: leaves :func:`should_quantize` accepts as 8-bit codes in the format of
    ``moment`` (1: first moments, signed; 2: second moments, >= 0), the others in at least float32.
    """
    from optadam import _dtypes, _leafwise  # they import this module

    if state_bits is None:
        return _leafwise.full_like(params, value, dtype_of)

    def codes_like(param: Any, code: int) -> Any:
        return _leafwise.full_like(param, code, lambda _: jnp.uint8)

    def one(param: Any) -> Any:
        dtype = _dtypes.compute_dtype(dtype_of(jnp.asarray(param).dtype))
        if should_quantize(param, dtype):
            return quantized_full_like(param, value, moment, block_size, codes_like)
        return _leafwise.full_like(param, value, lambda _: dtype)

    return jax.tree.map(one, params)


# --- stochastic rounding to bfloat16 ----------------------------------------------------------


@jax.jit
def round_stochastic_bf16(x: jax.Array, seed: jax.Array) -> jax.Array:
    """x rounded to bfloat16 up or down at random, unbiased: E[result] = x (for finite x).

    bfloat16 is float32 without the low 16 bits: adding 16 random bits there and truncating rounds
    up with probability (the dropped bits) / 2^16, i.e. the fraction of the way to the next value.
    The arithmetic is on the bits (a NaN becomes the quiet NaN) and ends in one exact conversion:
    XLA then computes the update from the stored moment instead of repeating the rounding in the
    update's loop, which would make it copy the old moment first (2.5x slower than rounding to
    nearest; one conversion per branch of a NaN select cost the same).
    """
    bits = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = random_bits(seed, x.shape) & jnp.uint32(0xFFFF)
    bits = jnp.where(jnp.isnan(x), jnp.uint32(0x7FC00000), bits + noise) & jnp.uint32(0xFFFF0000)
    return lax.bitcast_convert_type(bits, jnp.float32).astype(jnp.bfloat16)  # exact
