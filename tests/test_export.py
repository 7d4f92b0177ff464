"""ONNX and TorchScript export, the ONNX Runtime engine and the model card, against torch itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from medunet.api.export import export
from medunet.api.info import format_card, info
from medunet.api.predict import predict
from medunet.cli import main
from medunet.config import MODEL_PRESETS, PredictConfig, model_preset
from medunet.engine import network as networks
from medunet.engine.export import onnx_bytes, read_torchscript_metadata
from medunet.engine.onnx_engine import OnnxNetwork, make_session
from medunet.engine.predictor import Predictor
from medunet.io.images import read_image
from medunet.models.unet import UNet

from conftest import shared_dataset, write_split

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ODD_SIZES = [(37, 501), (16, 16), (61, 77)]


def _random_network(preset: str, out_channels: int) -> UNet:
    """The preset with random weights and batch-norm statistics, and logits spread wide enough
    that probabilities are not all near 0.5."""
    torch.manual_seed(len(preset) + out_channels)
    model = UNet(model_preset(preset, out_channels=out_channels))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last.weight.data *= 20
    return model.eval()


def _probabilities(logits: np.ndarray) -> np.ndarray:
    return networks.to_probabilities(torch.from_numpy(logits)).numpy()


def _masks_agree(p_torch: np.ndarray, p_ort: np.ndarray, tol: float = 1e-4) -> bool:
    """Equal masks wherever the torch probability is not within `tol` of the decision boundary."""
    if p_torch.shape[1] == 1:
        clear = np.abs(p_torch - 0.5) > tol
        return bool(np.array_equal((p_torch > 0.5)[clear], (p_ort > 0.5)[clear]))
    top2 = np.sort(p_torch, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > tol
    return bool(np.array_equal(p_torch.argmax(1)[clear], p_ort.argmax(1)[clear]))


@pytest.mark.parametrize("preset", list(MODEL_PRESETS))
@pytest.mark.parametrize("out_channels", [1, 3])
def test_onnx_matches_torch_at_any_size(preset: str, out_channels: int) -> None:
    """Every preset, binary and 3 classes: dynamic batch, height and width; probabilities ≤ 1e-4."""
    model = _random_network(preset, out_channels)
    session = make_session(onnx_bytes(model), torch.device("cpu"))
    sizes = ODD_SIZES if preset in ("small", "tiny") else ODD_SIZES[:1]  # 31 M networks are slow on 2 cores
    for i, (h, w) in enumerate(sizes):
        x = torch.rand(1 + i % 2, 1, h, w, generator=torch.Generator().manual_seed(i))
        with torch.inference_mode():
            expected = networks.to_probabilities(model(x)).numpy()
        got = _probabilities(session.run(None, {"image": x.numpy()})[0])
        assert got.shape == expected.shape == (x.shape[0], out_channels, h, w)
        assert np.max(np.abs(got - expected)) <= 1e-4
        assert _masks_agree(expected, got)


def test_dynamo_exporter_and_fp16_graph_handle_odd_sizes() -> None:
    model = _random_network("tiny", 1)
    x = torch.rand(2, 1, 37, 501)
    with torch.inference_mode():
        expected = torch.sigmoid(model(x)).numpy()
    for options, tol in (({"exporter": "dynamo"}, 1e-4), ({"fp16": True}, 5e-3)):
        session = make_session(onnx_bytes(model, **options), torch.device("cpu"))
        assert session.get_inputs()[0].type == "tensor(float)"  # fp16 keeps float32 in and out
        got = _probabilities(session.run(None, {"image": x.numpy()})[0])
        assert np.max(np.abs(got - expected)) <= tol, options


def test_export_writes_metadata_that_rebuilds_the_predictor(tiny_run: Path, tmp_path: Path) -> None:
    out = export(tiny_run, "onnx", tmp_path / "m.onnx")
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    props = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert props == sidecar
    assert props["format"] == "medunet-export-1"
    assert props["input"]["channels"] == 1 and props["output"]["activation"] == "sigmoid"
    assert props["data_config"]["normalise"] == "zscore" and props["label_encoding"]["values"] == [0, 255]
    assert props["graph"]["check"]["max_abs_probability_difference"] <= 1e-4
    assert props["card"]["training_data"]["train"] == 8
    from_run = Predictor.from_checkpoint(tiny_run, PredictConfig(engine="torch"))
    from_file = Predictor.from_onnx(out)
    assert from_file.network.engine == "onnxruntime"
    assert (from_file.data_cfg, from_file.encoding, from_file.post) == (from_run.data_cfg, from_run.encoding,
                                                                         from_run.post)
    with pytest.raises(Exception, match="exists; pass --overwrite"):
        export(tiny_run, "onnx", out)


def test_torchscript_export_runs_any_size_with_metadata(tiny_run: Path, tmp_path: Path) -> None:
    out = export(tiny_run, "torchscript", tmp_path / "m.pt")
    extra = {"medunet.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["medunet.json"]) == read_torchscript_metadata(out)
    model = Predictor.from_checkpoint(tiny_run, PredictConfig(engine="torch")).network.module.eval()
    x = torch.rand(2, 1, 37, 501)
    with torch.inference_mode():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_onnxruntime_engine_masks_equal_torch_with_tiles_and_tta(tiny_run: Path, tmp_path: Path) -> None:
    """The same Predictor path — tiles with blending, flips, post-processing, paste-back — on both engines."""
    images = write_split(tmp_path / "new", 3, [(70, 45), (37, 501), (64, 64)], seed=9) / "image"
    outputs = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        # fp32 on both: with bf16 instructions (AMX) the torch engine's auto precision is bf16,
        # and its probabilities differ from the fp32 graph's by ~2e-4
        predict(tiny_run, images, out, engine=engine, tta="flips", max_size=48, probabilities=True, progress=False,
                precision="fp32")
        outputs[engine] = out
    for path in sorted(images.iterdir()):
        a, b = (read_image(outputs[e] / path.name) for e in outputs)
        assert a.shape == read_image(path).shape[:2]
        assert np.array_equal(a, b), path.name
        pa, pb = (tifffile.imread(outputs[e] / f"{path.stem}_prob.tif") for e in outputs)
        assert np.max(np.abs(pa - pb)) <= 1e-4
    assert sorted(p.name for p in outputs["torch"].iterdir()) == sorted(p.name for p in outputs["onnxruntime"].iterdir())


def test_predict_and_evaluate_from_the_onnx_file_alone(tiny_run: Path, disc_data: Path, tmp_path: Path) -> None:
    model = tmp_path / "alone" / "model.onnx"
    assert main(["-q", "export", str(tiny_run), "--out", str(model)]) == 0
    images = disc_data / "test" / "image"
    assert main(["-q", "predict", "--model", str(model), str(images), "--out", str(tmp_path / "a")]) == 0
    assert main(["-q", "predict", str(tiny_run), str(images), "--out", str(tmp_path / "b"), "--engine", "torch"]) == 0
    for path in images.iterdir():
        assert np.array_equal(read_image(tmp_path / "a" / path.name), read_image(tmp_path / "b" / path.name))
    assert main(["-q", "evaluate", str(model), str(disc_data / "test")]) == 0
    summary = json.loads((tmp_path / "alone" / "eval-test" / "summary.json").read_text())
    assert summary["n_images"] == 3


def test_info_on_run_checkpoint_and_exports(tiny_run: Path, tmp_path: Path, capsys) -> None:
    onnx_file = export(tiny_run, "onnx", tmp_path / "m.onnx")
    script = export(tiny_run, "torchscript", tmp_path / "m.pt")
    cards = [info(src) for src in (tiny_run, tiny_run / "checkpoints" / "best.pt", onnx_file, script)]
    for card in cards:
        assert card["preset"] == "small"
        assert card["parameters"] == sum(p.numel() for p in UNet(model_preset("small")).parameters())
        assert [c["value"] for c in card["classes"]] == [0, 255]
        assert card["training_data"]["train"] == 8 and card["training_data"]["validation"] == 3
        assert card["medunet_version"] and card["torch_version"].startswith(torch.__version__.split("+")[0])
    text = format_card(cards[0])
    assert "zscore" in text and "validation Dice" in text
    assert ".png" not in text and ".png" not in json.dumps(cards[0])  # no file names of the data
    assert main(["info", str(onnx_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["graph"]["format"] == "onnx"


def test_auto_engine_takes_onnxruntime_only_where_chosen_and_installed(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert networks.resolve_engine("auto", cpu) == networks.AUTO_ON_CPU
    monkeypatch.setattr(networks, "AUTO_ON_CPU", "onnxruntime")
    assert networks.resolve_engine("auto", cpu) == "onnxruntime"
    assert networks.resolve_engine("auto", cpu, precision="bf16") == "torch"
    monkeypatch.setattr(networks.importlib.util, "find_spec", lambda name: None)
    assert networks.resolve_engine("auto", cpu) == "torch"
    assert networks.resolve_engine("onnxruntime", cpu) == "onnxruntime"


def _error_line(capsys, argv: list[str]) -> str:
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(tiny_run: Path, tmp_path: Path, capsys) -> None:
    images = write_split(tmp_path / "x", 1, [(32, 32)], seed=0) / "image"
    assert "no such ONNX file" in _error_line(capsys, ["predict", "--model", str(tmp_path / "missing.onnx"),
                                                       str(images), "--out", str(tmp_path / "o")])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert "not a readable ONNX model" in _error_line(capsys, ["info", str(garbage)])
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(onnx_bytes(UNet(model_preset("tiny"))))
    assert "no medunet metadata" in _error_line(capsys, ["predict", "--model", str(bare), str(images),
                                                         "--out", str(tmp_path / "o")])
    assert "--format must be" in _error_line(capsys, ["export", str(tiny_run), "--format", "tflite"])
    assert "--opset and --fp16 apply to --format onnx" in _error_line(
        capsys, ["export", str(tiny_run), "--format", "torchscript", "--fp16"])
    assert "--engine must be" in _error_line(capsys, ["predict", str(tiny_run), str(images), "--out",
                                                      str(tmp_path / "o"), "--engine", "tensorrt"])
    script = export(tiny_run, "torchscript", tmp_path / "m.pt")
    assert "a TorchScript export" in _error_line(capsys, ["predict", str(script), str(images), "--out",
                                                          str(tmp_path / "o")])
    assert "--precision bf16 applies to the torch engine" in _error_line(
        capsys, ["predict", str(tiny_run), str(images), "--out", str(tmp_path / "o"), "--engine", "onnxruntime",
                 "--precision", "bf16"])


def test_missing_onnxruntime_is_one_line(tiny_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    images = write_split(tmp_path / "x", 1, [(32, 32)], seed=0) / "image"
    err = _error_line(capsys, ["predict", str(tiny_run), str(images), "--out", str(tmp_path / "o"),
                               "--engine", "onnxruntime"])
    assert "pip install 'medunet[onnx]'" in err


def test_medunet_imports_no_onnx_or_keras(tiny_run: Path, tmp_path: Path) -> None:
    """`import medunet`, `--help` and a torch-engine predict leave onnx, onnxruntime and keras alone
    (h5py is not checked: MONAI imports it itself wherever it is installed)."""
    images = write_split(tmp_path / "x", 1, [(32, 32)], seed=0) / "image"
    code = f"""
