"""The `medunet` command: arguments → configs → API call; user errors → one line and exit code 2."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from medunet import __version__
from medunet.errors import ConfigError, MedunetError, RunInterrupted

logger = logging.getLogger("medunet")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (argparse's own exit code is already 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_duration(text: str) -> float:
    """"90s", "10m", "1h30m" or plain seconds → seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 10m, 1h30m)")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None
    return lo, hi


def _slice_axis(text: str) -> int | str:
    """"auto" → each case's through-plane axis; z, y, x or 0, 1, 2 → that array axis of (Z, Y, X)."""
    axes = {"auto": "through-plane", "z": 0, "y": 1, "x": 2, "0": 0, "1": 1, "2": 2}
    if text.lower() not in axes:
        raise argparse.ArgumentTypeError(f"expected auto, z, y or x (or 0, 1, 2), got {text!r}")
    return axes[text.lower()]


def _target_spacing(text: str) -> tuple[float, float] | str:
    """"median", "off", or ROW,COL in mm."""
    if text.lower() in ("median", "off"):
        return text.lower()
    try:
        row, col = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected median, off or ROW,COL in mm, got {text!r}") from None
    return row, col


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in whole pixels, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"box width and height must be positive, got {text!r}")
    return x, y, w, h


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="medunet", description="2D medical image segmentation with U-Net.")
    parser.add_argument("--version", action="version", version=f"medunet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and the final result")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors and the final result")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub.add_parser("train", parents=[common], help="train a U-Net on DATA/train (and validation/)"))
    _add_plan(sub.add_parser("plan", parents=[common], help="the settings train would choose for DATA, with reasons"))
    _add_ensemble(sub.add_parser("ensemble", parents=[common],
                                 help="combine cross-validated runs, choosing the members by out-of-fold Dice"))
    _add_evaluate(sub.add_parser("evaluate", parents=[common], help="metrics of a run on a labelled split"))
    _add_predict(sub.add_parser("predict", parents=[common], help="masks for a folder of images"))
    _add_demo(sub.add_parser("demo", parents=[common], help="the whole workflow on generated CT-like data"))
    _add_doctor(sub.add_parser("doctor", parents=[common], help="check a dataset for data traps; --fix writes a cleaned copy"))
    _add_augment(sub.add_parser("augment", parents=[common], help="write augmented copies of a split (augment-to-N)"))
    _add_tune(sub.add_parser("tune", parents=[common], help="choose threshold and clean-up on validation data"))
    _add_report(sub.add_parser("report", parents=[common], help="one HTML page: config, curves, metrics, overlays"))
    _add_export(sub.add_parser("export", parents=[common],
                               help="the network as ONNX or TorchScript, with its metadata"))
    _add_import_keras(sub.add_parser("import-keras", parents=[common],
                                     help="a Keras model of the tutorial's U-Net (.h5/.hdf5) → a run folder"))
    _add_info(sub.add_parser("info", parents=[common], help="the model card of a run, checkpoint or export"))
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="folder with train/image, train/label (validation/, test/ optional)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<data name>)")
    _add_settings(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    p.add_argument("--init", type=Path, metavar="RUN",
                   help="start from the network and weights of RUN (a run, checkpoint or imported Keras model); "
                        "its normalisation is kept unless --normalise/--window/--percentiles is given")
    p.add_argument("--folds", type=int, metavar="K",
                   help="cross-validate: K folds (whole --group-by groups, else cases) inside the one budget; "
                        "predict then averages the folds")


def _add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", type=Path, nargs="+", help="cross-validated runs (trained with --folds) of the same data")
    p.add_argument("--out", type=Path, required=True, help="the ensemble run folder")
    p.add_argument("--overwrite", action="store_true")


def _add_plan(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="folder with train/image, train/label (validation/, test/ optional)")
    p.add_argument("--out", type=Path, help="also write the plan as JSON to this file")
    _add_settings(p)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The training settings; each one given overrides the plan's choice for it (train and plan)."""
    p.add_argument("--preset", default="auto", help="seed | standard | small | tiny (default: the plan's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int)
    budget.add_argument("--time", type=parse_duration, help="time budget, e.g. 10m; stops at an epoch boundary")
    p.add_argument("--patience", type=int, default=10,
                   help="without --epochs/--time: stop after this many epochs without a better validation Dice")
    p.add_argument("--size", type=int, help="training crop size (default: the plan's)")
    p.add_argument("--scale", type=int,
                   help="input scale 1/SCALE: images shrink by this factor for the network, masks come back "
                        "full size (default: the plan's)")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--deep-supervision", action="store_true",
                   help="also train 1×1 heads at 1/2 and 1/4 resolution (nnU-Net's deep supervision)")
    p.add_argument("--ema", type=float, default=0.0, help="decay per step of an average of the weights that is "
                                                           "validated and saved (e.g. 0.99; 0: off)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", default="auto", help="augmentation preset: default | upright (no mirrors) | flips | "
                                                     "seed | none (default: the plan's, by how often the run "
                                                     "sees each pixel)")
    p.add_argument("--normalise", help="zscore | minmax | window | percentile | ct (default: the plan's; "
                                       "volumes: ct for CT, else z-score per volume)")
    p.add_argument("--window", type=_pair, help="LOW,HIGH intensity window (implies --normalise window)")
    p.add_argument("--percentiles", type=_pair,
                   help="LOW,HIGH clip percentiles, default 0.5,99.5 (implies --normalise percentile)")
    p.add_argument("--crop-mode", default="random",
                   help="random | center | label_box: where training crops come from (center: predict does the same)")
    p.add_argument("--crop-margin", type=int, default=16, help="pixels around the label box for label_box")
    p.add_argument("--foreground-share", type=float,
                   help="share of training crops centred on foreground (default: the plan's)")
    p.add_argument("--label-mode", default="auto", help="auto | binary | classes")
    p.add_argument("--samples-per-epoch", type=int, help="epoch length in crops (default: the plan's steps)")
    p.add_argument("--steps-per-epoch", type=int, help="epoch length in optimiser steps (default: the plan's)")
    p.add_argument("--val-every", type=int, metavar="N",
                   help="validate and save checkpoints every N epochs and after the last (default: the plan's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step's network")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="train on N GPUs of this machine: runs this command under torchrun with N processes")
    p.add_argument("--deterministic", action="store_true", help="bit-reproducible on CPU (slower; auto precision is fp32)")
    p.add_argument("--cache", default="auto",
                   help="ram | disk | auto: preprocessed images in RAM, or memory-mapped files built once "
                        "(auto: disk when the dataset would take over half the available RAM)")
    p.add_argument("--cache-dir", help="folder of the disk caches (default: $MEDUNET_CACHE_DIR or ~/.cache/medunet)")
    _add_precision(p)
    p.add_argument("--group-by", metavar="REGEX",
                   help="the regex's first match in a file stem names its group (patient, sequence): "
                        "the validation split keeps groups whole, e.g. '^[^_]+' or 'patient(\\d+)'")
    volumes = p.add_argument_group("volumes")
    volumes.add_argument("--slice-axis", type=_slice_axis,
                         help="auto (each case's largest spacing) | z | y | x: the axis a volume is sliced along")
    volumes.add_argument("--spacing", type=_target_spacing, dest="target_spacing", metavar="median|off|ROW,COL",
                         help="in-plane resampling: median (of the cases), off, or ROW,COL mm (default: the "
                              "plan's: the median when cases differ by more than 5%%, else off)")
    volumes.add_argument("--context", type=int, metavar="K",
                         help="2.5D: K slices either side as extra input channels (default: the plan's)")
    volumes.add_argument("--class-names", type=_names, metavar="A,B,...",
                         help="names of the foreground classes in id order, for DICOM-SEG/RTSTRUCT "
                              "(default: DATA/classes.json when present)")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder, checkpoint or .onnx export")
    p.add_argument("split_dir", type=Path, help="folder with image/ and label/")
    p.add_argument("--out", type=Path, help="default RUN/eval-<split name>")
    p.add_argument("--threshold", type=float)
    p.add_argument("--spacing", metavar="ROW,COL",
                   help="pixel size in mm for HD95 and ASSD (default: from TIFF files in cm or with an "
                        "ImageJ unit when every image has one, else pixels)")
    _add_inference(p)
    p.add_argument("--overwrite", action="store_true")


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", type=Path, nargs="+", metavar="[RUN] IMAGES",
                   help="run folder, checkpoint or .onnx export (left out with --model), then the folder of images")
    p.add_argument("--model", type=Path, metavar="FILE.onnx", help="an exported model instead of a run folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument("--probabilities", action="store_true", help="also write <stem>_prob.tif (float32)")
    p.add_argument("--threshold", type=float)
    p.add_argument("--crop", type=int, help="centred N×N crop through the network, pasted back")
    p.add_argument("--crop-box", type=_box, help="X,Y,W,H box of every image through the network, pasted back")
    p.add_argument("--boxes", type=Path, help="CSV of stem,x,y,w,h: one box per image")
    p.add_argument("--batch", type=int, default=4)
    dicom = p.add_argument_group("volumes and DICOM")
    dicom.add_argument("--dicom-seg", action="store_true", help="for a DICOM series: also <stem>_seg.dcm (DICOM Segmentation)")
    dicom.add_argument("--rtstruct", action="store_true", help="for a DICOM series: also <stem>_rtstruct.dcm (RT Structure Set)")
    dicom.add_argument("--series-uid", metavar="UID", help="the series to read from a folder holding several")
    dicom.add_argument("--class-names", type=_names, metavar="A,B,...",
                       help="names of the foreground classes in id order (default: the run's)")
    p.add_argument("--shard", metavar="I/N",
                   help="predict only inputs I, I+N, I+2N, ... of the sorted list (I counts from 0: 0/2 and 1/2), "
                        "N processes or machines writing into one --out; the last to finish merges flags.csv. "
                        "Default under torchrun: RANK/WORLD_SIZE")
    _add_inference(p)
    p.add_argument("--overwrite", action="store_true")


def _add_inference(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", default="auto",
                   help="auto | torch | onnxruntime: what runs the network (onnxruntime: pip install 'medunet[onnx]')")
    p.add_argument("--tta", default="none", help="none | flips: average the flipped predictions (the flips the network was trained with)")
    p.add_argument("--max-size", type=int, default=1024, help="larger images are predicted in tiles")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap (Gaussian-blended)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="ignore the tuned threshold and clean-up steps: threshold 0.5 (or --threshold), no clean-up")
    p.add_argument("--keep-largest", type=int, metavar="K", help="keep the K largest objects of each class (0: off)")
    p.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, help="fill holes in objects (or not)")
    p.add_argument("--min-size", type=int, metavar="PX", help="remove objects under PX pixels (0: off)")
    p.add_argument("--folds", type=_folds, metavar="K,K",
                   help="a cross-validated run: average only these folds, e.g. 0,2 (default: all)")
    p.add_argument("--fast", action="store_true",
                   help="a cross-validated run: its best fold alone, without TTA")
    _add_precision(p)


