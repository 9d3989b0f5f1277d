// The progress page: streams the instance's events and opens it once it is ready; while it waits for
// admission, its place in the queue.
(function () {
  "use strict";
  var box = document.getElementById("progress");
  if (!box) { return; }
  var L = window.LabHub;
  var id = box.dataset.instance, kind = box.dataset.kind, url = box.dataset.url;
  var status = box.dataset.status;
  var STEP = { requested: 0, queued: 1, starting: 2, unknown: 2, running: 3 };
  var started = box.dataset.started ? new Date(box.dataset.started) : new Date();
  var reached = STEP[status] === undefined ? 2 : STEP[status];  // the furthest step, where a failure shows
  var timer = null;
  var queue = document.getElementById("queue"), waitTimer = null;
  var PLACE_POLL_MS = 3000;

  function setSteps(current, failed) {
    var idx = failed ? Math.min(reached, 2) : STEP[current];
    if (idx === undefined) { idx = 3; }
    box.querySelectorAll(".steps li").forEach(function (li) {
      var n = Number(li.dataset.step);
      li.className = "";
      li.removeAttribute("aria-current");
      if (failed) {
        if (n < idx) { li.className = "done"; } else if (n === idx) { li.className = "failed"; }
      } else if (n < idx || (n === idx && current === "running")) {
        li.className = "done";
      } else if (n === idx) {
        li.className = "current";
        li.setAttribute("aria-current", "step");
      }
    });
  }

  function stopSpinner() {
    var spin = box.querySelector(".spinner");
    if (spin) { spin.remove(); }
    document.getElementById("elapsed-line").hidden = true;
    document.getElementById("cancel").hidden = true;
    if (timer) { window.clearInterval(timer); }
  }

  function tick() {
    document.getElementById("elapsed").textContent = Math.max(0, Math.round((Date.now() - started) / 1000)) + " s";
  }

  function failed(ev) {
    var parts = (ev.message || "").split(L.LOG_MARKER);
    var text = parts[0].replace(/^failed to start: /, "");
    document.getElementById("failure-text").textContent = "Failed to start: " + text;
    document.getElementById("now").hidden = true;
    var logs = (parts[1] || "").replace(/\s+$/, "");
    document.getElementById("failure-logs").textContent = logs;
    document.getElementById("failure-logs-box").hidden = !logs;
    var panel = document.getElementById("failure");
    panel.hidden = false;
    panel.setAttribute("tabindex", "-1");
    panel.focus();
  }

  function ready(live) {
    document.getElementById("ready").hidden = false;
    if (live && kind !== "job") {
      L.announce("Ready. Opening it now.");
      window.setTimeout(function () { window.location.assign(url); }, 400);
    } else if (!live) {
      document.getElementById("ready-text").textContent = "It is running.";
    }
  }

  function ordinal(n) {
    var suffix = n % 100 >= 10 && n % 100 <= 20 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" })[n % 10] || "th";
    return n + suffix;
  }

  // A launch waiting for admission: its place and what it waits for, as the API says (the place moves
  // without an event of its own, when a launch ahead of it starts or leaves the queue).
  function showWaiting(inst) {
    if (status !== "queued") { return; }  // an answer that crossed the event that moved it on
    if (inst.status !== "queued" || !inst.queue_position) { endWaiting(); return; }
    var place = document.getElementById("queue-place");
    var text = "You are " + ordinal(inst.queue_position) + " in the queue";
    if (place.textContent !== text) { place.textContent = text; }
    if (inst.message) { document.getElementById("now-text").textContent = inst.message; }
    queue.hidden = false;
  }

  function refreshPlace() {
    fetch("/api/v1/instances/" + id, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (inst) { if (inst) { showWaiting(inst); } })
      .catch(function () { /* the next poll tries again */ });
  }

  function startWaiting() {
    refreshPlace();
    if (!waitTimer) { waitTimer = window.setInterval(refreshPlace, PLACE_POLL_MS); }
  }

  function endWaiting() {
    queue.hidden = true;
    if (waitTimer) { window.clearInterval(waitTimer); waitTimer = null; }
  }

  function onEvent(ev) {
    document.getElementById("events").appendChild(L.eventItem(ev));
    var prev = status;
    status = ev.status;
    if (STEP[status] !== undefined) { reached = Math.max(reached, STEP[status]); }
    L.setBadge(document.getElementById("status"), status);
    document.getElementById("now-text").textContent = (ev.message || "").split(L.LOG_MARKER)[0].split("\n")[0];
    setSteps(status, status === "failed");
    if (status === "queued" && ev.reason === "admission") { startWaiting(); } else if (status !== "queued") { endWaiting(); }
    if (status === "running") {
      stopSpinner();
      ready(prev !== "running");
    } else if (status === "failed") {
      stopSpinner();
      failed(ev);
    } else if (L.TERMINAL.indexOf(status) >= 0) {
      window.location.reload();  // the server explains why it ended
    }
  }

  if (L.TERMINAL.indexOf(status) >= 0) { return; }
  if (status !== "running") { tick(); timer = window.setInterval(tick, 1000); }
  if (box.dataset.waiting) { waitTimer = window.setInterval(refreshPlace, PLACE_POLL_MS); }
  var source = new EventSource("/api/v1/instances/" + id + "/events?after=" + box.dataset.after);
  source.addEventListener("status", function (msg) { onEvent(JSON.parse(msg.data)); });
  source.addEventListener("end", function () { source.close(); });
  window.addEventListener("pagehide", function () { source.close(); });
})();
