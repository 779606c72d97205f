// Draws a neuron page's window heat-maps from its embedded JSON (#neuron-data).
// Every token reaches the page through textContent, never as markup.
(function () {
  "use strict";

  const holder = document.getElementById("neuron-data");
  if (!holder) {
    return;
  }
  // data.scores: [{meta: {id, explanation, method, simulator, score}, windows: [{window_id, split, tokens, true,
  // simulated, error}]}] as stored with each score; data.records: null or {tokens: {id: [...]}, recorded,
  // top/random/bottom: [{id, act, shown}]}.
  const data = JSON.parse(holder.textContent);
  const SIMULATED_SCALE = 10;
  const scoredIds = new Set();
  let scale = 0;
  function widen(values) {
    for (const value of values) {
      if (value !== null && Math.abs(value) > scale) {
        scale = Math.abs(value);
      }
    }
  }
  for (const score of data.scores) {
    for (const entry of score.windows) {
      scoredIds.add(entry.window_id);
      widen(entry.true);
    }
  }
  if (data.records) {
    for (const name of ["top", "random", "bottom"]) {
      for (const entry of data.records[name]) {
        widen(entry.act);
      }
    }
  }
  if (scale === 0) {
    scale = 1;
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function format(value) {
    return value === null || value === undefined ? "n/a" : String(value);
  }

  function short(value) {
    return value === null ? "n/a" : String(Number(value.toPrecision(4)));
  }

  function visible(token) {
    if (token === "") {
      return "\u2205";
    }
    // Keep real line breaks (the token box uses pre-wrap) but show that they are there.
    return token.replace(/\r/g, "\u240d").replace(/\t/g, "\u21e5").replace(/\n/g, "\u21b5\n");
  }

  function colour(share) {
    const alpha = Math.min(1, Math.abs(share)).toFixed(3);
    return share >= 0 ? "rgba(230, 120, 0, " + alpha + ")" : "rgba(30, 100, 230, " + alpha + ")";
  }

  function heatMap(tokens, values, scale, label, kind) {
    const box = element("div", "heat " + kind);
    for (let index = 0; index < tokens.length; index++) {
      const value = index < values.length ? values[index] : null;
      const span = element("span", "tok", visible(tokens[index]));
      span.dataset.v = value === null ? "" : String(value);
      span.title = label + " " + format(value);
      if (value !== null && value !== 0) {
        span.style.backgroundColor = colour(value / scale);
      }
      box.appendChild(span);
    }
    return box;
  }

  function peak(values) {
    let best = null;
    for (const value of values) {
      if (value !== null && (best === null || value > best)) {
        best = value;
      }
    }
    return best;
  }

  function scoredWindow(score, entry) {
    const tokens = entry.tokens;
    const box = element("div", "window scored");
    box.dataset.windowId = String(entry.window_id);
    box.dataset.scoreId = String(score.meta.id);
    const head = element("div", "window-head",
      "window " + entry.window_id + " \u00b7 " + entry.split + " \u00b7 max true " + short(peak(entry.true)));
    if (entry.error) {
      head.appendChild(element("span", "badge warn", "not simulated: " + entry.error));
    }
    box.appendChild(head);
    const pair = element("div", "pair");
    const truth = element("div", "side");
    truth.appendChild(element("div", "side-label", "true"));
    truth.appendChild(heatMap(tokens, entry.true, scale, "true", "true"));
    const simulated = element("div", "side");
    simulated.appendChild(element("div", "side-label", "simulated (0\u201310)"));
    simulated.appendChild(heatMap(tokens, entry.simulated, SIMULATED_SCALE, "simulated", "sim"));
    pair.appendChild(truth);
    pair.appendChild(simulated);
    box.appendChild(pair);
    return box;
  }

  function drawScores() {
    const target = document.getElementById("scored");
    if (!target) {
      return;
    }
    if (!data.scores.length) {
      target.appendChild(element("p", "note", "No scores with window details."));
      return;
    }
    data.scores.forEach(function (score, index) {
      const meta = score.meta;
      const details = element("details", "score-windows");
      details.dataset.scoreId = String(meta.id);
      const summary = element("summary");
      summary.appendChild(element("span", "summary-text", meta.explanation));
      summary.appendChild(element("span", "meta",
        " \u2014 " + meta.method + ", simulated by " + meta.simulator + ", score " +
        (meta.score === null ? "n/a" : meta.score.toFixed(3)) + ", " + score.windows.length + " windows"));
      details.appendChild(summary);
      let drawn = false;
      function draw() {
        if (drawn) {
          return;
        }
        drawn = true;
        for (const entry of score.windows) {
          details.appendChild(scoredWindow(score, entry));
        }
      }
      details.addEventListener("toggle", draw);
      if (index === 0) {
        details.open = true;
        draw();
      }
      target.appendChild(details);
    });
  }

  const GROUP_TITLES = {top: "Top-activating windows", random: "Random windows", bottom: "Most negative windows"};

  function drawRecords() {
    const target = document.getElementById("records");
    if (!target || !data.records) {
      return;
    }
    for (const name of ["top", "random", "bottom"]) {
      const windows = data.records[name] || [];
      if (!windows.length) {
        continue;
      }
      const group = element("div", "record-group");
      group.dataset.group = name;
      group.appendChild(element("h3", null, GROUP_TITLES[name] + " (" + windows.length + " of " +
        data.records.recorded[name] + ")"));
      for (const entry of windows) {
        const box = element("div", "window record");
        box.dataset.windowId = String(entry.id);
        const head = element("div", "window-head", "window " + entry.id + " \u00b7 max " + short(peak(entry.act)));
        if (entry.shown) {
          head.appendChild(element("span", "badge", "shown to the explainer"));
        }
        if (scoredIds.has(entry.id)) {
          head.appendChild(element("span", "badge", "scored"));
        }
        box.appendChild(head);
        box.appendChild(heatMap(data.records.tokens[String(entry.id)] || [], entry.act, scale, "activation", "true"));
        group.appendChild(box);
      }
      target.appendChild(group);
    }
  }

  drawScores();
  drawRecords();
  document.body.dataset.ready = "true";
})();
