"""Resume after a crash or Ctrl-C, bit-exact with --deterministic; checkpoints that fail loudly."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medunet.cli import main
from medunet.engine import trainer
from medunet.engine import step as step_module
from medunet.engine.checkpoint import load_checkpoint

ARGS = ["--size", "48", "--batch", "4", "--samples-per-epoch", "8", "--device", "cpu", "--preset", "small"]


def _epochs(run: Path) -> list[int]:
    return [int(r["epoch"]) for r in csv.DictReader((run / "history.csv").open())]


def test_deterministic_resume_matches_an_uninterrupted_run(disc_data: Path, tmp_path: Path, monkeypatch) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["-q", "train", str(disc_data), "--out", str(full), "--epochs", "3", "--deterministic", *ARGS]) == 0

    real = trainer._should_continue
    monkeypatch.setattr(trainer, "_should_continue", lambda state, cfg: state.epoch < 2)
    assert main(["-q", "train", str(disc_data), "--out", str(cut), "--epochs", "3", "--deterministic", *ARGS]) == 0
    assert _epochs(cut) == [1, 2]
    monkeypatch.setattr(trainer, "_should_continue", real)
    assert main(["-q", "train", str(disc_data), "--out", str(cut), "--resume"]) == 0
    assert _epochs(cut) == [1, 2, 3]

    assert not torch.are_deterministic_algorithms_enabled()  # the run's setting does not leak to the caller
    a = load_checkpoint(full / "checkpoints" / "last.pt").state_dict
    b = load_checkpoint(cut / "checkpoints" / "last.pt").state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_hints_at_resume(tiny_run: Path, disc_data: Path, capsys) -> None:
    assert main(["train", str(disc_data), "--out", str(tiny_run), *ARGS, "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_interrupt_says_how_to_resume(disc_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    calls = {"n": 0}
    real = trainer._train_epoch

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", interrupt_in_second_epoch)
    run = tmp_path / "run"
    assert main(["train", str(disc_data), "--out", str(run), "--epochs", "3", *ARGS]) == 130
    err = capsys.readouterr().err
    assert "epoch 1" in err and "--resume" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt").train["epoch"] == 1


def test_sigkill_mid_training_then_resume(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "medunet.cli", "-q", "train", str(disc_data), "--out", str(run),
           "--epochs", "10", *ARGS, "--samples-per-epoch", "32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in a later epoch, or while a file is written
    assert proc.poll() is None, "training ended before it could be killed: make the epochs longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([sys.executable, "-m", "medunet.cli", "-q", "train", str(disc_data), "--out",
                              str(run), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(run) == list(range(1, 11))
    load_checkpoint(run / "checkpoints" / "best.pt").build_model()
    assert not list(run.rglob(".*.tmp*"))


def test_resume_clears_what_a_killed_writer_left(disc_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", *ARGS]) == 0
    stale = [run / "checkpoints" / ".last.pt.abc123.tmp",        # an older writer's name
             run / "checkpoints" / ".last.1a2b3c4d.tmp.pt",       # atomic_target's
             run / ".history.5e6f7a8b.tmp.csv", run / ".curves.0a1b2c3d.tmp.png"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half a file")
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert not any(path.exists() for path in stale)
    assert not list(run.rglob(".*.tmp*"))
    assert _epochs(run) == [1, 2]


def test_truncated_checkpoint_names_the_file(tiny_run: Path, disc_data: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.pt"
    data = (tiny_run / "checkpoints" / "best.pt").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert main(["predict", str(broken), str(disc_data / "test" / "image"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "broken.pt" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_prediction_folder_is_not_overwritten_without_asking(tiny_run: Path, disc_data: Path, tmp_path: Path,
                                                             capsys) -> None:
    out = tmp_path / "pred"
    images = str(disc_data / "test" / "image")
    assert main(["-q", "predict", str(tiny_run), images, "--out", str(out)]) == 0
    marker = out / "000.png"
    marker.write_bytes(b"user's file")
    assert main(["-q", "predict", str(tiny_run), images, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert marker.read_bytes() == b"user's file"
    assert main(["-q", "predict", str(tiny_run), images, "--out", str(out), "--overwrite"]) == 0
    assert marker.read_bytes() != b"user's file"


def test_overwrite_refuses_a_folder_medunet_did_not_write(disc_data: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("a week of annotations")
    assert main(["train", str(disc_data), "--out", str(precious), "--overwrite", *ARGS, "--epochs", "1"]) == 2
    assert (precious / "notes.txt").read_text() == "a week of annotations"


def test_non_finite_losses_skip_steps_then_stop(disc_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real_build = trainer.build_loss
    calls = {"n": 0}

    def nan_on_some_steps(channels):
        real = real_build(channels)

        def loss(logits, target):
            calls["n"] += 1
            value = real(logits, target)
            # one bad step in epoch 1: skipped, training goes on; from epoch 2 on every step is bad
            return value * float("nan") if calls["n"] == 1 or calls["n"] > 3 else value
        return loss

    monkeypatch.setattr(trainer, "build_loss", nan_on_some_steps)
    monkeypatch.setattr(step_module, "MAX_BAD_STEPS", 3)
    run = tmp_path / "run"
    argv = ["train", str(disc_data), "--out", str(run), "--epochs", "4", *ARGS, "--samples-per-epoch", "12"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "last.pt" in err and len(err.strip().splitlines()) == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt").train["epoch"] == 1
    assert _epochs(run) == [1]


def test_a_skipped_step_changes_nothing_in_the_optimiser() -> None:
    """The step is skipped on the device (no host read): weights, moments and step count stay."""
    model = torch.nn.Linear(3, 2)
    optimiser = step_module.make_optimiser(model, 0.1, 0.0)
    model(torch.randn(4, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    step_module.apply_step(optimiser, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(float(optimiser.state[p].get("step", 0)) == 0 for p in model.parameters())
    step_module.apply_step(optimiser, torch.tensor(True))
    assert not torch.equal(before[0], model.weight)


def test_nan_gradients_never_reach_the_weights_and_count_across_epochs(disc_data: Path, tmp_path: Path,
                                                                      monkeypatch, capsys) -> None:
    real_build = trainer.build_loss
    calls = {"n": 0}

    def nan_gradients_after_first_step(channels):
        real = real_build(channels)

        def loss(logits, target):
            calls["n"] += 1
            value = real(logits, target)
            if calls["n"] == 1:
                return value
            # sqrt at 0: the value stays finite (adds 0) but the gradient is inf × 0 = NaN
            return value + torch.sqrt(logits.float().mean() * 0)
        return loss

    monkeypatch.setattr(trainer, "build_loss", nan_gradients_after_first_step)
    monkeypatch.setattr(step_module, "MAX_BAD_STEPS", 3)
    run = tmp_path / "run"
    argv = ["train", str(disc_data), "--out", str(run), "--epochs", "6", *ARGS, "--samples-per-epoch", "4"]
    assert main(argv) == 2  # one step per epoch: the bad steps must add up across epochs
    assert "NaN/Inf" in capsys.readouterr().err
    assert _epochs(run) == [1, 2, 3]
    weights = load_checkpoint(run / "checkpoints" / "last.pt").state_dict
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


def test_nan_gradients_in_fp16_stop_the_run_too(disc_data: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """With a GradScaler (fp16) a skipped step used to be the scaler's business only: gradients that
    stay NaN halved the scale towards zero while the run went on without learning."""
    real_build = trainer.build_loss

    def nan_gradients(channels):
        real = real_build(channels)
        return lambda logits, target: real(logits, target) + torch.sqrt(logits.float().mean() * 0)

    monkeypatch.setattr(trainer, "build_loss", nan_gradients)
    monkeypatch.setattr(step_module, "MAX_BAD_STEPS", 3)
    run = tmp_path / "run"
    argv = ["train", str(disc_data), "--out", str(run), "--epochs", "6", *ARGS, "--samples-per-epoch", "8",
            "--precision", "fp16"]
    assert main(argv) == 2
    assert "NaN/Inf" in capsys.readouterr().err


def test_validation_with_nothing_to_score_still_gives_a_best_checkpoint(disc_data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Every validation image empty in truth and prediction: Dice is undefined (NaN), and NaN > best
    is never true, so best.pt would never be written."""
    monkeypatch.setattr(trainer, "validate", lambda predictor, val, world: float("nan"))
    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "2", *ARGS]) == 0
    assert load_checkpoint(run / "checkpoints" / "best.pt").train["epoch"] == 2   # the latest, lacking a score
    assert [r["val_dice"] for r in csv.DictReader((run / "history.csv").open())] == ["nan", "nan"]


