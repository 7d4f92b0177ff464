"""info(): the model card of a run folder, a checkpoint, or an ONNX / TorchScript export.

Preset and parameters, classes and their encoding, preprocessing, post-processing, what the
model was trained on (counts and sizes, never file names: they may carry patients' names),
validation and test Dice, and the versions that wrote it.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from medunet.data.pairs import read_split
from medunet.engine.checkpoint import find_checkpoint, load_checkpoint
from medunet.engine.ensemble import CV_FILE, ENSEMBLE_FILE
from medunet.engine.export import read_torchscript_metadata
from medunet.engine.metadata import checkpoint_from_metadata
from medunet.engine.metadata import model_card as checkpoint_card
from medunet.errors import CheckpointError

logger = logging.getLogger(__name__)


def info(source: Path) -> dict[str, Any]:
    """The card of `source`: a run folder, a medunet checkpoint, an `.onnx` or a TorchScript export.

    Raises:
        CheckpointError: a missing file, or one medunet did not write.
    """
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: no such run folder or file")
    if source.suffix.lower() == ".onnx":
        return _export_card(source, _onnx_metadata(source), "ONNX export")
    if source.is_file():
        meta = read_torchscript_metadata(source)
        if meta is not None:
            return _export_card(source, meta, "TorchScript export")
    if source.is_dir() and (source / ENSEMBLE_FILE).is_file():
        return _ensemble_card(source)
    if source.is_dir() and (source / CV_FILE).is_file():
        return _cv_card(source)
    path = find_checkpoint(source) if source.is_dir() else source
    run = source if source.is_dir() else (path.parent.parent if path.parent.name == "checkpoints" else None)
    card = checkpoint_card(load_checkpoint(path))
    card["source"] = {"kind": "run folder" if source.is_dir() else "checkpoint", "path": str(path)}
    if run is not None:
        if not card["training_data"]:   # checkpoints from before the summary was recorded: counts only
            card["training_data"] = _split_counts(run)
        card["test"] = test_scores(run)
    return card


def _cv_card(run: Path) -> dict[str, Any]:
    """A cross-validated run: fold 0's card (the folds share data, plan and network) with the
    cross-validation summary and the folds' validation Dice."""
    cv = _read_json(run / CV_FILE)
    card = info(run / "folds" / "0")
    card.update(source={"kind": f"cross-validated run ({cv.get('folds')} folds)", "path": str(run)},
                postprocess=cv.get("postprocess", {}), test=test_scores(run), epoch=None,
                validation_dice=(cv.get("mean") or {}).get("dice_mean"),
                cross_validation={k: cv.get(k) for k in ("folds", "mean", "sd", "per_fold")})
    return card


def _ensemble_card(run: Path) -> dict[str, Any]:
    """An ensemble run: its first member's card with the members and the out-of-fold Dice."""
    doc = _read_json(run / ENSEMBLE_FILE)
    card = info(Path(doc["members"][0]["run"]))
    card.pop("cross_validation", None)
    card.update(source={"kind": f"ensemble of {len(doc['members'])} run(s)", "path": str(run)},
                postprocess=doc.get("postprocess", {}), test=test_scores(run), epoch=None,
                validation_dice=doc.get("dice"), members=[m["run"] for m in doc["members"]])
    return card


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc})") from None


def _onnx_metadata(path: Path) -> dict[str, Any]:
    from medunet.engine import onnx_engine  # onnxruntime is an optional extra

    return onnx_engine.read_metadata(onnx_engine.open_session(path, torch.device("cpu")))


def _export_card(path: Path, meta: dict[str, Any], kind: str) -> dict[str, Any]:
    checkpoint_from_metadata(meta, path)   # refuses a file without medunet's metadata
    return {**meta.get("card", {}), "source": {"kind": kind, "path": str(path)}, "graph": meta.get("graph", {})}


def test_scores(run: Path) -> list[dict[str, Any]]:
    """Dice of each evaluation in the run folder (`RUN/eval-<split>/summary.json`)."""
    scores = []
    for summary in sorted(Path(run).glob("eval-*/summary.json")):
        try:
            s = json.loads(summary.read_text())
        except (OSError, ValueError):
            logger.warning("%s: unreadable, left out of the card", summary)
            continue
        scores.append({"split": summary.parent.name.removeprefix("eval-"), "n_images": s.get("n_images"),
                       "dice_mean": s.get("dice_mean"), "dice_global": s.get("dice_global")})
    return scores


