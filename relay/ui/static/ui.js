// Kourier relay status page: optional auto-refresh. Every page works without this file.
(function () {
  "use strict";
  var region = document.querySelector("[data-refresh]");
  if (!region || !window.fetch || !window.DOMParser) { return; }
  var KEY = "kourier-ui-refresh";
  var EVERY = 10000;
  var head = document.querySelector(".head");
  var label = document.createElement("label");
  label.className = "refresh";
  var box = document.createElement("input");
  box.type = "checkbox";
  box.id = "auto-refresh";
  box.checked = window.localStorage.getItem(KEY) === "on";
  label.appendChild(box);
  label.appendChild(document.createTextNode(" Refresh every 10 s"));
  head.appendChild(label);
  box.addEventListener("change", function () {
    window.localStorage.setItem(KEY, box.checked ? "on" : "off");
  });

  function busy() {
    // Never swap the page under someone reading a detail or using a control in it.
    var focused = document.activeElement;
    return document.hidden || (focused && region.contains(focused) && focused !== document.body)
      || region.querySelector("details[open][data-user]");
  }

  function refresh() {
    if (!box.checked || busy()) { return; }
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { window.location.reload(); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html")
          .querySelector("[data-refresh='" + region.getAttribute("data-refresh") + "']");
        if (fresh) { region.replaceChildren.apply(region, Array.prototype.slice.call(fresh.childNodes)); }
      })
      .catch(function () { /* offline for a moment: try again next time */ });
  }

  region.addEventListener("toggle", function (e) {
    if (e.target.tagName === "DETAILS") { e.target.setAttribute("data-user", ""); }
  }, true);
  window.setInterval(refresh, EVERY);
}());
