"""Sharded prediction: N processes split the sorted inputs (I, I+N, ...) and write one folder whose
merged flags.csv and masks equal those of a single run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_split
from medunet.cli import main
from medunet.errors import ConfigError
from medunet.io.shards import Shard, shard_folder


def _images(root: Path, n: int) -> Path:
    """`n` disc images of three sizes, and one blank image (its prediction is flagged as empty)."""
    images = write_split(root, n, [(64, 64), (48, 80), (61, 77)], seed=5) / "image"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(images / "blank.png")
    return images


def _predict(run: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["-q", "predict", str(run), str(images), "--out", str(out), "--device", "cpu", *extra])


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_split_is_deterministic_disjoint_and_covers_the_inputs(count: int) -> None:
    items = [f"{i:02d}" for i in range(5)]
    parts = [Shard(i, count).take(items) for i in range(count)]
    assert parts == [Shard(i, count).take(items) for i in range(count)]
    assert parts[0] == items[0::count] and sorted(sum(parts, [])) == items
    assert sum(len(p) for p in parts) == len(items)  # disjoint
    if count > len(items):
        assert parts[-1] == []


def test_shard_from_the_launcher_environment() -> None:
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(1, 4)
    assert Shard.from_env({"LOCAL_RANK": "0"}) is None and Shard.from_env({}) is None


@pytest.mark.parametrize("value", ["3/2", "a/b", "0/0", "-1/2", "1", "1/2/3"])
def test_bad_shard_values_are_one_line_and_exit_2(value: str, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "images"), "--out", str(tmp_path / "p"),
                 f"--shard={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--shard" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_bad_launcher_environment_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "images"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RANK=2, WORLD_SIZE=2" in err


def test_shards_merged_equal_a_single_run(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    images = _images(tmp_path / "new", 6)
    assert _predict(tiny_run, images, tmp_path / "single", "--overlay") == 0
    shared = tmp_path / "shared"
    monkeypatch.setenv("RANK", "1")  # as torchrun sets them; --shard wins over them
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _predict(tiny_run, images, shared, "--overlay", "--shard", "0/2") == 0
    assert not (shared / "flags.csv").exists() and (shared / ".shards" / "flags-0-of-2.csv").is_file()
    assert {"000.png", "002.png", "004.png", "blank.png"} <= set(os.listdir(shared))
    assert "001.png" not in os.listdir(shared)  # 000, 001, ..., 005, blank: shard 0 takes 0, 2, 4, blank
    assert _predict(tiny_run, images, shared, "--overlay") == 0  # shard 1/2 from RANK, WORLD_SIZE
    single = _contents(tmp_path / "single")
    assert _contents(shared) == single  # masks, overlays, flags.csv, the marker; no .shards left
    assert b"blank" in single["flags.csv"]


def test_a_shard_without_inputs_takes_part_in_the_merge(tiny_run: Path, tmp_path: Path) -> None:
    images = write_split(tmp_path / "new", 3, [(64, 64)], seed=6) / "image"
    assert _predict(tiny_run, images, tmp_path / "single") == 0
    for index in range(4):  # shard 3 has no input and finishes last: it merges
        assert _predict(tiny_run, images, tmp_path / "shared", "--shard", f"{index}/4") == 0
        assert (tmp_path / "shared" / ".shards").exists() == (index < 3)
    assert _contents(tmp_path / "shared") == _contents(tmp_path / "single")


def test_another_job_or_an_old_result_is_refused(tiny_run: Path, tmp_path: Path, capsys) -> None:
    images = write_split(tmp_path / "new", 3, [(64, 64)], seed=7) / "image"
    shared = tmp_path / "shared"
    assert _predict(tiny_run, images, shared, "--shard", "0/2") == 0
    capsys.readouterr()
    assert _predict(tiny_run, images, shared, "--shard", "1/3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split into 2 shards" in err
    assert _predict(tiny_run, images, shared, "--shard", "1/2", "--threshold", "0.3") == 2
    assert "threshold" in capsys.readouterr().err
    assert _predict(tiny_run, images, shared, "--shard", "1/2", "--batch", "2") == 0  # how, not what: one job
    assert (shared / "flags.csv").is_file() and not (shared / ".shards").exists()

    # A finished folder is an old result: refused as an un-sharded run refuses it, untouched.
    before = _contents(shared)
    assert _predict(tiny_run, images, shared, "--shard", "0/2") == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert _contents(shared) == before and not (shared / ".shards").exists()
    assert _predict(tiny_run, images, shared, "--shard", "0/2", "--threshold", "0.3", "--overwrite") == 0
    assert sorted(os.listdir(shared)) == [".medunet", ".shards", "000.png", "002.png"]  # the old result cleared


def test_a_folder_medunet_did_not_write_is_never_cleared(tiny_run: Path, tmp_path: Path, capsys) -> None:
    images = write_split(tmp_path / "new", 2, [(64, 64)], seed=8) / "image"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _predict(tiny_run, images, mine, "--shard", "0/2", "--overwrite") == 2
    assert "not a folder medunet wrote" in capsys.readouterr().err
    assert os.listdir(mine) == ["notes.txt"]


def test_concurrent_shards_under_python_m(tiny_run: Path, tmp_path: Path) -> None:
    """Two processes at once, as `torchrun --nproc-per-node 2 -m medunet predict ...` starts them."""
    images = _images(tmp_path / "new", 4)
    assert _predict(tiny_run, images, tmp_path / "single") == 0
    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "medunet", "-q", "predict", str(tiny_run), str(images), "--out", str(shared),
               "--device", "cpu"]
    procs = [subprocess.Popen(command, env={**env, "RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _contents(shared) == _contents(tmp_path / "single")


def _deliver(final: Path, shard: Shard, job: dict, name: str, overwrite: bool = False) -> None:
    """shard_folder without a model: one output file and a flags part with one row."""
    with shard_folder(final, shard, job, overwrite, order=["a", "b", "c"]) as stage:
        (stage / f"{name}.png").write_bytes(name.encode())
        (stage / "flags.csv").write_text(f"stem,reason\r\n{name},empty prediction\r\n")


def test_a_failed_shard_is_rerun_alone(tmp_path: Path) -> None:
    final, job = tmp_path / "out", {"inputs": ["a", "b", "c"]}
    _deliver(final, Shard(0, 2), job, "c")
    with pytest.raises(RuntimeError), shard_folder(final, Shard(1, 2), job, False, order=[]) as stage:
        (stage / "b.png").write_bytes(b"half")
        raise RuntimeError("killed")
    assert not (final / "b.png").exists() and not (final / "flags.csv").exists()
    _deliver(final, Shard(1, 2), job, "b")
    assert (final / "flags.csv").read_bytes() == b"stem,reason\r\nb,empty prediction\r\nc,empty prediction\r\n"
    assert sorted(os.listdir(final)) == [".medunet", "b.png", "c.png", "flags.csv"]


def test_a_shard_whose_job_was_replaced_keeps_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(ConfigError, match="another job replaced"):
        with shard_folder(final, Shard(0, 2), {"inputs": ["a"]}, False, order=[]) as stage:
            (stage / "a.png").write_bytes(b"old")
            _deliver(final, Shard(1, 2), {"inputs": ["a", "b"]}, "b", overwrite=True)  # starts another job
    assert not (final / "a.png").exists() and (final / ".shards" / "flags-1-of-2.csv").is_file()


def test_volume_shards_merged_equal_a_single_run(tmp_path: Path) -> None:
    """NIfTI files and a DICOM series folder: the same split, label volumes and flags as one run."""
    from volume_data import SMALL, shifted_phantom, volume_dataset
    from volumes import oblique_geometry, write_dicom_series

    data = volume_dataset(tmp_path / "data", {"train": 2, "validation": 1, "test": 2})
    run = tmp_path / "run"
    assert main(["-q", "train", str(data), "--out", str(run), "--epochs", "1", "--samples-per-epoch", "16",
                 "--preset", "tiny", "--device", "cpu"]) == 0
    images = data / "test" / "image"
    write_dicom_series(images / "series", shifted_phantom(SMALL, 9)[0], oblique_geometry(SMALL))
    assert _predict(run, images, tmp_path / "single", "--probabilities") == 0
    for index in (1, 0):
        assert _predict(run, images, tmp_path / "shared", "--probabilities", "--shard", f"{index}/2") == 0
    single = _contents(tmp_path / "single")
    assert {"case_04.nii.gz", "case_05.nii.gz", "series.nii.gz", "flags.csv"} <= set(single)
    assert _contents(tmp_path / "shared") == single


@pytest.mark.parametrize("value", [(2, 2), (0, 0), (1,), "1-2", (True, 2)])
def test_the_api_refuses_bad_shards_before_loading_the_model(value, tmp_path: Path) -> None:
    from medunet.api.predict import predict

    with pytest.raises(ConfigError, match="shard"):
        predict(tmp_path / "no-run", tmp_path / "no-images", tmp_path / "out", shard=value)
