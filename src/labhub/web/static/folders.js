// Folders: uploads by drag and drop or the file picker, one progress bar per file, errors in words,
// and the page's lists refreshed when they are done.  Files go one at a time, each as the body of
// POST /api/v1/folders/<name>/upload (an archive is extracted by the hub).
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  var L = window.LabHub;
  var NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
  var fixed = form.dataset.folder || "";  // a folder's own page; else the name field says which
  var nameInput = document.getElementById("folder-name");
  var picker = document.getElementById("files");
  var zone = document.getElementById("dropzone");
  var strip = document.getElementById("strip-top");
  var list = document.getElementById("uploads");
  var submit = document.getElementById("upload-submit");
  var limit = Number(form.dataset.limit || 0);
  var token = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  var queue = [], busy = false, done = 0, failed = 0;

  form.querySelectorAll("[data-js]").forEach(function (el) { el.hidden = false; });
  if (submit.dataset.jsText) { submit.textContent = submit.dataset.jsText; }
  picker.multiple = true;
  picker.required = false;
  form.noValidate = true;

  function size(n) {
    if (n < 1024) { return n + (n === 1 ? " byte" : " bytes"); }
    var units = ["KiB", "MiB", "GiB", "TiB"], i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(1).replace(/\.0$/, "") + " " + units[i];
  }

  function checkName() {
    if (fixed) { return true; }
    var v = nameInput.value.trim(), message = "";
    if (!v) { message = "Choose a name for the folder."; }
    else if (v.length > 63) { message = "At most 63 characters."; }
    else if (!NAME.test(v)) { message = "Letters, digits, “.”, “_” and “-” only, starting with a letter or digit."; }
    var err = document.getElementById("folder-name-error");
    if (message) { nameInput.setAttribute("aria-invalid", "true"); } else { nameInput.removeAttribute("aria-invalid"); }
    if (err) { err.textContent = message; err.hidden = !message; }
    return !message;
  }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  // One list item per file: its name, a progress bar, then what happened.
  function item(file) {
    var li = el("li", "upload-item");
    var head = el("div", "upload-head");
    head.appendChild(el("span", "upload-name", file.name));
    var state = el("span", "upload-state muted", "waiting");
    head.appendChild(state);
    var bar = el("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", "Upload of " + file.name);
    var result = el("p", "upload-result");
    result.hidden = true;
    li.appendChild(head);
    li.appendChild(bar);
    li.appendChild(result);
    list.appendChild(li);
    return { file: file, li: li, state: state, bar: bar, result: result };
  }

  // The API's error answer ({detail, fields}) in words.
  function why(xhr) {
    if (xhr.status === 0) { return "The connection failed; check your network and try again."; }
    var body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    var parts = [];
    if (body && typeof body.detail === "string") { parts.push(body.detail); }
    if (body && body.fields && typeof body.fields === "object") {
      Object.keys(body.fields).forEach(function (k) {
        var text = String(body.fields[k]);
        if (parts.indexOf(text) < 0) { parts.push(text); }
      });
    }
    var text = parts.join("; ") || ("the hub answered " + xhr.status);
    if (xhr.status === 413) { text = "Too large: " + text; }
    if (xhr.status === 403) { text += " (reload the page and try again)"; }
    return text.charAt(0).toUpperCase() + text.slice(1) + (/[.)]$/.test(text) ? "" : ".");
  }

  function finish(entry, ok, message) {
    entry.li.classList.add(ok ? "ok" : "bad");
    entry.state.textContent = ok ? "done" : "failed";
    entry.state.className = "upload-state " + (ok ? "ok" : "bad");
    entry.result.textContent = message;
    entry.result.className = "upload-result" + (ok ? "" : " field-error");
    entry.result.hidden = false;
    if (ok) { done++; } else { failed++; }
  }

  function send(entry, folder) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      var started = Date.now();
      var query = "?filename=" + encodeURIComponent(entry.file.name) + (strip && strip.checked ? "&strip_top=true" : "");
      xhr.open("POST", "/api/v1/folders/" + encodeURIComponent(folder) + "/upload" + query);
      xhr.setRequestHeader("X-CSRF-Token", token);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      xhr.upload.onprogress = function (e) {
        if (!e.lengthComputable) { return; }
        var pct = e.total ? Math.floor(100 * e.loaded / e.total) : 100;
        var seconds = Math.max(0.001, (Date.now() - started) / 1000);
        entry.bar.value = pct;
        entry.state.textContent = pct + "% · " + size(Math.round(e.loaded / seconds)) + "/s";
      };
      xhr.upload.onload = function () { entry.bar.value = 100; entry.state.textContent = "unpacking…"; };
      xhr.onload = function () {
        if (xhr.status === 201) {
          var body = JSON.parse(xhr.responseText);
          var text = "Added " + body.added_files + (body.added_files === 1 ? " file" : " files") + " (" +
            size(body.added_bytes) + ") to " + body.folder.name + ".";
          if (body.skipped && body.skipped.length) {
            text += " Skipped " + body.skipped.length + ": " + body.skipped.slice(0, 5).join("; ") +
              (body.skipped.length > 5 ? "; …" : "");
          }
          finish(entry, true, text);
        } else {
          finish(entry, false, why(xhr));
        }
        resolve();
      };
      xhr.onerror = function () { finish(entry, false, why(xhr)); resolve(); };
      xhr.onabort = xhr.onerror;
      entry.state.textContent = "0%";
      xhr.send(entry.file);
    });
  }

  function next() {
    if (busy) { return; }
    if (!queue.length) { return; }
    if (!checkName()) { nameInput.focus(); return; }
    var folder = fixed || nameInput.value.trim();
    busy = true;
    submit.disabled = true;
    var entry = queue.shift();
    send(entry, folder).then(function () {
      busy = false;
      if (queue.length) { next(); return; }
      submit.disabled = false;
      L.announce("Uploads finished: " + done + " done" + (failed ? ", " + failed + " failed." : "."));
      done = failed = 0;
      refresh(folder);
    });
  }

  function add(files) {
    Array.prototype.forEach.call(files, function (file) {
      var entry = item(file);
      if (limit && file.size > limit) {
        finish(entry, false, "Too large: " + size(file.size) + ", over the limit of " + size(limit) + " per file.");
        return;
      }
      queue.push(entry);
    });
    picker.value = "";
    next();
  }

  // Swap the page's lists (marked data-refresh) for the hub's current ones.
  function refresh(folder) {
    var url = fixed ? "/folders/" + encodeURIComponent(folder) : "/folders";
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error("the hub answered " + r.status)); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-refresh]").forEach(function (old) {
          var now = old.id && fresh.getElementById(old.id);
          if (now) { old.replaceWith(document.importNode(now, true)); }
        });
        var names = fresh.getElementById("folder-names"), here = document.getElementById("folder-names");
        if (names && here) { here.replaceWith(document.importNode(names, true)); }
        document.querySelectorAll("time[data-local]").forEach(function (t) {
          var d = new Date(t.getAttribute("datetime"));
          if (!isNaN(d)) { t.title = t.textContent; t.textContent = d.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }); }
        });
      })
      .catch(function () { /* the lists stay as they were; a reload shows them */ });
  }

  picker.addEventListener("change", function () { add(picker.files); });
  if (nameInput) { nameInput.addEventListener("input", function () { if (nameInput.hasAttribute("aria-invalid")) { checkName(); } }); }
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    if (picker.files && picker.files.length) { add(picker.files); return; }
    if (!checkName()) { nameInput.focus(); return; }
    if (queue.length) { next(); return; }
    picker.focus();
    L.announce("Choose files to upload first.");
  });

  // Drag and drop onto the zone; a file dropped elsewhere on the page is not opened by the browser.
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) { add(e.dataTransfer.files); }
  });
  function carriesFiles(e) {
    return e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types || [], "Files") >= 0;
  }
  window.addEventListener("dragover", function (e) { if (carriesFiles(e)) { e.preventDefault(); } });
  window.addEventListener("drop", function (e) { if (carriesFiles(e)) { e.preventDefault(); } });
})();
