// A service's page: what it serves, how to call it, and its traffic as it happens.
// Reads /api/v1/instances/ID/service every 2 s; its counters only grow, so the rates and latency
// percentiles drawn are differences of two readings. What the service reports (model names, keys)
// is untrusted: it goes into the page as text only.
(function () {
  "use strict";
  var box = document.getElementById("service");
  if (!box) { return; }
  var L = window.LabHub;
  var POLL_MS = 2000, WINDOW_S = 300, KEEP = 200;  // readings kept: a little more than the window
  var W = 640, H = 200, M = { left: 56, right: 16, top: 12, bottom: 30 };
  var url = box.dataset.url;
  var status = box.dataset.status;
  var model = box.dataset.model, keys = null, isPublic = box.dataset.public === "1";
  var readings = [];  // {at: server time (s), seen: Date.now(), models: {NAME@VERSION: counters}}
  var shownModels = "";
  var timer = null;
  var SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$/;

  function ended() { return L.TERMINAL.indexOf(status) >= 0; }
  function byId(id) { return document.getElementById(id); }

  // -- how to call it (the text `labhub.client.call_examples` prints for the CLI) ------------------------
  function quote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }
  function list(items) { return "[" + items.join(", ") + "]"; }

  function calls() {
    var names = keys && keys.length ? keys : ["x1", "x2"];
    var zeros = list(names.map(function () { return "0.0"; }));
    var auth = isPublic ? "" : "-H \"Authorization: Bearer $TOKEN\" ";
    var head = "curl " + auth + "-H 'Content-Type: application/json' \\\n  -d ";
    var v2 = "{\"inputs\": [{\"name\": \"INPUT\", \"shape\": [1, " + names.length + "], \"datatype\": \"FP32\", " +
      "\"data\": " + zeros + "}]}";
    var tfaas = "{\"keys\": " + list(names.map(function (k) { return JSON.stringify(k); })) + ", \"values\": " +
      zeros + ", \"model\": " + JSON.stringify(model) + "}";
    return {
      v2: "# its inputs (names, datatypes, shapes): curl " + auth + url + "v2/models/" + model + "\n" + head +
        quote(v2) + " \\\n  " + url + "v2/models/" + model + "/infer",
      v1: head + quote("{\"instances\": [" + zeros + "]}") + " \\\n  " + url + "v1/models/" + model + ":predict",
      tfaas: head + quote(tfaas) + " \\\n  " + url + "json"
    };
  }

  function showCalls() {
    var text = calls();
    Object.keys(text).forEach(function (k) {
      var pre = byId("call-" + k);
      if (pre && pre.textContent !== text[k]) { pre.textContent = text[k]; }
    });
  }

  // -- models ---------------------------------------------------------------------------------------
  function showModels(models) {
    var json = JSON.stringify(models || []);
    if (json === shownModels) { return; }
    shownModels = json;
    var table = byId("models-table"), body = table.querySelector("tbody");
    while (body.lastChild) { body.removeChild(body.lastChild); }
    (models || []).forEach(function (m) {
      var tr = document.createElement("tr");
      [m.name, (m.versions || []).join(", "), m.default_version, m.format].forEach(function (v, i) {
        var cell = document.createElement(i ? "td" : "th");
        if (!i) { cell.setAttribute("scope", "row"); }
        cell.textContent = v === undefined || v === null ? "" : String(v);
        tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
    table.hidden = !(models && models.length);
    byId("models-empty").hidden = !table.hidden;
    // the calls name it unquoted in a URL: only a plain name goes there (a service's owner names its models)
    if (models && models.length && SAFE_NAME.test(String(models[0].name))) {
      model = String(models[0].name);
      keys = Array.isArray(models[0].keys) && models[0].keys.length ? models[0].keys.map(String) : null;
      showCalls();
    }
  }

  // -- counters -------------------------------------------------------------------------------------
  // One model version's counters (all of them added up when none is chosen); latency buckets by upper
  // bound (Infinity for +Inf).
  var chosen = "";  // NAME@VERSION, or "" for every model

  function counters(list) {
    var out = { requests: 0, errors: 0, sum: 0, count: 0, buckets: {} };
    list.forEach(function (m) {
      out.requests += m.requests || 0;
      out.errors += m.errors || 0;
      out.sum += m.seconds_sum || 0;
      out.count += m.seconds_count || 0;
      (m.buckets || []).forEach(function (b) {
        var bound = b[0] === null ? Infinity : Number(b[0]);
        out.buckets[bound] = (out.buckets[bound] || 0) + b[1];
      });
    });
    out.bounds = Object.keys(out.buckets).map(Number).sort(function (a, b) { return a - b; });
    return out;
  }

  function totalOf(reading) {
    var keys = chosen ? [chosen] : Object.keys(reading.models);
    return { at: reading.at, total: counters(keys.filter(function (k) { return reading.models[k]; })
      .map(function (k) { return reading.models[k]; })) };
  }

  // What happened between two readings; a counter that went down means the service started again
  // (woken, or restarted), so everything since is counted from zero.
  function between(a, b) {
    var d = { seconds: b.at - a.at, requests: b.total.requests - a.total.requests,
              errors: b.total.errors - a.total.errors, count: b.total.count - a.total.count, buckets: [] };
    var reset = d.requests < 0 || d.errors < 0 || d.count < 0;
    b.total.bounds.forEach(function (bound) {
      var n = b.total.buckets[bound] - (a.total.buckets[bound] || 0);
      if (n < 0) { reset = true; }
      d.buckets.push([bound, n]);
    });
    if (reset) {
      d.requests = b.total.requests; d.errors = b.total.errors; d.count = b.total.count;
      d.buckets = b.total.bounds.map(function (bound) { return [bound, b.total.buckets[bound]]; });
    }
    return d;
  }

  // The model versions seen, as the chart's choices.
  var picker = byId("traffic-model");
  function showChoices(models) {
    Object.keys(models || {}).sort().forEach(function (key) {
      if (picker.querySelector('option[value="' + CSS.escape(key) + '"]')) { return; }
      var option = document.createElement("option");
      option.value = key;
      option.textContent = key;
      picker.appendChild(option);
    });
    picker.closest(".controls").hidden = picker.options.length <= 2;  // one model: nothing to choose
  }
  picker.addEventListener("change", function () { chosen = picker.value; showStats(); drawAll(); });

  // The q-quantile (seconds) of cumulative buckets, interpolating linearly within a bucket (as
  // Prometheus' histogram_quantile); null without observations.
  function quantile(q, buckets) {
    var total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (!(total > 0)) { return null; }
    var rank = q * total, lowBound = 0, lowCount = 0;
    for (var i = 0; i < buckets.length; i++) {
      var bound = buckets[i][0], count = buckets[i][1];
      if (count >= rank) {
        if (bound === Infinity) { return lowBound; }  // beyond the last bound: say the last bound
        return count === lowCount ? bound : lowBound + (bound - lowBound) * (rank - lowCount) / (count - lowCount);
      }
      lowBound = bound; lowCount = count;
    }
    return lowBound;
  }

  function ms(seconds) { return seconds === null ? "—" : L.fmt(seconds * 1000) + " ms"; }

  function showStats() {
    var totals = readings.map(totalOf);
    var last = totals[totals.length - 1];
    byId("stat-requests").textContent = last ? String(last.total.requests) : "—";
    byId("stat-errors").textContent = last ? String(last.total.errors) : "—";
    var first = null;
    for (var i = 0; last && i < totals.length; i++) {
      if (totals[i].at >= last.at - WINDOW_S) { first = totals[i]; break; }
    }
    if (!last || !first || first === last) {
      ["stat-rate", "stat-p50", "stat-p99"].forEach(function (id) { byId(id).textContent = "—"; });
      return;
    }
    var d = between(first, last);
    byId("stat-rate").textContent = L.fmt(d.requests / Math.max(d.seconds, 0.001));
    byId("stat-p50").textContent = ms(quantile(0.5, d.buckets));
    byId("stat-p99").textContent = ms(quantile(0.99, d.buckets));
  }

  // -- charts ---------------------------------------------------------------------------------------
  // series: [{name, label, unit, points: [[t, value|null], ...]}]; t in server seconds.
  function draw(chart, legend, series, now) {
    var x0 = now - WINDOW_S, x1 = now, y1 = 0;
    series.forEach(function (s) {
      s.points.forEach(function (p) { if (p[1] !== null && p[0] >= x0) { y1 = Math.max(y1, p[1]); } });
    });
    var yt = L.ticks(0, y1 > 0 ? y1 : 1, 4, true);
    y1 = yt[yt.length - 1];
    var iw = W - M.left - M.right, ih = H - M.top - M.bottom;
    function sx(t) { return M.left + (t - x0) / (x1 - x0) * iw; }
    function sy(v) { return M.top + ih - v / y1 * ih; }

    var desc = chart.querySelector("desc");
    while (chart.lastChild) { chart.removeChild(chart.lastChild); }
    if (desc) { chart.appendChild(desc); }
    var grid = L.svg("g", { "class": "grid" }), axes = L.svg("g", { "class": "axes" });
    yt.forEach(function (t) {
      grid.appendChild(L.svg("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t) }));
      axes.appendChild(L.svg("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, L.fmt(t)));
    });
    for (var m = 0; m <= WINDOW_S / 60; m++) {
      var x = sx(x1 - m * 60);
      axes.appendChild(L.svg("line", { x1: x, x2: x, y1: M.top + ih, y2: M.top + ih + 4 }));
      axes.appendChild(L.svg("text", { x: x, y: M.top + ih + 18, "text-anchor": m ? "middle" : "end" },
        m ? "−" + m + " min" : "now"));
    }
    axes.appendChild(L.svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: M.top + ih }));
    axes.appendChild(L.svg("line", { x1: M.left, x2: W - M.right, y1: M.top + ih, y2: M.top + ih }));
    chart.appendChild(grid);
    chart.appendChild(axes);

    while (legend.lastChild) { legend.removeChild(legend.lastChild); }
    series.forEach(function (s, n) {
      // a gap where there is no value (no requests, so no latency; or no reading)
      var d = "", run = [], last = null;
      function flush() {
        if (run.length === 1) {
          chart.appendChild(L.svg("circle", { "class": "dot series-" + n, cx: run[0][0], cy: run[0][1], r: 3 }));
        }
        run = [];
      }
      s.points.forEach(function (p) {
        if (p[0] < x0) { return; }
        if (p[1] === null) { flush(); return; }
        var xy = [sx(p[0]).toFixed(1), sy(p[1]).toFixed(1)];
        d += (run.length ? " L" : " M") + xy[0] + " " + xy[1];
        run.push(xy);
        last = p[1];
      });
      flush();
      var path = L.svg("path", { "class": "series series-" + n, d: d.trim(), "data-series": s.name,
                                 "data-points": String(s.points.filter(function (p) { return p[0] >= x0; }).length) });
      path.appendChild(L.svg("title", {}, s.label));
      chart.appendChild(path);
      legend.appendChild(L.legendItem(n, s.label, last === null ? "—" : L.fmt(last) + " " + s.unit));
    });
  }

  function drawAll() {
    var last = readings[readings.length - 1];
    if (!last) { return; }
    var now = last.at + (Date.now() - last.seen) / 1000;
    var totals = readings.map(totalOf), rate = [], errors = [], p50 = [], p99 = [];
    for (var i = 1; i < totals.length; i++) {
      var d = between(totals[i - 1], totals[i]), t = totals[i].at, s = Math.max(d.seconds, 0.001);
      rate.push([t, d.requests / s]);
      errors.push([t, d.errors / s]);
      var a = quantile(0.5, d.buckets), b = quantile(0.99, d.buckets);
      p50.push([t, a === null ? null : a * 1000]);
      p99.push([t, b === null ? null : b * 1000]);
    }
    draw(byId("rate-chart"), byId("rate-legend"), [
      { name: "requests", label: "requests/s", unit: "/s", points: rate },
      { name: "errors", label: "errors/s", unit: "/s", points: errors }], now);
    draw(byId("latency-chart"), byId("latency-legend"), [
      { name: "p50", label: "p50", unit: "ms", points: p50 },
      { name: "p99", label: "p99", unit: "ms", points: p99 }], now);
  }

  // -- reading it -----------------------------------------------------------------------------------
  var STATES = {
    running: "Serving.",
    sleeping: "Sleeping: no process runs while it is idle; the next request wakes it.",
    unknown: "The hub cannot tell how it is right now."
  };

  function showState(text) { var el = byId("service-state"); if (el.textContent !== text) { el.textContent = text; } }

  function take(info) {
    status = info.status;
    if (Boolean(info.public) !== isPublic) { isPublic = Boolean(info.public); showCalls(); }
    showState(ended() ? "It has ended." : STATES[status] || "Not serving yet: it is " + status + ".");
    if (info.models) { showModels(info.models); }
    var note = byId("traffic-status");
    if (info.metrics && info.metrics.at) {
      var last = readings[readings.length - 1];
      if (!last || info.metrics.at > last.at) {
        readings.push({ at: info.metrics.at, seen: Date.now(), models: info.metrics.models || {} });
        showChoices(info.metrics.models);
        if (readings.length > KEEP) { readings.splice(0, readings.length - KEEP); }
      }
      note.textContent = "";
    } else {
      note.textContent = status === "sleeping" ? "No counters while it sleeps; they start again from zero when it wakes."
        : ended() ? "It has ended." : "Counters appear once it runs.";
    }
    showStats();
    drawAll();
  }

  function poll() {
    timer = null;
    fetch(box.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 503) { throw new Error("the service does not answer right now"); }
        if (!r.ok) { throw new Error("the hub answered " + r.status); }
        return r.json();
      })
      .then(take)
      .catch(function (err) { byId("traffic-status").textContent = "Could not read it: " + err.message; })
      .then(function () { if (!ended()) { timer = window.setTimeout(poll, POLL_MS); } });
  }

  window.addEventListener("pagehide", function () { if (timer) { window.clearTimeout(timer); } });
  if (window.location.hash === "#service") { box.focus(); }
  poll();
})();
