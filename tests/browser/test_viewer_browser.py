"""The generated site in real headless Chromium (Debian's `chromium`), driven over the DevTools pipe: the index sorts,
filters, searches and pages (also with 50,000 rows); neuron pages draw heat-maps whose values match the database and
the record store; planted script tokens never run; nothing is fetched from anywhere but the site itself, opened from
file:// or through `serve`. Screenshots go to test-artifacts/."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdp import Browser, Page
from neuron_explainer.activations import RecordStore
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import ExplanationQuery, open_database
from neuron_explainer.export.html import SiteOptions, build_site, make_server, site_url
from neuron_explainer.export.html.site import index_script, model_slug, neuron_href
from viewer_site import HOSTILE_EXPLANATION, HOSTILE_MODEL, HOSTILE_TOKENS, ViewerWorld, build_world

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless Chromium not installed at {CHROMIUM} "
                       "(apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    ARTIFACTS.mkdir(exist_ok=True)
    chromium = Browser(str(CHROMIUM), tmp_path_factory.mktemp("chromium-profile"),
                       log_path=ARTIFACTS / "chromium.log")
    yield chromium
    chromium.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.new_page()
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ViewerWorld:
    return build_world(tmp_path_factory.mktemp("browser-world"))


@pytest.fixture(scope="module")
def site(world: ViewerWorld) -> Path:
    out = world.db_path.parent / "site"
    with open_database(world.db_url, create=False) as database:
        build_site(database, out, options=SiteOptions(progress=False))
    return out


def assert_self_contained(tab: Page, allowed_prefix: str) -> None:
    """No console errors, exceptions or CSP reports, and every request stayed inside the site."""
    assert tab.console_errors() == []
    outside = [url for url in tab.requested_urls() if not url.startswith(allowed_prefix)]
    assert outside == [], outside
    assert tab.dialogs() == []


def open_page(tab: Page, url: str) -> None:
    tab.navigate(url)
    tab.wait_for("document.body.dataset.ready === 'true'")


def table_rows(tab: Page) -> list[dict]:
    return tab.evaluate("Array.from(document.querySelectorAll('#neurons tbody tr')).map(row => ({"
                        "layer: Number(row.dataset.layer), neuron: Number(row.dataset.neuron), "
                        "score: row.dataset.score === '' ? null : Number(row.dataset.score), "
                        "method: row.querySelector('.method').textContent, "
                        "text: row.querySelector('.text').textContent}))")


def status(tab: Page) -> str:
    return tab.evaluate("document.getElementById('status').textContent")


def set_control(tab: Page, control_id: str, value: str, event: str = "change") -> None:
    tab.evaluate(f"(() => {{ const control = document.getElementById({json.dumps(control_id)}); "
                 f"control.value = {json.dumps(value)}; control.dispatchEvent(new Event({json.dumps(event)})); }})()")


def search(tab: Page, text: str, expected_status: str) -> None:
    set_control(tab, "search", text, "input")
    tab.wait_for(f"document.getElementById('status').textContent.includes({json.dumps(expected_status)})")


def visible(token: str) -> str:
    """The text neuron.js shows for a token."""
    if token == "":
        return "\u2205"
    return token.replace("\r", "\u240d").replace("\t", "\u21e5").replace("\n", "\u21b5\n")


def test_index_sorts_filters_and_searches(page: Page, site: Path, world: ViewerWorld) -> None:
    open_page(page, (site / "index.html").as_uri())
    assert status(page) == f"Showing 1\u2013{len(world.neurons)} of {len(world.neurons)} neurons."
    rows = table_rows(page)
    defined = [row["score"] for row in rows if row["score"] is not None]
    assert defined == sorted(defined, reverse=True) and rows[-1]["score"] is None  # undefined scores last
    assert (rows[0]["layer"], rows[0]["neuron"]) == (1, 5)

    page.evaluate("document.querySelector('button[data-sort=layer]').click()")
    assert [(row["layer"], row["neuron"]) for row in table_rows(page)] == \
        [(neuron.layer, neuron.neuron) for neuron in sorted(world.neurons)]
    page.evaluate("document.querySelector('button[data-sort=layer]').click()")
    assert [(row["layer"], row["neuron"]) for row in table_rows(page)] == \
        [(neuron.layer, neuron.neuron) for neuron in sorted(world.neurons, reverse=True)]
    assert page.evaluate("document.querySelector('button[data-sort=layer]').parentElement"
                         ".getAttribute('aria-sort')") == "descending"

    set_control(page, "layer-filter", "1")
    assert {row["layer"] for row in table_rows(page)} == {1} and len(table_rows(page)) == 6
    set_control(page, "min-score", "0.5")
    assert all(row["score"] >= 0.5 for row in table_rows(page)) and len(table_rows(page)) == 4
    assert "layer=1" in page.evaluate("location.hash") and "min=0.5" in page.evaluate("location.hash")
    page.screenshot(ARTIFACTS / "index-filtered.png")
    page.evaluate("document.getElementById('reset').click()")
    assert len(table_rows(page)) == len(world.neurons)

    search(page, "DELTA", "of 2 neurons")
    assert {(row["layer"], row["neuron"]) for row in table_rows(page)} == {(0, 3), (1, 3)}
    search(page, "1:4", "of 1 neurons")
    [row] = table_rows(page)
    assert (row["layer"], row["neuron"], row["method"]) == (1, 4, "sasc")
    search(page, "", f"of {len(world.neurons)} neurons")
    set_control(page, "method-filter", "1")  # the second method seen: sasc
    assert {(row["layer"], row["neuron"]) for row in table_rows(page)} == {(0, 4), (1, 4)}
    search(page, "no such explanation", "No neuron matches.")
    assert table_rows(page) == []
    page.screenshot(ARTIFACTS / "index.png")
    assert_self_contained(page, site.as_uri() + "/")
    assert_layer_bars_sit_over_their_ticks(page)


def assert_layer_bars_sit_over_their_ticks(page: Page) -> None:
    """Each per-layer bar, as rendered, is centred over the tick label naming its layer."""
    pairs = page.evaluate("""(() => [...document.querySelectorAll('svg.chart')].flatMap(svg => {
        const ticks = [...svg.querySelectorAll('text')];
        return [...svg.querySelectorAll('rect.bar')].flatMap(bar => {
            const match = /^layer (\\d+):/.exec(bar.querySelector('title')?.textContent || '');
            if (!match) return [];
            const tick = ticks.find(text => text.textContent === match[1]);
            const box = bar.getBoundingClientRect(), label = tick ? tick.getBoundingClientRect() : null;
            return [[match[1], box.left + box.width / 2, label ? label.left + label.width / 2 : null]];
        });
    }))()""")
    assert pairs, "no per-layer bars on the index"
    for layer, bar_centre, tick_centre in pairs:
        assert tick_centre is not None and abs(bar_centre - tick_centre) < 1.5, (layer, bar_centre, tick_centre)


def test_index_pages_through_fifty_thousand_neurons(page: Page, site: Path, world: ViewerWorld,
                                                    tmp_path: Path) -> None:
    # The index page of the small site with the data of 50,000 neurons (their pages are not needed here).
    big = tmp_path / "big"
    shutil.copytree(site / "assets", big / "assets")
    (big / "data").mkdir()
    shutil.copy(site / "index.html", big / "index.html")
    with open_database(world.db_url, create=False) as database:
        template = database.query(ExplanationQuery(limit=1))[0]
    count = 50_000
    rows = [dataclasses.replace(template, neuron=NeuronId(index // 1536, index % 1536), score=(index % 997) / 996,
                                ci_low=0.0, ci_high=1.0, text=f"synthetic explanation number {index}")
            for index in range(count)]
    (big / "data" / "index.js").write_text(index_script(rows, 0.8), encoding="utf-8")
    started = time.perf_counter()
    open_page(page, (big / "index.html").as_uri())
    loaded = time.perf_counter() - started
    assert status(page) == f"Showing 1\u2013100 of {count} neurons."
    assert len(table_rows(page)) == 100
    page.evaluate("document.getElementById('page-next').click()")
    assert status(page) == f"Showing 101\u2013200 of {count} neurons."
    assert page.evaluate("document.querySelector('.page-label').textContent").strip() == f"page 2 of {count // 100}"
    started = time.perf_counter()
    search(page, "number 4242", "of 11 neurons")  # 4242 and 42420-42429
    searched = time.perf_counter() - started
    page.evaluate("document.querySelector('button[data-sort=neuron]').click()")
    assert [row["neuron"] for row in table_rows(page)] == sorted(row["neuron"] for row in table_rows(page))
    page.screenshot(ARTIFACTS / "index-50000.png")
    (ARTIFACTS / "index-50000.txt").write_text(f"load {loaded:.2f} s, search {searched:.2f} s\n")
    assert_self_contained(page, big.as_uri() + "/")


def test_neuron_page_heat_maps_match_the_database_and_the_record_store(page: Page, site: Path,
                                                                      world: ViewerWorld) -> None:
    open_page(page, (site / "index.html").as_uri())
    search(page, "1:4", "of 1 neurons")
    page.click_and_wait_load("#neurons tbody a.neuron-link")
    page.wait_for("document.body.dataset.ready === 'true'")
    assert page.evaluate("document.querySelector('h1').textContent") == "Layer 1, neuron 4"
    # Open every score's windows (the first is open already; the others draw when opened).
    page.evaluate("document.querySelectorAll('details.score-windows').forEach(details => { details.open = true; })")
    page.wait_for("Array.from(document.querySelectorAll('details.score-windows'))"
                  ".every(details => details.querySelector('.window'))")
    shown = page.evaluate("""Array.from(document.querySelectorAll('.window.scored')).map(box => ({
        score: Number(box.dataset.scoreId), window: Number(box.dataset.windowId),
        tokens: Array.from(box.querySelectorAll('.heat.true .tok')).map(tok => tok.textContent),
        truth: Array.from(box.querySelectorAll('.heat.true .tok')).map(tok => tok.dataset.v),
        titles: Array.from(box.querySelectorAll('.heat.true .tok')).map(tok => tok.title),
        simulated: Array.from(box.querySelectorAll('.heat.sim .tok')).map(tok => tok.dataset.v)}))""")
    with open_database(world.db_url, create=False) as database:
        [detail] = database.neuron_details(NeuronId(1, 4))
    expected = [(stored.id, window) for explanation in detail.explanations for stored in explanation.scores
                for window in stored.score.windows]
    assert len(shown) == len(expected) == 8
    for (score_id, window), drawn in zip(expected, shown):
        assert (drawn["score"], drawn["window"]) == (score_id, window.window_id)
        assert drawn["tokens"] == [visible(token) for token in window.tokens]
        assert [float(value) for value in drawn["truth"]] == list(window.true_activations)
        assert [float(value) for value in drawn["simulated"]] == list(window.simulated_activations)
        assert drawn["titles"] == [f"true {value}" for value in drawn["truth"]]

    record = RecordStore.open(world.records).load_neuron(1, 4)
    top = page.evaluate("""Array.from(document.querySelectorAll('.record-group[data-group=top] .window')).map(box => ({
        window: Number(box.dataset.windowId),
        values: Array.from(box.querySelectorAll('.tok')).map(tok => Number(tok.dataset.v)),
        badges: Array.from(box.querySelectorAll('.badge')).map(badge => badge.textContent)}))""")
    assert [entry["window"] for entry in top] == [window.window_id for window in record.top_windows]
    for entry, window in zip(top, record.top_windows):
        assert entry["values"] == pytest.approx(window.activations, abs=1e-3)
    assert top[0]["badges"] == ["shown to the explainer"] and top[2]["badges"] == ["scored"]
    # The strongest token is painted in the full positive colour.
    strongest = page.evaluate("""(() => { const tokens = Array.from(document.querySelectorAll(
        '.record-group[data-group=top] .tok'));
        const best = tokens.reduce((a, b) => Number(b.dataset.v) > Number(a.dataset.v) ? b : a);
        return getComputedStyle(best).backgroundColor; })()""")
    assert strongest == "rgb(230, 120, 0)"
    page.screenshot(ARTIFACTS / "neuron.png")
    page.click_and_wait_load("#link-next")
    page.wait_for("document.body.dataset.ready === 'true'")
    assert page.evaluate("document.querySelector('h1').textContent") == "Layer 1, neuron 5"
    assert_self_contained(page, site.as_uri() + "/")


def test_planted_script_tokens_never_run(page: Page, tmp_path: Path) -> None:
    world = build_world(tmp_path, hostile=True)
    out = tmp_path / "site"
    with open_database(world.db_url, create=False) as database:
        build_site(database, out, options=SiteOptions(progress=False))
    slug = model_slug(world.model_id, "fp-viewer")
    open_page(page, (out / "index.html").as_uri())
    assert page.evaluate("document.querySelector('section.model h2').textContent") == HOSTILE_MODEL
    assert any(HOSTILE_EXPLANATION in row["text"] for row in table_rows(page))
    open_page(page, (out / neuron_href(slug, 0, 0)).as_uri())
    page.screenshot(ARTIFACTS / "neuron-hostile.png")
    # Nothing ran, no element was made from a token, and no blocked attempt was logged (CSP reports are errors).
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('main img, main iframe, .heat svg, .heat script').length") == 0
    assert_self_contained(page, out.as_uri() + "/")
    # The hostile strings are shown as text, exactly.
    tokens = set(page.evaluate("Array.from(document.querySelectorAll('.tok')).map(tok => tok.textContent)"))
    assert {visible(token) for token in HOSTILE_TOKENS} <= tokens
    page.navigate((out / "m" / slug / "layer-0.html").as_uri())
    assert page.evaluate("document.querySelectorAll('svg.chart rect.bar').length") > 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert_self_contained(page, out.as_uri() + "/")


def test_site_works_through_serve(page: Page, site: Path) -> None:
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = site_url(server)
        open_page(page, url)
        assert status(page).startswith("Showing 1\u2013")
        page.click_and_wait_load("#neurons tbody a.neuron-link")
        page.wait_for("document.body.dataset.ready === 'true'")
        assert page.evaluate("document.querySelectorAll('.window.scored').length") > 0
        assert_self_contained(page, url)
    finally:
        server.shutdown()
        server.server_close()
