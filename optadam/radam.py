r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", Alg. 2).

Early in training Adam's second moment rests on few samples and its adaptive step size has a large
variance. RAdam measures how many samples the moving average is worth, ρ_t, and until that passes a
threshold it takes plain momentum steps; after, Adam's step times a rectification factor r_t::

    ρ_∞ = 2 / (1 − β2) − 1
    ρ_t = ρ_∞ − 2 t β2^t / (1 − β2^t)
    m_t, v_t, m̂_t, v̂_t as in Adam
    r_t = sqrt((ρ_t − 4)(ρ_t − 2) ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2) ρ_t))
    u_t = r_t · m̂_t / (sqrt(v̂_t + ε_root) + ε)    if ρ_t >= threshold
    u_t = m̂_t                                       otherwise
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optadam import _checks, _quantize, clipping
from optadam._leafwise import (
    Kernel,
    low_precision,
    map_leaves,
    native_step,
    safe_increment,
    stored_step,
    with_one_pass,
)
from optadam._learning_rate import scale_by_learning_rate
from optadam.adam import (
    ScaleByAdamState,
    adam_bias_corrections,
    adam_moments,
    adam_mu_hat,
    init_adam_state,
)


def radam_rectification(b2: Any, threshold: Any, t: jax.Array, c2: Any) -> tuple[Any, Any]:
    """ρ_t and r_t: they depend on the step count only, so they are computed once per step
    (``c2``: 1 − β2^t)."""
    rho_inf = 2 / (1 - b2) - 1  # ρ_∞ = 2 / (1 − β2) − 1
    rho = rho_inf - 2 * t * b2**t / c2  # ρ_t = ρ_∞ − 2 t β2^t / (1 − β2^t)
    r_squared = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
    # r is unused before the threshold, where r² may be negative; 1 keeps r and its gradient
    # finite there, so meta-gradients through early steps are not NaN.
    r = jnp.sqrt(jnp.where(rho >= threshold, r_squared, 1.0))
    return rho, r


def radam_direction(
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
    rho: Any,
    threshold: Any,
    r: Any,
) -> Any:
    """RAdam's step direction from the new moments: r_t times Adam's once ρ_t reaches the
    threshold, the bias-corrected momentum m̂_t before.

    The comparison is made here, per leaf, from ρ_t; XLA merges the comparisons of all leaves
    into one."""
    mu_hat = adam_mu_hat(g, mu, b1, c1, c1_next, nesterov)  # m̂_t
    nu_hat = nu / c2  # v̂_t = v_t / (1 − β2^t)
    # u_t = r_t · m̂_t / (sqrt(v̂_t + ε_root) + ε) once ρ_t >= threshold, else m̂_t
    return jnp.where(rho >= threshold, r * mu_hat / (jnp.sqrt(nu_hat + eps_root) + eps), mu_hat)


def radam_scalars(
    b1: Any, b2: Any, eps: Any, eps_root: Any, t: jax.Array, rho: Any, threshold: Any, r: Any
) -> tuple[Any, ...]:
    """Step ``t``'s runtime scalars of the native RAdam kernel, in its C++ struct's order: whether
    to rectify as a 0/1 flag, and r_t, so crossing the threshold changes no trace."""
    c1, c2, c1_next = adam_bias_corrections(b1, b2, t)
    rectify = (rho >= threshold).astype(jnp.result_type(r))
    return (b1, 1 - b1, b2, 1 - b2, eps, eps_root, c1, c2, c1_next, rectify, r)


