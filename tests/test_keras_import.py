"""import-keras against Keras itself: the tutorial's U-Net built in Keras 3 (torch backend), saved,
imported, and run by both on the same images; its variants, the Keras 2 layout, and the refusals."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medunet.api.import_keras import import_keras
from medunet.cli import main
from medunet.config import PredictConfig
from medunet.engine.predictor import Predictor

h5py = pytest.importorskip("h5py")
if importlib.util.find_spec("keras") is None:  # not imported here: Keras picks its backend at import
    pytest.skip("keras is not installed", allow_module_level=True)

BUILDER = Path(__file__).with_name("keras_tutorial.py")
MODELS = ["tutorial:64:8:4:1:1", "variant:48:4:3:3:3", "batchnorm:32:4:2:1:1:batchnorm",
          "reversed:32:4:2:1:1:reversed", "headless:32:4:2:1:1:headless"]


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keras")
    result = subprocess.run([sys.executable, str(BUILDER), str(out), *MODELS], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def keras2_copy(source: Path, dest: Path) -> Path:
    """The same model in Keras 2's HDF5 layout, written with h5py: bytes attributes, `kernel:0`
    names, layers numbered from 1 (`conv2d_1`) and a Keras 2 `model_config` (inbound nodes as
    `[name, 0, 0, {}]` lists)."""
    with h5py.File(source, "r") as f:
        config = json.loads(f.attrs["model_config"])
        names = [n for n in f["model_weights"].attrs["layer_names"]]
        weights = {n: [np.asarray(f["model_weights"][n][w]) for w in f["model_weights"][n].attrs["weight_names"]]
                   for n in names}
    rename = {n: f"{n}_1" if not n[-1].isdigit() else f"{n.rsplit('_', 1)[0]}_{int(n.rsplit('_', 1)[1]) + 1}"
              for n in names}
    layers = []
    for entry in config["config"]["layers"]:
        inbound = []
        for node in entry.get("inbound_nodes", []):
            args = node["args"][0]
            tensors = args if isinstance(args, list) else [args]
            inbound.append([[rename[t["config"]["keras_history"][0]], 0, 0, {}] for t in tensors])
        cfg = {**entry["config"], "name": rename[entry["name"]]}
        layers.append({"class_name": entry["class_name"], "name": rename[entry["name"]], "config": cfg,
                       "inbound_nodes": inbound})
    keras2 = {"class_name": "Model", "config": {"name": "model_1", "layers": layers}}
    with h5py.File(dest, "w") as f:
        f.attrs["keras_version"] = b"2.2.4"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(keras2).encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([rename[n].encode() for n in names])
        for n in names:
            layer = group.create_group(rename[n])
            wnames = [f"{rename[n]}/{kind}:0".encode() for kind in ("kernel", "bias")][:len(weights[n])]
            layer.attrs["weight_names"] = np.array(wnames, dtype="S")
            for wname, w in zip(wnames, weights[n]):
                layer.create_dataset(wname.decode(), data=w)
    return dest


def _probs(run: Path, images: np.ndarray) -> np.ndarray:
    """medunet's probabilities `(N, H, W, K)` for raw uint8 images `(N, H, W, C)`."""
    predictor = Predictor.load(run, PredictConfig(engine="torch", precision="fp32"))
    return np.stack([np.moveaxis(p, 0, -1) for p in predictor.probabilities([im.squeeze(-1) if im.shape[-1] == 1
                                                                             else im for im in images])])


@pytest.mark.parametrize("layout", ["h5", "weights.h5", "keras2"])
def test_imported_tutorial_unet_gives_keras_outputs(keras_files: Path, tmp_path: Path, layout: str) -> None:
    source = keras_files / f"tutorial.{layout}" if layout != "keras2" else \
        keras2_copy(keras_files / "tutorial.h5", tmp_path / "unet_membrane.hdf5")
    run = import_keras(source, tmp_path / "run")
    ref = np.load(keras_files / "tutorial.npz")
    assert np.max(np.abs(_probs(run, ref["images"]) - ref["probs"])) <= 1e-4
    predictor = Predictor.load(run, PredictConfig(engine="torch"))
    cfg = predictor.network.cfg
    assert (cfg.base_width, cfg.depth, cfg.in_channels, cfg.out_channels) == (8, 4, 1, 1)
    assert predictor.data_cfg.normalise == "window" and predictor.data_cfg.window == (0.0, 255.0)
    assert predictor.threshold == 0.5 and predictor.encoding.values == (0, 255)
    assert predictor.data_cfg.size == (64 if layout != "weights.h5" else 256)  # the input side, where stored


