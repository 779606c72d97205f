"""The html export and `serve`: site contents against the database and the record store, escaping of hostile text,
navigation, safe replacement of an existing site, the CLI, and the local server (real SQLite, real HTTP)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from neuron_explainer.activations import RecordStore
from neuron_explainer.cli import main
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import ExplanationQuery, open_database
from neuron_explainer.export import export
from neuron_explainer.export.html import SITE_MARKER, SiteOptions, build_site, make_server, site_url
from neuron_explainer.export.html.encoding import script_json
from neuron_explainer.export.html.site import model_slug, neuron_href
from viewer_site import (HOSTILE_EXPLANATION, HOSTILE_MODEL, HOSTILE_TOKENS, LAYERS, NEURONS_PER_LAYER,
                         ViewerWorld, build_world, pearson_of, sasc_pearson_of)

DATA_PREFIX = "window.NEURON_INDEX = "
NEURON_DATA = re.compile(r'<script type="application/json" id="neuron-data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ViewerWorld:
    return build_world(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def site(world: ViewerWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sites") / "site"
    with open_database(world.db_url, create=False) as database:
        summary = build_site(database, out, options=SiteOptions(progress=False))
    assert summary.neurons == len(world.neurons) and summary.neurons_with_records == len(world.neurons)
    return out


def index_data(site: Path) -> dict:
    text = (site / "data" / "index.js").read_text(encoding="utf-8")
    assert text.startswith(DATA_PREFIX) and text.endswith(";\n")
    return json.loads(text[len(DATA_PREFIX):-2])


def page_path(site: Path, world: ViewerWorld, neuron: NeuronId) -> Path:
    return site / neuron_href(model_slug(world.model_id, "fp-viewer"), neuron.layer, neuron.neuron)


def neuron_data(page: Path) -> dict:
    [payload] = NEURON_DATA.findall(page.read_text(encoding="utf-8"))
    return json.loads(payload)


def best_score(neuron: NeuronId) -> float:
    sasc = sasc_pearson_of(neuron)
    return max(pearson_of(neuron), sasc) if sasc is not None else pearson_of(neuron)


def test_index_lists_every_neuron_with_its_best_explanation(site: Path, world: ViewerWorld) -> None:
    data = index_data(site)
    assert [model["id"] for model in data["models"]] == [world.model_id]
    rows = {(row[1], row[2]): row for row in data["rows"]}
    assert set(rows) == {(neuron.layer, neuron.neuron) for neuron in world.neurons}
    for neuron in world.neurons:
        row = rows[(neuron.layer, neuron.neuron)]
        if neuron == world.undefined:
            assert row[3] is None and row[4] is None
            continue
        assert row[3] == pytest.approx(best_score(neuron))
        assert (row[4], row[5]) == pytest.approx((best_score(neuron) - 0.1, best_score(neuron) + 0.1))
        assert data["methods"][row[6]] == ("sasc" if neuron.neuron == 4 else "token-pairs")
    assert (site / SITE_MARKER).is_file() and (site / "index.html").is_file()
    for name in ("style.css", "index.js", "neuron.js"):
        assert (site / "assets" / name).is_file()
    for neuron in world.neurons:
        assert page_path(site, world, neuron).is_file()


def test_neuron_page_shows_every_explanation_and_the_stored_windows(site: Path, world: ViewerWorld) -> None:
    neuron = NeuronId(1, 4)
    page = page_path(site, world, neuron)
    html = page.read_text(encoding="utf-8")
    data = neuron_data(page)
    with open_database(world.db_url, create=False) as database:
        [detail] = database.neuron_details(neuron)
    # Both explanations, best (SASC here) first, with provenance.
    assert [article for article in re.findall(r"data-explanation-id=(\d+)", html)] == \
        [str(stored.id) for stored in detail.explanations]
    assert html.index("sasc guess for 1:4") < html.index("echo tokens in layer 1")
    assert "openai:scripted" in html and "p-explain" in html and "scripted-simulator" in html
    assert len(data["scores"]) == 2
    for stored_explanation in detail.explanations:
        [stored] = stored_explanation.scores
        [page_score] = [score for score in data["scores"] if score["meta"]["id"] == stored.id]
        assert page_score["meta"]["score"] == pytest.approx(stored.score.metrics.pearson)
        assert page_score["meta"]["explanation"] == stored_explanation.explanation.text
        for window, entry in zip(stored.score.windows, page_score["windows"], strict=True):
            assert entry["window_id"] == window.window_id and entry["split"] == window.split.value
            assert entry["true"] == list(window.true_activations)
            assert entry["simulated"] == list(window.simulated_activations)
            assert entry["tokens"] == list(window.tokens)


def test_neuron_page_shows_record_store_windows(site: Path, world: ViewerWorld) -> None:
    neuron = NeuronId(0, 3)
    data = neuron_data(page_path(site, world, neuron))
    record = RecordStore.open(world.records).load_neuron(neuron.layer, neuron.neuron)
    top = data["records"]["top"]
    assert [entry["id"] for entry in top] == [window.window_id for window in record.top_windows][:len(top)]
    for entry, window in zip(top, record.top_windows):
        assert data["records"]["tokens"][str(entry["id"])] == list(window.tokens)
        assert entry["act"] == pytest.approx(window.activations, abs=1e-3)
    # The first two top windows were shown to the explainer.
    assert [entry.get("shown", False) for entry in top] == [True, True] + [False] * (len(top) - 2)
    assert [entry["id"] for entry in data["records"]["random"]] == \
        [window.window_id for window in record.random_windows]
    assert data["records"]["recorded"] == {"top": len(record.top_windows), "random": len(record.random_windows),
                                           "bottom": 0}


def test_prev_next_links_walk_every_neuron_in_order(site: Path, world: ViewerWorld) -> None:
    expected = sorted(world.neurons)
    page = page_path(site, world, expected[0])
    visited = []
    while True:
        html = page.read_text(encoding="utf-8")
        title = re.search(r"<h1>Layer (\d+), neuron (\d+)</h1>", html)
        visited.append(NeuronId(int(title.group(1)), int(title.group(2))))
        following = re.search(r'<a href="([^"]+)" rel="next"', html)
        if following is None:
            assert 'rel="prev"' in html
            break
        page = (page.parent / following.group(1)).resolve()
    assert visited == expected


def test_layer_pages_summarise_scores_with_an_inline_histogram(site: Path, world: ViewerWorld) -> None:
    slug = model_slug(world.model_id, "fp-viewer")
    for layer in LAYERS:
        html = (site / "m" / slug / f"layer-{layer}.html").read_text(encoding="utf-8")
        scores = [best_score(NeuronId(layer, neuron)) for neuron in range(NEURONS_PER_LAYER)
                  if NeuronId(layer, neuron) != world.undefined]
        counts = [int(count) for count in re.findall(r'data-count="(\d+)"', html)]
        assert sum(counts) == len(scores)
        good = sum(score >= 0.8 for score in scores) / len(scores)
        assert f"<td class=num>{good:.3f}</td>" in html
        assert "<svg" in html and "<script" not in html
        links = re.findall(r'<a href="(\d+/\d+\.html)">', html)
        assert len(links) == NEURONS_PER_LAYER


def test_hostile_text_is_escaped_in_every_file(tmp_path: Path) -> None:
    world = build_world(tmp_path, hostile=True)
    out = tmp_path / "site"
    with open_database(world.db_url, create=False) as database:
        build_site(database, out, options=SiteOptions(progress=False))
    raw_payloads = [*HOSTILE_TOKENS, HOSTILE_EXPLANATION, HOSTILE_MODEL, "<b>bold</b>", "onerror=", "onload="]
    generated = [path for path in out.rglob("*") if path.suffix in (".html", ".js")]
    assert len(generated) == len(world.neurons) + len(LAYERS) + 4  # + index.html and three scripts
    for path in generated:
        text = path.read_text(encoding="utf-8")
        for payload in raw_payloads:
            if payload == "onerror=" or payload == "onload=":
                # Attribute-like text may appear only escaped (inside text or JSON), never in a tag.
                assert not re.search(r"<[a-z]+[^>]*\s" + payload, text), (path, payload)
                continue
            if payload == "\u2028":
                assert payload not in text, path
                continue
            assert payload not in text, (path, payload)
        if path.suffix == ".html":
            scripts = re.findall(r"<script[^>]*>", text)
            assert all(tag == '<script type="application/json" id="neuron-data">' or tag.startswith('<script src="')
                       for tag in scripts), (path, scripts)
    # The data still round-trips to the exact hostile strings.
    data = neuron_data(page_path(out, world, NeuronId(0, 0)))
    shown = {token for tokens in data["records"]["tokens"].values() for token in tokens}
    scored = {token for score in data["scores"] for window in score["windows"] for token in window["tokens"]}
    assert set(HOSTILE_TOKENS) <= shown and set(HOSTILE_TOKENS) <= scored
    assert HOSTILE_EXPLANATION in data["scores"][0]["meta"]["explanation"]
    index = index_data(out)
    assert index["models"][0]["id"] == HOSTILE_MODEL


def test_script_json_cannot_close_its_element() -> None:
    value = {"token": "</script><!-- & \u2028\u2029 <img>", "values": [1.5, None]}
    encoded = script_json(value)
    for character in "<>&\u2028\u2029":
        assert character not in encoded
    assert json.loads(encoded) == value
    with pytest.raises(ValueError):
        script_json({"nan": math.nan})


def test_records_come_from_the_registered_path_or_the_records_flag(tmp_path: Path) -> None:
    world = build_world(tmp_path, register_path=False)
    neuron = NeuronId(1, 2)
    with open_database(world.db_url, create=False) as database:
        plain = export(database, "html", tmp_path / "plain")
        with_records = export(database, "html", tmp_path / "with", records=world.records)
    assert any("no record store found" in note for note in plain.notes)
    assert neuron_data(page_path(tmp_path / "plain", world, neuron))["records"] is None
    assert "No record store was available" in page_path(tmp_path / "plain", world, neuron).read_text(encoding="utf-8")
    # Without a store, the stored per-window details are still there.
    assert len(neuron_data(page_path(tmp_path / "plain", world, neuron))["scores"][0]["windows"]) == 4
    assert with_records.paths == (tmp_path / "with" / "index.html",)
    assert any(str(world.records) in note for note in with_records.notes)
    assert neuron_data(page_path(tmp_path / "with", world, neuron))["records"]["top"]


def test_existing_directories_are_replaced_only_when_they_are_sites(site: Path, world: ViewerWorld,
                                                                     tmp_path: Path) -> None:
    foreign = tmp_path / "papers"
    foreign.mkdir()
    (foreign / "draft.tex").write_text("keep me")
    with open_database(world.db_url, create=False) as database:
        with pytest.raises(UserError, match="not a generated site"):
            build_site(database, foreign, options=SiteOptions(progress=False))
        assert (foreign / "draft.tex").read_text() == "keep me"
        out = tmp_path / "site"
        build_site(database, out, options=SiteOptions(progress=False))
        assert page_path(out, world, NeuronId(0, 2)).is_file()
        # A narrower export replaces the whole site: layer 0's pages are gone.
        summary = build_site(database, out, query=ExplanationQuery(layers=(1,), limit=None),
                             options=SiteOptions(progress=False))
    assert summary.neurons == NEURONS_PER_LAYER
    assert not page_path(out, world, NeuronId(0, 2)).exists() and page_path(out, world, NeuronId(1, 2)).is_file()
    assert {row[1] for row in index_data(out)["rows"]} == {1}
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".site.")]


def test_parallel_page_writing_gives_the_same_pages(site: Path, world: ViewerWorld, tmp_path: Path) -> None:
    with open_database(world.db_url, create=False) as database:
        summary = build_site(database, tmp_path / "parallel", options=SiteOptions(progress=False, jobs=2))
    assert summary.jobs == 2 and summary.neurons_with_records == len(world.neurons)
    footer = re.compile(r"<footer>.*?</footer>")
    for neuron in world.neurons:
        assert footer.sub("", page_path(tmp_path / "parallel", world, neuron).read_text(encoding="utf-8")) == \
            footer.sub("", page_path(site, world, neuron).read_text(encoding="utf-8"))


def test_cli_export_prints_where_the_site_is(world: ViewerWorld, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "site"
    code = main(["export", "--db", world.db_url, "--format", "html", "--out", str(out), "--records",
                 str(world.records), "--min-score", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0 and f"to {out / 'index.html'}" in printed
    assert {(row[1], row[2]) for row in index_data(out)["rows"]} == {
        (neuron.layer, neuron.neuron) for neuron in world.neurons
        if neuron != world.undefined and best_score(neuron) >= 0.5}
    assert main(["export", "--db", world.db_url, "--format", "csv", "--out", str(tmp_path / "x.csv"),
                 "--records", str(world.records)]) == 2
    assert "--records is used only by --format html" in capsys.readouterr().err


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, "", b""


def test_server_serves_the_site_on_loopback_only(site: Path) -> None:
    import threading

    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = site_url(server)
        assert url.startswith("http://127.0.0.1:")
        status, kind, body = _get(url)
        assert status == 200 and kind.startswith("text/html") and b"<table id=neurons>" in body
        status, kind, body = _get(url + "data/index.js")
        assert status == 200 and kind.startswith("text/javascript") and body.startswith(DATA_PREFIX.encode())
        assert _get(url + "../../etc/passwd")[0] == 404
        assert _get(url + "%2e%2e/%2e%2e/etc/passwd")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_serve_command_runs_until_interrupted(site: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "neuron_explainer.cli", "serve", str(site), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        assert url, line
        assert _get(url.group(1) + "index.html")[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    assert main(["serve", str(site / "assets")]) == 2


def test_an_empty_database_gives_an_empty_site(tmp_path: Path) -> None:
    with open_database(str(tmp_path / "empty.db")) as database:
        result = export(database, "html", tmp_path / "site")
    assert result.rows == 0 and any("no scored explanations match" in note for note in result.notes)
    assert index_data(tmp_path / "site")["rows"] == []
    assert "0 explained neurons" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
