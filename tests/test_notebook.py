"""examples/quickstart.ipynb runs top to bottom and shows what its text claims.

The notebook ends each important step with a line ``NAME=value`` on stdout; the tests read those
numbers. The kernel is this interpreter: a kernel spec pointing at ``sys.executable`` is written
to a temporary folder named by ``JUPYTER_PATH``, so no kernel spec of the environment or of the
user is used or touched.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOK = EXAMPLES / "quickstart.ipynb"
KERNEL = "fedloom-test-python"
MARKER = re.compile(r"^([A-Z][A-Z_]*)=(.+)$", re.MULTILINE)
WHICH_PYTHON = "import sys\nprint(f'KERNEL_PREFIX={sys.prefix}')"
BUDGET_S = 60.0  # the notebook must run in well under a minute on a 2-core CPU

pytestmark = pytest.mark.slow  # a Jupyter kernel process


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], float]:
    """Run the notebook once; return its ``NAME=value`` markers and the run's wall time."""
    home = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(home / "kernels" / KERNEL, overrides={"display_name": KERNEL})
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WHICH_PYTHON))
    client = NotebookClient(
        nb, timeout=120, kernel_name=KERNEL, resources={"metadata": {"path": str(EXAMPLES)}}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(home))
        mp.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
        mp.setenv("IPYTHONDIR", str(home / "ipython"))
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # draw the plots
        started = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - started
    markers: dict[str, str] = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            markers.update(MARKER.findall(stdout_of(cell)))
    return markers, seconds


def number(executed: tuple[dict[str, str], float], name: str) -> float:
    markers, _ = executed
    assert name in markers, f"the notebook printed no {name}=...; it printed {sorted(markers)}"
    return float(markers[name])


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"


def test_kernel_is_this_interpreter(executed: tuple[dict[str, str], float]) -> None:
    markers, _ = executed
    assert Path(markers["KERNEL_PREFIX"]).resolve() == Path(sys.prefix).resolve()


def test_runs_within_budget(executed: tuple[dict[str, str], float]) -> None:
    _, seconds = executed
    assert seconds < BUDGET_S


def test_dirichlet_split_is_skewed(executed: tuple[dict[str, str], float]) -> None:
    iid = number(executed, "DISTINCT_LABELS_IID")
    skewed = number(executed, "DISTINCT_LABELS_DIRICHLET")
    assert 0 < skewed < iid <= 10
    assert iid - skewed > 2  # clearly visible, not noise: about 9.4 against 5.5


def test_fedavg_learns(executed: tuple[dict[str, str], float]) -> None:
    assert number(executed, "FINAL_ACCURACY_IID") >= 0.85
    assert number(executed, "FINAL_ACCURACY_DIRICHLET") >= 0.5  # learns, if less smoothly


def test_own_model_and_data(executed: tuple[dict[str, str], float]) -> None:
    final = number(executed, "FINAL_ACCURACY_CUSTOM")
    assert final >= 0.85
    # The unpacked weights, loaded into a fresh model, score what the run's history recorded.
    assert number(executed, "RELOADED_ACCURACY") == pytest.approx(final, abs=1e-4)


def test_config_reproduces_the_run(executed: tuple[dict[str, str], float]) -> None:
    markers, _ = executed
    assert markers.get("REPRODUCED") == "True"
