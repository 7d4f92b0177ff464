"""The notebooks run end to end on tiny settings: train.ipynb, then predict.ipynb on the run it made."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from medunet.io.images import read_image  # noqa: E402
from medunet.transforms.geometry import Geometry  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 120  # seconds; a hung cell fails the test instead of blocking CI

TINY_TRAIN = dict(COUNTS={"train": 6, "validation": 2, "test": 3}, SIZE=64, PATCH=64, PRESET="tiny", TRAIN_SECONDS=None,
                  EPOCHS=1, SAMPLES_PER_EPOCH=8, BATCH=4, DEVICE="cpu")
TINY_PREDICT = dict(CROP=32, SHOW=2, DEVICE="cpu")


def _runs_this_python(argv: list[str]) -> bool:
    """Whether a kernelspec's command starts this interpreter (and so sees this environment's medunet).

    jupyter_client itself replaces a bare "python"/"python3"/"pythonX.Y" with sys.executable. Paths
    are compared unresolved: a venv's python is a symlink to the base interpreter, which lacks the venv.
    """
    exe = argv[0] if argv else ""
    major, minor = sys.version_info[:2]
    if exe in {"python", f"python{major}", f"python{major}.{minor}"}:
        return True
    return os.path.abspath(exe) == os.path.abspath(sys.executable)


@pytest.fixture
def kernel_name(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """"python3", pointing at this interpreter: the installed spec if it does, else one made for it."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        spec = None
    if spec is None or not _runs_this_python(spec.argv):
        from ipykernel.kernelspec import install

        prefix = tmp_path_factory.mktemp("jupyter")
        install(prefix=str(prefix), kernel_name=KERNEL)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
        monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))  # searched before user/system dirs
    return KERNEL


def _parameters_cell(nb) -> "nbformat.NotebookNode":
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return cells[0]


def execute(name: str, params: dict, cwd: Path, kernel: str) -> "nbformat.NotebookNode":
    """Run `notebooks/<name>` in `cwd` with its parameters cell replaced by `params`; returns the executed notebook.

    The executed copy is saved in `cwd`, to read when the test fails.
    """
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    _parameters_cell(nb).source = "\n".join(f"{key} = {value!r}" for key, value in params.items())
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, cwd / name)
    return nb


def _outputs(nb, output_type: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == output_type]


def _figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for t in ("display_data", "execute_result") for o in _outputs(nb, t))


@pytest.mark.parametrize("name", ["train.ipynb", "predict.ipynb", "volumes.ipynb"])
def test_committed_notebook_is_stripped(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == KERNEL
    _parameters_cell(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear the outputs before committing"


def test_train_then_predict(tmp_path: Path, kernel_name: str) -> None:
    workdir = tmp_path / "work"
    train_nb = execute("train.ipynb", {"WORKDIR": str(workdir), **TINY_TRAIN}, tmp_path, kernel_name)
    run = workdir / "run"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "history.csv").is_file()
    assert _figures(train_nb) == 2  # training slices, learning curves

    predict_nb = execute("predict.ipynb", {"WORKDIR": str(workdir), **TINY_PREDICT}, tmp_path, kernel_name)
    assert not _outputs(train_nb, "error") and not _outputs(predict_nb, "error")
    assert _figures(predict_nb) == 3  # post-processing steps, crop pasted back, overlays

    test_images = sorted((workdir / "data" / "test" / "image").glob("*.tif"))
    assert len(test_images) == 3
    for image_path in test_images:
        size = read_image(image_path).shape[:2]
        whole = read_image(workdir / "predictions" / image_path.name)
        pasted = read_image(workdir / "predictions-crop" / image_path.name)
        assert whole.shape == size and pasted.shape == size
        assert set(np.unique(whole)) <= {0, 255} and set(np.unique(pasted)) <= {0, 255}
        outside = Geometry.centre_crop(*size, TINY_PREDICT["CROP"]).invert(np.zeros((32, 32), bool), fill=True)
        assert not pasted[outside].any(), "the crop's mask must be pasted into a background canvas"
        assert (workdir / "predictions" / f"{image_path.stem}_overlay.png").is_file()
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert summary["n_images"] == 3 and 0.0 <= summary["dice_mean"] <= 1.0


def test_volumes_notebook(tmp_path: Path, kernel_name: str) -> None:
    workdir = tmp_path / "work"
    nb = execute("volumes.ipynb", {"WORKDIR": str(workdir), "COUNTS": {"train": 2, "validation": 1, "test": 1},
                                   "EPOCHS": 1, "SAMPLES_PER_EPOCH": 8, "PRESET": "tiny", "DEVICE": "cpu"},
                 tmp_path, kernel_name)
    assert not _outputs(nb, "error") and _figures(nb) == 2  # the data's slices, the prediction's
    mask = workdir / "predictions" / "case_001.nii.gz"
    assert mask.is_file() and (workdir / "eval" / "summary.json").is_file()
    assert json.loads((workdir / "eval" / "summary.json").read_text())["unit"] == "case"
