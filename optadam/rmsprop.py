r"""RMSProp (Tieleman & Hinton, 2012, Coursera lecture 6.5), plain and centered (Graves, 2013).

RMSProp divides each gradient by the root of a moving average of its squares, so the step size
adapts per parameter but, unlike AdaGrad, old gradients are forgotten::

    ν_t = ρ · ν_{t-1} + (1 − ρ) · |g_t|²        ν_0 = initial_scale
    μ_t = ρ · μ_{t-1} + (1 − ρ) · g_t           centered only
    var = ν_t − |μ_t|²  (centered)  or  ν_t     (ν, μ divided by 1 − ρ^t with bias_correction)
    u_t = g_t / sqrt(var + ε)                   or g_t / (sqrt(var) + ε) with eps_in_sqrt=False
    x_t = x_{t-1} − η · u_t

In code ``nu`` is ν, ``mu`` is μ. The moments (and a momentum trace) can be stored lean: in
bfloat16 (``mu_dtype``/``nu_dtype``, optionally with stochastic rounding) or as block-wise 8-bit
codes (``state_bits=8``); see ``optadam._quantize``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optadam import _checks, _dtypes, _quantize, clipping
from optadam._leafwise import (
    Kernel,
    SeedGroups,
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
from optadam.momentum import (
    ScaleByMomentumState,
    _scale_by_momentum,
    momentum_direction,
    momentum_moments,
)


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`. Fields a variant does not use are None (no memory)."""

    # t, int32: only with bias_correction, or to seed stochastic rounding (see scale_by_rms)
    count: jax.Array | None  # type: ignore[assignment]
    mu: optax.Updates | None  # μ_t: EMA of gradients; only when centered
    nu: optax.Updates  # ν_t: EMA of |g|², real, at least float32 unless nu_dtype


def rms_nu(g: Any, nu: Any, decay: Any) -> Any:
    """ν_t = ρ · ν_{t-1} + (1 − ρ) · |g_t|²."""
    return decay * nu + (1 - decay) * abs_sq(g)


def rms_mu(g: Any, mu: Any, decay: Any) -> Any:
    """μ_t = ρ · μ_{t-1} + (1 − ρ) · g_t (centered only)."""
    return decay * mu + (1 - decay) * g


def rms_direction(g: Any, mu: Any, nu: Any, c: Any, eps: Any, eps_in_sqrt: bool) -> Any:
    """u_t = g_t / sqrt(var + ε) or g_t / (sqrt(var) + ε), var = ν_t / c, less |μ_t / c|² when
    centered (``mu`` not None); ``c`` is the bias correction 1 − ρ^t, or 1."""
    var = nu / c
    if mu is not None:
        # max(., 0): rounding can leave ν̂ − |μ̂|² a hair below 0 (e.g. decay 0), and its
        # root NaN, where the variance is really 0.
        var = jnp.maximum(var - abs_sq(mu / c), 0)
    scale = jax.lax.rsqrt(var + eps) if eps_in_sqrt else 1 / (jnp.sqrt(var) + eps)
    return scale * g


def rms_leaf(
    decay: Any, eps: Any, c: Any, centered: bool, eps_in_sqrt: bool
) -> tuple[Callable[..., tuple[Any, ...]], Callable[..., Any]]:
    """``(moments, direction)`` of one leaf as :func:`optadam._leafwise.map_leaves` takes them:
    over ``(g, nu)``, or ``(g, mu, nu)`` when centered."""
    if not centered:
        return (
            lambda g, nu: (rms_nu(g, nu, decay),),
            lambda g, nu: rms_direction(g, None, nu, c, eps, eps_in_sqrt),
        )

    def centered_moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
        nu = rms_nu(g, nu, decay)
        mu = rms_mu(g, mu, decay)
        return mu, nu

    return centered_moments, lambda g, mu, nu: rms_direction(g, mu, nu, c, eps, eps_in_sqrt)


def rms_scalars(decay: Any, eps: Any, c: Any) -> tuple[Any, ...]:
    """The runtime scalars of the native RMSProp kernel, in its C++ struct's order."""
    return (decay, 1 - decay, eps, c)