def _folds(text: str) -> tuple[int, ...]:
    try:
        folds = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 0,2, got {text!r}") from None
    if not folds or min(folds) < 0:
        raise argparse.ArgumentTypeError(f"expected fold numbers like 0,2, got {text!r}")
    return folds


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto",
                   help="auto | bf16 | fp16 | fp32 (auto: the fastest on this machine, by a few timed steps)")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seed", type=int, default=0, help="seed of the training run (the data are always the same)")
    p.add_argument("--volumes", action="store_true", help="synthetic CT-like volumes (NIfTI) instead of slices")
    p.add_argument("--device", default="auto")
    _add_precision(p)
    p.add_argument("--overwrite", action="store_true")


def _add_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", type=Path, help="DATA with train/ (validation/, test/), or one folder with image/ and label/")
    p.add_argument("--fix", type=Path, metavar="OUT", help="write a cleaned copy to OUT (new or empty, outside DATA)")


def _add_augment(p: argparse.ArgumentParser) -> None:
    p.add_argument("split_dir", type=Path, help="folder with image/ and label/, e.g. DATA/train")
    p.add_argument("--to", type=int, default=0, help="number of augmented pairs to write")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="seed", help="augmentation preset (default: the tutorial's, seed)")
    p.add_argument("--preview", type=int, default=0, help="also write preview.png with N samples and outlines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")


