// The index table: filters, sorting, search and paging over window.NEURON_INDEX (data/index.js), all in the
// browser. Only one page of rows is in the DOM at a time, so 50,000 neurons stay fast.
// Every value reaches the page through textContent, never as markup.
(function () {
  "use strict";

  const data = window.NEURON_INDEX;
  const status = document.getElementById("status");
  if (!data) {
    status.textContent = "data/index.js did not load.";
    return;
  }
  const MODEL = 0, LAYER = 1, NEURON = 2, SCORE = 3, CI_LOW = 4, CI_HIGH = 5, METHOD = 6, EXPLAINER = 7,
    SIMULATOR = 8, TEXT = 9, POLARITY = 10;
  const rows = data.rows;
  const manyModels = data.models.length > 1;
  const PAGE_SIZES = [50, 100, 250, 1000];
  const DEFAULTS = {q: "", layer: "", method: "", model: "", min: "", max: "", sort: "score", dir: "desc",
    page: "1", size: "100"};
  let lowered = null;

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

  // --- state, kept in the URL fragment so a filtered view can be bookmarked (works from file:// too) ---

  const state = Object.assign({}, DEFAULTS);
  (function readFragment() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    for (const key of Object.keys(DEFAULTS)) {
      if (params.has(key)) {
        state[key] = params.get(key);
      }
    }
  })();

  function writeFragment() {
    const params = new URLSearchParams();
    for (const key of Object.keys(DEFAULTS)) {
      if (state[key] !== DEFAULTS[key]) {
        params.set(key, state[key]);
      }
    }
    const fragment = params.toString();
    try {
      history.replaceState(null, "", fragment ? "#" + fragment : window.location.pathname);
    } catch (error) {
      // Some browsers refuse history changes on file:// pages; the view still works without them.
    }
  }

  // --- controls ---

  function labelled(text, control) {
    const label = element("label", "control");
    label.appendChild(element("span", null, text));
    label.appendChild(control);
    return label;
  }

  function select(id, options, value) {
    const node = element("select");
    node.id = id;
    for (const [optionValue, text] of options) {
      const option = element("option", null, text);
      option.value = optionValue;
      node.appendChild(option);
    }
    node.value = value;
    if (node.value !== value) {
      node.value = options[0][0];
    }
    return node;
  }

  function numberInput(id, value, placeholder) {
    const node = element("input");
    node.id = id;
    node.type = "number";
    node.step = "0.05";
    node.min = "-1";
    node.max = "1";
    node.placeholder = placeholder;
    node.value = value;
    return node;
  }

  const layers = Array.from(new Set(rows.map(function (row) { return row[LAYER]; }))).sort(function (a, b) {
    return a - b;
  });
  const controls = document.getElementById("controls");
  const search = element("input");
  search.id = "search";
  search.type = "search";
  search.placeholder = "search explanations, or L:N";
  search.value = state.q;
  const layerSelect = select("layer-filter", [["", "all layers"]].concat(layers.map(function (layer) {
    return [String(layer), "layer " + layer];
  })), state.layer);
  const methodSelect = select("method-filter", [["", "all methods"]].concat(data.methods.map(function (name, index) {
    return [String(index), name];
  })), state.method);
  const modelSelect = select("model-filter", [["", "all models"]].concat(data.models.map(function (model, index) {
    return [String(index), model.id];
  })), state.model);
  const minInput = numberInput("min-score", state.min, "min score");
  const maxInput = numberInput("max-score", state.max, "max score");
  const sizeSelect = select("page-size", PAGE_SIZES.map(function (size) {
    return [String(size), size + " per page"];
  }), state.size);
  const reset = element("button", null, "Reset");
  reset.id = "reset";
  reset.type = "button";
  controls.appendChild(labelled("Search", search));
  controls.appendChild(labelled("Layer", layerSelect));
  controls.appendChild(labelled("Method", methodSelect));
  if (manyModels) {
    controls.appendChild(labelled("Model", modelSelect));
  }
  controls.appendChild(labelled("Score from", minInput));
  controls.appendChild(labelled("to", maxInput));
  controls.appendChild(labelled("Rows", sizeSelect));
  controls.appendChild(reset);

  // --- table head with sortable columns ---

  const COLUMNS = [
    {key: "layer", title: "Layer", numeric: true},
    {key: "neuron", title: "Neuron", numeric: true},
    {key: "polarity", title: "Polarity"},
    {key: "text", title: "Explanation"},
    {key: "score", title: "Score", numeric: true},
    {key: "ci", title: "95% CI", sortable: false},
    {key: "method", title: "Method"},
    {key: "explainer", title: "Explainer"},
  ];
  if (manyModels) {
    COLUMNS.push({key: "model", title: "Model"});
  }
  const table = document.getElementById("neurons");
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  const headRow = element("tr");
  const headers = {};
  for (const column of COLUMNS) {
    const cell = element("th", column.numeric ? "num" : null);
    if (column.sortable === false) {
      cell.textContent = column.title;
    } else {
      const button = element("button", "sort", column.title);
      button.type = "button";
      button.dataset.sort = column.key;
      button.addEventListener("click", function () {
        if (state.sort === column.key) {
          state.dir = state.dir === "asc" ? "desc" : "asc";
        } else {
          state.sort = column.key;
          state.dir = column.key === "score" ? "desc" : "asc";
        }
        state.page = "1";
        update();
      });
      cell.appendChild(button);
      headers[column.key] = cell;
    }
    headRow.appendChild(cell);
  }
  head.appendChild(headRow);

  // --- filtering and sorting ---

  function numberOrNull(text) {
    if (text === "" || text === null) {
      return null;
    }
    const value = Number(text);
    return Number.isFinite(value) ? value : null;
  }

  function matches() {
    const query = state.q.trim().toLowerCase();
    const address = /^(\d+)\s*:\s*(\d+)$/.exec(query);
    const layer = state.layer === "" ? null : Number(state.layer);
    const method = state.method === "" ? null : Number(state.method);
    const model = state.model === "" || !manyModels ? null : Number(state.model);
    const low = numberOrNull(state.min);
    const high = numberOrNull(state.max);
    if (query && !address && lowered === null) {
      lowered = rows.map(function (row) { return row[TEXT].toLowerCase(); });
    }
    const found = [];
    for (let index = 0; index < rows.length; index++) {
      const row = rows[index];
      if (layer !== null && row[LAYER] !== layer) continue;
      if (method !== null && row[METHOD] !== method) continue;
      if (model !== null && row[MODEL] !== model) continue;
      if ((low !== null || high !== null) && row[SCORE] === null) continue;
      if (low !== null && row[SCORE] < low) continue;
      if (high !== null && row[SCORE] > high) continue;
      if (address) {
        if (row[LAYER] !== Number(address[1]) || row[NEURON] !== Number(address[2])) continue;
      } else if (query && lowered[index].indexOf(query) === -1) {
        continue;
      }
      found.push(index);
    }
    return found;
  }

  function textOf(index, key) {
    const row = rows[index];
    switch (key) {
      case "text": return row[TEXT];
      case "method": return data.methods[row[METHOD]];
      case "polarity": return data.polarities[row[POLARITY]];
      case "explainer": return data.explainers[row[EXPLAINER]];
      default: return data.models[row[MODEL]].id;
    }
  }

  function comparator() {
    const sign = state.dir === "asc" ? 1 : -1;
    const byAddress = function (a, b) {
      const left = rows[a], right = rows[b];
      return (left[MODEL] - right[MODEL]) || (left[LAYER] - right[LAYER]) || (left[NEURON] - right[NEURON]);
    };
    switch (state.sort) {
      case "layer":
        return function (a, b) { return sign * byAddress(a, b); };
      case "neuron":
        return function (a, b) { return sign * (rows[a][NEURON] - rows[b][NEURON]) || byAddress(a, b); };
      case "score":
        return function (a, b) {
          const left = rows[a][SCORE], right = rows[b][SCORE];
          if (left === null || right === null) {
            // Undefined scores go last in either direction.
            return (left === null) - (right === null) || byAddress(a, b);
          }
          return sign * (left - right) || byAddress(a, b);
        };
      default: {
        const key = state.sort;
        return function (a, b) {
          return sign * textOf(a, key).localeCompare(textOf(b, key)) || byAddress(a, b);
        };
      }
    }
  }

  // --- rendering one page of rows ---

  function fixed(value, digits) {
    return value === null ? "n/a" : value.toFixed(digits);
  }

  function cell(text, className) {
    return element("td", className, text);
  }

  function renderRow(index) {
    const row = rows[index];
    const model = data.models[row[MODEL]];
    const tr = element("tr");
    tr.dataset.layer = String(row[LAYER]);
    tr.dataset.neuron = String(row[NEURON]);
    tr.dataset.score = row[SCORE] === null ? "" : String(row[SCORE]);
    const href = "m/" + model.slug + "/" + row[LAYER] + "/" + row[NEURON] + ".html";
    tr.appendChild(cell(String(row[LAYER]), "num"));
    const neuronCell = element("td", "num");
    const link = element("a", "neuron-link", String(row[NEURON]));
    link.href = href;
    neuronCell.appendChild(link);
    tr.appendChild(neuronCell);
    tr.appendChild(cell(data.polarities[row[POLARITY]], "polarity"));
    const textCell = element("td", "text");
    const textLink = element("a", null, row[TEXT]);
    textLink.href = href;
    textCell.appendChild(textLink);
    tr.appendChild(textCell);
    tr.appendChild(cell(fixed(row[SCORE], 3), "num score"));
    tr.appendChild(cell(row[CI_LOW] === null ? "" : "[" + fixed(row[CI_LOW], 2) + ", " + fixed(row[CI_HIGH], 2) + "]",
      "ci"));
    tr.appendChild(cell(data.methods[row[METHOD]], "method"));
    tr.appendChild(cell(data.explainers[row[EXPLAINER]] + " \u00b7 " + data.simulators[row[SIMULATOR]], "explainer"));
    if (manyModels) {
      tr.appendChild(cell(model.id, "model"));
    }
    return tr;
  }

  const pager = document.getElementById("pager");
  const previous = element("button", null, "\u2190 previous");
  previous.id = "page-prev";
  previous.type = "button";
  const next = element("button", null, "next \u2192");
  next.id = "page-next";
  next.type = "button";
  const pageLabel = element("span", "page-label");
  pager.appendChild(previous);
  pager.appendChild(pageLabel);
  pager.appendChild(next);

  let filtered = [];
  let filterKey = null;

  function update() {
    const key = [state.q, state.layer, state.method, state.model, state.min, state.max, state.sort, state.dir]
      .join("\u0000");
    if (key !== filterKey) {
      filtered = matches();
      filtered.sort(comparator());
      filterKey = key;
    }
    const size = Number(state.size) || 100;
    const pages = Math.max(1, Math.ceil(filtered.length / size));
    const page = Math.min(Math.max(1, Number(state.page) || 1), pages);
    state.page = String(page);
    const start = (page - 1) * size;
    const shown = filtered.slice(start, start + size);
    const fragment = document.createDocumentFragment();
    for (const index of shown) {
      fragment.appendChild(renderRow(index));
    }
    body.replaceChildren(fragment);
    status.textContent = filtered.length === 0 ? "No neuron matches." :
      "Showing " + (start + 1) + "\u2013" + (start + shown.length) + " of " + filtered.length + " neurons" +
      (filtered.length !== rows.length ? " (filtered from " + rows.length + ")" : "") + ".";
    pageLabel.textContent = " page " + page + " of " + pages + " ";
    previous.disabled = page <= 1;
    next.disabled = page >= pages;
    for (const column of Object.keys(headers)) {
      headers[column].setAttribute("aria-sort", column === state.sort ?
        (state.dir === "asc" ? "ascending" : "descending") : "none");
    }
    writeFragment();
  }

  let typing = null;
  search.addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(function () {
      state.q = search.value;
      state.page = "1";
      update();
    }, 120);
  });
  function bind(control, key) {
    control.addEventListener("change", function () {
      state[key] = control.value;
      state.page = "1";
      update();
    });
  }
  bind(layerSelect, "layer");
  bind(methodSelect, "method");
  bind(modelSelect, "model");
  bind(minInput, "min");
  bind(maxInput, "max");
  bind(sizeSelect, "size");
  previous.addEventListener("click", function () {
    state.page = String(Number(state.page) - 1);
    update();
  });
  next.addEventListener("click", function () {
    state.page = String(Number(state.page) + 1);
    update();
  });
  reset.addEventListener("click", function () {
    Object.assign(state, DEFAULTS);
    search.value = "";
    layerSelect.value = methodSelect.value = modelSelect.value = "";
    minInput.value = maxInput.value = "";
    sizeSelect.value = DEFAULTS.size;
    update();
  });

  update();
  document.body.dataset.ready = "true";
})();
