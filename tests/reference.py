"""Independent NumPy (float64 / complex128) transcriptions of the optimizers' paper equations.

These are the reference trajectories that the tests compare optadam against. They deliberately
import nothing but NumPy and the standard library. The first part follows the conventions of
optax 0.2.8. The last part transcribes papers as printed, in their own symbols, where they differ
from those conventions (AdaGrad's δ, AMSGrad's bias correction and ε, RAdam's threshold and ε,
AdamW's decay) or write the same algorithm another way (RMSProp's lecture and Graves's equations):

* ``t = 1, 2, ...`` is the step number; the learning rate ``η`` (and the weight decay ``λ``) may
  be a float or a schedule ``f(count)``, evaluated at ``count = t - 1`` (updates applied before).
* For complex gradients ``g²`` in a second moment means ``|g|² = (conj(g)·g).real`` (a real
  array); first moments stay complex.

Every optimizer takes ``params`` (a list of arrays), ``grads`` (a list over steps, each a list of
arrays shaped like ``params``) and keyword hyperparameters, and returns the list of parameter
lists after every step. All the optimizers act elementwise, so each is written as the update of
one array over the whole gradient stream.
"""

from collections.abc import Callable, Iterator, Sequence

import numpy as np

Leaf = Callable[[np.ndarray, list[np.ndarray]], Iterator[np.ndarray]]


def _as64(x) -> np.ndarray:
    """A fresh float64 (or complex128) copy of ``x``."""
    return np.array(x, dtype=np.complex128 if np.iscomplexobj(x) else np.float64)


def _at(value, count: int) -> float:
    """A hyperparameter that is either a constant or a schedule of the update count."""
    return float(value(count)) if callable(value) else float(value)


def _sq(g: np.ndarray) -> np.ndarray:
    """|g|² as a real array (g² for real g)."""
    return (np.conj(g) * g).real


def _run(params: Sequence, grads: Sequence[Sequence], leaf: Leaf) -> list[list[np.ndarray]]:
    """Apply the per-array update ``leaf`` to every parameter; return params after each step."""
    per_leaf = [
        list(leaf(_as64(p), [_as64(step[i]) for step in grads])) for i, p in enumerate(params)
    ]
    return [[traj[k].copy() for traj in per_leaf] for k in range(len(grads))]


def make_grad_stream(shapes, steps: int, seed: int, dtype=np.float64) -> list[list[np.ndarray]]:
    """A deterministic stream (``steps`` long) of standard-normal gradients with ``shapes``."""
    rng = np.random.default_rng(seed)
    complex_ = np.issubdtype(np.dtype(dtype), np.complexfloating)

    def draw(shape):
        if complex_:
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    return [[draw(tuple(s)) for s in shapes] for _ in range(steps)]


def sgd(params, grads, *, learning_rate, momentum=None, nesterov=False):
    """Stochastic gradient descent, optionally with heavy-ball momentum (Polyak 1964).

    Plain:     p ← p - η g
    Momentum:  trace_t = g_t + β trace_{t-1};  d = g_t + β trace_t (Nesterov, Sutskever et al.
               2013) or d = trace_t;  p ← p - η d
    """

    def leaf(p, gs):
        trace = np.zeros_like(p)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            if momentum is None:
                d = g
            else:
                trace = g + momentum * trace
                d = g + momentum * trace if nesterov else trace
            p = p - eta * d
            yield p

    return _run(params, grads, leaf)


def momentum(params, grads, *, learning_rate, beta=0.9, nesterov=False):
    """SGD with heavy-ball momentum β (see :func:`sgd`)."""
    return sgd(params, grads, learning_rate=learning_rate, momentum=beta, nesterov=nesterov)


def adagrad(params, grads, *, learning_rate, initial_accumulator_value=0.1, eps=1e-7):
    """AdaGrad (Duchi, Hazan & Singer 2011, diagonal form).

    s_0 = initial_accumulator_value;  s_t = s_{t-1} + |g_t|²
    d = g_t / sqrt(s_t + ε)  (d = 0 where s_t = 0);  p ← p - η d
    """

    def leaf(p, gs):
        s = np.full(p.shape, initial_accumulator_value, dtype=np.float64)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            s = s + _sq(g)
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.where(s > 0, g / np.sqrt(s + eps), 0)
            p = p - eta * d
            yield p

    return _run(params, grads, leaf)


