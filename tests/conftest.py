"""Test session setup: 8 host CPU devices (for the pmap tests) and an ``x64`` fixture.

XLA reads ``XLA_FLAGS`` when JAX first initialises a backend, so the flag is set here, when pytest
imports this conftest -- before any test module imports jax (and before any array is created).
"""

import os

import pytest

_DEVICE_FLAG = "--xla_force_host_platform_device_count=8"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", "").split():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}".strip()


@pytest.fixture
def x64():
    """Enable ``jax_enable_x64`` for one test and restore the previous value afterwards."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture(autouse=True)
def _restore_native_switch():
    """Tests that switch the native kernels on or off leave the default (OPTADAM_NATIVE) behind."""
    yield
    import optadam

    optadam.set_native_enabled(None)
