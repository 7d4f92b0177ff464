"""predict(): a run's Predictor on a folder of images → masks at the originals' size and position."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from tqdm import tqdm

from medunet.api.outputs import staged_folder
from medunet.engine.predictor import Predictor
from medunet.io.images import mask_suffix, read_image, write_image, write_mask
from medunet.data.pairs import list_images
from medunet.report.overlay import draw_outlines
from medunet.transforms.geometry import Geometry

logger = logging.getLogger(__name__)

CHUNK = 16


def predict(run: Path, images_dir: Path, out: Path, *, overlay: bool = False, probabilities: bool = False,
            threshold: float | None = None, crop: int | None = None, device: str = "auto",
            batch: int = 4, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Write one mask per image of `images_dir` into `out` (same stem, same size); returns the mask paths.

    Masks use the training labels' encoding (0/255, 0/1 or class ids). `crop` sends a centred
    `crop`×`crop` box through the network and pastes the result into a full-size background canvas.
    """
    predictor = Predictor.from_checkpoint(Path(run), device, batch=batch, threshold=threshold)
    paths = list_images(Path(images_dir))
    written: list[Path] = []
    with staged_folder(Path(out), overwrite, "prediction folder") as stage:
        bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, leave=False)
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            images = [read_image(p) for p in chunk]
            geometries = [Geometry.centre_crop(*im.shape[:2], crop) if crop else Geometry.whole(*im.shape[:2])
                          for im in images]
            for path, image, probs in zip(chunk, images, predictor.probabilities(images, geometries)):
                classes = predictor.to_mask(probs)
                name = f"{path.stem}{mask_suffix(path)}"
                write_mask(stage / name, predictor.encoding.decode(classes), like=path)
                written.append(Path(out) / name)
                if overlay:
                    write_image(stage / f"{path.stem}_overlay.png", draw_outlines(image, classes))
                if probabilities:
                    _write_probabilities(stage / f"{path.stem}_prob.tif", probs)
            bar.update(len(chunk))
        bar.close()
    logger.info("%d masks written to %s", len(written), out)
    return written


def _write_probabilities(path: Path, probs: np.ndarray) -> None:
    """Float32 TIFF: `(H, W)` foreground probability, or `(C, H, W)` class probabilities."""
    tifffile.imwrite(path, probs[0] if probs.shape[0] == 1 else probs, compression="zlib")
