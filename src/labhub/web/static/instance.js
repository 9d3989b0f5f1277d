// Live events for one instance (Server-Sent Events); opens the workspace when it is ready.
(function () {
  "use strict";
  var list = document.getElementById("events");
  if (!list) { return; }
  var id = list.dataset.instance;
  var statusEl = document.getElementById("status");
  var logsEl = document.getElementById("logs");

  function add(ev) {
    var li = document.createElement("li");
    var t = document.createElement("time");
    t.textContent = new Date(ev.at).toLocaleTimeString();
    li.appendChild(t);
    li.appendChild(document.createTextNode(ev.status + ": " + ev.message));
    list.appendChild(li);
    statusEl.textContent = ev.status;
    statusEl.className = "status s-" + ev.status;
  }

  function loadLogs() {
    fetch("/api/v1/instances/" + id + "/logs?tail=200", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : ""; })
      .then(function (text) { logsEl.textContent = text || "(no output yet)"; });
  }

  var source = new EventSource("/api/v1/instances/" + id + "/events");
  source.addEventListener("status", function (msg) {
    var ev = JSON.parse(msg.data);
    add(ev);
    if (ev.status === "running" && list.dataset.active === "yes" && ev.reason === "ready") {
      window.location.assign(list.dataset.url);
    }
    if (ev.status === "failed") { loadLogs(); }
  });
  source.addEventListener("end", function () { source.close(); loadLogs(); });
  loadLogs();
})();
