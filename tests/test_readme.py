"""The README's code runs as pasted: every python snippet in a fresh interpreter, the usage example
does what it says, and its Quickstart is what CI runs.

A snippet runs alone, after only the imports it shows. An HTML comment on the line before its
fence may ask for what a fresh interpreter cannot give it:

* ``devices=N``: N host CPU devices (``XLA_FLAGS``), for the sharding examples;
* ``id=NAME`` / ``after=NAME``: a snippet that continues another ("one line changes") runs after
  it, in the same process;
* ``processes=N``: the snippet runs in N processes at once, joined by ``jax.distributed``; the
  environment variables a cluster (here, SLURM's) sets tell ``jax.distributed.initialize()`` who is
  who, and gloo carries the CPU collectives.

No snippet is skipped.
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNIPPET = re.compile(
    r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S
)
TIMEOUT_S = 240


def snippets() -> list[tuple[str, dict[str, str], str]]:
    """(label, marker options, code) for every python snippet, in README order."""
    found = []
    for match in SNIPPET.finditer(README):
        heading = re.findall(r"^#+ (.*)$", README[: match.start()], re.M)[-1]
        options = dict(item.split("=", 1) for item in (match["marker"] or "").split())
        found.append((f"{len(found) + 1:02d} {heading}", options, match["code"]))
    return found


SNIPPETS = snippets()
BY_ID = {options["id"]: code for _, options, code in SNIPPETS if "id" in options}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(options: dict[str, str]) -> dict[str, str]:
    """The parent's environment without its device-count flag (conftest sets 8), plus the
    snippet's own, and this checkout first on the path."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if "devices" in options:
        flags.append(f"--xla_force_host_platform_device_count={options['devices']}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def cluster(process_id: int, processes: int, port: int) -> dict[str, str]:
    """What SLURM sets for task ``process_id`` of a one-node job (jax's cluster detection reads
    it), with the coordinator on localhost."""
    return {
        "SLURM_JOB_ID": "1",
        "SLURM_STEP_NODELIST": "127.0.0.1",
        "SLURM_NTASKS": str(processes),
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": str(process_id),
        "JAX_COORDINATOR_PORT": str(port),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }


def run_processes(code: str, options: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    processes = int(options.get("processes", 1))
    env = environment(options)
    port = free_port()
    started = [
        subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**env, **(cluster(i, processes, port) if processes > 1 else {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(processes)
    ]
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0].decode() for p in started]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(started, logs, strict=True):
        assert p.returncode == 0, f"--- the snippet ---\n{code}\n--- its output ---\n{log[-4000:]}"


@pytest.mark.parametrize(("label", "options", "code"), SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_snippet_runs_as_pasted_in_a_fresh_interpreter(label, options, code, tmp_path):
    before = BY_ID[options["after"]] if "after" in options else ""
    run_processes(before + code, options, tmp_path)


def test_every_marker_names_a_known_option_and_snippet():
    for label, options, _ in SNIPPETS:
        assert set(options) <= {"id", "after", "devices", "processes"}, label
        assert options.get("after", next(iter(BY_ID))) in BY_ID, label


def test_usage_example_runs_and_fits():
    usage = README.split("## Usage", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    params = namespace["params"]
    np.testing.assert_allclose(params["w"], [1.0, -2.0, 3.0], atol=1e-3)
    np.testing.assert_allclose(params["b"], 0.5, atol=1e-3)


def test_quickstart_has_the_demo_then_the_test_command():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", quickstart, re.S).group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("python -m optadam demo")
    assert "pytest" in commands[1] and ".[test]" in commands[1]
