// A job's details: live status and timeline, the log streamed as it grows, the metrics as a chart.
// Everything the job wrote (log text, metric names) is untrusted: it goes into the page as text only.
(function () {
  "use strict";
  var head = document.getElementById("instance");
  var logBox = document.getElementById("job-log");
  if (!head || !logBox) { return; }
  var L = window.LabHub;
  var id = head.dataset.instance;
  var status = head.dataset.status;
  var api = "/api/v1/instances/" + id;
  var MAX_LINES = 5000, SLACK = 500;  // lines kept in the page; trimmed once SLACK more came
  var MAX_CHARS = 1000000;  // and characters (a job may write one endless line)
  var controller = window.AbortController ? new AbortController() : null;

  function ended() { return L.TERMINAL.indexOf(status) >= 0; }

  // -- the log --------------------------------------------------------------------------------
  var logNote = document.getElementById("job-log-status");
  var trimmedNote = document.getElementById("job-log-trimmed");
  var lines = 0, chars = 0, empty = true, retries = 0;

  function countLines(text) {
    var n = 0;
    for (var i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) { n++; }
    return n;
  }

  function trim() {
    var text = logBox.textContent, cut = text.length;
    for (var n = 0; n < MAX_LINES && cut > 0; n++) { cut = text.lastIndexOf("\n", cut - 1); }
    var start = Math.max(cut + 1, text.length - MAX_CHARS);
    if (start > 0) {
      text = text.slice(start);
      logBox.textContent = text;
      trimmedNote.hidden = false;
    }
    lines = countLines(text);
    chars = text.length;
  }

  function append(text) {
    if (!text) { return; }
    var atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 8;
    if (empty) { logBox.textContent = ""; empty = false; }
    logBox.appendChild(document.createTextNode(text));
    lines += countLines(text);
    chars += text.length;
    if (lines > MAX_LINES + SLACK || chars > MAX_CHARS * 1.2) { trim(); }
    if (atEnd) { logBox.scrollTop = logBox.scrollHeight; }
  }

  function reset() {
    logBox.textContent = "";
    lines = chars = 0;
    empty = true;
  }

  function streamLog() {
    var follow = !ended();
    var options = { credentials: "same-origin", headers: { Accept: "text/plain" } };
    if (controller) { options.signal = controller.signal; }
    logNote.textContent = follow ? "Following the log as the job writes it." : "";
    fetch(api + "/log?follow=" + follow, options)
      .then(function (r) {
        if (!r.ok) { throw new Error("the hub answered " + r.status); }
        if (!r.body || !r.body.getReader || !window.TextDecoder) { return r.text().then(append); }
        var reader = r.body.getReader(), decoder = new TextDecoder("utf-8");
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { append(decoder.decode()); return; }
            append(decoder.decode(chunk.value, { stream: true }));
            return pump();
          });
        }
        return pump();
      })
      .then(function () {
        if (empty) { logBox.textContent = "(no output)"; }
        logNote.textContent = ended() || !follow ? "" : "The log stream ended; the job may still be writing.";
      })
      .catch(function (err) {
        if (err && err.name === "AbortError") { return; }
        if (!ended() && retries < 5) {  // start again from the end of the log
          retries++;
          logNote.textContent = "The log stream broke off; reconnecting…";
          window.setTimeout(function () { reset(); streamLog(); }, 2000);
          return;
        }
        logNote.textContent = "Could not load the log: " + err.message;
      });
  }

  // -- the metrics chart ------------------------------------------------------------------------
  var figure = document.getElementById("metrics-figure");
  var chart = document.getElementById("metrics-chart");
  var legend = document.getElementById("metrics-legend");
  var emptyNote = document.getElementById("metrics-empty");
  var metricsNote = document.getElementById("metrics-status");
  var W = 640, H = 260, M = { left: 56, right: 16, top: 12, bottom: 40 }, MAX_SERIES = 8;
  var metricsTimer = null;

  var svg = L.svg, fmt = L.fmt, ticks = L.ticks;

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  function draw(points) {
    var keys = [];
    points.forEach(function (p) {
      Object.keys(p).forEach(function (k) {
        if (k !== "epoch" && k !== "step" && isNumber(p[k]) && keys.indexOf(k) < 0) { keys.push(k); }
      });
    });
    var hidden = keys.length > MAX_SERIES ? keys.length - MAX_SERIES : 0;
    keys = keys.slice(0, MAX_SERIES);
    figure.hidden = !keys.length;
    emptyNote.hidden = !!keys.length;
    if (!keys.length) { return; }
    var xKey = points.every(function (p) { return isNumber(p.epoch); }) ? "epoch"
      : points.every(function (p) { return isNumber(p.step); }) ? "step" : "";
    function xOf(p, i) { return xKey ? p[xKey] : i + 1; }
    var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    points.forEach(function (p, i) {
      var x = xOf(p, i);
      x0 = Math.min(x0, x); x1 = Math.max(x1, x);
      keys.forEach(function (k) { if (isNumber(p[k])) { y0 = Math.min(y0, p[k]); y1 = Math.max(y1, p[k]); } });
    });
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { var pad = Math.abs(y0) / 10 || 1; y0 -= pad; y1 += pad; }
    var yt = ticks(y0, y1, 5, true), xt = ticks(x0, x1, 6, false);
    y0 = yt[0]; y1 = yt[yt.length - 1];
    var iw = W - M.left - M.right, ih = H - M.top - M.bottom;
    function sx(x) { return M.left + (x - x0) / (x1 - x0) * iw; }
    function sy(y) { return M.top + ih - (y - y0) / (y1 - y0) * ih; }

    var desc = chart.querySelector("desc");
    while (chart.lastChild) { chart.removeChild(chart.lastChild); }
    if (desc) { chart.appendChild(desc); }
    var grid = svg("g", { "class": "grid" }), axes = svg("g", { "class": "axes" });
    yt.forEach(function (t) {
      grid.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t) }));
      axes.appendChild(svg("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t)));
    });
    xt.forEach(function (t) {
      if (!xKey && t !== Math.round(t)) { return; }
      axes.appendChild(svg("line", { x1: sx(t), x2: sx(t), y1: M.top + ih, y2: M.top + ih + 4 }));
      axes.appendChild(svg("text", { x: sx(t), y: M.top + ih + 18, "text-anchor": "middle" }, fmt(t)));
    });
    axes.appendChild(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + ih }));
    axes.appendChild(svg("line", { x1: M.left, x2: W - M.right, y1: M.top + ih, y2: M.top + ih }));
    axes.appendChild(svg("text", { x: M.left + iw / 2, y: H - 4, "text-anchor": "middle", "class": "axis-label" },
      xKey || "report"));
    chart.appendChild(grid);
    chart.appendChild(axes);

    while (legend.lastChild) { legend.removeChild(legend.lastChild); }
    keys.forEach(function (k, n) {
      var coords = [], last = null, lastX = null;
      points.forEach(function (p, i) {
        if (!isNumber(p[k])) { return; }
        coords.push(sx(xOf(p, i)).toFixed(1) + "," + sy(p[k]).toFixed(1));
        last = p[k];
        lastX = xOf(p, i);
      });
      var line = svg("polyline", { "class": "series series-" + n, points: coords.join(" "), "data-metric": k });
      line.appendChild(svg("title", {}, k));
      chart.appendChild(line);
      if (coords.length < 40) {
        coords.forEach(function (c) {
          var xy = c.split(",");
          chart.appendChild(svg("circle", { "class": "dot series-" + n, cx: xy[0], cy: xy[1], r: 3 }));
        });
      }
      legend.appendChild(L.legendItem(n, k, fmt(last) + (xKey ? " at " + xKey + " " + fmt(lastX) : "")));
    });
    if (hidden) {
      legend.appendChild(Object.assign(document.createElement("li"), { textContent: "and " + hidden + " more not drawn" }));
    }
  }

  function loadMetrics() {
    metricsTimer = null;
    var last = ended();
    fetch(api + "/metrics", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error("the hub answered " + r.status)); })
      .then(function (points) { draw(Array.isArray(points) ? points : []); metricsNote.textContent = ""; })
      .catch(function (err) { metricsNote.textContent = "Could not load the metrics: " + err.message; })
      .then(function () { if (!last && !ended()) { metricsTimer = window.setTimeout(loadMetrics, 2000); } });
  }

  // -- live status ------------------------------------------------------------------------------
  function watch() {
    L.watchInstance(head, id, status, function (now) {
      status = now;
      if (metricsTimer) { window.clearTimeout(metricsTimer); }
      loadMetrics();  // the last points
      // the server shows how it ended: exit code, why, artifacts
      window.setTimeout(function () { window.location.reload(); }, 1500);
    });
  }

  window.addEventListener("pagehide", function () { if (controller) { controller.abort(); } });
  streamLog();
  loadMetrics();
  watch();
  if (window.location.hash === "#logs") { document.getElementById("logs").focus(); }
})();
