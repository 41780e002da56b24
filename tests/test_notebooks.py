"""The teaching notebooks run top to bottom without errors, and are committed small and executed.

Each notebook is executed afresh in a Jupyter kernel (nbclient, kernel ``python3``: jupyter_client
starts it with this interpreter, so it sees the same environment as the tests). A notebook fails on
any error output -- among them its own asserts, which check the numbers it shows -- and on anything
written to stderr: a traceback printed by a library, or a warning the reader should not have to
see.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell: generous for a loaded 2-core CI machine
MAX_BYTES = 300_000  # committed with small outputs, so the repository and its diffs stay light


def test_the_teaching_notebooks_are_all_there() -> None:
    names = [path.stem for path in NOTEBOOKS]
    for prefix in ("01-", "02-", "03-", "04-"):
        assert any(name.startswith(prefix) for name in names), names


def problems(notebook: nbformat.NotebookNode) -> list[str]:
    """Error outputs and stderr text, each with the start of the cell that produced it."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"{cell.source[:60]!r}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr":
                found.append(f"{cell.source[:60]!r}: stderr: {output.text[:300]}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_notebook_is_small_executed_and_clean(path: Path) -> None:
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size:,} bytes"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "commit it executed"
    assert not problems(notebook)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_checks_what_it_shows(path: Path) -> None:
    """Each notebook asserts on the numbers it prints or plots, so running it (below) tests them."""
    notebook = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert re.search(r"^\s*(assert |np\.testing\.assert_)", code, re.M), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_executes_without_errors(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    elapsed = time.perf_counter() - start
    assert not problems(notebook)
    print(f"{path.name}: executed in {elapsed:.1f} s")
