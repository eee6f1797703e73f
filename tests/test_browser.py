"""A real browser: JupyterLab on loopback, Debian's chromium driven by Playwright, notebooks 01
and 05.

Notebook 01: runs every cell, drags the β slider of the EnergyExplorer, and checks that the plot
in the page was redrawn with the engine's numbers for the new β. Notebook 05: the RunsBrowser's
heat map in the page on a sweep with one point unfinished, then *refresh* after it finished. A screenshot is saved to ``runs/browser/``
(ignored by git). Skipped only where ``/usr/bin/chromium`` is absent (``.ci/run`` installs it).
"""
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import papermill
import pytest

from test_notebooks import real_or_synthetic
from workbench.engine import ep
from workbench import widgets

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_equilibration_dynamics.ipynb"
SCREENSHOTS = REPO / "runs" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's /usr/bin/chromium")]

# every title of every plotly graph in the page (the figure's and its subplots')
TITLES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(p =>
  [((p.layout || {}).title || {}).text || ''].concat(((p.layout || {}).annotations || [])
  .map(a => a.text || '')))"""
# y values of every trace of every plotly graph in the page
PLOT_DATA = """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                         .map(g => (g.data || []).map(t => Array.from(t.y || [])))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of notebook 01 (small parameters injected by papermill, not
    executed) on 127.0.0.1 with a token; the whole server process group is stopped afterwards."""
    yield from serve(tmp_path, NOTEBOOK, {"dataset": real_or_synthetic(), "pool": 32,
                                          "batch_size": 8})


def serve(tmp_path, notebook: str, parameters: dict):
    """Serve a copy of ``notebook`` with ``parameters`` injected (see ``lab``); yields the URL."""
    work = tmp_path / "lab"
    work.mkdir()
    papermill.execute_notebook(str(REPO / "notebooks" / notebook), str(work / notebook),
                               parameters=parameters, prepare_only=True, progress_bar=False)
    config, settings = tmp_path / "config", tmp_path / "settings"
    (config / "labconfig").mkdir(parents=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)   # start the notebook's kernel without asking
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_PATH=str(Path(sys.prefix, "share", "jupyter")),
               JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               OMP_NUM_THREADS="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "wb"),
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield f"{url}/lab?token={token}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_beta_slider_redraws_the_energy_plot_in_jupyterlab(lab):
    """oracle: the plotly graphs in the page before and after a drag of the β slider: the
    readout shows a smaller β, and the energy plot now holds the engine's own trace
    (ep.estimate run here on the same model and batch at that β) — the kernel recomputed and
    the figure synchronised through JupyterLab's widget manager into the page; the
    diagnostics panels (switched units, fixed-point residual) are in the page too."""
    with browser_page("01_equilibration_dynamics") as page:
        before, after, start, end = drag_beta_slider(page, lab)
    assert float(start) == pytest.approx(0.05) and float(end) < float(start)
    assert len(after[0]) == 6 and after[0] != before[0]   # F, E, C of both phases, redrawn
    # the slider moves log10 β in steps of 0.1; the readout shows 2 significant digits
    beta = 10 ** round(np.log10(float(end)), 1)
    x, y = widgets.examples(real_or_synthetic(), 8)
    net = widgets.default_models(10, x.shape[1], x.shape[-1])["mlp 128-64"].double()
    plus, minus = ep.estimate(net, x.double(), y, scheme="centered", beta=beta, iterations=10,
                              accumulate=False).trace.phases
    f_plus, _, c_plus, f_minus, _, c_minus = after[0]
    np.testing.assert_allclose(f_plus, plus.total.numpy(), rtol=1e-9)
    np.testing.assert_allclose(c_plus, plus.cost.numpy(), rtol=1e-9)
    np.testing.assert_allclose(f_minus, minus.total.numpy(), rtol=1e-9)
    np.testing.assert_allclose(c_minus, minus.cost.numpy(), rtol=1e-9)


@contextlib.contextmanager
def browser_page(name: str):
    """A chromium page (Debian's binary, no sandbox, no GPU); a screenshot of it goes to
    ``runs/browser/<name>.png`` at the end, or ``<name>-failed.png`` when the test fails."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        try:
            yield page
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
        except Exception:
            page.screenshot(path=str(SCREENSHOTS / f"{name}-failed.png"))
            raise
        finally:
            browser.close()


def run_all(page, url: str, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab and run all its cells."""
    page.goto(url)
    # open the notebook from the file browser once the launcher lists the kernel (opening it by
    # URL can race JupyterLab's kernel-spec loading and start a second kernel)
    page.locator(".jp-LauncherCard", has_text="Python 3").first.wait_for()
    page.locator(".jp-DirListing-item", has_text=notebook[:12]).dblclick()
    # the status bar says "Idle" once the kernel's websocket is connected (the toolbar's
    # indicator already reads idle before that, and a Run All sent then is lost)
    page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for()
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator("[data-command='runmenu:run-all']").click()


def drag_beta_slider(page, url: str) -> tuple:
    """Open the notebook, run all cells, drag the β handle left; return the plots' data before
    and after and the β readout before and after."""
    run_all(page, url, NOTEBOOK)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3"
                           " && document.querySelector('.js-plotly-plot').data"
                           " && document.querySelector('.js-plotly-plot').data.length >= 6")
    before = page.evaluate(PLOT_DATA)
    page.wait_for_function(f"() => ({TITLES})().some(t => t.includes('fixed-point residual'))")
    titles = page.evaluate(TITLES)
    assert any("ReLU units switched" in t for t in titles), titles      # the diagnostics panels
    slider = page.locator(".widget-hslider").filter(has=page.locator("label", has_text="β"))
    readout = slider.locator(".widget-readout")
    slider.scroll_into_view_if_needed()     # Run All leaves the view at the last cell
    start = readout.inner_text()
    for _ in range(40):                     # a re-rendered widget fills its readout a moment later
        if start.strip():
            break
        page.wait_for_timeout(250)
        start = readout.inner_text()
    handle = slider.locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 30, y, steps=10)
    page.mouse.up()
    # the redraw replaces the traces (the plot may be empty or half-drawn for a moment): wait for
    # six new traces, then until two reads half a second apart agree
    page.wait_for_function(f"() => {{ const d = ({PLOT_DATA})()[0]; return d.length >= 6 && "
                           f"JSON.stringify(d) !== {json.dumps(json.dumps(before[0]))}; }}")
    after = page.evaluate(PLOT_DATA)
    for _ in range(60):
        page.wait_for_timeout(500)
        again = page.evaluate(PLOT_DATA)
        if again == after:
            break
        after = again
    end = readout.inner_text()
    for _ in range(40):
        if end.strip():
            break
        page.wait_for_timeout(250)
        end = readout.inner_text()
    return before, after, start, end


# ---------------------------------------------------------------------------------------------
# notebook 05: the RunsBrowser on a sweep that is still running
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def sweep_lab(tmp_path):
    """A finished 2 × 2 sweep (β × K, tiny mlp on tiny Fashion-MNIST files) with one point
    not run yet, and JupyterLab serving notebook 05 on it."""
    from conftest import write_mnist

    from workbench.experiments import sweep as sw
    write_mnist(tmp_path / "data" / "fashion-mnist", n_train=64, n_test=32)
    spec = {"name": "bk", "base": {"dataset": "fashion-mnist", "data_root": str(tmp_path / "data"),
                                   "download": False, "model": "mlp",
                                   "model_args": {"widths": [16]}, "epochs": 2,
                                   "batch_size": 16, "probe_every": 0, "device": "cpu"},
            "grid": {"beta": [0.01, 0.1], "iterations": [1, 3]}}
    (tmp_path / "bk.yaml").write_text(json.dumps(spec))
    s = sw.load(tmp_path / "bk.yaml", out=tmp_path / "sweeps")
    sw.write_plan(s)
    for p in s.points[:-1]:
        sw.run_point(s.folder, p.name)
    server = serve(tmp_path, "05_compare_runs.ipynb", {"paths": [str(s.folder)]})
    url = next(server)
    try:
        yield s, url
    finally:
        server.close()                                   # stops JupyterLab (serve's finally)


def test_runs_browser_heat_map_and_refresh_in_jupyterlab(sweep_lab):
    """oracle: workbench.experiments.runs on the same folder — the heat map in the page holds runs.grid's
    final errors (the unfinished point's cell empty) and the table shows 3 done, 1 pending;
    after that point runs, a click on *refresh* in the page brings its cell and curve in."""
    from workbench.experiments import runs as R
    from workbench.experiments import sweep as sw
    s, url = sweep_lab
    z_page = """() => { const g = Array.from(document.querySelectorAll('.js-plotly-plot'))
        .filter(p => (p.data || []).some(t => t.type === 'heatmap'));
        return g.length ? g[0].data[0].z : null; }"""
    with browser_page("05_compare_runs") as page:
        run_all(page, url, "05_compare_runs.ipynb")
        page.wait_for_function(f"() => ({z_page})() !== null")
        before = page.evaluate(z_page)
        assert page.locator("text=4 runs: 3 done, 1 pending").count() == 1
        sw.run_point(s.folder, s.points[-1].name)
        page.locator("button.widget-button", has_text="refresh").click()
        page.locator("text=4 runs: 4 done").wait_for()
        page.wait_for_function(f"() => JSON.stringify(({z_page})()) !== "
                               f"{json.dumps(json.dumps(before))}")
        after = page.evaluate(z_page)
    _, _, z = R.grid(R.find_runs(s.folder), "beta", "iterations")
    assert before[1][1] is None and after[1][1] is not None
    assert sum(after, []) == pytest.approx(sum(z, []))
    assert [row[:1] for row in before] == [row[:1] for row in after]
