// The thread page's small behaviours. Everything else is htmx and server-rendered HTML.
(function () {
  "use strict";

  function compose() { return document.getElementById("compose"); }
  function activeReply() {
    const all = document.querySelectorAll('#message-list article[data-active="true"]');
    return all.length ? all[all.length - 1] : null;
  }
  function newClientId() {
    return (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  }

  function refreshStop() {
    const stop = document.getElementById("stop");
    if (stop) stop.disabled = !activeReply();
  }

  function stop() {
    const reply = activeReply();
    if (!reply) return;
    htmx.ajax("POST", reply.dataset.cancelUrl, { swap: "none", source: reply });
  }

  // Follow the stream unless the person scrolled up to read.
  let follow = true;
  function scroller() { return document.querySelector(".messages"); }
  function keepScrolled() {
    const el = scroller();
    if (el && follow) el.scrollTop = el.scrollHeight;
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = compose();
    if (form) form.elements.client_id.value = newClientId();
    const el = scroller();
    if (el) {
      el.addEventListener("scroll", function () {
        follow = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
      });
      keepScrolled();
    }
    refreshStop();
    announceFinished();
    document.body.dataset.ready = "true";
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.requestSubmit(); });
    });
  });

  document.addEventListener("keydown", function (evt) {
    if (evt.key === "Escape" && activeReply()) {
      evt.preventDefault();
      stop();
      const box = document.getElementById("compose-content");
      if (box) box.focus();
      return;
    }
    if (evt.target && evt.target.id === "compose-content" && evt.key === "Enter" &&
        !evt.shiftKey && !evt.isComposing) {
      evt.preventDefault();
      compose().requestSubmit();
    }
  });

  function announce(text) {
    const el = document.getElementById("announcer");
    if (el) el.textContent = text;
  }

  function copyText(text, button) {
    const done = function () {
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {
      // Plain http (a LAN demo): fall back to a selection copy.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.style.position = "fixed"; area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
      area.remove();
    }
  }

  document.addEventListener("click", function (evt) {
    const target = evt.target instanceof Element ? evt.target : null;
    if (!target) return;
    if (target.id === "stop") { stop(); return; }
    const codeCopy = target.closest(".code .copy");
    if (codeCopy) {
      const code = codeCopy.closest(".code").querySelector("pre code");
      if (code) copyText(code.textContent, codeCopy);
      return;
    }
    const copy = target.closest("[data-copy]");
    if (copy) {
      const body = document.querySelector(copy.dataset.copy);
      if (body) copyText(body.innerText, copy);
      return;
    }
    const edit = target.closest("[data-edit]");
    if (edit) {
      // Edit and resend: the text goes back in the compose box; sending makes a new turn.
      const body = document.querySelector(edit.dataset.edit);
      const box = document.getElementById("compose-content");
      if (body && box) { box.value = body.textContent; box.focus(); }
    }
  });

  document.addEventListener("submit", function (evt) {
    const form = evt.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      evt.preventDefault();
    }
  });

  // A skeleton the moment Send is pressed, replaced by the server's turn when it answers.
  function showPending() {
    const list = document.getElementById("message-list");
    if (!list || document.getElementById("pending-turn")) return;
    const article = document.createElement("article");
    article.id = "pending-turn";
    article.className = "msg msg-assistant";
    article.setAttribute("aria-hidden", "true");
    const skeleton = document.createElement("div");
    skeleton.className = "skeleton";
    for (let i = 0; i < 3; i++) skeleton.appendChild(document.createElement("span"));
    article.appendChild(skeleton);
    list.appendChild(article);
    follow = true;
    keepScrolled();
  }
  function clearPending() {
    const pending = document.getElementById("pending-turn");
    if (pending) pending.remove();
  }
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (evt.detail.elt === compose()) showPending();
  });

  // A turn can arrive twice (the POST answer and the socket's "started" frame): keep one.
  // Only appends to the list are checked: an outerHTML frame (a snapshot or the final
  // reply) carries the id of the article it replaces, on purpose.
  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    const fragment = evt.detail.fragment;
    if (!fragment || !fragment.querySelectorAll) return;
    if (!evt.detail.target || evt.detail.target.id !== "message-list") return;
    const articles = fragment.querySelectorAll("article[id]");
    for (const article of articles) {
      if (document.getElementById(article.id)) { evt.detail.shouldSwap = false; return; }
    }
  });

  document.addEventListener("htmx:afterRequest", function (evt) {
    const form = compose();
    if (form && evt.detail.elt === form) clearPending();
    if (form && evt.detail.elt === form && evt.detail.successful) {
      form.elements.content.value = "";
      form.elements.client_id.value = newClientId();
      document.getElementById("compose-errors").replaceChildren();
      form.elements.content.focus();
      follow = true;
    }
  });

  // Validation errors (422) carry an inline message to swap in.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    if (evt.detail.xhr.status === 422) { evt.detail.shouldSwap = true; evt.detail.isError = false; }
  });

  // Announce a reply once, when it finishes (frames mid-stream stay silent).
  const announced = new Set();
  function announceFinished() {
    document.querySelectorAll('#message-list article.msg-assistant:not([data-active])').forEach(function (a) {
      if (announced.has(a.id)) return;
      announced.add(a.id);
      if (!document.body.dataset.ready) return;  // replies already on the page at load
      const status = a.dataset.status;
      announce(status === "complete" ? "Reply finished." : status === "cancelled" ? "Reply stopped." : "Reply failed.");
      const box = document.getElementById("compose-content");
      if (box && document.activeElement === document.body) box.focus();
    });
  }

  function afterChange() { refreshStop(); keepScrolled(); announceFinished(); }
  document.addEventListener("htmx:afterSettle", afterChange);
  document.addEventListener("htmx:wsAfterMessage", afterChange);
  document.addEventListener("htmx:oobAfterSwap", afterChange);
})();
