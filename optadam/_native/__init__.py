"""Building, caching and loading optadam's native CPU kernels (C++ through ``jax.ffi``).

The C++ sources sit beside this file, one per optimizer family (``adam.cc``), with the plumbing
they share in ``leaves.h``. On first use they are compiled with the system C++ compiler (``$CXX``,
else ``g++``, else ``c++``) against the installed jaxlib's FFI headers, into one shared library
cached under a key of everything that changes the binary: the sources, the flags, the jaxlib
version, the compiler's version and the CPU (``-march=native``). The cache lives in
``$OPTADAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/optadam``, else ``~/.cache/optadam``. Each build
writes a temporary file and renames it into place, so processes building at once (``pytest -n``,
``jax.distributed``) each see either no library or a whole one.

The kernels are on by default, for ``tx.update`` and ``optadam.step`` alike, unless
``OPTADAM_NATIVE=0`` or :func:`set_native_enabled` turns them off. No compiler or a failed build
leaves them off too, and every optimizer on its XLA path; :func:`native_status` says which and
why.
``OPTADAM_NATIVE_CFLAGS`` appends compiler flags (e.g. sanitizers; see BUILD_NOTES.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
from jax.experimental.custom_partitioning import SdyShardingRule, custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE_DIR = Path(__file__).parent
SOURCES: tuple[str, ...] = ("adam.cc", "momentum.cc", "rms.cc", "adagrad.cc")
SOURCES += ("adam8.cc",)
HEADERS = ("leaves.h", "lowp.h", "block8.h")
# -fno-math-errno lets sqrt vectorize (without it the Adam kernel is ~8x slower); never
# -ffast-math: NaN and inf must propagate as on the XLA path. -fno-trapping-math lets the 8-bit
# encoding loops vectorize (block8.h; no result changes, only the exception flags go untracked,
# clang's default). -ffp-contract=off: the kernels place their fused multiply-adds themselves,
# where XLA:CPU has them (MulAdd in leaves.h).
FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math")
FLAGS += ("-ffp-contract=off",)
FLAGS += ("-shared", "-fPIC", "-std=c++17")
TARGETS: tuple[str, ...] = (
    "optadam_adam_f32",
    "optadam_adam_f64",
    "optadam_adam_step_f32",
    "optadam_adam_step_f64",
)
TARGETS += ("optadam_momentum_f32", "optadam_momentum_f64")
TARGETS += ("optadam_momentum_step_f32", "optadam_momentum_step_f64")
TARGETS += ("optadam_rms_f32", "optadam_rms_f64", "optadam_rms_step_f32", "optadam_rms_step_f64")
TARGETS += ("optadam_rms_momentum_step_f32", "optadam_rms_momentum_step_f64")
TARGETS += ("optadam_adagrad_f32", "optadam_adagrad_f64")
TARGETS += ("optadam_adagrad_step_f32", "optadam_adagrad_step_f64")
SOURCES += ("amsgrad.cc", "radam.cc")
TARGETS += ("optadam_amsgrad_f32", "optadam_amsgrad_f64")
TARGETS += ("optadam_amsgrad_step_f32", "optadam_amsgrad_step_f64")
TARGETS += ("optadam_radam_f32", "optadam_radam_f64")
TARGETS += ("optadam_radam_step_f32", "optadam_radam_step_f64")
TARGETS += ("optadam_adam8_step_f32", "optadam_adam8_f32")
TARGETS += ("optadam_momentum8_step_f32", "optadam_rms8_step_f32")
TARGETS += ("optadam_amsgrad8_step_f32", "optadam_radam8_step_f32")
TARGETS += ("optadam_rms_momentum8_step_f32",)
TARGETS += (
    "optadam_momentum8_f32",
    "optadam_rms8_f32",
    "optadam_amsgrad8_f32",
    "optadam_radam8_f32",
)
# bfloat16/float16 params or bfloat16 moments (math in float32; dtypes read from the buffers)
TARGETS += ("optadam_adam_lowp", "optadam_adam_step_lowp")
TARGETS += ("optadam_momentum_lowp", "optadam_rms_lowp", "optadam_adagrad_lowp")
TARGETS += ("optadam_amsgrad_lowp", "optadam_radam_lowp")
TARGETS += ("optadam_momentum_step_lowp", "optadam_rms_step_lowp", "optadam_adagrad_step_lowp")
TARGETS += ("optadam_amsgrad_step_lowp", "optadam_radam_step_lowp")
TARGETS += ("optadam_rms_momentum_step_lowp",)


class NativeStatus(NamedTuple):
    """Whether optadam's native kernels are in use, and why not if they are not."""

    enabled: bool  # the kernels are loaded and may be used (on CPU, where they apply)
    reason: str  # why not, or where the library came from
    library: str | None  # path of the loaded shared library


