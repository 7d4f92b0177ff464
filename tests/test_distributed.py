"""Training under torchrun: 2 CPU processes over gloo, as on 2 GPUs over NCCL."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medunet.engine import distributed
from medunet.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(),
                                reason="this torch has no torch.distributed")

ARGS = ["--size", "48", "--batch", "4", "--device", "cpu", "--preset", "small", "--precision", "fp32",
        "--steps-per-epoch", "3"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    return env


def _torchrun(n: int, *argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "medunet", "train", *argv]


def _history(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "history.csv").open()))


def test_two_processes_train_one_run_with_the_same_weights(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(_torchrun(2, str(disc_data), "--out", str(run), "--epochs", "2", *ARGS),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "weights identical on all 2 ranks" in done.stderr
    assert done.stderr.count("epoch 2/2") == 1          # rank 0 alone logs
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and config["batch"] == 4
    assert [int(r["epoch"]) for r in _history(run)] == [1, 2]   # written once, not once per rank
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in last.state_dict)   # the model, not DDP around it
    assert last.train["world_size"] == 2 and len(last.train["rank_streams"]) == 1
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "curves.png").is_file()


def test_loss_curve_matches_one_process_with_the_same_global_batch(disc_data: Path, tmp_path: Path) -> None:
    """Different crops per rank and per-rank batch norm on gloo: the curves agree within 25% per
    epoch on average (the seed spread of a 1-process run on this data is ~10%), not exactly."""
    argv = ["--epochs", "4", *ARGS, "--augment", "none", "--lr", "3e-3"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "medunet", "-q", "train", str(disc_data), "--out", str(one), *argv],
                   env=_env(), check=True, timeout=300, capture_output=True)
    subprocess.run(_torchrun(2, str(disc_data), "--out", str(two), *argv), env=_env(), check=True, timeout=300,
                   capture_output=True)
    a = [float(r["train_loss"]) for r in _history(one)]
    b = [float(r["train_loss"]) for r in _history(two)]
    assert a[-1] < a[0] and b[-1] < b[0]                 # both learn
    assert sum(abs(x - y) / x for x, y in zip(a, b)) / len(a) < 0.25, (a, b)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker of `rank` among the children of torchrun's process `parent`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_a_killed_rank_then_resume_completes_the_run(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [str(disc_data), "--out", str(run), "--epochs", "6", *ARGS]
    job = subprocess.Popen(_torchrun(2, *argv), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (last.is_file() and _history(run) and job.poll() is None):
        time.sleep(0.2)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None and job.poll() is None, "the job ended before a rank could be killed"
    os.kill(victim, signal.SIGKILL)
    _, err = job.communicate(timeout=240)
    assert job.returncode != 0
    saved = load_checkpoint(last).train["epoch"]
    assert 1 <= saved < 6
    done = subprocess.run(_torchrun(2, *argv, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [int(r["epoch"]) for r in _history(run)] == list(range(1, 7))
    assert load_checkpoint(last).train["epoch"] == 6


def test_a_batch_that_does_not_split_over_the_processes_is_refused(disc_data: Path, tmp_path: Path) -> None:
    argv = [str(disc_data), "--out", str(tmp_path / "run"), "--epochs", "1", *ARGS, "--batch", "3"]
    done = subprocess.run(_torchrun(2, *argv), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "--batch 3 does not split over 2 processes" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_world_shards_are_disjoint_and_complete() -> None:
    worlds = [distributed.World(rank, 3) for rank in range(3)]
    parts = [w.shard(10) for w in worlds]
    assert sorted(i for p in parts for i in p) == list(range(10))   # every item once, no padding
    assert distributed.interleave(parts) == list(range(10))
    assert distributed.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == distributed.World(1, 2, 1, 2)
    assert distributed.from_env({}) == distributed.SINGLE
    seeds = {distributed.rank_seed(0, r) for r in range(4)}
    assert len(seeds) == 4 and distributed.rank_seed(7, 0) == 7


def test_gpus_runs_the_same_command_under_torchrun(monkeypatch, tmp_path: Path) -> None:
    from medunet import cli

    seen = {}
    monkeypatch.setattr(subprocess, "call", lambda command: seen.setdefault("command", command) and 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", str(tmp_path), "--gpus", "4", "--epochs", "2", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    command = seen["command"]
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert command[5:] == ["-m", "medunet", "train", str(tmp_path), "--epochs", "2", "--out", str(tmp_path / "run")]
    assert cli.main(["train", str(tmp_path), "--gpus", "0"]) == 2
