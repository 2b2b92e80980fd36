"""docs/colab_sampling.ipynb executes headless against the ``:smoke`` runs, so it cannot rot.

The runs come from the session fixture ``smoke_run`` (shared with tests/test_api.py) and reach the
notebook through ``DIDIFF_NOTEBOOK_WORKDIR`` / ``DIDIFF_NOTEBOOK_ADD_WORKDIR``, so it loads instead of
training. The kernel is this interpreter (a kernelspec written for the test), on one CPU device.
"""

import json
import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from didiff_jax.data import fashion_mnist
from tests.conftest import single_device_env
from tests.test_api import ADD_SMALL, DIDICM_EMA

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "colab_sampling.ipynb"
pytestmark = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


def test_notebook_runs_against_the_smoke_runs(smoke_run, tmp_path, monkeypatch):
    didicm = smoke_run("fashion_mnist_didirn", **DIDICM_EMA)
    add = smoke_run("fashion_mnist_add_vit", **ADD_SMALL)
    spec = tmp_path / "jupyter" / "kernels" / "didiff-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "didiff_jax tests", "language": "python",
    }))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    env = single_device_env(JAX_PLATFORMS="cpu", DIDIFF_NOTEBOOK_WORKDIR=didicm,
                            DIDIFF_NOTEBOOK_ADD_WORKDIR=add)  # fmt: skip
    before = set(REPO.glob("runs/notebook_*"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="didiff-test",
                            resources={"metadata": {"path": str(REPO)}})  # fmt: skip
    client.execute(env=env)  # raises CellExecutionError on the first failing cell

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # It loaded the given runs (and trained nothing) ...
    assert f"step 4, EMA parameters, from {didicm}" in text and f"from {add}" in text
    assert set(REPO.glob("runs/notebook_*")) == before
    # ... and drew the trajectories, the corrupted posteriors, accuracy vs steps and ADD's chain.
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 4
    assert (
        "CP, chains of S steps:" in text and "class probabilities of an untrained network" in text
    )
