"""The README's usage example runs and does what it says; its Quickstart is what CI runs."""

import re
from pathlib import Path

import numpy as np

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


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
