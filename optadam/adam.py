r"""Adam and its family: Adam, AdamW, NAdam and AMSGrad.

Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1) joins Momentum's
moving average of gradients (the direction) with RMSProp's moving average of squared gradients (a
step size per parameter), and corrects both for their start at zero::

    m_t = β1 · m_{t-1} + (1 − β1) · g_t          first moment: EMA of gradients
    v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²       second moment: EMA of squared gradients
    m̂_t = m_t / (1 − β1^t)                        bias corrections
    v̂_t = v_t / (1 − β2^t)
    u_t = m̂_t / (sqrt(v̂_t + ε_root) + ε)         the step direction; the learning rate scales it

In code ``mu`` is m, ``nu`` is v and ``count`` is t.

**Lean state.** ``state_bits=8`` stores m and v as block-wise 8-bit codes (Dettmers et al., 2022,
"8-bit Optimizers via Block-wise Quantization"; see ``optadam._quantize``): about 2 bytes per
parameter instead of 8, and the update above is unchanged -- each step dequantizes m_{t-1} and
v_{t-1}, computes in float32, and requantizes m_t and v_t. ``mu_dtype``/``nu_dtype=jnp.bfloat16``
store them in 4 bytes, rounded to nearest or, with ``stochastic_rounding=True``, unbiasedly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _checks, _dtypes, _quantize, clipping
from optadam._leafwise import (
    Kernel,
    abs_sq,
    low_precision,
    map_leaves,
    native_step,
    safe_increment,
    stored_step,
    with_one_pass,
    zero_count,
)
from optadam._learning_rate import scale_by_learning_rate
from optadam._weight_decay import add_decayed_weights


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam` and :func:`optadam.scale_by_radam`."""

    count: jax.Array  # type: ignore[assignment]  # t: steps so far, int32, saturating
    mu: optax.Updates  # m_t: EMA of gradients, in the params' dtype unless mu_dtype / state_bits
    nu: optax.Updates  # v_t: EMA of |g|², real, at least float32 unless nu_dtype / state_bits


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`."""

    count: jax.Array  # type: ignore[assignment]  # t: steps so far, int32, saturating
    mu: optax.Updates  # m_t: EMA of gradients
    nu: optax.Updates  # v_t: EMA of |g|²
    nu_max: optax.Updates  # max over steps of v (bias-corrected if bias_correction_nu)


def adam_moments(g: Any, mu: Any, nu: Any, b1: Any, b2: Any) -> tuple[Any, Any]:
    """Adam's moving averages, the one place they are written (Adam, AMSGrad, RAdam, NAdam)."""
    mu = b1 * mu + (1 - b1) * g  # m_t = β1 · m_{t-1} + (1 − β1) · g_t
    nu = b2 * nu + (1 - b2) * abs_sq(g)  # v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
    return mu, nu


def adam_bias_corrections(b1: Any, b2: Any, t: jax.Array) -> tuple[Any, Any, Any]:
    """1 − β1^t, 1 − β2^t and 1 − β1^(t+1) (NAdam's look-ahead), once per step."""
    return 1 - b1**t, 1 - b2**t, 1 - b1 ** safe_increment(t)


def adam_mu_hat(g: Any, mu: Any, b1: Any, c1: Any, c1_next: Any, nesterov: bool) -> Any:
    """m̂_t = m_t / (1 − β1^t); with ``nesterov``, NAdam's look-ahead
    β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t).

    ``c1`` and ``c1_next`` are the bias corrections 1 − β1^t and 1 − β1^(t+1).
    """
    return b1 * (mu / c1_next) + (1 - b1) * (g / c1) if nesterov else mu / c1


def adam_direction(
    g: Any,
    mu: Any,
    nu: Any,
    b1: Any,
    eps: Any,
    eps_root: Any,
    c1: Any,
    c2: Any,
    c1_next: Any,
    nesterov: bool,
) -> Any:
    """Adam's step direction from the new moments (``c1``, ``c2``, ``c1_next``: the bias
    corrections of :func:`adam_bias_corrections`)."""
    mu_hat = adam_mu_hat(g, mu, b1, c1, c1_next, nesterov)  # m̂_t
    nu_hat = nu / c2  # v̂_t = v_t / (1 − β2^t)
    return mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps)  # u_t = m̂_t / (sqrt(v̂_t + ε_root) + ε)


def amsgrad_bias_corrections(
    b1: Any, b2: Any, t: jax.Array, bias_correction_mu: bool, bias_correction_nu: bool
) -> tuple[Any, Any]:
    """AMSGrad's 1 − β1^t and 1 − β2^t, each 1 where turned off, once per step."""
    c1 = 1 - b1**t if bias_correction_mu else 1
    c2 = 1 - b2**t if bias_correction_nu else 1
    return c1, c2


def amsgrad_moments(g: Any, mu: Any, nu: Any, nu_max: Any, b1: Any, b2: Any, c2: Any) -> Any:
    """AMSGrad's moments: Adam's, then the running maximum of v̂ (``c2``: 1 − β2^t, or 1)."""
    mu, nu = adam_moments(g, mu, nu, b1, b2)
    nu_max = jnp.maximum(nu_max, nu / c2)  # v_max_t = max(v_max_{t-1}, v̂_t)
    return mu, nu, nu_max


def amsgrad_direction(mu: Any, nu_max: Any, eps: Any, eps_root: Any, c1: Any) -> Any:
    """AMSGrad's step direction from the new moments (``c1``: 1 − β1^t, or 1)."""
    mu_hat = mu / c1  # m̂_t = m_t / (1 − β1^t)
    return mu_hat / (jnp.sqrt(nu_max + eps_root) + eps)  # u_t = m̂_t / (sqrt(v_max_t + ε_root) + ε)


def amsgrad_scalars(b1: Any, b2: Any, eps: Any, eps_root: Any, c1: Any, c2: Any) -> tuple[Any, ...]:
    """Step ``t``'s runtime scalars of the native AMSGrad kernel, in its C++ struct's order."""
    return (b1, 1 - b1, b2, 1 - b2, eps, eps_root, c1, c2)


def init_moments(
    params: optax.Params,
    mu_dtype: Any,
    nu_dtype: Any,
    state_bits: Any = None,
    block_size: Any = None,
) -> tuple[Any, Any]:
    """Zero first and second moments under optadam's dtype policy (see ``optadam._dtypes``), or
    as 8-bit codes with ``state_bits=8`` (see ``optadam._quantize``)."""
    lean: dict[str, Any] = {"state_bits": state_bits, "block_size": block_size}
    mu = _quantize.moments_like(
        params, 0, lambda d: _dtypes.first_moment_dtype(d, mu_dtype), moment=1, **lean
    )
    nu = _quantize.moments_like(
        params, 0, lambda d: _dtypes.second_moment_dtype(d, nu_dtype), moment=2, **lean
    )
    return mu, nu


def init_adam_state(
    params: optax.Params, mu_dtype: Any, nu_dtype: Any, state_bits: Any, block_size: Any
) -> ScaleByAdamState:
    """Step 0 of Adam, NAdam and RAdam: m_0 = v_0 = 0 (see :func:`init_moments`)."""
    mu, nu = init_moments(params, mu_dtype, nu_dtype, state_bits, block_size)
    return ScaleByAdamState(count=zero_count(params), mu=mu, nu=nu)


def adam_scalars(b1: Any, b2: Any, eps: Any, eps_root: Any, t: jax.Array) -> tuple[Any, ...]:
    """Step ``t``'s runtime scalars of the native Adam kernel, in its C++ struct's order."""
    c1, c2, c1_next = adam_bias_corrections(b1, b2, t)
    return (b1, 1 - b1, b2, 1 - b2, eps, eps_root, c1, c2, c1_next)


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Rescale gradients by Adam's bias-corrected moment estimates (Kingma & Ba, 2015, Alg. 1).

    ``u_t = m̂_t / (sqrt(v̂_t + eps_root) + eps)`` with m̂, v̂ as in the module docstring. With
    ``nesterov=True`` the first moment looks one step ahead (NAdam, Dozat 2016)::

        m̂_t = β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t)

    Args:
      b1: decay rate β1 of the gradients' moving average, in [0, 1).
      b2: decay rate β2 of the squared gradients' moving average, in [0, 1).
      eps: ε added outside the square root, >= 0.
      eps_root: ε added inside the square root, >= 0 (the tutorial's ε; also keeps gradients through
        the update finite when v̂ is 0).
      mu_dtype: storage dtype of ``mu``; default: the params' dtype.
      nesterov: use NAdam's look-ahead first moment.
      nu_dtype: storage dtype of ``nu``; default: the params' real dtype, but at least float32.
      state_bits: 8 stores ``mu`` and ``nu`` as block-wise 8-bit codes, about 2 bytes per
        parameter instead of 8 (leaves under 4,096 elements stay float32); None (default): floats
        in ``mu_dtype``/``nu_dtype``.
      block_size: elements per 8-bit block (each has one float32 scale); None (default): 256.
      stochastic_rounding: round moments stored in bfloat16 up or down at random, unbiasedly
        (reproducible: the bits come from the step count), instead of to nearest.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAdamState`.
    """
    _checks.adam_args(b1, b2, eps, eps_root)
    _checks.boolean("nesterov", nesterov)
    block_size, mu_dtype, nu_dtype = _checks.lean_state(
        state_bits, block_size, stochastic_rounding, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )

    def init_fn(params: optax.Params) -> ScaleByAdamState:
        return init_adam_state(params, mu_dtype, nu_dtype, state_bits, block_size)

    def update_fn(
        updates: optax.Updates, state: ScaleByAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAdamState]:
        del params
        t = safe_increment(state.count)
        c1, c2, c1_next = adam_bias_corrections(b1, b2, t)

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            return adam_direction(g, mu, nu, b1, eps, eps_root, c1, c2, c1_next, nesterov)

        # seeds bfloat16 stochastic rounding, and the 8-bit second moment's (always stochastic)
        seeded = stochastic_rounding or state_bits is not None
        rounding = _quantize.rounding_seed(t, "adam") if seeded else None
        native = Kernel("adam", adam_scalars(b1, b2, eps, eps_root, t), (("nesterov", nesterov),))
        updates, mu, nu = map_leaves(
            moments, direction, updates, state.mu, state.nu, rounding_seed=rounding, kernel=native
        )
        return updates, ScaleByAdamState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_amsgrad(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Rescale gradients by AMSGrad's non-increasing second moment (Reddi et al., 2018).

    Adam's moments, but the denominator uses the running maximum of the second moment, so the
    effective step size never grows::

        v_max_t = max(v_max_{t-1}, v̂_t)
        u_t     = m̂_t / (sqrt(v_max_t + eps_root) + eps)

    The paper uses no bias correction (``bias_correction_mu=bias_correction_nu=False``); the
    defaults correct both, as optax does.

    Args:
      b1, b2, eps, eps_root, mu_dtype, nu_dtype: as in :func:`scale_by_adam`.
      bias_correction_mu: divide m_t by (1 − β1^t).
      bias_correction_nu: divide v_t by (1 − β2^t) before taking the maximum.
      state_bits, block_size, stochastic_rounding: as in :func:`scale_by_adam` (8 bits store
        ``nu_max`` as codes too).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByAmsgradState`.
    """
    _checks.adam_args(b1, b2, eps, eps_root)
    _checks.boolean("bias_correction_mu", bias_correction_mu)
    _checks.boolean("bias_correction_nu", bias_correction_nu)
    block_size, mu_dtype, nu_dtype = _checks.lean_state(
        state_bits, block_size, stochastic_rounding, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )

    def init_fn(params: optax.Params) -> ScaleByAmsgradState:
        mu, nu = init_moments(params, mu_dtype, nu_dtype, state_bits, block_size)
        # v_max_0 = v_0 = 0 in buffers of its own: a donated state must not hand XLA one buffer
        # twice (jit(optadam.step, donate_argnums=...) refuses it)
        nu_max = jax.tree.map(jnp.copy, nu)
        return ScaleByAmsgradState(count=zero_count(params), mu=mu, nu=nu, nu_max=nu_max)

    def update_fn(
        updates: optax.Updates, state: ScaleByAmsgradState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByAmsgradState]:
        del params
        t = safe_increment(state.count)
        c1, c2 = amsgrad_bias_corrections(b1, b2, t, bias_correction_mu, bias_correction_nu)

        def moments(g: Any, mu: Any, nu: Any, nu_max: Any) -> tuple[Any, ...]:
            return amsgrad_moments(g, mu, nu, nu_max, b1, b2, c2)

        def direction(g: Any, mu: Any, nu: Any, nu_max: Any) -> Any:
            return amsgrad_direction(mu, nu_max, eps, eps_root, c1)

        # seeds bfloat16 stochastic rounding, and the 8-bit second moment's (always stochastic)
        seeded = stochastic_rounding or state_bits is not None
        rounding = _quantize.rounding_seed(t, "amsgrad") if seeded else None
        native = Kernel("amsgrad", amsgrad_scalars(b1, b2, eps, eps_root, c1, c2))
        updates, mu, nu, nu_max = map_leaves(
            moments,
            direction,
            updates,
            state.mu,
            state.nu,
            state.nu_max,
            rounding_seed=rounding,
            kernel=native,
        )
        return updates, ScaleByAmsgradState(count=t, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam (Kingma & Ba, 2015): ``x_t = x_{t-1} − η · m̂_t / (sqrt(v̂_t + eps_root) + eps)``.

    A drop-in for ``optax.adam``: same arguments, same defaults, same numbers. On top of it,
    ``nu_dtype`` sets the second moment's storage dtype, and with bfloat16/float16 params the second
    moment is kept in float32 by default (see ``optadam._dtypes``).

    **The tutorial's form.** ``adam(lr, eps=0.0, eps_root=ε)`` is exactly the tutorial's update
    ``x_t = x_{t-1} − η · m̂_t / sqrt(v̂_t + ε)``, with ε *inside* the square root. The default
    (``eps=1e-8, eps_root=0``) is Kingma & Ba's form, with ε outside.

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      b1: β1, default 0.9.  b2: β2, default 0.999.  eps: ε outside the root, default 1e-8.
      eps_root: ε inside the root, default 0.  mu_dtype / nu_dtype: moment storage dtypes.
      nesterov: NAdam's look-ahead first moment (see :func:`nadam`).
      state_bits, block_size, stochastic_rounding: lean moments, see :func:`scale_by_adam`;
        ``adam(lr, state_bits=8)`` is 8-bit Adam, about 2 bytes of state per parameter.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> params = {"w": jnp.array([1.0, -2.0])}
      >>> tx = optadam.adam(learning_rate=0.1)
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([0.5, -3.0])}, state)
      >>> optax.apply_updates(params, updates)["w"]  # Adam's first step is about η·sign(g)
      Array([ 0.9, -1.9], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    lean: dict[str, Any] = {
        "state_bits": state_bits,
        "block_size": block_size,
        "stochastic_rounding": stochastic_rounding,
    }
    tx = optax.chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype, **lean
        ),
        scale_by_learning_rate(learning_rate),
    )
    seeded = stochastic_rounding or state_bits is not None
    one_pass = _adam_one_pass(b1, b2, eps, eps_root, nesterov, learning_rate, seeded=seeded)
    return with_one_pass(tx, one_pass, takes_clip=True)


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"): Adam with look-ahead.

    ``m̂_t = β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t)``, the rest as in :func:`adam`
    (whose arguments it takes). A drop-in for ``optax.nadam``.
    """
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        state_bits=state_bits,
        block_size=block_size,
        stochastic_rounding=stochastic_rounding,
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with weight decay decoupled from the gradient.

    ``x_t = x_{t-1} − η · (m̂_t / (sqrt(v̂_t + eps_root) + eps) + λ · x_{t-1})``: the decay λ·x is
    added to Adam's direction, not to the gradient, so it is not rescaled by v̂. A drop-in for
    ``optax.adamw``.

    Args:
      weight_decay: λ, a number, an array or a schedule, default 1e-4.
      mask: a pytree of bools (or a callable of the params returning one) selecting the leaves to
        decay, as in ``optax.add_decayed_weights``.
      The others: as in :func:`adam`.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.adamw(learning_rate=0.1, weight_decay=0.5)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([1.0, -2.0]), tx.init(params), params)
      >>> optax.apply_updates(params, updates)  # η·(sign(g) + λ·x): decay is not rescaled
      Array([0.85, 2.0], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    _checks.scalar_or_schedule("weight_decay", weight_decay)
    lean: dict[str, Any] = {
        "state_bits": state_bits,
        "block_size": block_size,
        "stochastic_rounding": stochastic_rounding,
    }
    tx = optax.chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype, **lean
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
    if mask is not None:  # a masked decay: update + apply_updates
        return tx
    seeded = stochastic_rounding or state_bits is not None
    one_pass = _adam_one_pass(
        b1, b2, eps, eps_root, nesterov, learning_rate, weight_decay, seeded=seeded
    )
    return with_one_pass(tx, one_pass, takes_clip=True)


def _adam_one_pass(
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    nesterov: bool,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule | None = None,
    *,
    seeded: bool = False,
) -> Any:
    """``optadam.step``'s one pass for ``chain(scale_by_adam, [add_decayed_weights],
    scale_by_learning_rate)``: the native step kernel with the chain's scalars, each state advanced
    as its transformation advances it; None (so ``update`` + ``apply_updates``) where it does not
    apply -- e.g. 8-bit state, kernels off (``optadam._leafwise.native_step``). A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first.

    bfloat16/float16 params take it as ``update`` + ``apply_updates`` round them: u_t to the
    params' dtype, then (−η)·u_t, then θ + that; with a decay or a clip they take the two calls
    (both run in the params' dtype there, with λ and c rounded to it). ``seeded``: bfloat16
    moments are rounded stochastically, with ``update``'s bits."""
    # optax.add_decayed_weights skips a constant zero decay altogether (so 0·inf adds no NaN)
    decays = weight_decay is not None and not (
        isinstance(weight_decay, int | float) and weight_decay == 0.0
    )

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        parts = 2 if weight_decay is None else 3
        if not isinstance(state, tuple) or len(state) != parts:
            return None
        adam_state, *decay_state, lr_state = state
        if not isinstance(adam_state, ScaleByAdamState):
            return None
        t = safe_increment(adam_state.count)
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate
        wd: Any = 0.0
        if callable(weight_decay):
            (schedule,) = decay_state
            wd = weight_decay(schedule.count)
            decay_state = [type(schedule)(safe_increment(schedule.count))]
        elif decays:
            wd = weight_decay
        if low_precision(params) and (decays or clip is not None):
            return None
        kernel = Kernel(
            "adam",
            (*clipping.kernel_scalars(clip), *adam_scalars(b1, b2, eps, eps_root, t), minus_lr, wd),
            (("nesterov", nesterov), ("decay", decays)),
        )
        c1, c2, c1_next = adam_bias_corrections(b1, b2, t)

        def xla(g: Any, p: Any, mu_old: Any, nu_old: Any) -> list[Any]:
            # update + apply_updates with each result rounded to its storage (map_leaves; the
            # roundings are identities in float32 and float64); nearest rounding
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            wide = _dtypes.compute_dtype(g.dtype)
            g = g.astype(wide)
            mu, nu = adam_moments(g, mu_old.astype(wide), nu_old.astype(wide), b1, b2)
            mu, nu = mu.astype(mu_old.dtype), nu.astype(nu_old.dtype)  # as stored
            m, v = mu.astype(wide), nu.astype(wide)
            u = adam_direction(g, m, v, b1, eps, eps_root, c1, c2, c1_next, nesterov).astype(
                p.dtype
            )
            if decays:
                u = u + wd * p
            return [(p + (u.astype(wide) * minus_lr).astype(p.dtype)).astype(p.dtype), mu, nu]

        moments = (adam_state.mu, adam_state.nu)
        rounding = _quantize.rounding_seed(t, "adam") if seeded else None  # as scale_by_adam's
        done = native_step(kernel, xla, grads, params, *moments, rounding_seed=rounding)
        if done is None:
            return None
        new_params, mu, nu = done
        new_adam = ScaleByAdamState(count=t, mu=mu, nu=nu)
        return new_params, (new_adam, *decay_state, lr_state)

    return one_pass


def amsgrad(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad (Reddi et al., 2018, "On the Convergence of Adam and Beyond").

    ``x_t = x_{t-1} − η · m̂_t / (sqrt(v_max_t + eps_root) + eps)`` with
    ``v_max_t = max(v_max_{t-1}, v̂_t)``; see :func:`scale_by_amsgrad`. A drop-in for
    ``optax.amsgrad``.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.amsgrad(learning_rate=0.1)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([1.0, -2.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)  # like Adam's, the first step is about η·sign(g)
      Array([0.9, 2.1], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    tx = optax.chain(
        scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            bias_correction_mu,
            bias_correction_nu,
            nu_dtype=nu_dtype,
            state_bits=state_bits,
            block_size=block_size,
            stochastic_rounding=stochastic_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )
    corrections = (bias_correction_mu, bias_correction_nu)
    seeded = stochastic_rounding or state_bits is not None
    one_pass = _amsgrad_one_pass(b1, b2, eps, eps_root, corrections, learning_rate, seeded=seeded)
    return with_one_pass(tx, one_pass, takes_clip=True)


def _amsgrad_one_pass(
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    corrections: tuple[bool, bool],
    learning_rate: optax.ScalarOrSchedule,
    *,
    seeded: bool = False,
) -> Any:
    """``optadam.step``'s one pass for ``chain(scale_by_amsgrad, scale_by_learning_rate)``: the
    native step kernel with the chain's scalars, each state advanced as its transformation
    advances it; None (so ``update`` + ``apply_updates``) where it does not apply -- e.g. 8-bit
    state, kernels off (``optadam._leafwise.native_step``). ``corrections``:
    ``(bias_correction_mu, bias_correction_nu)``. A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first; with
    bfloat16/float16 params it takes the two calls. ``seeded``: bfloat16 moments are rounded
    stochastically, with ``update``'s bits."""

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 2:
            return None
        amsgrad_state, lr_state = state
        if not isinstance(amsgrad_state, ScaleByAmsgradState):
            return None
        if clip is not None and low_precision(params):
            return None
        t = safe_increment(amsgrad_state.count)
        c1, c2 = amsgrad_bias_corrections(b1, b2, t, *corrections)
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate
        scalars = amsgrad_scalars(b1, b2, eps, eps_root, c1, c2)
        kernel = Kernel("amsgrad", (*clipping.kernel_scalars(clip), *scalars, minus_lr))

        def moments(g: Any, mu: Any, nu: Any, nu_max: Any) -> tuple[Any, ...]:
            return amsgrad_moments(g, mu, nu, nu_max, b1, b2, c2)

        def direction(g: Any, mu: Any, nu: Any, nu_max: Any) -> Any:
            return amsgrad_direction(mu, nu_max, eps, eps_root, c1)

        def xla(g: Any, p: Any, *state: Any) -> list[Any]:  # update + apply_updates, one leaf
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            return stored_step(moments, direction, g, p, list(state), minus_lr)

        states = (amsgrad_state.mu, amsgrad_state.nu, amsgrad_state.nu_max)
        rounding = _quantize.rounding_seed(t, "amsgrad") if seeded else None  # as update's
        done = native_step(kernel, xla, grads, params, *states, rounding_seed=rounding)
        if done is None:
            return None
        new_params, mu, nu, nu_max = done
        new_amsgrad = ScaleByAmsgradState(count=t, mu=mu, nu=nu, nu_max=nu_max)
        return new_params, (new_amsgrad, lr_state)

    return one_pass
