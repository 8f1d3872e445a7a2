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

  // A task's stream ends (sse-close) once the task has finished: hide the "live" badge.
  function liveBadge(live, on) {
    var badge = live.querySelector && live.querySelector(".live-badge");
    if (badge) badge.hidden = !on;
  }
  document.addEventListener("htmx:sseClose", function (evt) {
    if (evt.target.id !== "live") return;
    delete evt.target.dataset.following;
    liveBadge(evt.target, false);
  });
  document.addEventListener("htmx:sseOpen", function (evt) {
    if (evt.target.id === "live") liveBadge(evt.target, true);
  });
  document.addEventListener("htmx:sseMessage", function (evt) {
    var live = evt.target.closest && evt.target.closest("#live");
    var id = evt.detail && evt.detail.lastEventId;
    if (live && id) live.dataset.after = id;
  });

  // ...and a Retry (from this page's button, or seen on its header later) puts it back in
  // the queue: follow it again from the last line shown, so the new attempt's lines and
  // states arrive without a reload. htmx re-reads an element whose attributes changed, so
  // the stream's element and its sse-swap children get a new data-gen to connect afresh.
  // `anyway`: look even though the task had finished (a Retry elsewhere): the stream sends
  // the header and, for a task still finished, ends at once.
  var FINISHED = ["succeeded", "cancelled", "dead"];
  function follow(anyway) {
    var live = document.getElementById("live");
    var head = document.querySelector("#task-head [data-state]");
    if (!live || !head || !live.dataset.stream || live.dataset.following) return;
    if ((!anyway && FINISHED.indexOf(head.dataset.state) >= 0) || !window.htmx) return;
    var url = new URL(live.dataset.stream, window.location.href);
    url.searchParams.set("after", live.dataset.after || "0");
    live.dataset.following = "1";
    live.setAttribute("sse-connect", url.pathname + url.search);
    live.setAttribute("sse-close", "end");
    var gen = String((parseInt(live.dataset.gen || "0", 10) || 0) + 1);
    live.dataset.gen = gen;
    live.querySelectorAll("[sse-swap]").forEach(function (el) { el.dataset.gen = gen; });
    window.htmx.process(live);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") follow(true);
  });

  // --- durations of running attempts tick: <span data-tick="seconds at render"> -------------
  function span(s) {
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + " s";
    var m = Math.floor(s / 60), sec = Math.floor(s) % 60;
    if (m < 60) return sec ? m + " min " + sec + " s" : m + " min";
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 48) return m ? h + " h " + m + " min" : h + " h";
    var d = Math.floor(h / 24); h = h % 24;
    return h ? d + " d " + h + " h" : d + " d";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-tick]").forEach(function (el) {
      if (!el.dataset.t0) el.dataset.t0 = String(now);
      var base = parseFloat(el.dataset.tick) || 0;
      el.textContent = span(base + (now - parseInt(el.dataset.t0, 10)) / 1000);
    });
  }
  setInterval(tick, 1000);

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

  // --- New task: a prompt over the limit is refused here, before it is sent and lost ------
  function kib(n) {
    if (n < 1048576) return Math.ceil(n / 1024) + " KiB";
    return (n / 1048576).toFixed(1).replace(/\.0$/, "") + " MiB";
  }
  function fieldError(field, message) {
    var id = field.id + "-error";
    var box = document.getElementById(id);
    if (!message) {
      if (box) box.remove();
      field.removeAttribute("aria-invalid");
      field.removeAttribute("aria-describedby");
      return;
    }
    if (!box) {
      box = document.createElement("p");
      box.className = "field-error";
      box.id = id;
      field.insertAdjacentElement("afterend", box);
    }
    box.textContent = message;
    field.setAttribute("aria-invalid", "true");
    field.setAttribute("aria-describedby", id);
  }
  function tooBig(form) {
    var prompt = form.querySelector("[data-max-chars]");
    if (!prompt) return null;
    var max = parseInt(prompt.dataset.maxChars, 10);
    var text = prompt.value.replace(/\r\n/g, "\n");
    if (text.length > max) {
      return "The prompt is " + kib(text.length) + " (" + text.length.toLocaleString("en") +
        " characters); the limit is " + kib(max) + " (" + max.toLocaleString("en") +
        "). Shorten it, or put the long part in a file the agent reads.";
    }
    var body = new URLSearchParams(new FormData(form)).toString().length;
    var bodyMax = parseInt(form.dataset.maxBody || "0", 10);
    if (bodyMax && body > bodyMax) {
      return "The form comes to " + kib(body) + " once encoded; the hub takes " + kib(bodyMax) +
        " in one request. Shorten the prompt.";
    }
    return null;
  }
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!form.matches || !form.matches("form[data-keep-draft]")) return;
    var prompt = form.querySelector("[data-max-chars]");
    var why = tooBig(form);
    if (prompt) fieldError(prompt, why);
    if (why) {
      evt.preventDefault();
      prompt.focus();
      return;
    }
    // Kept for this tab in case the hub still refuses the request unread (413).
    try { if (prompt) sessionStorage.setItem("draft:" + form.action, prompt.value); } catch (e) {}
  });
  // The copy is put back on the page that says the hub refused it, and dropped anywhere else.
  function restoreDraft(root) {
    var fields = root.querySelectorAll("textarea[data-restore-draft]");
    fields.forEach(function (field) {
      var key = "draft:" + field.form.action, text = null;
      try { text = sessionStorage.getItem(key); sessionStorage.removeItem(key); } catch (e) {}
      if (text && !field.value.trim()) field.value = text;
    });
    if (fields.length || root !== document) return;
    try {
      Object.keys(sessionStorage).forEach(function (key) {
        if (key.indexOf("draft:") === 0) sessionStorage.removeItem(key);
      });
    } catch (e) {}
  }

  // --- filter forms submit themselves when a select changes --------------------------------
  document.addEventListener("change", function (evt) {
    var field = evt.target;
    if (field.matches && field.matches("form[data-autosubmit] select")) field.form.requestSubmit();
  });

  function init(root) {
    var scope = root.querySelectorAll ? root : document;
    scope.querySelectorAll("[data-log]").forEach(setupLog);
    restoreDraft(scope);
    follow();
    tick();
  }
  document.addEventListener("DOMContentLoaded", function () { init(document); });
  document.addEventListener("htmx:load", function (evt) { init(evt.target); });
})();
