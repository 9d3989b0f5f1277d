// LabHub pages: local times, live countdowns, copy buttons, live status of instance lists.
// Shared helpers are exposed as window.LabHub for the page scripts.
(function () {
  "use strict";
  var TERMINAL = ["stopped", "succeeded", "failed", "expired"];
  var LOG_MARKER = "\n--- last log lines ---\n";

  function relative(date) {
    var seconds = Math.round((date.getTime() - Date.now()) / 1000);
    var span = Math.abs(seconds), text;
    if (span < 60) { text = span + " s"; }
    else if (span < 3600) { text = Math.floor(span / 60) + " min"; }
    else if (span < 86400) {
      var m = Math.floor((span % 3600) / 60);
      text = Math.floor(span / 3600) + " h" + (m ? " " + m + " min" : "");
    } else {
      var h = Math.floor((span % 86400) / 3600);
      text = Math.floor(span / 86400) + " d" + (h ? " " + h + " h" : "");
    }
    return seconds >= 0 ? "in " + text : text + " ago";
  }

  function localTimes(root) {
    (root || document).querySelectorAll("time[data-local]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) {
        el.title = el.textContent;
        el.textContent = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
      }
    });
    (root || document).querySelectorAll("time[data-local-time]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }); }
    });
  }

  function countdowns() {
    document.querySelectorAll("time[data-relative]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = relative(d); }
    });
  }

  function announce(text) {
    var region = document.getElementById("announce");
    if (region) { region.textContent = text; }
  }

  function badge(status) {
    var span = document.createElement("span");
    span.className = "status s-" + status;
    span.setAttribute("data-status", "");
    span.textContent = status;
    return span;
  }

  function setBadge(el, status) {
    if (!el) { return; }
    el.textContent = status;
    el.className = "status s-" + status;
  }

  // Show the actions that make sense for a status: data-when = running | active | ended.
  function setActions(root, status) {
    var ended = TERMINAL.indexOf(status) >= 0;
    root.querySelectorAll("[data-when]").forEach(function (el) {
      var when = el.getAttribute("data-when");
      var show = (when === "running" && status === "running") ||
        (when === "active" && !ended && status !== "stopping") || (when === "ended" && ended);
      el.hidden = !show;
    });
  }

  function eventItem(ev) {
    var li = document.createElement("li");
    li.className = "t-" + ev.status;
    var t = document.createElement("time");
    t.setAttribute("datetime", ev.at);
    t.textContent = new Date(ev.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    var msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = (ev.message || "").split(LOG_MARKER)[0];
    li.appendChild(t);
    li.appendChild(badge(ev.status));
    li.appendChild(document.createTextNode(" "));
    li.appendChild(msg);
    return li;
  }

  // data-copy="#id": an input's value, or an element's text (a command in a <pre>).
  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.querySelector(button.getAttribute("data-copy"));
        var isInput = "value" in source && source.tagName !== "BUTTON";
        var status = document.querySelector("[data-copy-status]");
        function done(ok) {
          if (status) { status.textContent = ok ? "Copied to the clipboard." : "Select the text and copy it (Ctrl+C)."; }
          if (ok) { return; }
          source.focus();
          if (isInput) { source.select(); } else { window.getSelection().selectAllChildren(source); }
        }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(isInput ? source.value : source.textContent)
            .then(function () { done(true); }, function () { done(false); });
        } else { done(false); }
      });
    });
  }

  // -- charts (inline SVG, drawn by the page scripts) ----------------------------------------------
  var SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function fmt(v) {
    if (v === 0) { return "0"; }
    var a = Math.abs(v);
    if (a >= 100000 || a < 0.001) { return v.toExponential(2); }
    return String(Number(v.toPrecision(4)));
  }

  // A chart legend's entry: series ``n``'s swatch, its ``label`` and ``text`` (its latest value).
  function legendItem(n, label, text) {
    var li = document.createElement("li");
    var swatch = document.createElement("span");
    swatch.className = "swatch series-" + n;
    swatch.setAttribute("aria-hidden", "true");
    var name = document.createElement("span");
    name.className = "metric-name";
    name.textContent = label;
    li.appendChild(swatch);
    li.appendChild(name);
    li.appendChild(document.createTextNode(" " + text));
    return li;
  }

  // About ``count`` round tick values; ``outer``: from one at or below lo to one at or above hi.
  function ticks(lo, hi, count, outer) {
    var span = hi - lo, step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = span / count / step;
    if (err >= 7.5) { step *= 10; } else if (err >= 3.5) { step *= 5; } else if (err >= 1.5) { step *= 2; }
    var first = (outer ? Math.floor(lo / step + 1e-9) : Math.ceil(lo / step - 1e-9)) * step;
    var last = outer ? Math.ceil(hi / step - 1e-9) * step : hi;
    var out = [];
    for (var t = first; t <= last + step * 1e-9; t += step) { out.push(Number(t.toPrecision(12))); }
    return out;
  }

  // A table of instances (rows with data-instance) kept current by /live/instances.
  function liveTable() {
    var table = document.querySelector("table[data-live]");
    if (!table || !window.EventSource) { return; }
    var source = new EventSource(table.getAttribute("data-live"));
    source.addEventListener("status", function (msg) {
      var ev = JSON.parse(msg.data);
      var row = table.querySelector('tr[data-instance="' + ev.instance_id + '"]');
      if (!row) { return; }
      var el = row.querySelector("[data-status]");
      if (el && el.textContent === ev.status) { return; }
      setBadge(el, ev.status);
      setActions(row, ev.status);
      var place = row.querySelector("[data-queue]");  // its place in the admission queue, while it waits
      if (place && ev.status !== "queued") { place.remove(); }
      if (TERMINAL.indexOf(ev.status) >= 0) {
        var expires = row.querySelector('[data-label="Expires"]');
        if (expires) { expires.innerHTML = '<span class="muted">ended</span>'; }
      }
      announce(row.getAttribute("data-name") + " is " + ev.status);
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // One instance's page: its events as they happen (the timeline, the badge, the actions);
  // onEnded(status) once it has ended. Returns nothing; closes itself on "end" and on leaving.
  function watchInstance(head, id, status, onEnded) {
    if (TERMINAL.indexOf(status) >= 0 || !window.EventSource) { return; }
    var source = new EventSource("/api/v1/instances/" + id + "/events?after=" + head.dataset.after);
    source.addEventListener("status", function (msg) {
      var ev = JSON.parse(msg.data);
      document.getElementById("events").appendChild(eventItem(ev));
      if (ev.status === status) { return; }
      status = ev.status;
      setBadge(document.getElementById("status"), status);
      setActions(head, status);
      var waiting = document.getElementById("queue-notice");  // its place in the admission queue
      if (waiting && status !== "queued") { waiting.hidden = true; }
      announce("Status: " + status);
      if (TERMINAL.indexOf(status) >= 0) {
        source.close();
        onEnded(status);
      }
    });
    source.addEventListener("end", function () { source.close(); });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  window.LabHub = {
    TERMINAL: TERMINAL, LOG_MARKER: LOG_MARKER, announce: announce, setBadge: setBadge,
    setActions: setActions, eventItem: eventItem, relative: relative, watchInstance: watchInstance,
    svg: svg, fmt: fmt, ticks: ticks, legendItem: legendItem
  };

  localTimes();
  countdowns();
  window.setInterval(countdowns, 15000);
  copyButtons();
  liveTable();
})();