_lock = threading.Lock()
_loaded: NativeStatus | None = None  # the outcome of this process's one load attempt
_switched_off: bool | None = None  # set_native_enabled's override of OPTADAM_NATIVE


def set_native_enabled(enabled: bool | None) -> None:
    """Turn the native kernels on or off for this process (None: as ``OPTADAM_NATIVE`` says).

    Takes effect where an update is traced afterwards: a function ``jax.jit`` has already traced
    keeps its path (make the transformation anew, or call it on new shapes).
    """
    global _switched_off
    _switched_off = None if enabled is None else not enabled


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The kernels off for what is traced inside (then as before): for code that reads the XLA
    path's per-leaf operations, which one kernel call over all leaves would hide."""
    global _switched_off
    saved = _switched_off
    _switched_off = True
    try:
        yield
    finally:
        _switched_off = saved


def native_status() -> NativeStatus:
    """Whether the kernels are in use and, if not, why; builds them on first call if needed.

    On by default on CPU, for ``tx.update`` and ``optadam.step`` alike: ``tx.update``'s kernel
    advances the moments in one pass and leaves the direction to XLA, which fuses it into
    ``optax.apply_updates`` (the results are the XLA path's bits); ``optadam.step`` runs the whole
    step in one pass. ``OPTADAM_NATIVE=0`` or ``set_native_enabled(False)`` turns both off.
    """
    if _switched_off is not None:
        off, how = _switched_off, "set_native_enabled(False)"
    else:
        setting = os.environ.get("OPTADAM_NATIVE", "")
        off, how = setting not in ("", "1"), f"OPTADAM_NATIVE={setting}"
    if off:
        return NativeStatus(False, f"turned off by {how}", None)
    return _load()


def enabled() -> bool:
    """Cheap check for the leaf-lifting layer: kernels on and loaded."""
    return native_status().enabled


