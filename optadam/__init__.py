"""optadam: readable, exact optimizers for JAX, drop-in compatible with optax.

Every optimizer is an ``optax.GradientTransformation``: ``optadam.adam(1e-3)`` can replace
``optax.adam(1e-3)`` anywhere (``optax.chain``, ``inject_hyperparams``, Flax, Equinox, ``jit``)
and gives the same numbers. The building blocks (``scale_by_*``) are the optimizers' equations, one
line each, in one module per family.

The submodules users reach through the package are imported with it: ``optadam.sharding``
(ZeRO-1, abstract state) and ``optadam.torch`` (torch.optim's optimizers; it does not import torch).
"""

from optadam import sharding as sharding
from optadam import torch as torch
from optadam._inject import inject_hyperparams
from optadam._native import NativeStatus, native_status, set_native_enabled
from optadam._quantize import QuantizedArray
from optadam.adagrad import ScaleByAdagradState, adagrad, scale_by_adagrad
from optadam.adam import (
    ScaleByAdamState,
    ScaleByAmsgradState,
    adam,
    adamw,
    amsgrad,
    nadam,
    scale_by_adam,
    scale_by_amsgrad,
)
from optadam.clipping import chain, clip_by_global_norm
from optadam.grouping import GroupedState, grouped
from optadam.momentum import ScaleByMomentumState, momentum, scale_by_momentum, sgd
from optadam.radam import radam, scale_by_radam
from optadam.rmsprop import ScaleByRmsState, rmsprop, scale_by_rms
from optadam.step import step

__version__ = "0.1.0"

__all__ = [
    "GroupedState",
    "NativeStatus",
    "QuantizedArray",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAmsgradState",
    "ScaleByMomentumState",
    "ScaleByRmsState",
    "adagrad",
    "adam",
    "adamw",
    "amsgrad",
    "chain",
    "clip_by_global_norm",
    "grouped",
    "inject_hyperparams",
    "momentum",
    "nadam",
    "native_status",
    "radam",
    "rmsprop",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_amsgrad",
    "scale_by_momentum",
    "scale_by_radam",
    "scale_by_rms",
    "set_native_enabled",
    "sgd",
    "step",
]