def test_variant_width_depth_rgb_and_softmax(keras_files: Path, tmp_path: Path) -> None:
    run = import_keras(keras_files / "variant.h5", tmp_path / "run")
    ref = np.load(keras_files / "variant.npz")
    assert np.max(np.abs(_probs(run, ref["images"]) - ref["probs"])) <= 1e-4
    card = json.loads((run / "config.json").read_text())
    assert card["model"]["base_width"] == 4 and card["model"]["depth"] == 3 and card["model"]["out_channels"] == 3
    assert card["preset"] == "seed at base width 4, depth 3"


@pytest.mark.parametrize("name, message", [
    ("batchnorm", "BatchNormalization"),
    ("reversed", "joins [skip, up]"),
    ("headless", "found 13 conv kernels, first 3×3×1×4, last 1×1×4×1; expected the tutorial's U-Net"),
])
def test_other_architectures_are_one_line_exit_2(keras_files: Path, tmp_path: Path, capsys, name: str,
                                                 message: str) -> None:
    assert main(["-q", "import-keras", str(keras_files / f"{name}.h5"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and f"{name}.h5" in err
    assert not (tmp_path / "run").exists()


def test_files_that_are_no_keras_model(tmp_path: Path, capsys) -> None:
    text = tmp_path / "model.hdf5"
    text.write_text("not hdf5")
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    for path, message in ((tmp_path / "missing.h5", "no such file"), (text, "not an HDF5 file"),
                          (empty, "without Keras weights")):
        assert main(["-q", "import-keras", str(path), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err


def test_imported_run_predicts_exports_and_fine_tunes(keras_files: Path, disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "imported"
    assert main(["-q", "import-keras", str(keras_files / "tutorial.h5"), "--out", str(run)]) == 0
    assert main(["-q", "predict", str(run), str(disc_data / "test" / "image"), "--out", str(tmp_path / "p")]) == 0
    assert main(["-q", "evaluate", str(run), str(disc_data / "test")]) == 0
    assert main(["-q", "tune", str(run), str(disc_data / "validation")]) == 0
    assert main(["-q", "export", str(run)]) == 0 and (run / "model.onnx").is_file()
    tiny = ["--epochs", "1", "--size", "64", "--batch", "4", "--samples-per-epoch", "4", "--device", "cpu"]
    assert main(["-q", "train", str(disc_data), "--out", str(tmp_path / "tuned"), "--init", str(run), *tiny]) == 0
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["data"]["normalise"] == "window" and config["data"]["window"] == [0.0, 255.0]
    assert config["origin"]["kind"] == "init" and config["origin"]["origin"]["kind"] == "keras"
    assert config["model"]["base_width"] == 8 and config["preset"] == "seed at base width 8, depth 4"
    assert main(["-q", "train", str(disc_data), "--out", str(tmp_path / "z"), "--init", str(run),
                 "--normalise", "zscore", *tiny]) == 0
    assert json.loads((tmp_path / "z" / "config.json").read_text())["data"]["normalise"] == "zscore"


def test_init_with_other_channels_is_refused(keras_files: Path, disc_data: Path, tmp_path: Path, capsys) -> None:
    run = import_keras(keras_files / "variant.h5", tmp_path / "variant")
    assert main(["-q", "train", str(disc_data), "--out", str(tmp_path / "t"), "--init", str(run), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "takes 3 channel(s) and gives 3 output(s)" in err


def test_init_and_resume_together_are_refused(disc_data: Path, tmp_path: Path, capsys) -> None:
    assert main(["-q", "train", str(disc_data), "--out", str(tmp_path / "t"), "--init", str(tmp_path / "x"),
                 "--resume"]) == 2
    assert "--resume continues this one: give one" in capsys.readouterr().err
