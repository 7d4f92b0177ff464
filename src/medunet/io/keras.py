"""Read the layers and weights of a Keras HDF5 file with h5py alone (no Keras, no TensorFlow).

Layouts read:
- Keras 2 full model (`model.save("m.hdf5")`, `ModelCheckpoint`): root attribute `model_config`
  (JSON), group `model_weights` with attribute `layer_names`; each layer's group has attribute
  `weight_names` (e.g. `conv2d_1/kernel:0`) naming its datasets.
- Keras 2 `save_weights("m.h5")`: the same without `model_config`, `layer_names` at the root.
- Keras 3 legacy `.h5` (`model.save("m.h5")`): the Keras 2 layout, weight names without `:0`.
- Keras 3 `.weights.h5` (`model.save_weights`): `layers/<name>/vars/0, 1, ...`; no architecture.

Layers come in the model's topological order where the file has the architecture or the saved
`layer_names` (Keras writes `model.layers` in that order); a `.weights.h5` stores them by name, so
there they are ordered by Keras's creation numbering (`conv2d`, `conv2d_1`, …, `conv2d_10`).
Kernels stay as Keras stores them: `(kh, kw, in, out)` (HWIO).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medunet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KerasLayer:
    """One layer: its name, class and config when the file holds the architecture (else None and
    {}), the names of the layers feeding it, and its weights in stored order."""

    name: str
    class_name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    inbound: tuple[str, ...] = ()
    weights: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class KerasFile:
    """A Keras file's layers in model order, which layout it had and the Keras version that wrote it."""

    path: Path
    layout: str
    keras_version: str | None
    layers: tuple[KerasLayer, ...]
    input_shape: tuple[int | None, ...] | None = None   # (H, W, C) of the model's input, when known

    @property
    def has_architecture(self) -> bool:
        return any(layer.class_name for layer in self.layers)


def require_h5py() -> Any:
    """The h5py module, or one line saying how to install it."""
    try:
        import h5py
    except ImportError:
        raise ConfigError("reading a Keras HDF5 file needs h5py: pip install 'medunet[keras]'") from None
    return h5py


def read_keras(path: Path) -> KerasFile:
    """Layers and weights of a Keras HDF5 file (see the module's docstring for the layouts).

    Raises:
        DataError: a missing file, one that is not HDF5, or an HDF5 file without Keras weights.
    """
    h5py = require_h5py()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise DataError(f"{path}: not an HDF5 file (a Keras model saved as .h5/.hdf5 is expected)") from None
    with f:
        config = _model_config(f, path)
        version = _text(f.attrs.get("keras_version")) or _text(f.get("model_weights", f).attrs.get("keras_version"))
        if "layer_names" in f.get("model_weights", f).attrs:
            group = f.get("model_weights", f)
            layout = f"Keras {version or '2'} HDF5 " + ("model" if config else "weights")
            weights = {name: _legacy_weights(group[name]) for name in map(_text, group.attrs["layer_names"])}
            order = list(weights)
        elif "layers" in f:
            layout = f"Keras {version or '3'} .weights.h5"
            weights = {name: _vars(f["layers"][name]) for name in f["layers"]}
            order = sorted(weights, key=_creation_order)
        else:
            raise DataError(f"{path}: an HDF5 file without Keras weights (no model_weights/layer_names, no layers/)")
    layers = _layers(config, weights, order)
    return KerasFile(path, layout, version, tuple(layers), _input_shape(config))


def _creation_order(name: str) -> tuple[str, int]:
    """Keras numbers layers of a class as it creates them: conv2d, conv2d_1, …, conv2d_10."""
    base, _, number = name.rpartition("_")
    return (base, int(number)) if base and number.isdigit() else (name, -1)


def _text(value: Any) -> str:
    """h5py gives attribute strings as str (Keras 3) or bytes (Keras 2)."""
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _model_config(f: Any, path: Path) -> dict | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        config = json.loads(_text(raw))
        return config if isinstance(config.get("config", {}).get("layers"), list) else None
    except (ValueError, AttributeError):
        raise DataError(f"{path}: its model_config attribute is not the JSON Keras writes") from None


def _legacy_weights(group: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(group[name]) for name in map(_text, group.attrs.get("weight_names", [])))


def _vars(group: Any) -> tuple[np.ndarray, ...]:
    """A Keras 3 layer's `vars/0`, `vars/1`, … in index order (HDF5 lists names as text: 10 < 2)."""
    if "vars" not in group:
        return ()
    variables = group["vars"]
    return tuple(np.asarray(variables[k]) for k in sorted(variables, key=int))


def _layers(config: dict | None, weights: dict[str, tuple], order: list[str]) -> list[KerasLayer]:
    """The layers in the architecture's order when there is one (with weights attached by name),
    else in `order`."""
    if config is None:
        return [KerasLayer(name, weights=weights[name]) for name in order]
    return [KerasLayer(entry.get("name") or entry["config"]["name"], entry.get("class_name"), entry.get("config", {}),
                       _inbound(entry.get("inbound_nodes", [])),
                       weights.get(entry.get("name") or entry["config"]["name"], ()))
            for entry in config["config"]["layers"]]


def _inbound(nodes: Any) -> tuple[str, ...]:
    """Names of the layers feeding a layer, in argument order: Keras 2 writes `[name, 0, 0, {}]`
    entries, Keras 3 tensors with a `keras_history` of `[name, 0, 0]`."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "keras_history" in value:
                found.append(value["keras_history"][0])
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                found.append(value[0])
                return
            for item in value:
                walk(item)

    walk(nodes)
    return tuple(found)


def _input_shape(config: dict | None) -> tuple[int | None, ...] | None:
    """(H, W, C) of the model's InputLayer (Keras 2 `batch_input_shape`, Keras 3 `batch_shape`)."""
    if config is None:
        return None
    for entry in config["config"]["layers"]:
        if entry.get("class_name") == "InputLayer":
            shape = entry["config"].get("batch_shape") or entry["config"].get("batch_input_shape")
            return tuple(shape[1:]) if shape else None
    return None
