// The launch form: checks fields as you type and explains what is wrong next to each field.
(function () {
  "use strict";
  var form = document.getElementById("launch-form");
  if (!form) { return; }
  var taken = JSON.parse(form.dataset.taken || "[]");
  var NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
  var nameInput = document.getElementById("name");
  var hoursInput = document.getElementById("hours");
  var inputSelect = document.getElementById("input");  // a job's input folder

  function show(input, message) {
    var err = document.getElementById(input.id + "-error");
    if (message) { input.setAttribute("aria-invalid", "true"); } else { input.removeAttribute("aria-invalid"); }
    if (err) { err.textContent = message || ""; err.hidden = !message; }
    return !message;
  }

  function checkName() {
    var v = nameInput.value;
    var preview = document.getElementById("name-preview");
    if (preview) { preview.textContent = v || "…"; }
    var message = "";
    if (!v) { message = "Choose a name."; }
    else if (v.length > 63) { message = "At most 63 characters."; }
    else if (/[A-Z]/.test(v)) { message = "Use lower-case letters only."; }
    else if (/^-|-$/.test(v)) { message = "It cannot start or end with “-”."; }
    else if (!NAME.test(v)) { message = "Only a-z, 0-9 and “-” are allowed."; }
    else if (v.indexOf("--") >= 0) { message = "“--” is not allowed (it separates the name from yours in its address)."; }
    else if (taken.indexOf(v) >= 0) { message = "You already have an active instance named “" + v + "”; pick another name."; }
    return show(nameInput, message);
  }

  function checkHours() {
    var max = Number(hoursInput.max), v = hoursInput.value, h = Number(v), message = "";
    var until = document.getElementById("hours-until");
    if (v === "" || isNaN(h)) { message = "Enter a number of hours, e.g. 2 or 1.5."; }
    else if (h <= 0) { message = "Must be more than 0."; }
    else if (h > max) { message = "At most " + max + " h for this template."; }
    until.textContent = message ? "" : "It will stop at about " +
      new Date(Date.now() + h * 3600000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + ".";
    return show(hoursInput, message);
  }

  function checkParam(input) {
    var v = input.validity, message = "";
    if (v.valueMissing) { message = "Required."; }
    else if (v.badInput || v.typeMismatch) { message = "Enter a number."; }
    else if (v.stepMismatch) { message = "Must be a whole number."; }
    else if (v.rangeUnderflow) { message = "Must be at least " + input.min + "."; }
    else if (v.rangeOverflow) { message = "Must be at most " + input.max + "."; }
    else if (v.patternMismatch) { message = "Must match " + input.pattern + "."; }
    else if (v.tooLong) { message = "Too long."; }
    return show(input, message);
  }

  function checkInput() {
    if (!inputSelect) { return true; }
    return show(inputSelect, inputSelect.required && !inputSelect.value ? "Choose the folder this job reads." : "");
  }

  var params = Array.prototype.slice.call(form.querySelectorAll('[name^="param."]'))
    .filter(function (el) { return el.type !== "checkbox"; });
  // A custom size: its fields show (and are checked) only while "Custom" is chosen.
  var customBox = document.getElementById("custom-size"), customRadio = document.getElementById("size-custom");
  var customInputs = customBox ? Array.prototype.slice.call(customBox.querySelectorAll("input")) : [];
  function showCustom() { if (customBox) { customBox.hidden = !customRadio.checked; } }
  form.querySelectorAll('input[name="size"]').forEach(function (el) { el.addEventListener("change", showCustom); });
  customInputs.forEach(function (el) { el.addEventListener("input", function () { checkParam(el); }); });
  showCustom();
  nameInput.addEventListener("input", checkName);
  hoursInput.addEventListener("input", checkHours);
  params.forEach(function (el) { el.addEventListener("input", function () { checkParam(el); }); });
  if (inputSelect) { inputSelect.addEventListener("change", checkInput); }
  var preview = document.getElementById("name-preview");
  if (preview) { preview.textContent = nameInput.value || "…"; }
  if (!hoursInput.hasAttribute("aria-invalid")) { checkHours(); }

  form.addEventListener("submit", function (e) {
    var fields = [[nameInput, checkName()]];
    if (inputSelect) { fields.push([inputSelect, checkInput()]); }
    fields.push([hoursInput, checkHours()]);
    params.forEach(function (el) { fields.push([el, checkParam(el)]); });
    if (customRadio && customRadio.checked) { customInputs.forEach(function (el) { fields.push([el, checkParam(el)]); }); }
    var firstBad = fields.filter(function (f) { return !f[1]; })[0];
    if (firstBad) {
      e.preventDefault();
      firstBad[0].focus();
    }
  });
  var summary = document.getElementById("error-summary");
  if (summary) { summary.focus(); }
})();
