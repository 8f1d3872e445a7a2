// Agented dashboard: the few things htmx cannot do. No inline scripts (CSP script-src 'self').
(function () {
  "use strict";

  // --- the live log: follow new lines unless the reader scrolled up ---------------------
  function setupLog(log) {
    if (log.dataset.ready) return;
    log.dataset.ready = "1";
    var jump = document.getElementById(log.dataset.jump || "");
    var follow = true;
    function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 40; }
    function show() { if (jump) jump.hidden = follow; }
    function toBottom() { log.scrollTop = log.scrollHeight; }
    toBottom();
    log.addEventListener("scroll", function () { follow = atBottom(); show(); });
    // New lines arrive through htmx-ext-sse into the log's line container.
    log.addEventListener("htmx:sseMessage", function () {
      var empty = log.querySelector(".log-empty");
      if (empty) empty.remove();
      if (follow) toBottom(); else show();
    });
    if (jump) jump.addEventListener("click", function () { follow = true; toBottom(); show(); });
  }

  // --- streams resume where they were ---------------------------------------------------
  // The browser resends Last-Event-ID itself when a stream drops; when htmx-ext-sse has to
  // open a new EventSource instead, it reads sse-connect again, so keep ?after= current.
  document.addEventListener("htmx:sseMessage", function (evt) {
    var id = evt.detail && evt.detail.lastEventId;
    var source = evt.target.closest("[sse-connect]");
    if (!id || !source) return;
    var url = new URL(source.getAttribute("sse-connect"), window.location.href);
    url.searchParams.set("after", id);
    source.setAttribute("sse-connect", url.pathname + url.search);
  });

  // When a task's stream ends (sse-close), its log is complete: drop the "live" badge.
  document.addEventListener("htmx:sseClose", function (evt) {
    var badge = evt.target.querySelector && evt.target.querySelector(".live-badge");
    if (badge) badge.remove();
  });

  // A task's header comes from the stream on every change and from the answer to Cancel or
  // Retry. That answer can arrive after the stream already showed a later state (the run
  // ended in between): never let it put the older state back. data-at is the task's
  // updated_at when the header was rendered.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var target = evt.detail.target;
    if (!target || target.id !== "task-head") return;
    var shown = target.querySelector("[data-at]");
    var sent = /data-at="([^"]+)"/.exec(evt.detail.serverResponse || "");
    if (shown && sent && parseFloat(sent[1]) < parseFloat(shown.getAttribute("data-at"))) {
      evt.detail.shouldSwap = false;
    }
  });

  // A row that changed flashes briefly so the eye finds it.
  document.addEventListener("htmx:sseMessage", function (evt) {
    var row = evt.target;
    if (row && row.id && row.id.indexOf("task-") === 0) {
      var fresh = document.getElementById(row.id);
      if (fresh) fresh.classList.add("fresh");
    }
  });

  // --- copy buttons: <button data-copy="element-id"> ---------------------------------------
  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var text = source.textContent.trim();
    function said(word) {
      var label = button.dataset.label || button.textContent;
      button.dataset.label = label;
      button.textContent = word;
      setTimeout(function () { button.textContent = label; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { said("Copied"); },
        function () { select(source); said("Press Ctrl+C"); });
    } else {
      select(source);
      said("Press Ctrl+C");
    }
  });
  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // --- confirmations: <form data-confirm="Really?"> ----------------------------------------
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      evt.preventDefault();
      evt.stopImmediatePropagation();
    }
  }, true);

  // --- errors from htmx requests show as a toast; a lost session goes to sign-in ----------
  var toastTimer;
  function toast(message) {
    var box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { box.hidden = true; }, 6000);
  }
  document.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    toast((xhr.responseText || "").slice(0, 300) || ("The server answered " + xhr.status + "."));
  });
  document.addEventListener("htmx:sendError", function () {
    toast("Cannot reach the server. Check the connection and try again.");
  });
  document.addEventListener("htmx:afterRequest", function (evt) {
    var url = evt.detail.xhr && evt.detail.xhr.responseURL;
    if (url && new URL(url).pathname === "/signin") window.location.href = "/signin";
  });

  // --- filter forms submit themselves when a select changes --------------------------------
  document.addEventListener("change", function (evt) {
    var field = evt.target;
    if (field.matches && field.matches("form[data-autosubmit] select")) field.form.requestSubmit();
  });

  function init(root) {
    (root.querySelectorAll ? root : document).querySelectorAll("[data-log]").forEach(setupLog);
  }
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (evt) { init(evt.target); });
})();
