"""The on-disk cache: the RAM cache's arrays, keyed by data and preprocessing, built once, safely."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_split
from medunet.api.train import decode_dataset, train
from medunet.config import DataConfig, TrainConfig
from medunet.data import disk_cache
from medunet.data.cache import build_cache, read_split
from medunet.data.disk_cache import DiskCache, cache_key, open_or_build
from medunet.data.encoding import detect_encoding
from medunet.data.pairs import find_pairs
from medunet.engine.checkpoint import load_checkpoint
from medunet.errors import ConfigError

CPU = torch.device("cpu")
SETTINGS = DataConfig(size=32, scale=1, normalise="zscore", foreground_share=0.5)


@pytest.fixture
def split(tmp_path: Path) -> tuple[list, object]:
    pairs = find_pairs(write_split(tmp_path / "data" / "train", 5, [(40, 40), (30, 50)], seed=1))
    return pairs, detect_encoding(read_split(pairs).labels)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of the caches built (not reused) during a test."""
    built: list[str] = []
    real = disk_cache._build

    def counting(pairs, data_cfg, encoding, training, root, key, progress):
        built.append(key)
        return real(pairs, data_cfg, encoding, training, root, key, progress)

    monkeypatch.setattr(disk_cache, "_build", counting)
    return built


@pytest.mark.parametrize("training", [True, False])
def test_disk_cache_holds_the_ram_cache_arrays(split, tmp_path: Path, training: bool) -> None:
    pairs, enc = split
    cfg = DataConfig(size=32, scale=2, crop="center")
    ram = build_cache(read_split(pairs), cfg, enc, training=training)
    disk = open_or_build(pairs, cfg, enc, tmp_path / "cache", training=training, progress=False)
    assert len(disk) == len(ram) and disk.stems == ram.stems
    for i in range(len(ram)):
        assert disk.images[i].dtype == np.float32 and np.array_equal(disk.images[i], ram.images[i])
        assert disk.labels[i].dtype == np.uint8 and np.array_equal(disk.labels[i], ram.labels[i])
        assert np.array_equal(disk.foreground(i), ram.foreground(i))
    sub, ram_sub = disk.subset([3, 1]), ram.subset([3, 1])
    assert sub.stems == ram_sub.stems and np.array_equal(sub.images[0], ram_sub.images[0])


def test_a_change_in_data_or_preprocessing_rebuilds_and_nothing_else_does(split, tmp_path: Path, builds) -> None:
    pairs, enc = split
    root = tmp_path / "cache"
    open_or_build(pairs, SETTINGS, enc, root, progress=False)
    open_or_build(pairs, SETTINGS, enc, root, progress=False)
    # sampling settings are not cached: the same folder serves
    open_or_build(pairs, DataConfig(**{**SETTINGS.__dict__, "foreground_share": 0.9, "crop_margin": 3}),
                  enc, root, progress=False)
    assert len(builds) == 1
    open_or_build(pairs, DataConfig(**{**SETTINGS.__dict__, "normalise": "minmax"}), enc, root, progress=False)
    assert len(builds) == 2
    image = pairs[0].image
    image.write_bytes(image.read_bytes())   # same pixels, a new mtime: the files may have changed
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    open_or_build(pairs, SETTINGS, enc, root, progress=False)
    assert len(builds) == 3 and len(set(builds)) == 3


