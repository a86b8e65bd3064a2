// flowfsm dashboard: progressive enhancement, no build step. Every element with
// data-live="URL" is refreshed from URL (the same page, ?partial=1) every
// data-every milliseconds, so a moving flow shows its moves without a reload. The
// pages read fine without this file; a region where someone is typing waits.
"use strict";
(function () {
  function follow(region) {
    var url = region.getAttribute("data-live");
    var every = Number(region.getAttribute("data-every")) || 1000;
    var last = null;
    var busy = false;
    function typing() {
      var active = document.activeElement;
      return active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName) && active.value;
    }
    function look() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
        .then(function (answer) { return answer.ok ? answer.text() : null; })
        .then(function (html) {
          if (html !== null && html !== last && !typing()) {
            if (last !== null) region.innerHTML = html;
            last = html;
          }
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }
    look();
    window.setInterval(look, every);
  }
  document.querySelectorAll("[data-live]").forEach(follow);
})();
