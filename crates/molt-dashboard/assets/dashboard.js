// molt's dashboard: the only script. Each page has one section (#live) that the server also
// streams over Server-Sent Events; this swaps it in as each one arrives. Without it the page
// is complete, as of when it was loaded.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var source = new EventSource(live.getAttribute("data-events"));
  source.addEventListener("live", function (event) {
    // Keep a form being used (focus inside the section) as it is until it is sent.
    if (live.contains(document.activeElement) && document.activeElement.tagName !== "BODY") {
      return;
    }
    live.innerHTML = event.data;
    live.setAttribute("data-updated", String(Date.now()));
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();
