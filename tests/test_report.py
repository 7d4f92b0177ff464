"""The HTML report: pure rendering, the report() workflow, and the page in a headless Chromium."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from medunet.api.evaluate import evaluate
from medunet.api.report import report
from medunet.metrics import class_counts, image_metrics, summarise
from medunet.report.html import (FN_COLOUR, FP_COLOUR, TP_COLOUR, Evaluation, GalleryItem, Report,
                                 overlay_errors, render_report, thumbnail)

ODD_STEM = '001<b>&"x'  # a real file name that must reach the page as text, not markup
SCREENSHOT = Path("/tmp/report.png")


# ------------------------------------------------------------------------------------- pure parts

def test_overlay_colours_agreement_and_both_kinds_of_error() -> None:
    image = np.full((4, 4), 100, np.uint8)
    image[0, 0] = 0  # some contrast, so display_rgb's stretch is well defined
    truth = np.zeros((4, 4), np.uint8)
    pred = np.zeros((4, 4), np.uint8)
    truth[1, 1] = pred[1, 1] = 1   # true positive
    pred[2, 2] = 1                  # false positive
    truth[3, 3] = 1                 # false negative
    rgb = overlay_errors(image, truth, pred)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 1, 0] == rgb[0, 1, 1] == rgb[0, 1, 2]  # background stays grey
    for (y, x), colour in (((1, 1), TP_COLOUR), ((2, 2), FP_COLOUR), ((3, 3), FN_COLOUR)):
        assert int(np.argmax(rgb[y, x])) == int(np.argmax(colour)), (y, x, rgb[y, x])
    with pytest.raises(ValueError):
        overlay_errors(image, truth, pred[:3])


def test_thumbnail_caps_the_longer_side_and_never_enlarges() -> None:
    assert thumbnail(np.zeros((600, 300, 3), np.uint8)).shape == (256, 128, 3)
    assert thumbnail(np.zeros((100, 700, 3), np.uint8)).shape == (37, 256, 3)
    assert thumbnail(np.zeros((33, 90, 3), np.uint8)).shape == (33, 90, 3)


def _fake_report(stems: list[str]) -> Report:
    rows = [{"stem": s, "dice": 0.1 * i, "iou": 0.05 * i, "empty_truth": 0} for i, s in enumerate(stems)]
    png = _png(np.zeros((8, 8, 3), np.uint8))
    evaluation = Evaluation(folder=Path("/e"), summary={"dice_mean": 0.5, "dice_global": 0.6, "n_images": len(stems),
                                                        "empty_rule": "both empty <means> Dice 1.0"},
                            columns=["dice", "iou", "empty_truth"], rows=rows,
                            gallery=[GalleryItem(r["stem"], r["dice"], png=png) for r in rows])
    return Report(run=Path("/runs/<r>"), config={"preset": "small", "data": {"size": 64, "window": None}},
                  evaluation=evaluation)


def test_render_escapes_text_and_lists_every_image_and_column() -> None:
    stems = ["a", "<script>alert(1)</script>", 'q"&\'']
    page = render_report(_fake_report(stems))
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "both empty &lt;means&gt; Dice 1.0" in page
    assert page.count('<figure class="entry"') == len(stems)
    captions = re.findall(r"<figcaption><b>(.*?)</b>", page)
    assert [unescape(c) for c in captions] == stems
    headers = re.findall(r'<th data-type="number" data-key="([^"]*)"', page)
    assert headers == ["dice", "iou", "empty_truth"]
    assert page.count("<script>") == 1  # the sorting script, nothing else
    assert not re.search(r'(src|href)="(https?:|//)', page)  # self-contained


# --------------------------------------------------------------------------- report() on real runs

def _png(rgb: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tiny_run evaluated on its test split (one stem renamed to ODD_STEM) into RUN/eval-test.

    The evaluation's masks are then replaced by edited truths (shifted, grown, shrunk), and
    metrics.csv rewritten from them, so the three Dice values differ and every error kind shows.
    """
    root = tmp_path_factory.mktemp("report")
    run = shutil.copytree(tiny_run, root / "run")
    split = shutil.copytree(tiny_run.parent / "data" / "test", root / "test")
    for sub in ("image", "label"):
        (split / sub / "001.png").rename(split / sub / f"{ODD_STEM}.png")
    out = run / "eval-test"
    evaluate(run, split, out, device="cpu")
    edits = {"000": lambda m: np.roll(m, 6, axis=1), ODD_STEM: lambda m: ndimage.binary_dilation(m, iterations=3),
             "002": lambda m: ndimage.binary_erosion(m, iterations=4)}
    rows, counts = [], []
    for stem, edit in edits.items():
        truth = (np.asarray(Image.open(split / "label" / f"{stem}.png")) > 0).astype(np.uint8)
        pred = edit(truth).astype(np.uint8)
        Image.fromarray(pred * 255).save(out / "masks" / f"{stem}.png")
        rows.append({"stem": stem, **image_metrics(truth, pred, 2)})
        counts.append(class_counts(truth, pred, 2))
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, **summarise(rows, counts, 2)}))
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert len({round(r["dice"], 6) for r in rows}) == 3
    return run


