"""The example notebook runs top to bottom in a real Jupyter kernel and draws its figures."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "registration.ipynb"


def test_notebook_runs_and_draws(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Committed clean: no outputs, no execution counts.
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)

    # A kernel spec of this interpreter only (this venv's python), whatever else the
    # machine has installed under the name "python3".
    write_kernel_spec(tmp_path / "kernels" / "xreg-test")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    manager = KernelManager(kernel_name="xreg-test", kernel_spec_manager=specs)
    assert manager.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(
        notebook,
        km=manager,
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    figures = [cell for cell in code if any("image/png" in o.get("data", {}) for o in cell.outputs)]
    # estimate(ref).plot(), the summary, the metrics and the dF/F traces.
    assert len(figures) == 4
    sources = [cell.source for cell in figures]
    assert any("shifts.plot()" in source for source in sources)
    assert any("xreg.plot.summary" in source for source in sources)
