// fsguard console: the only script. An import form uploads with a progress bar and shows the
// server's per-line report without leaving the page; without JavaScript the form posts as usual.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form[data-import]");
  if (!form || !window.XMLHttpRequest || !window.FormData) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var bar = document.getElementById("import-progress");
    var status = document.getElementById("import-status");
    var xhr = new XMLHttpRequest();
    bar.hidden = false; bar.value = 0; status.textContent = "uploading…";
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) { bar.value = Math.round(100 * e.loaded / e.total); }
    });
    xhr.upload.addEventListener("load", function () { bar.removeAttribute("value"); status.textContent = "checking and writing…"; });
    xhr.addEventListener("load", function () {
      bar.value = 100;
      var doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      var report = doc.getElementById("import-report") || doc.getElementById("error-message");
      var target = document.getElementById("import-report");
      target.replaceChildren();
      if (report) { target.appendChild(document.importNode(report, true)); }
      status.textContent = xhr.status < 400 ? "done" : "refused (" + xhr.status + ")";
    });
    xhr.addEventListener("error", function () { status.textContent = "the upload failed"; });
    xhr.open("POST", form.action || window.location.pathname);
    xhr.send(new FormData(form));
  });
});
