// Stockroom ops console: refresh the page's content in place every few seconds (no full
// reload), without taking the keyboard away: a refresh waits while focus is on something in
// the content (a field, a button, a link), and resumes once it leaves.
"use strict";
(function () {
  const content = document.getElementById("content");
  if (!content || !content.dataset.refreshSeconds) return;
  const every = Math.max(2, Number(content.dataset.refreshSeconds)) * 1000;

  function busy() {
    const active = document.activeElement;
    return active !== null && active !== content && content.contains(active);
  }

  async function refresh() {
    if (document.hidden || busy()) return;
    let response;
    try {
      response = await fetch(window.location.href, {
        headers: { "X-Console-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (error) {
      content.dataset.offline = "true";  // the API itself is unreachable: keep what we show
      return;
    }
    if (response.status === 401 || response.redirected) {
      window.location.reload();  // the session ended: the page goes to the sign-in form
      return;
    }
    const type = response.headers.get("Content-Type") || "";
    if (!type.startsWith("text/html")) return;
    const html = await response.text();
    if (busy()) return;
    content.innerHTML = html;
    delete content.dataset.offline;
  }

  window.setInterval(refresh, every);
})();