def rms_options(centered: bool, eps_in_sqrt: bool) -> tuple[tuple[str, bool], ...]:
    return (("centered", centered), ("eps_in_sqrt", eps_in_sqrt))


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Divide gradients by the root of their moving mean square (or variance, when centered).

    Matches ``optax.scale_by_rms`` (and, with ``centered=True``, ``optax.scale_by_stddev``).

    Args:
      decay: ρ, in [0, 1).
      eps: ε, >= 0.
      initial_scale: ν_0, >= 0.
      eps_in_sqrt: ε inside the root (default) or outside it.
      bias_correction: divide ν (and μ) by 1 − ρ^t.
      centered: subtract the squared mean gradient (Graves, 2013).
      mu_dtype: storage dtype of μ (centered only); default: the params' dtype.
      nu_dtype: storage dtype of ν; default: params' real dtype, at least float32.
      state_bits: 8 stores ν (and μ) as block-wise 8-bit codes (leaves under 4,096 elements stay
        float32); None (default): in ``nu_dtype``/``mu_dtype``.
      block_size: elements per 8-bit block (each has one float32 scale); None (default): 256.
      stochastic_rounding: round bfloat16 moments up or down at random, unbiasedly. The state keeps
        the step count (to seed the bits) with this or ``state_bits``, even without
        bias_correction.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByRmsState`.
    """
    _checks.in_unit_interval("decay", decay)
    _checks.non_negative("eps", eps)
    _checks.non_negative("initial_scale", initial_scale)
    for name, flag in [
        ("eps_in_sqrt", eps_in_sqrt),
        ("bias_correction", bias_correction),
        ("centered", centered),
    ]:
        _checks.boolean(name, flag)
    block_size, mu_dtype, nu_dtype = _checks.lean_state(
        state_bits, block_size, stochastic_rounding, mu_dtype=mu_dtype, nu_dtype=nu_dtype
    )
    lean: dict[str, Any] = {"state_bits": state_bits, "block_size": block_size}
    # The step count seeds bfloat16 stochastic rounding and the 8-bit ν's (always stochastic).
    seeded = stochastic_rounding or state_bits is not None

    def init_fn(params: optax.Params) -> ScaleByRmsState:
        nu = _quantize.moments_like(
            params,
            initial_scale,
            lambda d: _dtypes.second_moment_dtype(d, nu_dtype),
            moment=2,
            **lean,
        )
        mu = None
        if centered:
            mu = _quantize.moments_like(
                params, 0, lambda d: _dtypes.first_moment_dtype(d, mu_dtype), moment=1, **lean
            )
        return ScaleByRmsState(
            count=zero_count(params) if bias_correction or seeded else None, mu=mu, nu=nu
        )

    def update_fn(
        updates: optax.Updates, state: ScaleByRmsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, ScaleByRmsState]:
        del params
        t = None if state.count is None else safe_increment(state.count)
        c = 1 - decay**t if t is not None and bias_correction else 1  # bias correction, once
        rounding = None
        if t is not None and seeded:
            rounding = _quantize.rounding_seed(t, "rms")

        native = Kernel("rms", rms_scalars(decay, eps, c), rms_options(centered, eps_in_sqrt))
        moments, direction = rms_leaf(decay, eps, c, centered, eps_in_sqrt)
        mu = None
        if centered:
            updates, mu, nu = map_leaves(
                moments,
                direction,
                updates,
                state.mu,
                state.nu,
                rounding_seed=rounding,
                kernel=native,
            )
        else:
            updates, nu = map_leaves(
                moments, direction, updates, state.nu, rounding_seed=rounding, kernel=native
            )
        return updates, ScaleByRmsState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp, plain, centered, or with momentum. A drop-in for ``optax.rmsprop``.

    ``x_t = x_{t-1} − η · g_t / sqrt(var_t + ε)`` (see the module docstring). With ``momentum=β``
    the learning-rate-scaled step is fed through a momentum trace (as optax does; torch.optim
    applies the learning rate after the momentum instead, which differs under schedules).

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      decay: ρ, default 0.9.  eps: ε, default 1e-8.  initial_scale: ν_0, default 0.
      eps_in_sqrt: ε inside the root (default) or outside.
      centered: divide by the root of the variance instead of the mean square.
      momentum: β for a momentum trace after the scaling, or None.
      nesterov: Nesterov's look-ahead for that momentum.
      bias_correction: divide the moving averages by 1 − ρ^t.
      mu_dtype: storage dtype of μ (centered) and of the momentum trace; default: params' dtype.
      nu_dtype: storage dtype of ν.
      state_bits, block_size, stochastic_rounding: lean moments (ν, μ and the momentum trace),
        see :func:`scale_by_rms`; ``rmsprop(lr, state_bits=8)`` keeps about 1 byte per parameter.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.rmsprop(learning_rate=0.1, decay=0.9, eps=0.0)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([1.0, -2.0]), tx.init(params))
      >>> optax.apply_updates(params, updates)  # ν_1 = 0.1·g²: a first step of η/√0.1 ≈ 3.16·η
      Array([0.6837722, 2.3162277], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    _checks.optional_unit_interval("momentum", momentum)
    lean: dict[str, Any] = {
        "state_bits": state_bits,
        "block_size": block_size,
        "stochastic_rounding": stochastic_rounding,
    }
    trace = (
        optax.identity()
        if momentum is None
        else _scale_by_momentum(momentum, nesterov, mu_dtype, **lean, after_elementwise=True)
    )
    tx = optax.chain(
        scale_by_rms(
            decay,
            eps,
            initial_scale,
            eps_in_sqrt,
            bias_correction,
            centered=centered,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            **lean,
        ),
        scale_by_learning_rate(learning_rate),
        trace,
    )
    one_pass = _rms_one_pass(
        decay,
        eps,
        eps_in_sqrt,
        bias_correction,
        centered,
        learning_rate,
        momentum,
        nesterov,
        seeded=stochastic_rounding or state_bits is not None,
    )
    return with_one_pass(tx, one_pass, takes_clip=True)


def _rms_one_pass(
    decay: Any,
    eps: Any,
    eps_in_sqrt: bool,
    bias_correction: bool,
    centered: bool,
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any,
    nesterov: bool,
    *,
    seeded: bool = False,
) -> Any:
    """``optadam.step``'s one pass for ``chain(scale_by_rms, scale_by_learning_rate, trace)``,
    the trace ``identity`` or ``scale_by_momentum``: the native step kernel (``rms_step``, or
    ``rms_momentum_step`` with a trace; their ``_lowp`` and 8-bit variants for stored state)
    with the chain's scalars, each state advanced as its transformation advances it; None (so
    ``update`` + ``apply_updates``) where it does not apply -- e.g. kernels off, GPU
    (``optadam._leafwise.native_step``). A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first; with
    bfloat16/float16 params it takes the two calls. ``seeded``: bfloat16 moments are rounded
    stochastically, with ``update``'s bits."""

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 3:
            return None
        rms_state, lr_state, trace_state = state
        if not isinstance(rms_state, ScaleByRmsState):
            return None
        if momentum is not None and not isinstance(trace_state, ScaleByMomentumState):
            return None
        if clip is not None and low_precision(params):
            return None
        t = None if rms_state.count is None else safe_increment(rms_state.count)
        c = 1 - decay**t if t is not None and bias_correction else 1
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate
        scalars = (*clipping.kernel_scalars(clip), *rms_scalars(decay, eps, c), minus_lr)
        options = rms_options(centered, eps_in_sqrt)
        kernel = Kernel("rms", scalars, options)
        if momentum is not None:
            scalars, options = (*scalars, momentum), (*options, ("nesterov", nesterov))
            kernel = Kernel("rms_momentum", scalars, options)

        def xla(g: Any, p: Any, *moments: Any) -> list[Any]:  # update + apply_updates, one leaf
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            leaf_moments, leaf_direction = rms_leaf(decay, eps, c, centered, eps_in_sqrt)
            if momentum is None:
                return stored_step(leaf_moments, leaf_direction, g, p, list(moments), minus_lr)
            # scale_by_momentum's trace over the scaled update, as the chain runs it
            trace = (momentum_moments(momentum), momentum_direction(momentum, nesterov))
            rms, then = list(moments[:-1]), (*trace, [moments[-1]])
            return stored_step(leaf_moments, leaf_direction, g, p, rms, minus_lr, then=then)

        moments = (rms_state.nu,) if not centered else (rms_state.mu, rms_state.nu)
        rounding: Any = _quantize.rounding_seed(t, "rms") if t is not None and seeded else None
        if momentum is not None:  # the trace's count and bits, as scale_by_momentum's update's
            moments = (*moments, trace_state.trace)
            t_trace = None if trace_state.count is None else safe_increment(trace_state.count)
            trace_rounding = (
                None if t_trace is None else _quantize.rounding_seed(t_trace, "momentum")
            )
            rounding = SeedGroups((rounding, trace_rounding), (len(moments) - 1, 1))
        done = native_step(kernel, xla, grads, params, *moments, rounding_seed=rounding)
        if done is None:
            return None
        new_params, *new = done
        mu, nu = (None, new[0]) if not centered else (new[0], new[1])
        new_rms = ScaleByRmsState(count=t, mu=mu, nu=nu)
        if momentum is not None:
            trace_state = ScaleByMomentumState(trace=new[-1], count=t_trace)
        return new_params, (new_rms, lr_state, trace_state)

    return one_pass
