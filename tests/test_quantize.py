"""Block-wise 8-bit storage and stochastic rounding (``optadam._quantize``): the map, nearest and
stochastic encoding, per-block error bounds (outliers, zeros, ragged blocks), layouts, random bits,
and the pytree's life under jit, vmap, device_put, sharding and an orbax checkpoint.

The map is checked against an independent NumPy transcription of bitsandbytes'
``create_dynamic_map``; encoding against a brute-force search over the map.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optadam
from optadam import _leafwise, _quantize
from optadam._quantize import QuantizedArray, dequantize, quantize


def bitsandbytes_dynamic_map(signed: bool) -> np.ndarray:
    """``bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)``,
    transcribed: decade 10^(i-6) cut into 2^i (signed) or 2^(i+1) (unsigned) equal bins of
    [0.1, 1], their centres, plus 0 and 1."""
    data = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = np.linspace(0.1, 1, items)
        centres = 10.0 ** (i - 6) * (bounds[:-1] + bounds[1:]) / 2
        data += list(centres) + (list(-centres) if signed else [])
    return np.sort(np.array([*data, 0.0, 1.0]))


def the_map(signed: bool) -> np.ndarray:
    return np.asarray(_quantize.decode(jnp.arange(256, dtype=jnp.uint8), signed))


def nearest_error(y: np.ndarray, signed: bool) -> np.ndarray:
    table = bitsandbytes_dynamic_map(signed)
    return np.min(np.abs(y[:, None] - table[None, :]), axis=1)


def neighbours(y: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The map values lo <= y <= hi around each y (from the reference map)."""
    table = bitsandbytes_dynamic_map(signed)
    above = np.clip(np.searchsorted(table, y, side="right"), 1, 255)
    return table[above - 1], table[above]


SEED = jnp.uint32(12345)


def hard_values(signed: bool) -> np.ndarray:
    """Uniform and log-uniform draws, every map value, midpoints ± an ulp, decade boundaries."""
    rng = np.random.default_rng(0)
    table = bitsandbytes_dynamic_map(signed)
    mids = (table[1:] + table[:-1]) / 2
    edges = np.array([10.0**-k for k in range(9)])
    values = np.concatenate([
        rng.uniform(-1, 1, 20_000),
        10 ** rng.uniform(-9, 0, 20_000) * rng.choice([-1, 1], 20_000),
        table, mids, np.nextafter(mids, 2), np.nextafter(mids, -2), edges, -edges,
        np.nextafter(edges, 0), [0.0, 1.0, -1.0, 1e-30, 0.9999999],
    ]).astype(np.float32)  # fmt: skip
    return np.clip(values if signed else np.abs(values), -1, 1)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_map_is_bitsandbytes_dynamic_map(signed):
    np.testing.assert_allclose(
        np.sort(the_map(signed)), bitsandbytes_dynamic_map(signed), rtol=1e-6
    )


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_every_code_round_trips_exactly(signed):
    codes = jnp.arange(256, dtype=jnp.uint8)
    np.testing.assert_array_equal(_quantize.encode(_quantize.decode(codes, signed), signed), codes)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_encode_picks_the_nearest_map_value(signed):
    y = hard_values(signed)
    error = np.abs(
        y - np.asarray(_quantize.decode(_quantize.encode(jnp.asarray(y), signed), signed))
    )
    best = nearest_error(y.astype(np.float64), signed)
    worst = np.max(error - best - 1e-6 * np.abs(y))  # ties may go either way in float32
    assert worst <= 0, f"encode misses the nearest map value by up to {worst:.2e}"


def test_signed_map_is_symmetric_but_for_one():
    values = the_map(signed=True)
    assert sorted(values[values < 0]) == sorted(-values[(values > 0) & (values < 1)])
    assert np.sum(values == 1.0) == 1 and np.sum(values == 0.0) == 1


