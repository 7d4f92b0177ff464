"""Build the Keras tutorial's U-Net (zhixuhao/unet `model.py`) in Keras 3 on the torch backend and save it.

Usage: python tests/keras_tutorial.py OUT NAME:SIDE:WIDTH:DEPTH:CIN:K[:VARIANT] ... [--keras-init]

Each spec writes OUT/NAME.h5 (Keras 3 legacy HDF5), OUT/NAME.weights.h5 and OUT/NAME.npz (two
random uint8 images and the model's outputs on them / 255). VARIANT changes the architecture for
the refusal tests: `batchnorm` (a BatchNormalization layer), `reversed` (concatenate [up, skip]),
`headless` (no 2-channel 3×3 conv before the output). Weights are random normal with non-zero
biases (so that a wrong mapping shows), or Keras's own initialisers with --keras-init.
Run as a script: Keras chooses its backend when imported, so it never shares a process with the suite.
"""
from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402


def unet(side: int, width: int, depth: int, cin: int, k: int, variant: str = ""):
    import keras
    from keras import layers

    inputs = keras.Input((side, side, cin))
    x, skips = inputs, []
    for level in range(depth + 1):
        c = width * 2 ** level
        x = layers.Conv2D(c, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        if variant == "batchnorm" and level == 0:
            x = layers.BatchNormalization()(x)
        x = layers.Conv2D(c, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        if level >= depth - 1:
            x = layers.Dropout(0.5)(x)
        if level < depth:
            skips.append(x)
            x = layers.MaxPooling2D(2)(x)
    for level in reversed(range(depth)):
        c = width * 2 ** level
        up = layers.Conv2D(c, 2, activation="relu", padding="same", kernel_initializer="he_normal")(
            layers.UpSampling2D(2)(x))
        x = layers.concatenate([up, skips[level]] if variant == "reversed" else [skips[level], up], axis=3)
        x = layers.Conv2D(c, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
        x = layers.Conv2D(c, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
    if variant != "headless":
        x = layers.Conv2D(2, 3, activation="relu", padding="same", kernel_initializer="he_normal")(x)
    outputs = layers.Conv2D(k, 1, activation="sigmoid" if k == 1 else "softmax")(x)
    return keras.Model(inputs, outputs)


def randomise(model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([rng.normal(0, (2 / np.prod(w.shape[:-1])) ** 0.5 if w.ndim == 4 else 0.1,
                                          w.shape).astype("float32") for w in weights])


def main(argv: list[str]) -> None:
    out, specs = argv[0], [a for a in argv[1:] if not a.startswith("--")]
    for spec in specs:
        name, side, width, depth, cin, k, *variant = spec.split(":")
        side, width, depth, cin, k = (int(v) for v in (side, width, depth, cin, k))
        model = unet(side, width, depth, cin, k, variant[0] if variant else "")
        rng = np.random.default_rng(len(name))
        if "--keras-init" not in argv:
            randomise(model, rng)
        model.save(f"{out}/{name}.h5")
        model.save_weights(f"{out}/{name}.weights.h5")
        images = rng.integers(0, 256, (2, side, side, cin)).astype("uint8")
        probs = np.asarray(model.predict(images / 255.0, verbose=0))
        np.savez(f"{out}/{name}.npz", images=images, probs=probs)


if __name__ == "__main__":
    main(sys.argv[1:])