def _add_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder or checkpoint")
    p.add_argument("split_dir", type=Path, nargs="?", help="labelled split (default: the run's validation split)")
    p.add_argument("--device", default="auto")
    _add_precision(p)


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--eval", dest="eval_dir", type=Path, help="evaluation folder (default: the newest RUN/eval-*)")
    p.add_argument("--out", type=Path, help="HTML file (default RUN/report.html)")


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder or checkpoint")
    p.add_argument("--format", default="onnx", help="onnx | torchscript")
    p.add_argument("--out", type=Path, help="FILE (default RUN/model.onnx or RUN/model.torchscript.pt); "
                                            "FILE.json beside it gets the metadata")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="ONNX graph in float16 inside (float32 in and out)")
    p.add_argument("--overwrite", action="store_true")


def _add_import_keras(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="Keras .h5/.hdf5 model or .weights.h5 of the tutorial's U-Net")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--input-size", type=int, help="training crop side to record (default: the model's input, else 256)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (the tutorial's 0.5)")
    p.add_argument("--overwrite", action="store_true")


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="run folder, checkpoint, .onnx or TorchScript export")
    p.add_argument("--json", action="store_true", help="the card as JSON")


PAIR_OPTIONS = ("--window", "--percentiles")


def _normalisation(args: argparse.Namespace) -> str | None:
    """--window or --percentiles alone choose their normalisation; with another one they would be
    silently ignored, so that is refused. None when no option chose one."""
    implied = "window" if args.window else "percentile" if args.percentiles else None
    if args.window and args.percentiles:
        raise ConfigError("--window and --percentiles are two different normalisations: give one")
    if implied and args.normalise not in (None, implied):
        option = "--window" if implied == "window" else "--percentiles"
        raise ConfigError(f"{option} applies only with --normalise {implied}, not {args.normalise}")
    return args.normalise or implied or "auto"