def scale_by_radam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformation:
    r"""Rescale gradients by RAdam's rectified Adam step (see the module docstring).

    Args:
      b1, b2, eps, eps_root: as in :func:`optadam.scale_by_adam`.
      threshold: the ρ_t from which the adaptive step is used (the paper's 4, optax's 5).
      nesterov: NAdam's look-ahead first moment.
      mu_dtype, nu_dtype: moment storage dtypes, as in :func:`optadam.scale_by_adam`.
      state_bits, block_size, stochastic_rounding: lean moments, as in
        :func:`optadam.scale_by_adam`.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`optadam.ScaleByAdamState`.
    """
    _checks.adam_args(b1, b2, eps, eps_root)
    _checks.finite("threshold", threshold)
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
        rho, r = radam_rectification(b2, threshold, t, c2)

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            return radam_direction(
                g, mu, nu, b1, eps, eps_root, c1, c2, c1_next, nesterov, rho, threshold, r
            )

        # seeds bfloat16 stochastic rounding, and the 8-bit second moment's (always stochastic)
        seeded = stochastic_rounding or state_bits is not None
        rounding = _quantize.rounding_seed(t, "radam") if seeded else None
        scalars = radam_scalars(b1, b2, eps, eps_root, t, rho, threshold, r)
        native = Kernel("radam", scalars, (("nesterov", nesterov),))
        updates, mu, nu = map_leaves(
            moments, direction, updates, state.mu, state.nu, rounding_seed=rounding, kernel=native
        )
        return updates, ScaleByAdamState(count=t, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    threshold: jax.typing.ArrayLike = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    nu_dtype: jax.typing.DTypeLike | None = None,
    state_bits: int | None = None,
    block_size: int | None = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RAdam: Adam with its adaptive step rectified early on. A drop-in for ``optax.radam``.

    ``x_t = x_{t-1} − η · u_t`` with u_t from :func:`scale_by_radam`.

    Args:
      learning_rate: η, a number, an array, or a schedule (a callable of the step count).
      b1: β1, default 0.9.  b2: β2, default 0.999.  eps: default 1e-8.  eps_root: default 0.
      threshold: default 5 (as optax; the paper uses 4).
      nesterov, mu_dtype, nu_dtype, state_bits, block_size, stochastic_rounding: as in
        :func:`scale_by_radam`.

    Example:
      >>> import jax.numpy as jnp, optax, optadam
      >>> tx = optadam.radam(learning_rate=0.1)
      >>> params = jnp.array([1.0, 2.0])
      >>> updates, state = tx.update(jnp.array([1.0, -2.0]), tx.init(params))
      >>> optax.apply_updates(params, updates).round(6)  # ρ_1 < 5: a momentum step, η·m̂ = η·g
      Array([0.9, 2.2], dtype=float32)
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    tx = optax.chain(
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold,
            nesterov=nesterov,
            mu_dtype=mu_dtype,
            nu_dtype=nu_dtype,
            state_bits=state_bits,
            block_size=block_size,
            stochastic_rounding=stochastic_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )
    seeded = stochastic_rounding or state_bits is not None
    one_pass = _radam_one_pass(
        b1, b2, eps, eps_root, threshold, nesterov, learning_rate, seeded=seeded
    )
    return with_one_pass(tx, one_pass, takes_clip=True)


def _radam_one_pass(
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    threshold: Any,
    nesterov: bool,
    learning_rate: optax.ScalarOrSchedule,
    *,
    seeded: bool = False,
) -> Any:
    """``optadam.step``'s one pass for ``chain(scale_by_radam, scale_by_learning_rate)``: the
    native step kernel with the chain's scalars, each state advanced as its transformation
    advances it; None (so ``update`` + ``apply_updates``) where it does not apply -- e.g. 8-bit
    state, kernels off (``optadam._leafwise.native_step``). A ``clip``
    (``optadam.chain(optadam.clip_by_global_norm(c), ...)``) clips each g_t first; with
    bfloat16/float16 params it takes the two calls. ``seeded``: bfloat16 moments are rounded
    stochastically, with ``update``'s bits."""

    def one_pass(
        grads: Any, state: Any, params: Any, clip: clipping.GlobalNormClip | None = None
    ) -> tuple[Any, Any] | None:
        if not isinstance(state, tuple) or len(state) != 2:
            return None
        radam_state, lr_state = state
        if not isinstance(radam_state, ScaleByAdamState):
            return None
        if clip is not None and low_precision(params):
            return None
        t = safe_increment(radam_state.count)
        c1, c2, c1_next = adam_bias_corrections(b1, b2, t)
        rho, r = radam_rectification(b2, threshold, t, c2)
        if callable(learning_rate):
            minus_lr = -learning_rate(lr_state.count)
            lr_state = optax.ScaleByScheduleState(count=safe_increment(lr_state.count))
        else:
            minus_lr = -learning_rate
        scalars = radam_scalars(b1, b2, eps, eps_root, t, rho, threshold, r)
        step_scalars = (*clipping.kernel_scalars(clip), *scalars, minus_lr)
        kernel = Kernel("radam", step_scalars, (("nesterov", nesterov),))

        def moments(g: Any, mu: Any, nu: Any) -> tuple[Any, ...]:
            return adam_moments(g, mu, nu, b1, b2)

        def direction(g: Any, mu: Any, nu: Any) -> Any:
            return radam_direction(
                g, mu, nu, b1, eps, eps_root, c1, c2, c1_next, nesterov, rho, threshold, r
            )

        def xla(g: Any, p: Any, mu: Any, nu: Any) -> list[Any]:  # update + apply_updates, one leaf
            if clip is not None:
                g = clipping.clip_leaf(g, clip)
            return stored_step(moments, direction, g, p, [mu, nu], minus_lr)

        rounding = _quantize.rounding_seed(t, "radam") if seeded else None  # as update's
        states = (radam_state.mu, radam_state.nu)
        done = native_step(kernel, xla, grads, params, *states, rounding_seed=rounding)
        if done is None:
            return None
        new_params, mu, nu = done
        return new_params, (ScaleByAdamState(count=t, mu=mu, nu=nu), lr_state)

    return one_pass
