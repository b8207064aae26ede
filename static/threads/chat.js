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

  document.addEventListener("click", function (evt) {
    if (evt.target && evt.target.id === "stop") stop();
  });

  // A turn can arrive twice (the POST answer and the socket's "started" frame): keep one.
  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    const fragment = evt.detail.fragment;
    if (!fragment || !fragment.querySelectorAll) return;
    const articles = fragment.querySelectorAll("article[id]");
    for (const article of articles) {
      if (document.getElementById(article.id)) { evt.detail.shouldSwap = false; return; }
    }
  });

  document.addEventListener("htmx:afterRequest", function (evt) {
    const form = compose();
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

  function afterChange() { refreshStop(); keepScrolled(); }
  document.addEventListener("htmx:afterSettle", afterChange);
  document.addEventListener("htmx:wsAfterMessage", afterChange);
  document.addEventListener("htmx:oobAfterSwap", afterChange);
})();