import sys, medunet
from medunet.cli import main
assert main(["--help"]) == 0
assert main(["-q", "predict", {str(tiny_run)!r}, {str(images)!r}, "--out", {str(tmp_path / 'o')!r}]) == 0
loaded = sorted(m for m in ("onnx", "onnxruntime", "onnxscript", "keras") if m in sys.modules)
print("LOADED", loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def test_isbi_masks_equal_on_both_engines(tmp_path: Path) -> None:
    """A run trained for seconds on 3 ISBI images: both engines give the same masks bit for bit."""
    from PIL import Image

    from medunet.api.train import train
    from medunet.config import DataConfig, TrainConfig

    src = shared_dataset("isbi2012-membrane") / "train"
    data = tmp_path / "isbi"
    for split, ids in (("train", (0, 1, 2)), ("validation", (3,)), ("test", (4, 5))):
        for sub in ("image", "label"):
            (data / split / sub).mkdir(parents=True)
            for i in ids:
                Image.open(src / sub / f"{i}.png").save(data / split / sub / f"{i}.png")
    cfg = TrainConfig(epochs=1, batch=4, samples_per_epoch=8, device="cpu", preset="tiny")
    run = train(data, tmp_path / "run", data_cfg=DataConfig(size=64), cfg=cfg, progress=False)
    masks = {}
    for engine in ("torch", "onnxruntime"):
        predict(run, data / "test" / "image", tmp_path / engine, engine=engine, progress=False, precision="fp32")
        masks[engine] = [read_image(tmp_path / engine / f"{i}.png") for i in (4, 5)]
    for a, b in zip(masks["torch"], masks["onnxruntime"]):
        assert a.shape == (512, 512) and np.array_equal(a, b)