def _under_torchrun(gpus: int, full_argv: list[str]) -> int | None:
    """`--gpus N`: this same command again under torchrun, N processes on this node (without
    --gpus); its exit code. N = 1, or already under torchrun: nothing to do, train here."""
    import os
    import subprocess

    from medunet.errors import ConfigError

    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    if gpus == 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    argv, rest = [], iter(full_argv)
    for arg in rest:
        if arg == "--gpus":
            next(rest, None)
        elif not arg.startswith("--gpus="):
            argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "medunet", *argv]
    logging.getLogger("medunet").info("running under torchrun: %s", " ".join(command[1:]))
    return subprocess.call(command)


def _run(args: argparse.Namespace) -> int:
    """Run the command; the exit code (0, or 2 when `doctor` found errors)."""
    progress = not args.quiet and sys.stderr.isatty()
    return COMMANDS[args.command](args, progress) or 0


def _settings(args: argparse.Namespace):
    """(DataConfig, TrainConfig) of the settings flags; those not given stay open for the plan."""
    from medunet.config import DataConfig, TrainConfig

    data_cfg = DataConfig(size=args.size, scale=args.scale, normalise=_normalisation(args), window=args.window,
                          percentiles=args.percentiles or (0.5, 99.5), crop=args.crop_mode, crop_margin=args.crop_margin,
                          foreground_share=args.foreground_share, label_mode=args.label_mode, group_by=args.group_by,
                          slice_axis=args.slice_axis, target_spacing=args.target_spacing, context=args.context,
                          class_names=tuple(args.class_names) if args.class_names else None)
    cfg = TrainConfig(preset=args.preset, epochs=args.epochs, time_budget=args.time, batch=args.batch,
                      lr=args.lr, device=args.device, seed=args.seed, augment=args.augment,
                      samples_per_epoch=args.samples_per_epoch, steps_per_epoch=args.steps_per_epoch,
                      val_every=args.val_every, compile=args.compile, deterministic=args.deterministic,
                      precision=args.precision, patience=args.patience, ema=args.ema,
                      deep_supervision=args.deep_supervision, cache=args.cache, cache_dir=args.cache_dir)
    return data_cfg, cfg


def _train(args: argparse.Namespace, progress: bool) -> int | None:
    import medunet

    data_cfg, cfg = _settings(args)
    if args.gpus is not None:
        return _under_torchrun(args.gpus, args.argv)
    run = medunet.train(args.data, args.out, data_cfg=data_cfg, cfg=cfg, overwrite=args.overwrite,
                        resume=args.resume, progress=progress, init=args.init, folds=args.folds)
    if os.environ.get("RANK", "0") == "0":   # under torchrun: once, not once per process
        print(f"run folder: {run}")


def _plan(args: argparse.Namespace, progress: bool) -> None:
    import medunet

    data_cfg, cfg = _settings(args)
    print("\n".join(medunet.plan(args.data, data_cfg=data_cfg, cfg=cfg, out=args.out).lines()))