def test_a_killed_build_leaves_nothing_that_is_reused(split, tmp_path: Path, monkeypatch, builds) -> None:
    pairs, enc = split
    root = tmp_path / "cache"
    real, calls = disk_cache.cache_entry, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(disk_cache, "cache_entry", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        open_or_build(pairs, SETTINGS, enc, root, progress=False)
    key = cache_key(pairs, SETTINGS, enc, True)
    assert not (root / key).exists() and not (root / f"{key}.partial").exists()
    monkeypatch.setattr(disk_cache, "cache_entry", real)
    # a build killed without clean-up (SIGKILL) leaves its .partial folder: never trusted, rebuilt
    (root / f"{key}.partial" / "images").mkdir(parents=True)
    cache = open_or_build(pairs, SETTINGS, enc, root, progress=False)
    assert len(cache) == 5 and len(builds) == 2
    assert not (root / f"{key}.partial").exists()


def test_concurrent_builders_give_one_cache(split, tmp_path: Path, builds) -> None:
    pairs, enc = split
    root = tmp_path / "cache"
    caches: list[DiskCache] = []
    threads = [threading.Thread(target=lambda: caches.append(open_or_build(pairs, SETTINGS, enc, root, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len({c.folder for c in caches}) == 1 and all(len(c) == 5 for c in caches)
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == [caches[0].folder.name]


def test_two_processes_build_one_cache(tmp_path: Path) -> None:
    """Ranks on one node: separate processes, one flock; the second reuses the first's folder."""
    data = write_split(tmp_path / "data" / "train", 4, [(40, 40)], seed=2)
    script = (f"import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
              f"from medunet.data.pairs import find_pairs\nfrom medunet.data.cache import read_split\n"
              f"from medunet.data.encoding import detect_encoding\nfrom medunet.config import DataConfig\n"
              f"from medunet.data.disk_cache import open_or_build\npairs = find_pairs('{data}')\n"
              f"open_or_build(pairs, DataConfig(scale=1), detect_encoding(read_split(pairs).labels), "
              f"__import__('pathlib').Path('{tmp_path / 'cache'}'), progress=False)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    logs = "".join(p.communicate()[0] for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert logs.count("cache: building") == 1 and logs.count("cache: reusing") == 1, logs
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_indexed_decoding_plans_as_decoding_everything(disc_data: Path, tmp_path: Path) -> None:
    """The disk path keeps no pixels while it checks and fingerprints, and measures the same."""
    ram = decode_dataset(disc_data, DataConfig(), seed=0, cache="ram")
    disk = decode_dataset(disc_data, DataConfig(), seed=0, cache="disk", cache_dir=str(tmp_path / "c"))
    assert disk.disk == tmp_path / "c" and ram.disk is None
    assert disk.fingerprint == ram.fingerprint and disk.encoding == ram.encoding
    assert not any(isinstance(im, np.ndarray) for im in disk.train.images + disk.val.images)


def test_auto_chooses_disk_when_the_dataset_exceeds_the_ram_share(disc_data: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(disk_cache, "available_ram", lambda: 1000)
    caplog.set_level("INFO", logger="medunet.data.disk_cache")
    pairs = find_pairs(disc_data / "train")
    assert disk_cache.choose_cache("auto", pairs, False, disc_data) == "disk"
    assert "cache: disk" in caplog.text and "over 50%" in caplog.text
    monkeypatch.setattr(disk_cache, "available_ram", lambda: 10**12)
    assert disk_cache.choose_cache("auto", pairs, False, disc_data) == "ram"
    assert disk_cache.decoded_bytes(pairs) == sum(h * w * 5 for h, w in [(64, 64), (48, 80)] * 4)



def test_auto_counts_a_copy_per_process_on_the_machine(disc_data: Path, monkeypatch) -> None:
    """Under torchrun each process would hold its own RAM cache: 8 copies may not fit where 1 does."""
    pairs = find_pairs(disc_data / "train")
    need = disk_cache.decoded_bytes(pairs)
    monkeypatch.setattr(disk_cache, "available_ram", lambda: 4 * need)
    assert disk_cache.choose_cache("auto", pairs, False, disc_data) == "ram"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert disk_cache.choose_cache("auto", pairs, False, disc_data) == "disk"


def test_disk_and_ram_training_give_the_same_weights(disc_data: Path, tmp_path: Path) -> None:
    runs = {}
    for cache in ("ram", "disk"):
        cfg = TrainConfig(epochs=2, batch=4, samples_per_epoch=8, device="cpu", preset="tiny", deterministic=True,
                          cache=cache, cache_dir=str(tmp_path / "cache"))
        runs[cache] = train(disc_data, tmp_path / cache, data_cfg=DataConfig(size=32), cfg=cfg, progress=False)
    ram, disk = (load_checkpoint(runs[c] / "checkpoints" / "best.pt") for c in ("ram", "disk"))
    assert ram.train.get("val_dice") == disk.train.get("val_dice")
    for name, weight in ram.state_dict.items():
        assert torch.equal(weight, disk.state_dict[name]), name
    assert ram.postprocess == disk.postprocess


def test_resume_reuses_the_disk_cache(disc_data: Path, tmp_path: Path, builds) -> None:
    cfg = TrainConfig(epochs=1, batch=4, samples_per_epoch=8, device="cpu", preset="tiny", cache="disk",
                      cache_dir=str(tmp_path / "cache"))
    run = train(disc_data, tmp_path / "run", data_cfg=DataConfig(size=32), cfg=cfg, progress=False)
    assert len(builds) == 2   # training and validation roles
    train(disc_data, run, cfg=TrainConfig(epochs=2), resume=True, progress=False)
    assert len(builds) == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt").train["epoch"] == 2


def test_bad_cache_value_is_one_line(disc_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "medunet.cli", "train", str(disc_data), "--out", str(tmp_path / "r"),
                           "--cache", "ssd"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "--cache must be auto, ram or disk, got 'ssd'" in done.stderr


def test_folds_on_the_disk_cache_match_the_ram_cache(tmp_path: Path) -> None:
    disc_data = tmp_path / "data"   # one split: cross-validation pools them, and names must not repeat
    write_split(disc_data / "train", 11, [(64, 64), (48, 80)], seed=1)
    summaries = {}
    for cache in ("ram", "disk"):
        cfg = TrainConfig(epochs=1, batch=4, samples_per_epoch=8, device="cpu", preset="tiny", deterministic=True,
                          cache=cache, cache_dir=str(tmp_path / "cache"))
        run = train(disc_data, tmp_path / cache, data_cfg=DataConfig(size=32), cfg=cfg, progress=False, folds=2)
        summaries[cache] = json.loads((run / "cv.json").read_text())
    for summary in summaries.values():
        summary.pop("seconds")
    assert summaries["ram"] == summaries["disk"]


def test_disk_cache_on_volumes_is_refused_in_one_line(tmp_path: Path) -> None:
    from volume_data import volume_dataset

    data = volume_dataset(tmp_path / "vol", {"train": 2})
    with pytest.raises(ConfigError, match="--cache disk is for 2D images") as caught:
        decode_dataset(data, DataConfig(), seed=0, cache="disk")
    assert "\n" not in str(caught.value)
    assert decode_dataset(data, DataConfig(), seed=0, cache="auto").disk is None


def test_a_sampler_over_a_disk_cache_reads_no_file_to_find_its_regions(split, tmp_path: Path, monkeypatch) -> None:
    """Random crops need only the images' shapes, which the cache's index holds: building the
    sampler (or sizing the cache for the GPU) over 30,000 cached images must not read 30,000 files."""
    from medunet.data.sampler import CropSampler
    from medunet.engine.feeder import cache_bytes

    pairs, enc = split
    disk = open_or_build(pairs, SETTINGS, enc, tmp_path / "cache", progress=False)
    ram = build_cache(read_split(pairs), SETTINGS, enc)
    reads: list[Path] = []
    real = disk_cache.Layout.read
    monkeypatch.setattr(disk_cache.Layout, "read", lambda self, path, k: reads.append(path) or real(self, path, k))
    sampler = CropSampler(disk, 32, np.random.default_rng(0))
    assert cache_bytes(disk) == cache_bytes(ram)
    assert not [p for p in reads if p.parent.name == "labels"]
    assert sampler.regions == CropSampler(ram, 32, np.random.default_rng(0)).regions
    assert sampler.widths == [label.shape[1] for label in ram.labels]
