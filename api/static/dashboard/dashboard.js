// The sweep dashboard refreshes in place (api/dashboard.py): while <main> carries
// data-refresh-ms, fetch this same page again after that many milliseconds and swap its
// <main> in (the server renders and escapes everything; no data is turned into HTML here).
"use strict";
(function () {
  function schedule() {
    var main = document.getElementById("main");
    var every = main && parseInt(main.getAttribute("data-refresh-ms") || "", 10);
    if (every > 0) {
      window.setTimeout(refresh, every);
    }
  }
  function refresh() {
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // signed out, or the token was revoked: the sign-in page
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text !== null) {
          var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
          var main = document.getElementById("main");
          if (fresh && main) {
            main.replaceWith(document.importNode(fresh, true));
          }
        }
        schedule();
      })
      .catch(function () {
        schedule(); // the server is restarting: try again later
      });
  }
  document.addEventListener("DOMContentLoaded", schedule);
})();