def test_resume_measures_the_precision_again(disc_data: Path, tmp_path: Path, monkeypatch) -> None:
    """A run resumed on another machine must not keep a bf16 that is emulated there."""
    from medunet.api import train as train_api
    from medunet.engine.precision import Precision

    calls = []
    real = train_api.precisions.choose

    def spy(requested, *args, **kwargs):
        calls.append(requested)
        return real(requested, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(train_api.precisions, "choose", spy)
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", *ARGS]) == 0
    record = json.loads((run / "config.json").read_text())
    record["precision"]["chosen"] = Precision("bf16", True).name   # as if chosen on a machine with native bf16
    (run / "config.json").write_text(json.dumps(record))
    calls.clear()
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert calls == ["auto"]


def test_interrupt_in_the_first_epoch_says_nothing_was_saved(disc_data: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train_epoch", interrupt)
    run = tmp_path / "run"
    assert main(["train", str(disc_data), "--out", str(run), "--epochs", "3", *ARGS]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was saved" in err and "--overwrite" in err and "--resume" not in err
    assert not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", *ARGS, "--overwrite"]) == 0


def test_eta_counts_the_epochs_that_still_fit() -> None:
    from medunet.config import TrainConfig

    state = trainer.State(epoch=2, elapsed=60.0)
    assert trainer._eta(state, TrainConfig(epochs=5)) == "1m30s"             # 3 epochs of 30 s
    assert trainer._eta(state, TrainConfig(time_budget=200)) == "2m00s"      # 140 s left: 4 epochs fit
    assert trainer._eta(state, TrainConfig(epochs=3, time_budget=200)) == "0m30s"
    assert trainer._eta(trainer.State(epoch=5, elapsed=150.0), TrainConfig(epochs=5)) == "0m00s"


@pytest.mark.parametrize("recorded", [True, False])
def test_resume_after_a_move_from_cuda_to_cpu(disc_data: Path, tmp_path: Path, recorded: bool, caplog) -> None:
    """A run saved on CUDA holds a 16-byte CUDA generator state; a CPU generator's is 5,056 bytes,
    and loading one into the other raised a raw RuntimeError. Simulated by writing a CUDA-sized
    state into last.pt, with (new runs) and without (older runs) the device it came from."""
    from medunet.engine.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", *ARGS]) == 0
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt.train["augment_rng"] = torch.zeros(16, dtype=torch.uint8)
    if recorded:
        ckpt.train["augment_rng_device"] = "cuda"
    else:
        ckpt.train.pop("augment_rng_device", None)
    save_checkpoint(path, ckpt)
    assert main(["train", str(disc_data), "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu"]) == 0
    assert _epochs(run) == [1, 2]
    assert "augmentation random stream restarts" in caplog.text


def test_default_stop_rule_does_not_depend_on_speed() -> None:
    """Without --epochs or --time, a slow machine trains the same number of epochs, only later."""
    from medunet.api.demo import demo_config
    from medunet.config import TrainConfig

    for elapsed in (10.0, 1e6):
        state = trainer.State(epoch=5, elapsed=elapsed, best_epoch=3)
        assert trainer._epochs_left(state, TrainConfig(patience=10)) == 8      # 10 epochs after the best
        assert trainer._epochs_left(state, TrainConfig(patience=10, max_epochs=6)) == 1
    demo = demo_config(seed=2)
    assert demo.time_budget is None and demo.epochs is not None and demo.seed == 2


def test_resume_records_the_mirror_images_an_older_checkpoint_lacks(disc_data: Path, tmp_path: Path) -> None:
    """Checkpoints before the record made `--tta flips` average all four views; a resumed run
    takes the record from its config.json, so a run trained without flips stops averaging them."""
    from medunet.engine.checkpoint import save_checkpoint

    run = tmp_path / "run"
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--epochs", "1", "--augment", "none", *ARGS]) == 0
    path = run / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt.data_summary["mirrored"]
    save_checkpoint(path, ckpt)
    assert main(["-q", "train", str(disc_data), "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert load_checkpoint(path).data_summary["mirrored"] == []