def cache_dir() -> Path:
    if "OPTADAM_CACHE_DIR" in os.environ:
        return Path(os.environ["OPTADAM_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "optadam"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(shlex.split(name)[0]):
            return name
    return None


def _flags() -> list[str]:
    return [*FLAGS, *shlex.split(os.environ.get("OPTADAM_NATIVE_CFLAGS", ""))]


def _cpu() -> str:
    """The CPU the library is built for: -march=native bakes its instruction set in."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = ("model name", "flags", "Features", "CPU part")  # x86-64, arm64
    described = sorted({line for line in lines if line.split(":")[0].strip() in wanted})
    return "\n".join([platform.machine(), platform.processor(), *described])


def _key(compiler: str) -> str:
    version = subprocess.run(
        [*shlex.split(compiler), "--version"], capture_output=True, text=True, check=False
    ).stdout
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    for part in (*_flags(), jaxlib.__version__, version, _cpu()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:24]


def _build(compiler: str, target: Path) -> None:
    """Compile the sources into ``target``, atomically: a temporary file renamed into place.

    Each source compiles to an object on its own, as many at once as the machine has cores (the
    largest first: rms.cc takes as long as the rest together), then one link.
    A compiler that refuses ``-march=native`` (some clang releases on arm64) gets
    ``-mcpu=native``, then no tuning flag: the library is the same code, less tuned.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    objects = tempfile.mkdtemp(prefix=target.stem + ".", suffix=".objects", dir=target.parent)
    print(f"optadam: building native CPU kernels (once) into {target}", file=sys.stderr)
    sources = sorted((SOURCE_DIR / s for s in SOURCES), key=lambda f: -f.stat().st_size)
    failures = []
    try:
        for tuning in (None, ["-mcpu=native"], []):
            flags = _flags()
            if tuning is not None:
                flags = [f for f in flags if f != "-march=native"] + tuning
            command = [*shlex.split(compiler), *flags, "-isystem", jax.ffi.include_dir()]
            outputs = [os.path.join(objects, f"{source.stem}.o") for source in sources]
            steps = [
                [*command, "-c", str(s), "-o", o] for s, o in zip(sources, outputs, strict=True)
            ]
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                done = list(pool.map(_run, steps))
            failed = next((d for d in done if d.returncode != 0), None)
            if failed is None:
                failed = _run([*command, *outputs, "-o", tmp])
            if failed.returncode == 0:
                os.replace(tmp, target)
                return
            tail = " | ".join(failed.stderr.strip().splitlines()[-5:])
            failures.append(f"{shlex.join(failed.args)} failed ({failed.returncode}): {tail}")
            if "-march=native" not in _flags():
                break
        raise RuntimeError(failures[0])
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        shutil.rmtree(objects, ignore_errors=True)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def library_path() -> Path | None:
    """Where this machine's library is (or would be) cached; None without a compiler."""
    compiler = _compiler()
    return None if compiler is None else cache_dir() / f"optadam_native_{_key(compiler)}.so"


def _load() -> NativeStatus:
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _try_load()
        return _loaded


def _try_load() -> NativeStatus:
    if platform.system() not in ("Linux", "Darwin"):
        return NativeStatus(
            False,
            f"native kernels are built on Linux and macOS only, not on {platform.system()}",
            None,
        )
    target = library_path()
    if target is None:
        return NativeStatus(False, "no C++ compiler found ($CXX, g++ or c++ on PATH)", None)
    how = "loaded from the cache"
    try:
        if not target.exists():
            _build(_compiler() or "", target)
            how = "built"
        library = ctypes.CDLL(str(target))
        for name in TARGETS:
            handler = getattr(library, name)
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        return NativeStatus(False, f"native kernels unavailable: {error}", None)
    return NativeStatus(True, f"{how}: {target}", str(target))


# Leaves per kernel call: XLA's compile time grows faster than linearly in one custom call's
# operands (optadam.step of SGD momentum over 2,000 leaves in one call: 126 s to compile; in calls
# of 128 leaves: 1.9 s; of 32: 1.2 s), so a tree is cut into calls of this many leaves.
LEAVES_PER_CALL = 32


def call(
    name: str,
    scalars: jax.Array,
    leaves: list[list[jax.Array]],
    results: int,
    aliases: dict[int, int],
    **options: bool,
) -> list[list[jax.Array]]:
    """:func:`call_one` over ``leaves`` in calls of at most ``LEAVES_PER_CALL`` leaves."""
    done: list[list[jax.Array]] = []
    for start in range(0, len(leaves), LEAVES_PER_CALL):
        part = leaves[start : start + LEAVES_PER_CALL]
        done += call_one(name, scalars, part, results, aliases, **options)
    return done


def call_one(
    name: str,
    scalars: jax.Array,
    leaves: list[list[jax.Array]],
    results: int,
    aliases: dict[int, int],
    **options: bool,
) -> list[list[jax.Array]]:
    """One kernel call over all ``leaves`` (each a list of same-shape operands).

    The kernel sees ``scalars`` then every leaf's operands in turn, and returns ``results`` arrays
    per leaf, shaped like the leaf and in the dtype of the operand aliased to it (else the
    scalars'); ``aliases`` maps a leaf's operand index to the result it is
    updated in place into (XLA copies first unless the operand was donated).

    The kernel is element-wise, so on a sharded computation it runs on each device's shards as
    they are (``custom_partitioning``: each leaf's operands and results take its first state's
    sharding, never an all-gather); on one device XLA calls it directly. Under ``jax.vmap`` (of a
    function that traced it) it runs once per batch element.
    """
    per_leaf = len(leaves[0])
    count = len(leaves)
    io = {
        1 + leaf * per_leaf + k: leaf * results + r
        for leaf in range(count)
        for k, r in aliases.items()
    }

    source = {r: k for k, r in aliases.items()}  # a result's dtype is its operand's

    def kernel(scalars: jax.Array, *operands: jax.Array) -> tuple[jax.Array, ...]:
        shapes = [
            jax.ShapeDtypeStruct(
                operands[leaf * per_leaf].shape,
                operands[leaf * per_leaf + source[r]].dtype if r in source else scalars.dtype,
            )
            for leaf in range(count)
            for r in range(results)
        ]
        run = jax.ffi.ffi_call(name, shapes, input_output_aliases=io)
        return tuple(run(scalars, *operands, **options))

    def shardings(mesh: Any, arg_shapes: Any) -> tuple[list[Any], list[Any]]:
        like = [
            arg_shapes[1 + leaf * per_leaf + min(1, per_leaf - 1)].sharding for leaf in range(count)
        ]
        args = [NamedSharding(mesh, PartitionSpec())]
        args += [like[leaf] for leaf in range(count) for _ in range(per_leaf)]
        outs = [like[leaf] for leaf in range(count) for _ in range(results)]
        return args, outs

    def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
        args, outs = shardings(mesh, arg_shapes)
        return mesh, kernel, tuple(outs), tuple(args)

    def infer(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
        return tuple(shardings(mesh, arg_shapes)[1])

    # one factor per dimension of each leaf, shared by its operands and results; the scalars
    # are replicated
    factors = [tuple(f"l{leaf}d{d}" for d in range(ops[0].ndim)) for leaf, ops in enumerate(leaves)]
    operand_mappings: list[Any] = [("scalars",)]
    operand_mappings += [factors[leaf] for leaf in range(count) for _ in range(per_leaf)]
    result_mappings: list[Any] = [factors[leaf] for leaf in range(count) for _ in range(results)]
    rule = SdyShardingRule(
        operand_mappings=tuple(operand_mappings),
        result_mappings=tuple(result_mappings),
        need_replication_factors=("scalars",),
    )
    partitioned = custom_partitioning(kernel)
    partitioned.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)

    @jax.custom_batching.custom_vmap
    def batchable(scalars: jax.Array, *operands: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(partitioned(scalars, *operands))

    @batchable.def_vmap
    def one_at_a_time(axis_size: int, in_batched: Any, scalars: Any, *operands: Any) -> Any:
        args = [
            x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
            for x, b in zip((scalars, *operands), in_batched, strict=True)
        ]
        outs = jax.lax.map(lambda xs: batchable(*xs), tuple(args))
        return outs, (True,) * len(outs)

    flat = batchable(scalars, *(x for operands in leaves for x in operands))
    return [list(flat[leaf * results : (leaf + 1) * results]) for leaf in range(count)]


def call_blocks(
    name: str,
    scalars: jax.Array,
    leaves: list[list[jax.Array]],
    results: int,
    aliases: dict[int, int],
    **attributes: Any,
) -> list[list[jax.Array]]:
    """:func:`call` for a kernel whose results are shaped like its operands ``aliases`` names
    (the 8-bit kernel: codes and per-block scales), not like the leaf: one plain ``ffi_call``,
    with no sharding rule, so only for operands on one device; under ``jax.vmap`` it runs once
    per batch element. A result no operand is aliased to (the 8-bit update's u) is shaped like
    the leaf's first operand (its gradient)."""
    per_leaf = len(leaves[0])
    io = {
        1 + leaf * per_leaf + k: leaf * results + r
        for leaf in range(len(leaves))
        for k, r in aliases.items()
    }
    outs = {r: 0 for r in range(results)} | {r: k for k, r in aliases.items()}
    shapes = [
        jax.ShapeDtypeStruct(jnp.shape(operands[outs[r]]), jnp.result_type(operands[outs[r]]))
        for operands in leaves
        for r in range(results)
    ]
    run = jax.ffi.ffi_call(name, shapes, input_output_aliases=io, vmap_method="sequential")
    flat = run(scalars, *(x for operands in leaves for x in operands), **attributes)
    return [list(flat[leaf * results : (leaf + 1) * results]) for leaf in range(len(leaves))]
