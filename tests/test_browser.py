"""The MLflow UI over the main job's store, in a real browser: what a person comparing runs sees.

Debian's ``chromium``, driven headless through Playwright's Python package (``executable_path``:
Playwright's own browser download needs a network this project never has). The UI is started by the
project's launcher (``analysis/mlflow_ui.py``), as a user would. Every page is also written as a
screenshot under ``outputs/browser/`` for a reviewer to look at. Without the browser these tests skip,
except in CI (``CI`` set), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT
from tests.mlflow_server import free_port, mlflow_ui

pytestmark = [pytest.mark.slow, pytest.mark.timeout(960)]  # the first one may run the main job (pipeline_store)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = PROJECT_ROOT / "outputs" / "browser"
WAIT_MS = 60_000  # the first page of a fresh UI compiles nothing, but a loaded CI machine is slow
MODEL = "bigimage-classifier"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI must run the browser tests (.ci/run installs it)")
    pytest.skip(f"{what} (bash .ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no playwright Python package")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    yield opened
    context.close()


@pytest.fixture(scope="module")
def ui(pipeline_store: tuple[str, Path, subprocess.CompletedProcess]) -> Iterator[tuple[str, str]]:
    """The launcher serving the pipeline's store: (the address it printed, the UI's root)."""
    store, _, result = pipeline_store
    assert result.returncode == 0, result.stderr[-4000:]
    port = free_port()
    with mlflow_ui(store, "bigimage", port) as line:
        assert "MLflow UI:" in line, "the launcher exited before printing its address"
        yield line.split()[2], f"http://127.0.0.1:{port}/#"


def _runs(store: str) -> dict[str, list[Any]]:
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("bigimage").experiment_id])
    by_task: dict[str, list[Any]] = {}
    for run in runs:
        by_task.setdefault(run.data.tags["task"], []).append(run)
    return by_task


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _artifact_page(root: str, run: Any, path: str) -> str:
    """The run's Artifacts tab with ``path`` open, in the machine-learning view (as from the runs table)."""
    run_page = f"{root}/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    return f"{run_page}/artifacts/{path}?workflowType=machine_learning"


def test_the_launcher_opens_the_training_runs_best_first(ui, pipeline_store, page) -> None:
    address, _ = ui
    training = _runs(pipeline_store[0])["train"]
    page.goto(address)
    page.get_by_text("Compare training runs").first.wait_for()
    names = [run.info.run_name for run in training]
    for name in names:
        page.get_by_text(name).first.wait_for()
    _shot(page, "runs")
    grid = page.locator(".ag-root").inner_text()
    assert "preprocess local" not in grid and "speedtest local" not in grid  # the training runs alone
    assert "best_val_accuracy" in grid and "strategy.name" in grid
    best = max(run.data.metrics["best_val_accuracy"] for run in training)
    first = min(names, key=grid.index)
    assert next(run for run in training if run.info.run_name == first).data.metrics["best_val_accuracy"] == best


def test_a_training_run_shows_its_learning_curves(ui, pipeline_store, page) -> None:
    _, root = ui
    run = _runs(pipeline_store[0])["train"][0]
    page.goto(_artifact_page(root, run, "learning_curves.png"))
    figure = page.locator("img[src^='blob:']").first
    figure.wait_for()
    page.wait_for_function("document.querySelector(\"img[src^='blob:']\").naturalWidth > 0")
    _shot(page, "learning_curves")
    assert figure.evaluate("image => image.naturalWidth") > 400


def test_the_speed_test_run_shows_its_throughput(ui, pipeline_store, page) -> None:
    _, root = ui
    (run,) = _runs(pipeline_store[0])["speedtest"]
    page.goto(_artifact_page(root, run, "speedtest.png"))
    page.wait_for_function("(document.querySelector(\"img[src^='blob:']\") || {}).naturalWidth > 0")
    _shot(page, "speedtest")


def test_the_registered_model_shows_its_version_and_alias(ui, page) -> None:
    _, root = ui
    page.goto(f"{root}/models/{MODEL}")
    page.get_by_text("Version 1").first.wait_for()
    page.get_by_text("champion").first.wait_for()
    _shot(page, "registered_model")


def test_the_analysis_report_renders_its_figures(ui, pipeline_store, page) -> None:
    _, root = ui
    by_task = _runs(pipeline_store[0])
    (pipeline,) = by_task["pipeline"]
    (analysis,) = [
        run for run in by_task["analysis"] if run.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id
    ]
    page.goto(_artifact_page(root, analysis, "report.html"))
    report = page.locator("iframe").first.element_handle().content_frame()  # the viewer shows HTML in a frame
    report.wait_for_function(
        "document.images.length >= 3 && Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    report.locator("img").first.scroll_into_view_if_needed()
    _shot(page, "report")
    assert report.locator("h1").first.inner_text() == "Analysis report"