def rmsprop(
    params,
    grads,
    *,
    learning_rate,
    decay=0.9,
    eps=1e-8,
    initial_scale=0.0,
    eps_in_sqrt=True,
    centered=False,
    momentum=None,
    nesterov=False,
    bias_correction=False,
):
    """RMSProp (Tieleman & Hinton 2012, lecture 6.5); centered variant from Graves (2013).

    nu_t = rho nu_{t-1} + (1-rho)|g|²  (nu_0 = initial_scale)
    μ_t = rho μ_{t-1} + (1-rho) g  (centered only; μ_0 = 0)
    optional bias correction: nu_hat = nu_t/(1-rho^t), μ̂ = μ_t/(1-rho^t)
    var = nu_hat - |μ̂|² (centered) or nu_hat;  d = g / sqrt(var + ε)  or  g / (sqrt(var) + ε)
    u = -η d;  with momentum β: trace_t = u + β trace_{t-1}, u = u + β trace_t (Nesterov) or
    trace_t;  p ← p + u
    """

    def leaf(p, gs):
        nu = np.full(p.shape, initial_scale, dtype=np.float64)
        mu = np.zeros_like(p)
        trace = np.zeros_like(p)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            nu = decay * nu + (1 - decay) * _sq(g)
            mu = decay * mu + (1 - decay) * g
            nu_hat = nu / (1 - decay**t) if bias_correction else nu
            mu_hat = mu / (1 - decay**t) if bias_correction else mu
            var = nu_hat - _sq(mu_hat) if centered else nu_hat
            scale = 1 / np.sqrt(var + eps) if eps_in_sqrt else 1 / (np.sqrt(var) + eps)
            u = -eta * (scale * g)
            if momentum is not None:
                trace = u + momentum * trace
                u = u + momentum * trace if nesterov else trace
            p = p + u
            yield p

    return _run(params, grads, leaf)


def adam(
    params,
    grads,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    nesterov=False,
    weight_decay=0.0,
):
    """Adam (Kingma & Ba 2015, Algorithm 1); NAdam (Dozat 2016); AdamW (Loshchilov & Hutter 2019).

    m_t = β1 m_{t-1} + (1-β1) g;  v_t = β2 v_{t-1} + (1-β2)|g|²;  v̂ = v_t/(1-β2^t)
    m̂ = m_t/(1-β1^t),  or for NAdam  m̂ = β1 m_t/(1-β1^{t+1}) + (1-β1) g/(1-β1^t)
    d = m̂ / (sqrt(v̂ + ε_root) + ε) + λ p_{t-1}  (decoupled weight decay);  p ← p - η d
    """

    def leaf(p, gs):
        m, v = np.zeros_like(p), np.zeros(p.shape)
        for t, g in enumerate(gs, start=1):
            eta, lam = _at(learning_rate, t - 1), _at(weight_decay, t - 1)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * _sq(g)
            if nesterov:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            d = m_hat / (np.sqrt(v_hat + eps_root) + eps)
            d = d + lam * p
            p = p - eta * d
            yield p

    return _run(params, grads, leaf)


