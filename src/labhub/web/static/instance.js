// Instance details: live status and timeline; logs with tail length and follow.
(function () {
  "use strict";
  var head = document.getElementById("instance");
  if (!head) { return; }
  var L = window.LabHub;
  var id = head.dataset.instance;
  var status = head.dataset.status;
  var output = document.getElementById("log-output");
  var tail = document.getElementById("log-tail");
  var follow = document.getElementById("log-follow");
  var note = document.getElementById("log-status");
  var timer = null, loading = false;

  function loadLogs() {
    if (loading) { return; }
    loading = true;
    var atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 8;
    fetch("/api/v1/instances/" + id + "/logs?tail=" + tail.value, { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) { throw new Error("the hub answered " + r.status); }
        return r.text();
      })
      .then(function (text) {
        output.textContent = text || "(no output yet)";
        if (atBottom || follow.checked) { output.scrollTop = output.scrollHeight; }
        note.textContent = "Updated " + new Date().toLocaleTimeString() + (follow.checked ? "; following." : ".");
      })
      .catch(function (err) { note.textContent = "Could not load the logs: " + err.message; })
      .then(function () { loading = false; });
  }

  function setFollow() {
    if (timer) { window.clearInterval(timer); timer = null; }
    if (follow.checked) { timer = window.setInterval(loadLogs, 2000); }
  }

  tail.addEventListener("change", loadLogs);
  follow.addEventListener("change", function () { setFollow(); loadLogs(); });
  document.getElementById("log-refresh").addEventListener("click", loadLogs);
  loadLogs();
  setFollow();
  if (window.location.hash === "#logs") { document.getElementById("logs").focus(); }

  L.watchInstance(head, id, status, function () {
    follow.checked = false;
    setFollow();
    window.setTimeout(function () { window.location.reload(); }, 800);  // the server explains why it ended
  });
})();