def _split_counts(run: Path) -> dict[str, int]:
    try:
        return {name: len(pairs) for name, pairs in read_split(run / "split.json").items()}
    except Exception:  # no or a foreign split.json: the card goes without counts
        return {}


def format_card(card: dict[str, Any]) -> str:
    """The card as aligned lines for the terminal."""
    m = card.get("model_config", {})
    k = m.get("out_channels", 1)
    lines = [("source", f"{card['source']['kind']}: {card['source']['path']}"),
             ("preset", f"{card.get('preset')} ({card.get('parameters', 0):,} parameters)"),
             ("network", f"{m.get('in_channels')} channel(s) in, {k} out ({'sigmoid' if k == 1 else 'softmax'}), "
                         f"base width {m.get('base_width')}, depth {m.get('depth')}, norm {m.get('norm')}"),
             ("classes", ", ".join(f"{c['value']} {c['name']}" for c in card.get("classes", []))
              + f" ({card.get('labels')})"),
             ("preprocessing", card.get("preprocessing")),
             ("crop", f"{card.get('crop', {}).get('mode')}, {card.get('crop', {}).get('size')} px"),
             ("post-processing", _describe_post(card.get("postprocess", {}))),
             ("training data", _describe_data(card.get("training_data", {}))),
             ("validation Dice", _number(card.get("validation_dice"))
              + (f" (epoch {card['epoch']})" if card.get("epoch") else "")
              + (" (out of fold, mean over the folds ± {:.4f})".format(card["cross_validation"]["sd"]["dice_mean"] or 0)
                 if card.get("cross_validation") else ""))]
    if card.get("members"):
        lines.append(("members", ", ".join(card["members"])))
    for score in card.get("test", []):
        lines.append((f"{score['split']} Dice", f"{_number(score['dice_mean'])} mean, {_number(score['dice_global'])} "
                                                f"pooled ({score['n_images']} images)"))
    if card.get("origin"):
        lines.append(("origin", _describe_origin(card["origin"])))
    lines.append(("versions", f"medunet {card.get('medunet_version')}, torch {card.get('torch_version')}"))
    if card.get("graph"):
        lines.append(("export", _describe_graph(card["graph"])))
    return "\n".join(f"{name:<17}{value}" for name, value in lines)


def _number(value: Any) -> str:
    return "—" if value is None or value != value else f"{value:.4f}"


def _describe_post(post: dict[str, Any]) -> str:
    parts = [f"threshold {post.get('threshold', 0.5):g}"]
    parts += [f"{name} {post[name]}" for name in ("min_size", "keep_largest") if post.get(name)]
    return ", ".join(parts + (["fill_holes"] if post.get("fill_holes") else []))


def _describe_data(data: dict[str, Any]) -> str:
    if not data:
        return "not recorded"
    counts = ", ".join(f"{data[name]} {name}" for name in ("train", "validation", "test") if name in data)
    sizes = data.get("sizes")
    if sizes:
        more = data.get("distinct_sizes", len(sizes)) - len(sizes)
        counts += "; sizes (W×H) " + ", ".join(f"{size} ({n})" for size, n in sizes.items())
        counts += f" and {more} more" if more > 0 else ""
    if data.get("spacing_mm"):
        counts += "; spacing {:g} × {:g} mm".format(*data["spacing_mm"])
    return counts


def _describe_origin(origin: dict[str, Any]) -> str:
    if origin.get("kind") == "keras":
        return (f"imported from {origin.get('file')} ({origin.get('layout')}"
                + ("" if origin.get("architecture_checked") else ", weights only") + ")")
    if origin.get("kind") == "init":
        return f"first weights from {origin.get('from')}" + (f" ({_describe_origin(origin['origin'])})"
                                                            if origin.get("origin") else "")
    return json.dumps(origin)


def _describe_graph(graph: dict[str, Any]) -> str:
    text = f"{graph.get('format')}" + (f" opset {graph['opset']}" if graph.get("opset") else "") \
        + f", {graph.get('precision')}"
    check = graph.get("check")
    if check:
        text += f"; checked against torch: max probability difference {check['max_abs_probability_difference']:.2g}"
    return text
