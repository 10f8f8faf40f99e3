"""Screenshots of a finished run's TensorBoard dashboards, taken in headless Chromium, and what their pages show.

Run: ``python examples/dashboard_screenshots.py LOGDIR --out DIR`` (options: ``--width``, ``--height``,
``--tabs timeseries custom_scalars text hparams``, ``--filter [TAB=]REGEX``). It starts TensorBoard on
127.0.0.1 at a free port over ``LOGDIR``, opens each tab in headless Chromium through Selenium, waits until
the tab has drawn its charts, text or table (read back through the DOM, shadow roots included), saves
``DIR/<tab>.png`` and prints what each page shows.

Needs ``selenium`` (the ``dev`` extra) and Debian's ``chromium`` and ``chromium-driver`` packages
(``apt-get install chromium chromium-driver``). Nothing is downloaded: the Chromium binary and its driver
are passed to Selenium by path, so Selenium Manager is never asked to fetch a browser.

Settings the screenshots use, and how TensorBoard 2.21 takes them:

* Smoothing 0, so that a few epoch points are drawn as logged. Time Series reads ``?smoothing=0`` from
  the URL and ``scalarSmoothing`` from the ``_tb_global_settings`` entry of localStorage; Custom Scalars
  reads ``_smoothingWeight=0`` from the URL hash (``#custom_scalars&_smoothingWeight=0``).
* "Ignore outliers in chart scaling" off, so no value is clipped: ``ignoreOutliers: false`` in
  ``_tb_global_settings`` for Time Series, the localStorage entry ``_ignoreYOutliers = "false"`` for
  Custom Scalars.
* Time Series draws its lines as SVG (``?forceSVG=true``) instead of WebGL: the lines are then DOM
  elements, so "the chart is drawn" can be checked, and headless Chromium needs no GPU.

Both settings are read back from each tab's settings pane (:attr:`PageContent.settings`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

TABS = ("timeseries", "custom_scalars", "text", "hparams")
"""The tabs this script knows how to wait for and read, in TensorBoard's URL spelling."""
FILTER_TABS = ("timeseries", "text")
"""The tabs with a tag filter box."""

APT_HINT = "apt-get install chromium chromium-driver"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)


class DashboardError(RuntimeError):
    """TensorBoard did not start, or a tab did not render what was waited for."""


class BrowserNotFoundError(DashboardError):
    """Chromium or chromedriver is not installed."""