def test_stochastic_encoding_picks_a_neighbour_unbiased_in_the_square():
    a = np.clip(np.abs(hard_values(signed=False)[::40]), 0, 1)
    lo, hi = neighbours(a, signed=False)
    draws = np.stack([
        np.asarray(_quantize.decode(_quantize.encode_stochastic(jnp.asarray(a), u), signed=False))
        for u in jax.random.uniform(jax.random.key(0), (400, a.size))
    ])  # fmt: skip
    assert np.all(np.isclose(draws, lo[None], rtol=1e-6) | np.isclose(draws, hi[None], rtol=1e-6))
    spread = (hi**2 - lo**2) / 2 / np.sqrt(400)  # standard error of the mean, at most
    assert np.all(np.abs(np.mean(draws**2, axis=0) - a**2) <= 5 * spread + 1e-12)


SHAPES = [(4096,), (4000,), (3, 1000), (16, 512), (7, 11, 13), (3, 3, 64, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_first_moment_error_is_within_half_a_bin_of_each_block_maximum(shape):
    """|m − m̂| <= half the gap between the map values around m / s_b (times s_b = max_b |m|); a
    positive maximum is stored exactly (the map has 1.0, not -1.0)."""
    rng = np.random.default_rng(1)
    m = np.float32(rng.standard_normal(shape) * np.exp(rng.uniform(-8, 3, shape)))  # heavy tails
    q = quantize(jnp.asarray(m), 1, 256)
    blocks, scales = blocks_by_hand(m, 256), np.asarray(q.scales).reshape(-1)
    np.testing.assert_array_equal(scales, [np.max(np.abs(b)) for b in blocks])
    for b, r, s in zip(blocks, blocks_by_hand(np.asarray(dequantize(q)), 256), scales, strict=True):
        lo, hi = neighbours(b / s, signed=True)
        assert np.all(np.abs(r - b) <= s * (hi - lo) / 2 * (1 + 1e-5))
        assert np.all(np.abs(r - b) <= s * 0.0071)
        top = np.argmax(np.abs(b))
        assert r[top] == b[top] or b[top] < 0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_second_moment_error_is_within_a_bin_of_each_block_maximum_in_the_root(shape):
    """√v̂ is a map value next to √v (in units of s_b = max_b √v); the maximum is exact."""
    rng = np.random.default_rng(1)
    v = np.float32((rng.standard_normal(shape) * np.exp(rng.uniform(-8, 3, shape))) ** 2)
    q = quantize(jnp.asarray(v), 2, 256, SEED)
    root = np.sqrt(v)
    blocks, scales = blocks_by_hand(root, 256), np.asarray(q.scales).reshape(-1)
    np.testing.assert_allclose(scales, [np.max(b) for b in blocks], rtol=1e-7)
    restored = blocks_by_hand(np.asarray(dequantize(q)), 256)
    for b, r, s in zip(blocks, restored, scales, strict=True):
        lo, hi = neighbours(b / s, signed=False)
        assert np.all(np.abs(np.sqrt(r) - b) <= s * (hi - lo) * (1 + 1e-5))
        np.testing.assert_allclose(r[np.argmax(b)], np.max(b) ** 2, rtol=1e-6)


def test_second_moment_is_unbiased_over_seeds():
    v = np.float32(np.random.default_rng(4).exponential(size=(2, 512)) ** 3)
    draws = np.stack([
        np.asarray(dequantize(quantize(jnp.asarray(v), 2, 256, jnp.uint32(seed))))
        for seed in range(300)
    ])  # fmt: skip
    scale = (
        np.sqrt(v.reshape(2, 2, 256).max(axis=-1, keepdims=True)).repeat(256, -1).reshape(v.shape)
    )
    lo, hi = neighbours(np.sqrt(v) / scale, signed=False)
    standard_error = scale**2 * (hi**2 - lo**2) / 2 / np.sqrt(300)  # at most, for p(1 − p) <= 1/4
    assert np.all(np.abs(draws.mean(axis=0) - v) <= 5 * standard_error + 1e-6 * v)
    assert np.mean(draws.std(axis=0) > 0) > 0.5  # it is random...
    np.testing.assert_array_equal(draws[0], dequantize(quantize(jnp.asarray(v), 2, 256, 0)))


def blocks_by_hand(x: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Rows of the last dims merged until they reach a block, cut into blocks (a short last one)."""
    k = 1
    while k < x.ndim and np.prod(x.shape[-k:]) < block_size:
        k += 1
    rows = x.reshape(-1, int(np.prod(x.shape[-k:])))
    return [row[i : i + block_size] for row in rows for i in range(0, row.size, block_size)]


def test_an_outlier_costs_only_its_own_block():
    rng = np.random.default_rng(2)
    x = np.float32(rng.standard_normal((4, 512)))
    spiked = x.copy()
    spiked[1, 3] = 1e4
    plain, outlier = quantize(jnp.asarray(x), 1, 256), quantize(jnp.asarray(spiked), 1, 256)
    same = np.ones((4, 512), bool)
    same[1, :256] = False
    np.testing.assert_array_equal(np.asarray(outlier.codes)[same], np.asarray(plain.codes)[same])
    restored = np.asarray(dequantize(outlier))
    assert restored[1, 3] == 1e4  # the maximum itself is stored exactly
    assert np.max(np.abs(restored[1, :256] - spiked[1, :256])) <= 1e4 * 0.0071  # bound at 1e4
    assert np.max(np.abs(restored[~same] - x[~same])[1:]) > 0.01  # ... and that block did lose


@pytest.mark.parametrize("moment", [1, 2])
def test_zero_blocks_store_zeros_without_nan(moment):
    x = np.zeros((3, 512), np.float32)
    x[1, 300] = -5.0 if moment == 1 else 5.0
    x[2, :] = 1e-30  # a tiny scale: x / scale must neither overflow nor flush to zero
    q = quantize(jnp.asarray(x), moment, 256, SEED)
    np.testing.assert_array_equal(np.asarray(q.scales)[0], [0.0, 0.0])
    restored = np.asarray(dequantize(q))
    assert (
        np.all(np.isfinite(restored))
        and np.all(restored[0] == 0)
        and np.all(restored[1, :256] == 0)
    )
    np.testing.assert_allclose(restored[1, 300], x[1, 300], rtol=0.01)
    np.testing.assert_allclose(restored[2], x[2], rtol=0.01)


@pytest.mark.parametrize(
    ("shape", "block_size", "scales"),
    [
        ((4096, 4096), 256, (4096, 16)),  # blocks along the last axis: scales shard like params
        ((50257, 768), 256, (50257, 3)),
        ((2048, 1000), 256, (2048, 4)),  # a short fourth block per row
        ((64, 128), 256, (32,)),  # rows shorter than a block: the last two dims merged
        ((3, 3, 64, 64), 256, (3, 3, 16)),
        ((5000,), 2048, (3,)),
        ((10, 10), 1000, (1,)),  # fewer elements than a block: one short block
    ],
)
def test_scales_have_the_params_leading_dimensions(shape, block_size, scales):
    assert _quantize.scales_shape(shape, block_size) == scales


def test_non_finite_values_poison_only_their_block():
    x = np.ones((2, 256), np.float32)
    x[0, 5] = np.nan
    for moment in (1, 2):
        restored = np.asarray(dequantize(quantize(jnp.asarray(x), moment, 256, SEED)))
        assert np.all(np.isnan(restored[0])) and np.all(restored[1] == 1.0)


def test_quantized_array_looks_like_the_array_it_stands_for():
    q = quantize(jnp.ones((3, 5000)), 2, 256, SEED)
    assert (q.shape, q.ndim, q.size, q.dtype) == ((3, 5000), 2, 15000, jnp.float32)
    assert q.codes.dtype == jnp.uint8 and q.scales.dtype == jnp.float32
    np.testing.assert_array_equal(q.dequantize(), np.ones((3, 5000)))


# --- pytree life ------------------------------------------------------------------------------


def test_is_a_pytree_of_codes_and_scales_with_static_layout():
    q = quantize(jnp.arange(5000.0), 1, 512)
    leaves, treedef = jax.tree.flatten(q)
    assert [leaf.dtype for leaf in leaves] == [jnp.uint8, jnp.float32]
    again = jax.tree.unflatten(treedef, leaves)
    assert (again.moment, again.block_size) == (1, 512)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(q)[0]]
    assert paths == [".codes", ".scales"]  # named, for checkpoint readers
    moved = jax.device_put(q, jax.devices()[1])
    assert isinstance(moved, QuantizedArray) and moved.codes.devices() == {jax.devices()[1]}
    np.testing.assert_array_equal(jax.tree.map(np.asarray, q).codes, q.codes)


def test_quantize_under_jit_and_vmap_matches_eager():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3, 700)), jnp.float32)
    eager = [quantize(xi, 1, 256) for xi in x]
    jitted = jax.jit(quantize, static_argnums=(1, 2))(x[0], 1, 256)
    np.testing.assert_array_equal(jitted.codes, eager[0].codes)
    batched = jax.vmap(lambda xi: quantize(xi, 1, 256))(x)
    assert batched.codes.shape == (4, 3, 700) and batched.scales.shape == (4, 3, 3)
    for i, e in enumerate(eager):
        np.testing.assert_array_equal(batched.codes[i], e.codes)
        np.testing.assert_array_equal(batched.scales[i], e.scales)
    restored = jax.jit(jax.vmap(dequantize))(batched)
    np.testing.assert_array_equal(restored[2], dequantize(eager[2]))


def test_eight_bit_adam_resumes_bit_identically_from_an_orbax_checkpoint(tmp_path: Path):
    params = {"w": jnp.linspace(-1.0, 1.0, 64 * 256).reshape(64, 256), "b": jnp.zeros(8)}
    tx = optadam.adam(1e-2, state_bits=8)
    grads = [jax.tree.map(lambda p, k=k: jnp.cos(p * (k + 1.0)), params) for k in range(6)]

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    def run(params, state, steps):
        for g in steps:
            params, state = step(params, state, g)
        return params, state

    uninterrupted = run(params, tx.init(params), grads)
    halfway = run(params, tx.init(params), grads[:3])
    assert isinstance(halfway[1][0].nu["w"], QuantizedArray)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "halfway", {"params": halfway[0], "opt_state": halfway[1]})
    abstract = jax.eval_shape(lambda: {"params": params, "opt_state": tx.init(params)})
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "halfway", abstract)
    assert isinstance(restored["opt_state"][0].mu["w"], QuantizedArray)
    resumed = run(restored["params"], restored["opt_state"], grads[3:])
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_init_and_update_place_codes_and_scales_like_the_params(jitted):
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    params = {
        "rows": jax.device_put(jnp.ones((16, 1024)), NamedSharding(mesh, P("data", "model"))),
        "ragged": jax.device_put(jnp.ones((8, 1000)), NamedSharding(mesh, P("data", None))),
    }
    tx = optadam.adam(1e-3, state_bits=8)
    state = (jax.jit(tx.init) if jitted else tx.init)(params)
    _, stepped = jax.jit(tx.update)(params, state, params)
    for moments in (state[0], stepped[0]):
        for moment in (moments.mu, moments.nu):
            assert moment["rows"].codes.sharding.spec == P("data", "model")
            assert moment["rows"].scales.shape == (16, 4)
            assert moment["rows"].scales.sharding.spec == P("data", "model")
            assert moment["ragged"].scales.sharding.spec == P("data", None)


# --- random bits and stochastic rounding to bfloat16 -----------------------------------------


def test_random_bits_are_uniform_reproducible_and_differ_per_seed():
    bits = np.asarray(_quantize.random_bits(jnp.uint32(7), (256, 1024)))
    assert np.array_equal(bits, _quantize.random_bits(jnp.uint32(7), (256, 1024)))
    other = np.asarray(_quantize.random_bits(jnp.uint32(8), (256, 1024)))
    assert np.mean(bits == other) < 1e-3
    for byte in range(4):  # every byte of the word is uniform over 256 values
        counts = np.bincount(((bits >> (8 * byte)) & 255).ravel(), minlength=256)
        chi2 = np.sum((counts - bits.size / 256) ** 2 / (bits.size / 256))
        assert chi2 < 400  # 255 degrees of freedom: mean 255, p(> 400) < 1e-8
    steps = [_quantize.rounding_seed(jnp.int32(t), "adam") for t in range(1, 4)]
    assert len({int(s) for s in steps}) == 3
    assert int(_quantize.rounding_seed(jnp.int32(1), "rms")) != int(steps[0])
    # an array's seed is the step's offset by the array's first position, modulo 2^32
    for position in (0, 1000, 2**32 + 5):
        expected = (int(steps[0]) + position) % 2**32
        assert int(_quantize.array_seed(steps[0], position)) == expected


def test_each_leaf_and_moment_rounds_with_its_own_bits():
    """Four bfloat16 arrays (two leaves x two moments) receive the same value, exactly halfway
    between two bfloat16 numbers: each element rounds up when its bit below bfloat16's last is
    set, so shared bits would round them all alike. Independent bits disagree half the time."""
    halfway = np.float32(1 + 2**-8)  # 1 and 1 + 2^-7 are neighbours in bfloat16
    grads = {"a": jnp.full((64, 64), halfway), "b": jnp.full((64, 64), halfway)}
    state = jax.tree.map(lambda g: jnp.zeros_like(g, jnp.bfloat16), grads)

    def stored(step):
        seed = _quantize.rounding_seed(jnp.int32(step), "test")
        _, mu, nu = _leafwise.map_leaves(
            lambda g, m, v: (g, g), lambda g, m, v: g, grads, state, state, rounding_seed=seed
        )
        return [np.asarray(x[k], np.float32) > halfway for x in (mu, nu) for k in ("a", "b")]

    ups = stored(1)
    for up in ups:
        assert abs(up.mean() - 0.5) < 0.05  # unbiased: up as often as down
    for i in range(len(ups)):
        for j in range(i):
            assert abs(np.mean(ups[i] != ups[j]) - 0.5) < 0.05
    assert all(np.array_equal(u, v) for u, v in zip(ups, stored(1), strict=True))
    assert np.mean(ups[0] != stored(2)[0]) > 0.4  # and new bits every step


def rounding_loops(hlo: str) -> set[str]:
    """The fused computations of an optimized HLO module that make random bits (uint32 math),
    names, parameter numbers and metadata stripped: the distinct rounding loops XLA compiles."""
    bodies = set()
    for block in hlo.split("\n\n"):
        if block.startswith("%fused_computation") and "u32[" in block:
            body = block.split("{", 1)[1]
            bodies.add(re.sub(r"%[\w.-]+|parameter\(\d+\)|, metadata=\{[^}]*\}", "", body))
    return bodies


def test_stochastic_rounding_compiles_one_loop_for_same_shaped_leaves():
    """Each leaf's seed reaches its loop as a buffer, not a constant compiled into the loop: more
    leaves of one shape add no distinct loops (a loop per leaf took minutes on 2,000 leaves)."""
    tx = optadam.adam(1e-3, mu_dtype=jnp.bfloat16, nu_dtype=jnp.bfloat16, stochastic_rounding=True)

    def loops(n):
        params = {f"w{i}": jnp.ones((8, 16)) for i in range(n)}
        state = tx.init(params)
        return rounding_loops(jax.jit(tx.update).lower(params, state).compile().as_text())

    assert 0 < len(loops(6)) == len(loops(2))


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = jnp.asarray([1.0 + 2**-10, 1.0 + 3 * 2**-9, -3.14159, 1e-3 + 1e-7, 12345.678], jnp.float32)
    seeds = jnp.arange(4000, dtype=jnp.uint32)
    draws = np.asarray(jax.vmap(lambda s: _quantize.round_stochastic_bf16(x, s))(seeds), np.float64)
    down = np.asarray(x.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    x64 = np.asarray(x, np.float64)
    for i in range(x.size):
        neighbours = {float(v) for v in np.unique(draws[:, i])}
        assert len(neighbours) <= 2 and min(abs(v - x64[i]) for v in neighbours) < abs(x64[i]) / 128
        ulp = abs(float(np.spacing(np.float32(down[i])))) * 2**16  # bfloat16's spacing there
        # mean of 4000 Bernoulli draws: within 4.5 standard errors of x
        assert abs(draws[:, i].mean() - x64[i]) <= 4.5 * 0.5 * ulp / np.sqrt(4000) + 1e-12


def test_stochastic_rounding_keeps_exact_values_and_non_finite_ones():
    x = jnp.asarray([1.0, -0.5, 0.0, 3.0, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
    out = np.asarray(_quantize.round_stochastic_bf16(x, SEED), np.float32)
    np.testing.assert_array_equal(out[:6], np.asarray(x)[:6])
    assert np.isnan(out[6])