def _stems_by_dice(run: Path, reverse: bool = False) -> list[str]:
    rows = list(csv.DictReader((run / "eval-test" / "metrics.csv").open()))
    return [r["stem"] for r in sorted(rows, key=lambda r: float(r["dice"]), reverse=reverse)]


def test_report_finds_the_newest_evaluation(evaluated_run: Path) -> None:
    path = report(evaluated_run)
    assert path == evaluated_run / "report.html"
    page = path.read_text()
    assert page.count('<figure class="entry"') == 3
    assert page.count("<img src=\"data:image/png;base64,") == 3
    captions = [unescape(c) for c in re.findall(r"<figcaption><b>(.*?)</b>", page)]
    assert captions == _stems_by_dice(evaluated_run)  # worst first
    assert ODD_STEM not in page and "001&lt;b&gt;&amp;&quot;x" in page
    header = next(csv.reader((evaluated_run / "eval-test" / "metrics.csv").open()))
    for column in header[1:]:
        assert f'data-key="{column}"' in page
    assert "training loss and validation Dice" in page  # curves.png inlined
    assert not list(evaluated_run.glob(".report*"))  # no temporary file left behind


def test_report_without_evaluation_says_how_to_make_one(tiny_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval-*", "checkpoints"))
    page = report(run, out=tmp_path / "page.html").read_text()
    assert '<figure class="entry"' not in page and "<table" not in page
    assert "No evaluation found" in page
    test_dir = tiny_run.parent / "data" / "test"
    assert f"medunet evaluate {run} {test_dir}" in unescape(page)
    assert json.loads((run / "config.json").read_text())["preset"] in page


def test_report_keeps_one_entry_per_image_when_the_images_are_gone(evaluated_run: Path, tmp_path: Path) -> None:
    eval_dir = shutil.copytree(evaluated_run / "eval-test", tmp_path / "eval")
    summary = json.loads((eval_dir / "summary.json").read_text())
    (eval_dir / "summary.json").write_text(json.dumps({**summary, "split_dir": str(tmp_path / "moved")}))
    page = report(evaluated_run, eval_dir=eval_dir, out=tmp_path / "r.html").read_text()
    assert page.count('<figure class="entry"') == 3
    assert page.count('<div class="missing">') == 3 and "no image/ folder" in page


def test_report_refuses_a_folder_that_is_not_an_evaluation(evaluated_run: Path, tmp_path: Path) -> None:
    from medunet.errors import DataError

    with pytest.raises(DataError, match="summary.json"):
        report(evaluated_run, eval_dir=tmp_path, out=tmp_path / "r.html")


# ------------------------------------------------------------------------------ in a real browser

def _chromium(playwright) -> str | None:
    """A Chromium on PATH (Debian's, or MEDUNET_CHROMIUM), else the one Playwright downloaded, else None."""
    for name in (os.environ.get("MEDUNET_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if name else None
        if found:
            return found
    own = Path(playwright.chromium.executable_path)
    return str(own) if own.is_file() else None


def _launch(playwright, executable: str):
    return playwright.chromium.launch(
        executable_path=executable,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])


def test_page_in_chromium_sorts_and_shows_every_image(evaluated_run: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    path = report(evaluated_run)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        executable = _chromium(p)
        if executable is None:
            pytest.skip("no Chromium on PATH nor in Playwright's cache (scripts/install-browser.sh says how "
                        "to install one)")
        browser = _launch(p, executable)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(path.resolve().as_uri())
            assert page.locator("figure.entry").count() == 3
            assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

            def stems() -> list[str]:
                return page.locator("table.sortable tbody tr td:first-child").all_inner_texts()

            assert stems() == ["000", ODD_STEM, "002"]  # file order, the stem shown as text
            page.click('th[data-key="dice"] button')
            assert stems() == _stems_by_dice(evaluated_run)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            page.click('th[data-key="dice"] button')
            assert stems() == _stems_by_dice(evaluated_run, reverse=True)
        finally:
            browser.close()
    assert errors == []