@dataclass
class PageContent:
    """What one TensorBoard tab shows, read through its DOM (shadow roots included).

    Attributes:
        tab: The tab, one of :data:`TABS`.
        url: The address the browser opened.
        screenshot: The PNG written for the tab, or ``None`` when none was taken.
        titles: Card titles in page order: Time Series card tags, Custom Scalars chart titles, Text tags.
            Time Series renders only the cards near the viewport, so a tag filter is the way to make sure
            a card is among them. With a tag filter, Text shows a card twice (under "Tags matching" and
            under its own group), and so it is listed twice.
        runs: Runs listed in the tab's run selector.
        run_colors: Run name to its colour in the run selector (a CSS colour).
        legends: Card title to the series its legend lists: runs of the Time Series data table under the
            chart, ``"tag (run)"`` entries of a Custom Scalars chart's "Matches" list, runs of a Text card.
        legend_colors: ``"title: entry"`` to the colour that entry is drawn in.
        lines: Card title to the number of series drawn in its chart: SVG line paths (Time Series draws a
            one-point series as a circle, counted too; a Custom Scalars margin chart draws more than one path
            per series).
        texts: Visible text of each Text card (markdown as rendered, one string per step).
        tables: Rendered markdown tables of the Text tab, each a list of rows of cell texts (header first).
        columns: HParams table column headers.
        rows: HParams table rows (cell texts, in column order).
        settings: Settings read back from the tab's settings pane: ``smoothing`` (float),
            ``ignore_outliers`` (bool), ``tag_filter`` (str) where the tab has them.
    """

    tab: str
    url: str
    screenshot: Path | None = None
    titles: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    run_colors: dict[str, str] = field(default_factory=dict)
    legends: dict[str, list[str]] = field(default_factory=dict)
    legend_colors: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    tables: list[list[list[str]]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for a terminal: titles, runs, table sizes and settings."""
        lines = [f"[{self.tab}] {self.url}"]
        if self.screenshot is not None:
            lines.append(f"  screenshot: {self.screenshot}")
        for title in self.titles:
            drawn = f" ({self.lines[title]} lines)" if title in self.lines else ""
            lines.append(f"  card {title!r}{drawn}: {', '.join(self.legends.get(title, []))}")
        if self.runs:
            lines.append(f"  runs: {', '.join(self.runs)}")
        for table in self.tables:
            lines.append(f"  table: {len(table)} rows, header {table[0] if table else []}")
        if self.columns:
            lines.append(f"  columns: {self.columns}")
            lines.extend(f"  row: {row}" for row in self.rows)
        if self.settings:
            lines.append(f"  settings: {self.settings}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- TensorBoard


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (the OS picks it when a socket binds port 0).

    Args:
        host: The address the port is for.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


@contextlib.contextmanager
def serve_tensorboard(
    logdir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """Run TensorBoard over ``logdir`` while the ``with`` block lasts.

    It runs as ``python -m tensorboard.main`` with this interpreter (so the same environment), on
    loopback. The block starts once TensorBoard answers HTTP and lists at least one run; TensorBoard is
    terminated when the block ends, however it ends.

    Args:
        logdir: The log directory (a run, or a folder of runs).
        host: The address to listen on.
        port: The port; a free one when ``None``.
        timeout: Seconds to wait for TensorBoard to answer and list a run.

    Yields:
        The base URL, ending in ``/`` (``http://127.0.0.1:PORT/``).

    Raises:
        DashboardError: TensorBoard exited, or did not answer or list a run within ``timeout``; the
            message carries the end of its stderr.
    """
    logdir = Path(logdir)
    if not logdir.is_dir():
        raise DashboardError(f"no log directory at {logdir}")
    port = free_port(host) if port is None else port
    base_url = f"http://{host}:{port}/"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host, "--port", str(port)]
    with tempfile.TemporaryFile(mode="w+b") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def tail() -> str:
            log.seek(0)
            text = log.read().decode(errors="replace").strip()
            return text[-3000:] or "(nothing)"

        try:
            deadline = time.monotonic() + timeout
            answered = False
            while True:
                if process.poll() is not None:
                    raise DashboardError(
                        f"TensorBoard exited with code {process.returncode} before serving {base_url}; "
                        f"its output:\n{tail()}"
                    )
                try:
                    runs = _get_json(base_url + "data/runs")
                    answered = True
                    if runs:
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    what = "listed no run" if answered else "did not answer HTTP"
                    raise DashboardError(
                        f"TensorBoard at {base_url} {what} within {timeout:.0f} s (logdir {logdir}); "
                        f"its output:\n{tail()}"
                    )
                time.sleep(0.2)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------------------------------------- browser


def find_browser() -> tuple[str, str]:
    """Paths of the Chromium binary and of chromedriver.

    Returns:
        ``(chromium, chromedriver)``.

    Raises:
        BrowserNotFoundError: One of them is not on ``PATH``; the message names the Debian packages.
    """
    browser = next((path for name in BROWSER_NAMES if (path := shutil.which(name))), None)
    driver = next((path for name in DRIVER_NAMES if (path := shutil.which(name))), None)
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        raise BrowserNotFoundError(
            f"{' and '.join(missing)} not found on PATH; headless screenshots need Chromium and its "
            f"WebDriver: {APT_HINT} (Debian/Ubuntu, as root)"
        )
    assert browser is not None and driver is not None
    return browser, driver


@contextlib.contextmanager
def open_browser(width: int = 1600, height: int = 1000) -> Iterator[WebDriver]:
    """Headless Chromium driven by Selenium 4, with a viewport of exactly ``width`` x ``height``.

    Chromium and chromedriver are passed by path (:func:`find_browser`), so Selenium Manager never tries
    to download either.

    Args:
        width: Viewport width in CSS pixels (the screenshots' width).
        height: Viewport height in CSS pixels.

    Yields:
        The WebDriver; the browser quits when the block ends.

    Raises:
        BrowserNotFoundError: Chromium or chromedriver is not installed.
        DashboardError: Selenium is not installed.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise DashboardError("selenium is not installed: pip install 'selenium>=4.10' (in the dev extra)") from error
    browser, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        # The window size includes the (invisible) browser frame; this pins the page's viewport itself.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------------- tabs


def tab_url(base_url: str, tab: str, *, tag_filter: str | None = None, smoothing: float = 0.0) -> str:
    """The address that opens ``tab`` with the screenshot settings.

    Args:
        base_url: TensorBoard's base URL (from :func:`serve_tensorboard`).
        tab: One of :data:`TABS`.
        tag_filter: A tag regex for the tab's filter box (Time Series and Text have one).
        smoothing: Scalar smoothing, 0 to 0.999.

    Returns:
        The URL.

    Raises:
        ValueError: Unknown tab, or a filter for a tab without a filter box.
    """
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    if tab not in TABS:
        raise ValueError(f"unknown tab {tab!r}; known: {', '.join(TABS)}")
    if tag_filter and tab not in FILTER_TABS:
        raise ValueError(f"the {tab} tab has no tag filter (only {' and '.join(FILTER_TABS)})")
    if tab == "timeseries":
        query = f"?smoothing={smoothing:g}&forceSVG=true"
        if tag_filter:
            query += "&tagFilter=" + quote(tag_filter, safe="")
        return f"{base_url}{query}#timeseries"
    if tab == "custom_scalars":
        return f"{base_url}#custom_scalars&_smoothingWeight={smoothing:g}"
    if tab == "text" and tag_filter:
        return f"{base_url}#text&tagFilter={quote(tag_filter, safe='')}"
    return f"{base_url}#{tab}"


def preset_settings(driver: WebDriver, base_url: str, *, smoothing: float = 0.0, ignore_outliers: bool = False) -> None:
    """Store the chart settings in TensorBoard's localStorage, read when a tab loads.

    It opens a small JSON page of the same origin (not the app), so the next :meth:`WebDriver.get` of a
    tab is a full page load that reads them.

    Args:
        driver: The browser.
        base_url: TensorBoard's base URL.
        smoothing: Time Series smoothing (``scalarSmoothing`` of ``_tb_global_settings``).
        ignore_outliers: Time Series ``ignoreOutliers`` and the Polymer dashboards' ``_ignoreYOutliers``.
    """
    driver.get(base_url.rstrip("/") + "/data/environment")
    driver.execute_script(
        """
        const [smoothing, ignoreOutliers] = arguments;
        let settings = {};
        try { settings = JSON.parse(localStorage.getItem('_tb_global_settings') || '{}') || {}; } catch (e) {}
        settings.scalarSmoothing = smoothing;
        settings.ignoreOutliers = ignoreOutliers;
        localStorage.setItem('_tb_global_settings', JSON.stringify(settings));
        localStorage.setItem('_ignoreYOutliers', String(ignoreOutliers));
        """,
        smoothing,
        ignore_outliers,
    )


_DEEP_JS = r"""
function deepAll(root, selector) {
  const found = [];
  const visit = (node) => {
    if (!node || !node.querySelectorAll) return;
    found.push(...node.querySelectorAll(selector));
    if (node.shadowRoot) visit(node.shadowRoot);
    for (const el of node.querySelectorAll('*')) {
      if (el.shadowRoot) visit(el.shadowRoot);
      if (el.tagName === 'IFRAME') { try { visit(el.contentDocument); } catch (e) { /* cross-origin */ } }
    }
  };
  visit(root);
  return found;
}
const deep = (root, selector) => deepAll(root, selector)[0] || null;
"""
"""``deepAll``/``deep``: elements matching a selector in the light DOM, every shadow root and same-origin iframes."""

# The page reader: one script for every tab, so each poll is a single round trip. `deepAll` searches the
# light DOM, every shadow root and same-origin iframes; it returns the page's content, `ready` and, when
# not ready, `waiting` (what is missing).
_READ_PAGE_JS = (
    "const [tab, expected] = arguments;\n"
    + _DEEP_JS
    + r"""
const text = (el) => (el ? (el.innerText || el.textContent || '').replace(/\s+/g, ' ').trim() : '');
const shown = (el) => !!el && el.getClientRects().length > 0;
const page = {titles: [], runs: [], run_colors: {}, legends: {}, legend_colors: {}, lines: {}, texts: [],
              tables: [], columns: [], rows: [], settings: {}, ready: false, waiting: ''};
const wait = (why) => { page.waiting = why; return page; };

if (tab === 'timeseries') {
  const dash = document.querySelector('metrics-dashboard');
  if (!dash) return wait('metrics-dashboard');
  for (const row of dash.querySelectorAll('runs-selector tb-data-table-content-row')) {
    const name = text(row.querySelector('.table-column-run'));
    if (!name) continue;
    page.runs.push(name);
    const swatch = row.querySelector('.run-color-swatch');
    if (swatch) page.run_colors[name] = getComputedStyle(swatch).backgroundColor;
  }
  const smoothing = dash.querySelector('input[aria-labelledby="scalars-smoothing-label"]');
  if (smoothing) page.settings.smoothing = parseFloat(smoothing.value);
  const outliers = dash.querySelector('.scalars-ignore-outliers input[type=checkbox]');
  if (outliers) page.settings.ignore_outliers = outliers.checked;
  const filter = dash.querySelector('metrics-tag-filter input');
  if (filter) page.settings.tag_filter = filter.value;
  let loading = 0;
  for (const card of dash.querySelectorAll('scalar-card-component')) {
    const path = card.querySelector('.heading tb-truncated-path');
    const title = path ? (path.getAttribute('title') || text(path).replace(/\s/g, '')) : '';
    if (!title) continue;
    page.titles.push(title);
    if (card.querySelector('mat-progress-bar, mat-spinner, .loading')) loading += 1;
    // SVG renderer: one path per series, a circle for a series of one point
    const marks = 'line-chart .series-view > svg > path, line-chart .series-view > svg > circle';
    page.lines[title] = [...card.querySelectorAll(marks)]
      .filter((p) => p.tagName.toLowerCase() === 'circle' || (p.getAttribute('d') || '').length > 1).length;
    const entries = [];
    const headers = [...card.querySelectorAll('tb-data-table-header-cell')].map(text);
    const runColumn = headers.indexOf('Run');
    for (const row of card.querySelectorAll('tb-data-table-content-row')) {
      const cells = [...row.querySelectorAll('tb-data-table-content-cell')].map(text);
      const run = runColumn >= 0 ? cells[runColumn] : cells.find((c) => c);
      if (!run) continue;
      entries.push(run);
      const dot = row.querySelector('.row-circle span');
      if (dot) page.legend_colors[title + ': ' + run] = getComputedStyle(dot).backgroundColor;
    }
    page.legends[title] = entries;
  }
  if (!page.runs.length) return wait('runs in the run selector');
  if (!page.titles.length) return wait('a scalar card');
  if (loading) return wait(loading + ' card(s) loading');
  const empty = page.titles.filter((t) => !page.lines[t]);
  if (empty.length) return wait('lines in ' + empty.join(', '));
} else if (tab === 'custom_scalars') {
  const dash = deep(document, 'tf-custom-scalar-dashboard');
  if (!dash) return wait('tf-custom-scalar-dashboard');
  for (const row of deepAll(deep(dash, 'tf-runs-selector'), '.name-row')) {
    const name = text(row);
    if (!name || name in page.run_colors) continue;
    page.runs.push(name);
    const box = row.querySelector('paper-checkbox');
    const color = box ? box.style.getPropertyValue('--paper-checkbox-checked-color').trim() : '';
    page.run_colors[name] = color;
  }
  for (const box of deepAll(dash, 'paper-checkbox')) {
    if (/ignore outliers/i.test(text(box))) page.settings.ignore_outliers = !!box.checked;
  }
  const smoothing = deep(dash, 'tf-smoothing-input');
  if (smoothing) page.settings.smoothing = parseFloat(smoothing.weight);
  const cards = deepAll(dash, 'tf-custom-scalar-multi-line-chart-card, tf-custom-scalar-margin-chart-card');
  let loading = 0;
  for (const card of cards) {
    const heading = deep(card, 'tf-card-heading');
    const title = heading ? (heading.displayName || text(deep(heading, '.name'))) : '';
    page.titles.push(title);
    const loader = deep(card, 'tf-line-chart-data-loader');
    if (!loader || loader.dataLoading) loading += 1;
    page.lines[title] = deepAll(card, 'path.line').filter((p) => (p.getAttribute('d') || '').length > 1).length;
    const entries = [];
    for (const entry of deepAll(card, '.match-list-entry')) {
      const symbol = entry.querySelector('.match-entry-symbol');  // ◼ ◆ ▲ ...: one per tag of a run
      const name = text(entry).slice(text(symbol).length).trim();
      entries.push(name);
      if (symbol) page.legend_colors[title + ': ' + name] = getComputedStyle(symbol).color;
    }
    page.legends[title] = entries;
  }
  if (!page.runs.length) return wait('runs in the run selector');
  if (!cards.length) return wait('a custom scalars chart');
  if (loading) return wait(loading + ' chart(s) loading');
  const empty = page.titles.filter((t) => !page.lines[t]);
  if (empty.length) return wait('lines in ' + empty.join(', '));
} else if (tab === 'text') {
  const dash = deep(document, 'tf-text-dashboard');
  if (!dash) return wait('tf-text-dashboard');
  for (const row of deepAll(deep(dash, 'tf-runs-selector'), '.name-row')) {
    const name = text(row);
    if (name && !page.runs.includes(name)) page.runs.push(name);
  }
  const filter = deep(dash, 'tf-tag-filterer');
  if (filter && filter.tagFilter !== undefined) page.settings.tag_filter = filter.tagFilter;
  const loaders = deepAll(dash, 'tf-text-loader');
  for (const loader of loaders) {
    const heading = deep(loader, 'tf-card-heading');
    const title = heading ? text(deep(heading, '.heading-label.name')) : '';
    const run = heading ? text(deep(heading, '#heading-run')) : '';
    page.titles.push(title);
    (page.legends[title] = page.legends[title] || []).push(run);
    for (const view of deepAll(loader, 'tf-markdown-view')) {
      if (!view.closest('.text')) continue;  // the card heading's description dialog is a markdown view too
      const body = deep(view, '#markdown');
      if (!body) continue;
      page.texts.push(text(body));
      for (const table of body.querySelectorAll('table')) {
        if (table.querySelector('table')) continue;  // the plugin's wrapper table around a rendered table
        page.tables.push([...table.querySelectorAll('tr')].map((tr) => [...tr.children].map(text)));
      }
    }
  }
  if (!loaders.length) return wait('a text card');
  if (!page.texts.some((t) => t)) return wait('rendered text');
} else if (tab === 'hparams') {
  const dash = deep(document, 'tf-hparams-dashboard');
  if (!dash) return wait('tf-hparams-dashboard');
  const grid = deep(dash, 'vaadin-grid');
  if (!grid || !grid.shadowRoot) return wait('the hparams table');
  const cellText = (cell) => {
    const slot = cell.querySelector('slot');
    const content = slot ? slot.assignedElements() : [cell];
    return content.map(text).join(' ').trim();
  };
  const visibleRows = (selector) => [...grid.shadowRoot.querySelectorAll(selector)]
    .filter((tr) => !tr.hidden && shown(tr));
  for (const tr of visibleRows('thead tr')) {
    const headers = [...tr.children].filter((cell) => !cell.hidden).map(cellText);
    if (headers.some((h) => h)) { page.columns = headers; break; }
  }
  for (const tr of visibleRows('tbody tr')) {
    const cells = [...tr.children].filter((cell) => !cell.hidden).map(cellText);
    if (cells.some((c) => c)) page.rows.push(cells);
  }
  if (!page.columns.length) return wait('hparams column headers');
  if (!page.rows.length) return wait('an hparams row');
}
for (const [key, value] of Object.entries(expected || {})) {
  if (key in page.settings && page.settings[key] !== value) return wait('setting ' + key + ' = ' + JSON.stringify(value)
    + ' (the page shows ' + JSON.stringify(page.settings[key]) + ')');
}
page.ready = true;
return page;
"""
)


def read_page(driver: WebDriver, tab: str, expected: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read what ``tab`` shows now, without waiting.

    Args:
        driver: The browser, on the tab's page.
        tab: One of :data:`TABS`.
        expected: Settings the page must show to count as ready (keys of :attr:`PageContent.settings`).

    Returns:
        The :class:`PageContent` fields as a dict, plus ``ready`` (bool) and ``waiting`` (what is missing).
    """
    return driver.execute_script(_READ_PAGE_JS, tab, dict(expected or {}))


_EXPAND_MATCHES_JS = (
    _DEEP_JS
    + r"""
const closed = deepAll(document, '#matches-container').filter((el) => el.querySelector('iron-collapse'));
let pending = 0;
for (const container of closed) {
  const collapse = container.querySelector('iron-collapse');
  if (!collapse.opened) { container.querySelector('.toggle-matches-button').click(); pending += 1; }
  else if (collapse.transitioning) pending += 1;
}
return pending;
"""
)


_SHOW_ALL_HPARAMS_JS = (
    _DEEP_JS
    + r"""
const pane = deep(document, 'tf-hparams-query-pane');
if (!pane || !pane._hparams) return -1;
let changed = 0;
pane._hparams.forEach((hparam, i) => {
  if (!hparam.displayed) { pane.set('_hparams.' + i + '.displayed', true); changed += 1; }
});
return changed;
"""
)


def _show_all_hparams(driver: WebDriver, timeout: float) -> None:
    """Tick every hyper-parameter in the HParams pane (TensorBoard shows only the first five by default)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(_SHOW_ALL_HPARAMS_JS) == 0)


def _expand_matches(driver: WebDriver, timeout: float) -> None:
    """Open every Custom Scalars chart's "Matches" list (its legend: one "tag (run)" line per series)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(_EXPAND_MATCHES_JS) == 0)


class _RenderedAndStable:
    """WebDriverWait condition: the tab is ready and its content is the same at two polls in a row."""

    def __init__(self, tab: str, expected: Mapping[str, Any]):
        self.tab = tab
        self.expected = expected
        self.last: dict[str, Any] | None = None
        self.previous: dict[str, Any] | None = None

    def __call__(self, driver: WebDriver) -> dict[str, Any] | bool:
        self.previous, self.last = self.last, read_page(driver, self.tab, self.expected)
        return self.last if self.last["ready"] and self.last == self.previous else False


def capture(
    driver: WebDriver,
    base_url: str,
    tab: str,
    out_dir: str | os.PathLike[str] | None,
    *,
    tag_filter: str | None = None,
    smoothing: float = 0.0,
    ignore_outliers: bool = False,
    timeout: float = 45.0,
    settle: float = 0.3,
) -> PageContent:
    """Open ``tab``, wait until it has rendered, save ``out_dir/<tab>.png`` and read what it shows.

    "Rendered" is checked through the DOM: Time Series has its run selector, scalar cards whose lines are
    drawn and no card loading; Custom Scalars has its charts with lines drawn and no chart loading; Text
    has rendered text; HParams has its table's column headers and a row. The settings the page shows
    must match the requested ones and the content must be unchanged between two polls (0.25 s apart).

    Args:
        driver: The browser (:func:`open_browser`).
        base_url: TensorBoard's base URL (:func:`serve_tensorboard`).
        tab: One of :data:`TABS`.
        out_dir: Where to save ``<tab>.png``; ``None`` to take no screenshot.
        tag_filter: Tag regex for the tab's filter box (``timeseries`` and ``text`` only), e.g. ``streams/``.
        smoothing: Scalar smoothing for Time Series and Custom Scalars.
        ignore_outliers: "Ignore outliers in chart scaling" for Time Series and Custom Scalars.
        timeout: Seconds to wait for the tab to render.
        settle: Seconds to wait after it has, for the last paint before the screenshot.

    Returns:
        What the page shows.

    Raises:
        DashboardError: The tab did not render within ``timeout``; the message says what was missing.
    """
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    url = tab_url(base_url, tab, tag_filter=tag_filter, smoothing=smoothing)
    preset_settings(driver, base_url, smoothing=smoothing, ignore_outliers=ignore_outliers)
    driver.get(url)
    expected: dict[str, Any] = {}
    if tab in ("timeseries", "custom_scalars"):
        expected = {"smoothing": smoothing, "ignore_outliers": ignore_outliers}
    if tag_filter:
        expected["tag_filter"] = tag_filter
    condition = _RenderedAndStable(tab, expected)
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException as error:
        waiting = condition.last["waiting"] if condition.last else "the page to answer"
        raise DashboardError(f"{tab} did not render within {timeout:.0f} s at {url}: waiting for {waiting}") from error
    if tab == "custom_scalars":
        _expand_matches(driver, timeout)
    if tab == "hparams":
        _show_all_hparams(driver, timeout)
        condition = _RenderedAndStable(tab, expected)  # the table grows by the columns just ticked
        WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    time.sleep(settle)
    screenshot = None
    if out_dir is not None:
        screenshot = Path(out_dir) / f"{tab}.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(screenshot)):
            raise DashboardError(f"could not save the screenshot {screenshot}")
    page = read_page(driver, tab, expected)
    fields = {name: page[name] for name in PageContent.__dataclass_fields__ if name in page}
    return PageContent(tab=tab, url=url, screenshot=screenshot, **fields)


def capture_all(
    logdir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    tabs: Sequence[str] = TABS,
    width: int = 1600,
    height: int = 1000,
    filters: Mapping[str, str] | None = None,
) -> dict[str, PageContent]:
    """Serve ``logdir``, open a browser and :func:`capture` each tab.

    Args:
        logdir: The log directory.
        out_dir: Where the PNGs go.
        tabs: Tabs to capture, from :data:`TABS`.
        width: Viewport width.
        height: Viewport height.
        filters: Tab to tag regex (``timeseries`` and ``text``).

    Returns:
        Tab to what it shows.
    """
    filters = dict(filters or {})
    pages = {}
    with serve_tensorboard(logdir) as base_url, open_browser(width, height) as driver:
        for tab in tabs:
            pages[tab] = capture(driver, base_url, tab, out_dir, tag_filter=filters.get(tab))
    return pages


def _parse_filters(values: Sequence[str]) -> dict[str, str]:
    """``REGEX`` (Time Series) or ``TAB=REGEX`` items to a tab-to-regex dict; ValueError for a tab without a filter."""
    filters = {}
    for value in values:
        tab, sep, regex = value.partition("=")
        if not sep or tab not in TABS:
            tab, regex = "timeseries", value
        if tab not in FILTER_TABS:
            raise ValueError(f"--filter {value}: the {tab} tab has no tag filter (only {' and '.join(FILTER_TABS)})")
        filters[tab] = regex
    return filters


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``dashboard_screenshots.py LOGDIR --out DIR [options]``.

    Args:
        argv: Arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="TensorBoard log directory of a finished run")
    parser.add_argument("--out", type=Path, required=True, help="folder for <tab>.png")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--tabs", nargs="+", choices=TABS, default=list(TABS))
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="[TAB=]REGEX",
        help="tag filter: REGEX for Time Series, or timeseries=REGEX / text=REGEX; repeatable",
    )
    args = parser.parse_args(argv)
    try:
        filters = _parse_filters(args.filter)
    except ValueError as error:
        parser.error(str(error))
    try:
        pages = capture_all(
            args.logdir,
            args.out,
            tabs=args.tabs,
            width=args.width,
            height=args.height,
            filters=filters,
        )
    except DashboardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for page in pages.values():
        print(page.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
