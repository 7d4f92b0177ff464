"""Batch feeders: every way of cutting a batch gives the sampler's batches, in order."""
from __future__ import annotations

import numpy as np
import torch

from medunet.data.cache import Cache
from medunet.data.sampler import CropSampler
from medunet.engine.feeder import DeviceFeeder, InlineFeeder, ThreadFeeder, cache_bytes


def _cache(n: int = 5) -> Cache:
    rng = np.random.default_rng(3)
    shapes = [(40, 56), (64, 64), (30, 90), (70, 50), (64, 80)][:n]
    images = [rng.normal(size=(2, h, w)).astype(np.float32) for h, w in shapes]
    labels = [(rng.random((h, w)) > 0.8).astype(np.uint8) for h, w in shapes]
    return Cache([f"c{i}" for i in range(n)], images, labels)


def _sampler(cache: Cache) -> CropSampler:
    return CropSampler(cache, 48, np.random.default_rng(11), foreground_share=0.5)


def _batches(feeder, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    feeder.start(steps)
    out = []
    for _ in range(steps):
        x, y = feeder.next()
        out.append((x.cpu().numpy().copy(), y.cpu().numpy().copy()))
    feeder.close()
    return out


def test_every_feeder_gives_the_samplers_batches() -> None:
    cache, cpu = _cache(), torch.device("cpu")
    plain = _sampler(cache)
    expected = [plain.batch(4) for _ in range(6)]
    for make in (InlineFeeder, ThreadFeeder, DeviceFeeder):
        got = _batches(make(_sampler(cache), 4, cpu), 6)
        for (x, y), (ex, ey) in zip(got, expected):
            assert np.array_equal(x, ex) and np.array_equal(y, ey), make.__name__


def test_a_sampler_stands_at_the_same_place_after_an_epoch_whatever_the_feeder() -> None:
    """A checkpoint records the sampler's random stream at the epoch boundary: a feeder that ran
    ahead must not have drawn beyond it."""
    cache = _cache()
    states = []
    for make in (InlineFeeder, ThreadFeeder, DeviceFeeder):
        sampler = _sampler(cache)
        _batches(make(sampler, 4, torch.device("cpu")), 3)
        states.append(sampler.rng.bit_generator.state["state"]["state"])
    assert len(set(states)) == 1


def test_cache_bytes_counts_images_and_labels() -> None:
    cache = _cache(2)
    assert cache_bytes(cache) == sum(im.nbytes for im in cache.images) + sum(la.nbytes for la in cache.labels)