def adamw(params, grads, *, learning_rate, weight_decay=1e-4, **kwargs):
    """AdamW (Loshchilov & Hutter 2019): :func:`adam` with decoupled weight decay λ = 1e-4."""
    return adam(params, grads, learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


def nadam(params, grads, *, learning_rate, **kwargs):
    """NAdam (Dozat 2016): :func:`adam` with the Nesterov first moment."""
    return adam(params, grads, learning_rate=learning_rate, nesterov=True, **kwargs)


def tutorial_adam(params, grads, *, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    """Adam as written in the Korean tutorial: ε inside the square root, no outer ε.

    m_t = β1 m_{t-1} + (1-β1) g;  v_t = β2 v_{t-1} + (1-β2)|g|²
    m̂ = m_t/(1-β1^t);  v̂ = v_t/(1-β2^t);  p ← p - η m̂ / sqrt(v̂ + ε)
    """

    def leaf(p, gs):
        m, v = np.zeros_like(p), np.zeros(p.shape)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * _sq(g)
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            p = p - eta * m_hat / np.sqrt(v_hat + eps)
            yield p

    return _run(params, grads, leaf)


def amsgrad(
    params,
    grads,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    bias_correction_mu=True,
    bias_correction_nu=True,
):
    """AMSGrad (Reddi, Kale & Kumar 2018); the paper itself uses no bias correction.

    m_t, v_t as in Adam;  m̂ = m_t/(1-β1^t) (or m_t);  v_eff = v_t/(1-β2^t) (or v_t)
    v̂max_t = max(v̂max_{t-1}, v_eff)  (v̂max_0 = 0);  p ← p - η m̂ / (sqrt(v̂max_t + ε_root) + ε)
    """

    def leaf(p, gs):
        m, v, v_max = np.zeros_like(p), np.zeros(p.shape), np.zeros(p.shape)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * _sq(g)
            m_hat = m / (1 - b1**t) if bias_correction_mu else m
            v_eff = v / (1 - b2**t) if bias_correction_nu else v
            v_max = np.maximum(v_max, v_eff)
            d = m_hat / (np.sqrt(v_max + eps_root) + eps)
            p = p - eta * d
            yield p

    return _run(params, grads, leaf)


def radam(
    params,
    grads,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    threshold=5.0,
    nesterov=False,
):
    """Rectified Adam (Liu et al. 2020, Algorithm 2).

    rho_inf = 2/(1-β2) - 1;  rho_t = rho_inf - 2 t β2^t/(1-β2^t);  m_t, v_t, m̂, v̂ as in Adam
    if rho_t ≥ threshold:
        r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))
        d = r_t m̂ / (sqrt(v̂ + ε_root) + ε)
    else:
        d = m̂
    p ← p - η d
    """
    rho_inf = 2 / (1 - b2) - 1

    def leaf(p, gs):
        m, v = np.zeros_like(p), np.zeros(p.shape)
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * _sq(g)
            if nesterov:
                m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
            else:
                m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            if rho_t >= threshold:
                r_t = np.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                d = r_t * m_hat / (np.sqrt(v_hat + eps_root) + eps)
            else:
                d = m_hat
            p = p - eta * d
            yield p

    return _run(params, grads, leaf)


# --- the papers' own forms --------------------------------------------------------------------
#
# The functions above follow optax's conventions. Where a paper writes its algorithm differently,
# it is transcribed below as printed, in the paper's symbols: a test then finds the optadam call
# that reproduces it (README, "The optimizers"). Real gradients only, as in the papers.


def duchi_adagrad(params, grads, *, learning_rate, delta=0.0):
    """AdaGrad as Duchi, Hazan & Singer (2011, JMLR) print it: Figure 1, diagonal matrices.

    g_{1:t,i} = [g_{1,i} ... g_{t,i}] (the history: nothing before step 1);  s_{t,i} = ‖g_{1:t,i}‖₂
    H_t = δ I + diag(s_t) (δ ≥ 0);  x_{t+1} = x_t − η H_t^{-1} g_t  (composite mirror descent with
    φ = 0), H_t^{-1} being the pseudo-inverse, 0 where H_{t,ii} = 0.
    """

    def leaf(x, gs):
        history = []
        for t, g in enumerate(gs, start=1):
            eta = _at(learning_rate, t - 1)
            history.append(g)
            s = np.linalg.norm(np.stack(history), axis=0)
            h = delta + s
            with np.errstate(divide="ignore"):
                h_inverse = np.where(h > 0, 1 / h, 0.0)
            x = x - eta * h_inverse * g
            yield x

    return _run(params, grads, leaf)


def tieleman_hinton_rmsprop(params, grads, *, learning_rate, decay=0.9):
    """RMSProp as Tieleman & Hinton (2012, Coursera lecture 6.5) state it.

    MeanSquare(w, t) = 0.9 MeanSquare(w, t−1) + 0.1 (∂E/∂w(t))²;  divide the gradient by
    sqrt(MeanSquare(w, t)):  w ← w − η ∂E/∂w / sqrt(MeanSquare(w, t)). No ε, no momentum; the
    lecture does not say where MeanSquare starts, 0 here.
    """

    def leaf(w, gs):
        mean_square = np.zeros_like(w)
        for t, g in enumerate(gs, start=1):
            mean_square = decay * mean_square + (1 - decay) * g**2
            w = w - _at(learning_rate, t - 1) * g / np.sqrt(mean_square)
            yield w

    return _run(params, grads, leaf)


def graves_rmsprop(params, grads, *, aleph=0.95, beth=0.9, gimel=1e-4, daleth=1e-4):
    """Centered RMSProp with momentum as Graves (2013, "Generating Sequences With Recurrent Neural
    Networks") prints it, eqs. (38)-(41), ε_i = ∂L/∂w_i; defaults are his ℵ, ℶ, ג, ℷ:

    n_i = ℵ n_i + (1 − ℵ) ε_i²;  g_i = ℵ g_i + (1 − ℵ) ε_i
    Δ_i = ℶ Δ_i − ג ε_i / sqrt(n_i − g_i² + ℷ);  w_i = w_i + Δ_i
    (the learning rate ג acts inside the momentum trace Δ; n, g, Δ start at 0, unstated there).
    """

    def leaf(w, epsilons):
        n, g, delta = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
        for e in epsilons:
            n = aleph * n + (1 - aleph) * e**2
            g = aleph * g + (1 - aleph) * e
            delta = beth * delta - gimel * e / np.sqrt(n - g**2 + daleth)
            w = w + delta
            yield w

    return _run(params, grads, leaf)


def reddi_amsgrad(params, grads, *, alpha, beta1=0.9, beta2=0.999, lam=1.0):
    """AMSGrad as Reddi, Kale & Kumar (2018) print it, Algorithm 2, with their step sizes
    α_t = α/√t and β_1t = β1 λ^{t−1} (Corollary 1; λ = 1 is a constant β1), F = ℝ^d (no projection):

    m_t = β_1t m_{t−1} + (1 − β_1t) g_t;  v_t = β2 v_{t−1} + (1 − β2) g_t²
    v̂_t = max(v̂_{t−1}, v_t);  x_{t+1} = x_t − α_t m_t / sqrt(v̂_t)   (m_0 = v_0 = v̂_0 = 0)
    No bias correction and no ε.
    """

    def leaf(x, gs):
        m, v, v_hat = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
        for t, g in enumerate(gs, start=1):
            alpha_t, beta1_t = alpha / np.sqrt(t), beta1 * lam ** (t - 1)
            m = beta1_t * m + (1 - beta1_t) * g
            v = beta2 * v + (1 - beta2) * g**2
            v_hat = np.maximum(v_hat, v)
            x = x - alpha_t * m / np.sqrt(v_hat)
            yield x

    return _run(params, grads, leaf)


def liu_radam(params, grads, *, alpha, beta1=0.9, beta2=0.999):
    """RAdam as Liu et al. (2020, ICLR) print it, Algorithm 2 (no ε):

    ρ_∞ = 2/(1 − β2) − 1;  v_t = β2 v_{t−1} + (1 − β2) g_t²;  m_t = β1 m_{t−1} + (1 − β1) g_t
    m̂_t = m_t / (1 − β1^t);  ρ_t = ρ_∞ − 2 t β2^t / (1 − β2^t)
    if ρ_t > 4:  l_t = sqrt((1 − β2^t) / v_t)
                 r_t = sqrt((ρ_t − 4)(ρ_t − 2) ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2) ρ_t))
                 θ_t = θ_{t−1} − α_t r_t m̂_t l_t
    else:        θ_t = θ_{t−1} − α_t m̂_t
    """
    rho_inf = 2 / (1 - beta2) - 1

    def leaf(theta, gs):
        m, v = np.zeros_like(theta), np.zeros_like(theta)
        for t, g in enumerate(gs, start=1):
            alpha_t = _at(alpha, t - 1)
            v = beta2 * v + (1 - beta2) * g**2
            m = beta1 * m + (1 - beta1) * g
            m_hat = m / (1 - beta1**t)
            rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
            if rho_t > 4:
                l_t = np.sqrt((1 - beta2**t) / v)
                r_t = np.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                theta = theta - alpha_t * r_t * m_hat * l_t
            else:
                theta = theta - alpha_t * m_hat
            yield theta

    return _run(params, grads, leaf)


def loshchilov_hutter_adamw(params, grads, *, alpha, eta, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    """AdamW as Loshchilov & Hutter (2019, ICLR) print it, Algorithm 2 (green lines):

    m_t, v_t, m̂_t, v̂_t as in Adam;  η_t = SetScheduleMultiplier(t) (``eta(t - 1)`` here)
    θ_t = θ_{t−1} − η_t (α m̂_t / (sqrt(v̂_t) + ε) + λ θ_{t−1})
    The decay λ is scaled by the schedule η_t but not by the step size α.
    """

    def leaf(theta, gs):
        m, v = np.zeros_like(theta), np.zeros_like(theta)
        for t, g in enumerate(gs, start=1):
            eta_t = _at(eta, t - 1)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            theta = theta - eta_t * (alpha * m_hat / (np.sqrt(v_hat) + eps) + weight_decay * theta)
            yield theta

    return _run(params, grads, leaf)