def _evaluate(args: argparse.Namespace, progress: bool) -> None:
    import medunet

    summary = medunet.evaluate(args.run, args.split_dir, args.out, overwrite=args.overwrite, spacing=args.spacing,
                               **_inference_options(args))
    print(format_summary(summary))


def _predict(args: argparse.Namespace, progress: bool) -> None:
    import medunet

    run, images = _model_and_images(args)
    shard = _shard(args.shard)
    written = medunet.predict(run, images, args.out, overlay=args.overlay,
                              probabilities=args.probabilities, crop_box=args.crop_box, boxes=args.boxes,
                              overwrite=args.overwrite, progress=progress, crop=args.crop, batch=args.batch,
                              dicom_seg=args.dicom_seg, rtstruct=args.rtstruct, series_uid=args.series_uid,
                              class_names=args.class_names, shard=shard, **_inference_options(args))
    print(f"{len(written)} masks written to {args.out}" + (f" (shard {shard})" if shard else ""))


def _shard(text: str | None) -> Shard | None:
    """--shard I/N, else the launcher's RANK/WORLD_SIZE (torchrun sets both), else None."""
    import os

    from medunet.io.shards import Shard

    if text is not None:
        return Shard.parse(text)
    shard = Shard.from_env(os.environ)
    if shard is not None and os.environ.get("LOCAL_RANK", "").isdigit():
        _use_local_gpu(int(os.environ["LOCAL_RANK"]))
    return shard


def _use_local_gpu(local_rank: int) -> None:
    """torchrun starts one process per GPU of a machine: process LOCAL_RANK takes that GPU as "cuda",
    rather than all of them sharing the first."""
    import torch

    if torch.cuda.device_count() > 1:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


def _model_and_images(args: argparse.Namespace) -> tuple[Path, Path]:
    """`predict RUN IMAGES` or `predict --model FILE.onnx IMAGES`."""
    if args.model is not None:
        if len(args.paths) != 1:
            raise ConfigError("with --model FILE, give only the folder of images (no RUN)")
        return args.model, args.paths[0]
    if len(args.paths) != 2:
        raise ConfigError("give RUN and IMAGES (or --model FILE.onnx and IMAGES)")
    return args.paths[0], args.paths[1]


