// The console's live updates: one EventSource on /events, shared by the page's parts.
// The pages work without it; this only keeps them current.
(function () {
  "use strict";
  var SPARK_SPAN_MS = 600000, SPARK_STEP_MS = 5000;
  var lastAlerts = null;

  function ago(ts) {
    var s = Math.max(0, Math.round((Date.now() - ts) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function drawSpark(svg, points) {
    var line = svg.querySelector("polyline");
    if (!line || points.length === 0) return;
    var t0 = points[0][0], t1 = points[points.length - 1][0];
    var lo = Infinity, hi = -Infinity;
    points.forEach(function (p) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); });
    var dt = Math.max(1, t1 - t0), dv = hi - lo || 1;
    line.setAttribute("points", points.map(function (p) {
      return (((p[0] - t0) / dt) * 100).toFixed(1) + "," + (26 - ((p[1] - lo) / dv) * 24).toFixed(1);
    }).join(" "));
  }

  function updateTile(tile) {
    var el = document.querySelector('[data-tile="' + tile.id + '"]');
    if (!el) return;
    el.className = "tile level-" + tile.level;
    el.querySelector(".value-number").textContent = tile.value === null ? "—" : tile.value;
    el.querySelector(".state").textContent = tile.level;
    el.querySelector(".flags").textContent = tile.flags.join(", ");
    var age = el.querySelector("[data-ts]");
    if (tile.ts !== null) age.setAttribute("data-ts", tile.ts);
    var svg = el.querySelector("svg.spark");
    if (svg && tile.ts !== null && tile.value !== null) {
      var points = JSON.parse(svg.getAttribute("data-points") || "[]");
      var last = points[points.length - 1];
      if (!last || tile.ts >= last[0] + SPARK_STEP_MS) {
        points.push([tile.ts, parseFloat(tile.value)]);
        points = points.filter(function (p) { return p[0] >= tile.ts - SPARK_SPAN_MS; });
        svg.setAttribute("data-points", JSON.stringify(points));
        drawSpark(svg, points);
      }
    }
  }

  function updateDevice(device) {
    var el = document.querySelector('[data-presence="' + device.id + '"]');
    if (!el) return;
    var online = device.last_seen !== null;
    el.className = "presence " + (online ? "online" : "offline");
    el.querySelector(".word").textContent = online ? "online" : "offline";
    var seen = el.querySelector("[data-ts]");
    if (online) seen.setAttribute("data-ts", device.last_seen);
  }

  function refreshAlerts() {
    var live = document.getElementById("alerts-live");
    if (!live) return;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      if (r.ok) return r.text();
    }).then(function (html) {
      if (html !== undefined) live.innerHTML = html;
    });
  }

  function apply(update) {
    var paused = document.getElementById("live-paused");
    if (paused) paused.hidden = update.live;
    var history = document.getElementById("history-unavailable");
    if (history) history.hidden = update.history;
    update.tiles.forEach(updateTile);
    update.devices.forEach(updateDevice);
    var count = document.getElementById("open-alerts");
    if (count) count.textContent = update.open_alerts;
    if (lastAlerts !== null && lastAlerts !== update.alerts_version) refreshAlerts();
    lastAlerts = update.alerts_version;
    tickAges();
  }

  function tickAges() {
    document.querySelectorAll("[data-ts]").forEach(function (el) {
      var ts = parseInt(el.getAttribute("data-ts"), 10);
      if (!isNaN(ts)) el.textContent = ago(ts);
    });
  }

  document.querySelectorAll("svg.spark").forEach(function (svg) {
    drawSpark(svg, JSON.parse(svg.getAttribute("data-points") || "[]"));
  });
  if (window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("plant", function (e) { apply(JSON.parse(e.data)); });
    source.onerror = function () {
      var paused = document.getElementById("live-paused");
      if (paused) paused.hidden = false;
    };
  }
  tickAges();
  setInterval(tickAges, 1000);
})();
