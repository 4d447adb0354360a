"""The CSS and JavaScript of the report's interactive views (pipeline/report/views.py), included inline in the
page. They live in a Python module rather than in .css/.js files so that the report stage's fingerprint, which
hashes the source of the project modules it imports, changes when they change (and so that an installed
package has them without package data).

The script reads the JSON of <script id="views-data">, builds the model view's grid and the head view's SVG,
and references only the element ids of views.views_section (tests/test_views.py checks that each exists).
Plain JavaScript, no library; the SVG is written as markup (the HTML parser gives it the SVG namespace)."""

CSS = """
.av-views{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.av-model,.av-head,.av-info{min-width:14em}
.av-head{flex:1 1 26em}.av-info{flex:1 1 22em;max-width:40em}
.av-grid{display:grid;gap:1px;font-size:10px;line-height:14px;user-select:none}
.av-cell{width:14px;height:14px;cursor:pointer;border:1px solid transparent;box-sizing:border-box}
.av-cell:hover{border-color:#000}.av-cell.av-selected{border:2px solid #d62728}
.av-axis{color:#666;text-align:center;font-size:9px}
.av-legend{font-size:.8em;margin:.3em 0}.av-legend span{display:inline-block;margin-right:.8em}
.av-swatch{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin-right:.2em;border:1px solid #999}
.av-drawing{overflow:auto;max-height:80vh;border:1px solid #eee}
.av-drawing svg{display:block}
.av-drawing text{font-family:system-ui,sans-serif;fill:#222}
.av-drawing .av-att{cursor:pointer}.av-drawing .av-att:hover,.av-drawing .av-on{fill:#d62728;font-weight:bold}
.av-drawing .av-rec.av-to{fill:#1f4e9c;font-weight:bold}
.av-line{stroke:#1f4e9c;stroke-width:2}
.av-note{color:#555;font-size:.85em}
.av-exemplars li{margin:.4em 0}.av-exemplars .av-w{color:#666;font-size:.85em;margin-right:.5em}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("views-data").textContent);
  var L = data.layers, H = data.heads;
  var grid = document.getElementById("av-grid");
  var legend = document.getElementById("av-legend");
  var layerSelect = document.getElementById("av-layer");
  var headSelect = document.getElementById("av-head");
  var title = document.getElementById("av-title");
  var drawing = document.getElementById("av-drawing");
  var focusNote = document.getElementById("av-focus");
  var roleText = document.getElementById("av-role");
  var metricsBox = document.getElementById("av-metrics");
  var exemplarList = document.getElementById("av-exemplars");
  var current = -1, locked = null;

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toFixed(3);
  }

  // ---- model view: one cell per head, coloured by role (or by null share) ----
  function nullColour(v) {  // #f7fbff (0) to #08306b (1)
    if (v === null) return "#ffffff";
    var t = Math.max(0, Math.min(1, v));
    return "rgb(" + Math.round(247 - 239 * t) + "," + Math.round(251 - 203 * t) + "," + Math.round(255 - 148 * t) + ")";
  }
  function colour(index) {
    if (data.roles) {
      var role = data.roles.role[index];
      var k = data.roles.names.indexOf(role);
      return k < 0 ? "#ffffff" : data.roles.colours[k];
    }
    return nullColour(data.null_share[index]);
  }
  function headName(index) {
    return "layer " + Math.floor(index / H) + ", head " + (index % H);
  }
  function buildLegend() {
    if (data.roles) {
      var counts = {};
      data.roles.role.forEach(function (r) { counts[r] = (counts[r] || 0) + 1; });
      legend.innerHTML = data.roles.names.map(function (n, k) {
        return "<span><i class='av-swatch' style='background:" + data.roles.colours[k] + "'></i>" + esc(n) +
               " (" + (counts[n] || 0) + ")</span>";
      }).join("");
    } else {
      legend.innerHTML = "<span>null share: <i class='av-swatch' style='background:" + nullColour(0) + "'></i>0 " +
                         "<i class='av-swatch' style='background:" + nullColour(1) + "'></i>1</span>";
    }
  }
  function buildGrid() {
    grid.style.gridTemplateColumns = "2em repeat(" + H + ", 14px)";
    var html = ["<div class='av-axis'></div>"];
    for (var h = 0; h < H; h++) html.push("<div class='av-axis'>" + (h % 2 === 0 || H <= 12 ? h : "") + "</div>");
    for (var l = 0; l < L; l++) {
      html.push("<div class='av-axis'>" + l + "</div>");
      for (h = 0; h < H; h++) {
        var index = l * H + h;
        var what = data.roles ? (data.roles.role[index] || "—") : "null share " + fmt(data.null_share[index]);
        html.push("<div class='av-cell' data-index='" + index + "' style='background:" + colour(index) +
                  "' title='" + esc(headName(index) + ": " + what) + "'></div>");
      }
    }
    grid.innerHTML = html.join("");
    grid.addEventListener("click", function (event) {
      var cell = event.target.closest(".av-cell");
      if (cell) select(Number(cell.getAttribute("data-index")));
    });
  }
  function buildSelects() {
    var options = function (n) {
      var out = [];
      for (var k = 0; k < n; k++) out.push("<option value='" + k + "'>" + k + "</option>");
      return out.join("");
    };
    layerSelect.innerHTML = options(L);
    headSelect.innerHTML = options(H);
    var change = function () { select(Number(layerSelect.value) * H + Number(headSelect.value)); };
    layerSelect.addEventListener("change", change);
    headSelect.addEventListener("change", change);
  }

  // ---- head view: attending pieces (left) to receiving pieces (right), opacity = weight ----
  function draw(index) {
    var p = data.patterns[index];
    locked = null;
    focusNote.textContent = "";
    if (!p) {
      drawing.innerHTML = "<p class='av-note'>No pattern for this head (the patterns stage drew none).</p>";
      return;
    }
    var pieces = (data.sentences[String(p.sentence)] || {}).pieces || [];
    var n = p.n, row = n > 60 ? 12 : 16, size = n > 60 ? 10 : 12, top = 14;
    var longest = pieces.reduce(function (m, s) { return Math.max(m, s.length); }, 1);
    var labelWidth = Math.min(160, 10 + 0.62 * size * longest), gap = 160;
    var xLeft = labelWidth, xRight = labelWidth + gap, width = 2 * labelWidth + gap + 10;
    var height = top + n * row + 6;
    var y = function (k) { return top + k * row + row / 2; };
    var parts = ["<svg width='" + width + "' height='" + height + "' viewBox='0 0 " + width + " " + height + "'>"];
    var k = 0;
    for (var i = 0; i < n; i++) {
      for (var j = 0; j < (p.full ? n : i + 1); j++, k++) {
        var w = p.w[k];
        if (w >= 1) {
          parts.push("<line class='av-line' data-i='" + i + "' data-j='" + j + "' x1='" + (xLeft + 4) + "' y1='" + y(i) +
                     "' x2='" + (xRight - 4) + "' y2='" + y(j) + "' stroke-opacity='" + (w / 1000) + "'></line>");
        }
      }
    }
    for (i = 0; i < n; i++) {
      var label = esc(pieces[i] === undefined ? "#" + i : pieces[i]);
      parts.push("<text class='av-att' data-i='" + i + "' x='" + (xLeft - 2) + "' y='" + (y(i) + size / 3) +
                 "' text-anchor='end' font-size='" + size + "'>" + label + "</text>");
      parts.push("<text class='av-rec' data-j='" + i + "' x='" + (xRight + 2) + "' y='" + (y(i) + size / 3) +
                 "' font-size='" + size + "'>" + label + "</text>");
    }
    parts.push("</svg>");
    drawing.innerHTML = parts.join("");
  }
  function focus(i) {  // i: an attending position, or null for all lines
    var lines = drawing.querySelectorAll(".av-line");
    var shown = {};
    for (var k = 0; k < lines.length; k++) {
      var mine = i === null || lines[k].getAttribute("data-i") === String(i);
      lines[k].style.display = mine ? "" : "none";
      if (mine && i !== null) shown[lines[k].getAttribute("data-j")] = true;
    }
    drawing.querySelectorAll(".av-att").forEach(function (t) {
      t.classList.toggle("av-on", i !== null && t.getAttribute("data-i") === String(i));
    });
    drawing.querySelectorAll(".av-rec").forEach(function (t) {
      t.classList.toggle("av-to", i !== null && shown[t.getAttribute("data-j")] === true);
    });
    focusNote.textContent = i === null ? "" : "piece " + i + (locked === null ? "" : " (fixed: click it again to release)");
  }
  function pieceAt(event) {
    var t = event.target.closest ? event.target.closest(".av-att") : null;
    return t ? Number(t.getAttribute("data-i")) : null;
  }
  drawing.addEventListener("mouseover", function (event) {  // pointing shows a piece's lines, unless one is fixed
    if (locked === null) focus(pieceAt(event));
  });
  drawing.addEventListener("mouseleave", function () { focus(locked); });
  drawing.addEventListener("click", function (event) {  // clicking fixes a piece; again, or elsewhere, releases it
    var i = pieceAt(event);
    locked = (i === null || i === locked) ? null : i;
    focus(locked);
  });

  // ---- the chosen head: role, metrics (with intervals), exemplar sentences ----
  function marked(text, ex) {  // ex: [sentence, weight, attending start, end, receiving start, end]
    var spans = [[ex[2], ex[3], "a"], [ex[4], ex[5], "r"]].sort(function (a, b) { return a[0] - b[0] || a[1] - b[1]; });
    if (spans[0][0] === spans[1][0] && spans[0][1] === spans[1][1]) spans = [[spans[0][0], spans[0][1], "ar"]];
    var out = "", cursor = 0;
    spans.forEach(function (s) {
      var start = Math.max(s[0], cursor);
      out += esc(text.slice(cursor, start));
      var piece = esc(text.slice(start, s[1]));
      if (s[2].indexOf("r") >= 0) piece = "<u>" + piece + "</u>";
      if (s[2].indexOf("a") >= 0) piece = "<b>" + piece + "</b>";
      out += piece;
      cursor = Math.max(cursor, s[1]);
    });
    return out + esc(text.slice(cursor));
  }
  function describe(index) {
    if (data.roles) {
      var role = data.roles.role[index], met = data.roles.criteria[index] || [];
      roleText.innerHTML = "Role: <b>" + esc(role || "—") + "</b>" +
        (met.length ? " (criteria met: " + esc(met.join(", ")) + ")" : " (no criterion met)");
    } else {
      roleText.textContent = "No head roles in this run.";
    }
    var m = data.metrics, values = m.values[index], ci = m.ci ? m.ci[index] : null;
    var rows = m.columns.map(function (c, k) {
      var defined = ci && ci[k] && (ci[k][0] !== null || ci[k][1] !== null);  // NaN where not bootstrapped
      var interval = defined ? "[" + fmt(ci[k][0]) + ", " + fmt(ci[k][1]) + "]" : "";
      return "<tr><td>" + esc(c) + "</td><td>" + fmt(values ? values[k] : null) + "</td>" +
             (m.ci ? "<td>" + interval + "</td>" : "") + "</tr>";
    });
    metricsBox.innerHTML = "<table><thead><tr><th>metric</th><th>value</th>" + (m.ci ? "<th>95% interval</th>" : "") +
                           "</tr></thead><tbody>" + rows.join("") + "</tbody></table>";
    exemplarList.innerHTML = (data.exemplars[index] || []).map(function (ex) {
      var text = (data.sentences[String(ex[0])] || {}).text || "";
      return "<li><span class='av-w'>" + fmt(ex[1]) + "</span>" + marked(text, ex) + "</li>";
    }).join("") || "<li class='av-note'>none</li>";
  }
  function select(index) {
    if (index < 0 || index >= L * H) return;
    current = index;
    var layer = Math.floor(index / H), head = index % H, p = data.patterns[index];
    layerSelect.value = String(layer);
    headSelect.value = String(head);
    grid.querySelectorAll(".av-selected").forEach(function (c) { c.classList.remove("av-selected"); });
    var cell = grid.querySelector(".av-cell[data-index='" + index + "']");
    if (cell) cell.classList.add("av-selected");
    title.textContent = "Head view: layer " + layer + ", head " + head +
      (p ? " — top exemplar, sentence " + p.sentence + " (" + p.n + " pieces)" : "");
    draw(index);
    describe(index);
  }

  buildLegend();
  buildGrid();
  buildSelects();
  var first = data.patterns.findIndex(function (p) { return p !== null; });
  select(first < 0 ? 0 : first);
})();
"""