def _export(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.export import export

    out = export(args.run, args.format, args.out, opset=args.opset, fp16=args.fp16, overwrite=args.overwrite)
    print(f"exported to {out} (metadata also in {out.name}.json)")


def _import_keras(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.import_keras import import_keras

    run = import_keras(args.model, args.out, input_size=args.input_size, threshold=args.threshold,
                       overwrite=args.overwrite)
    print(f"run folder: {run}")


def _info(args: argparse.Namespace, progress: bool) -> None:
    import json

    from medunet.api.info import format_card, info

    card = info(args.source)
    print(json.dumps(card, indent=2) if args.json else format_card(card))


def _doctor(args: argparse.Namespace, progress: bool) -> int:
    from medunet.api.doctor import doctor
    from medunet.data.doctor import format_report

    report = doctor(args.data, fix_out=args.fix)
    print(format_report(report))
    return 0 if report.ok else 2


def _augment(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.augment import augment

    out = augment(args.split_dir, args.out, to=args.to, preset=args.preset, preview=args.preview,
                  seed=args.seed, overwrite=args.overwrite)
    print(f"{args.to} augmented pairs written to {out}" + (f"; preview: {out / 'preview.png'}" if args.preview else ""))


def _tune(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.tune import tune

    result = tune(args.run, args.split_dir, device=args.device, precision=args.precision)
    for step in result.steps:
        print(f"{step.description:<40} Dice {step.dice_before:.4f} → {step.dice_after:.4f}"
              f"  {'kept' if step.kept else 'not kept'}")
    if args.quiet:  # otherwise the API's log line has already said it
        print(f"chosen: {result.config.describe()} (validation Dice {result.baseline_dice:.4f} → {result.dice:.4f})")


def _report(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.report import report

    print(f"report written to {report(args.run, args.eval_dir, args.out)}")


def _demo(args: argparse.Namespace, progress: bool) -> None:
    import medunet

    summary = medunet.demo(args.out, seed=args.seed, device=args.device, precision=args.precision,
                           overwrite=args.overwrite, progress=progress, volumes=args.volumes)
    print(format_summary(summary))
    print(f"demo finished in {summary['seconds']:.0f} s: test Dice {summary['dice_mean']:.4f}\n"
          f"  data        {summary['data']}\n  run         {summary['run']}\n"
          f"  evaluation  {summary['out']}\n  predictions {summary['predictions']} (masks and overlays)")


def _ensemble(args: argparse.Namespace, progress: bool) -> None:
    from medunet.api.ensemble import ensemble

    record = ensemble(args.runs, args.out, overwrite=args.overwrite)
    for c in record["candidates"]:
        print(f"{' + '.join(Path(r).name for r in c['runs']):<50} out-of-fold Dice {c['dice']:.4f}")
    print(f"ensemble of {', '.join(Path(m['run']).name for m in record['members'])} written to {args.out}")


COMMANDS = {"train": _train, "plan": _plan, "ensemble": _ensemble, "evaluate": _evaluate, "predict": _predict, "doctor": _doctor,
            "augment": _augment, "tune": _tune, "report": _report, "demo": _demo, "export": _export,
            "import-keras": _import_keras, "info": _info}


def _inference_options(args: argparse.Namespace) -> dict:
    return dict(threshold=args.threshold, device=args.device, engine=args.engine, tta=args.tta, max_size=args.max_size,
                overlap=args.overlap, postprocess=not args.no_postprocess, keep_largest=args.keep_largest,
                fill_holes=args.fill_holes, min_size=args.min_size, precision=args.precision, folds=args.folds,
                fast=args.fast)


def format_summary(summary: dict) -> str:
    """A short table of the headline metrics; Dice first, accuracy last (it flatters empty masks).
    An undefined value (NaN in memory, null in summary.json) shows as "undefined"."""
    def num(value: object, digits: int = 4) -> str:
        return "undefined" if value is None or value != value else f"{value:.{digits}f}"

    excluded = summary.get("n_empty_both", 0)
    unit = f"{summary.get('unit', 'image')}s"
    lines = [f"{unit:<17} {summary['n_images']}" + (" (3D metrics per case)" if unit == "cases" else "")
             + (f" ({excluded} empty in truth and prediction: left out of the means)" if excluded else ""),
             f"Dice (mean)       {num(summary['dice_mean'])}"
             + ("  (no image left to average)" if excluded and excluded == summary["n_images"] else ""),
             f"Dice (pooled)     {num(summary['dice_global'])}",
             f"IoU (mean)        {num(summary['iou_mean'])}",
             f"precision (mean)  {num(summary['precision_mean'])}",
             f"recall (mean)     {num(summary['recall_mean'])}",
             f"pixel accuracy    {num(summary['accuracy_mean'])}  (high even for empty predictions)"]
    if "hd95_mean" in summary:
        unit = summary["distance_unit"]
        lines += [f"HD95 (median)     {num(summary['hd95_median'], 2)} {unit}",
                  f"ASSD (median)     {num(summary['assd_median'], 2)} {unit}"]
    for k, c in summary.get("per_class", {}).items():
        lines.append(f"class {k}: Dice (mean) {num(c['dice_mean'])}, pooled {num(c['dice_global'])}"
                     + (f", {c['n_empty_both']} image(s) empty in both left out" if c.get("n_empty_both") else ""))
    if summary.get("n_empty_truth"):
        lines.append(f"{summary['n_empty_truth']} image(s) with empty truth: {excluded} predicted empty "
                     f"(left out), {summary['n_empty_truth'] - excluded} with a false positive (Dice 0)")
    return "\n".join(lines)


def _join_negative_pairs(argv: list[str]) -> list[str]:
    """`--window -200,300` → `--window=-200,300`: argparse takes "-200,300" for an option (CT windows
    start below zero), so a LOW,HIGH value that starts with a minus is attached to its option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in PAIR_OPTIONS and re.fullmatch(r"-[\d.]+,-?[\d.]+", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _join_negative_pairs(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and bad options: argparse has printed its line
        return int(exc.code or 0)
    args.argv = argv   # the command as given (train --gpus runs it again under torchrun)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        code = _run(args)
    except RunInterrupted as exc:
        print(f"medunet {args.command}: {exc}", file=sys.stderr)
        return 130
    except MedunetError as exc:
        print(f"medunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medunet: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, keep the traceback
            raise
        print(f"medunet {args.command}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
