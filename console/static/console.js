// The console's live updates: one EventSource on /events, shared by the page's parts.
// The pages work without it; this only keeps them current. Tiles are found by id
// ("furnace-01/0"), devices too ("furnace-01").
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var SLOTS = 20;
  var step = 30000;
  var sparks = {};   // tile id -> {first: slot, values: [v or null]}
  var tileTs = {};   // tile id -> reading time (ms)
  var seenTs = {};   // device id -> {seen: last seen (ms) or null, reported: agent's word}
  var lastAlerts = null, lastPlant = null, alertsPending = false;

  function ago(ts) {
    var s = Math.max(0, Math.floor((Date.now() - ts) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  }

  function drawSpark(id) {
    var tile = document.getElementById(id), spark = sparks[id];
    if (!tile || !spark) return;
    var svg = tile.querySelector("svg");
    if (!svg) {
      svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 100 28");
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("aria-label", "last 10 minutes");
      svg.setAttribute("role", "img");
      svg.appendChild(document.createElementNS(SVG, "polyline"));
      tile.insertBefore(svg, tile.querySelector("small"));
    }
    var lo = Infinity, hi = -Infinity;
    spark.values.forEach(function (v) { if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    var dv = hi - lo || 1, points = [];
    spark.values.forEach(function (v, i) {
      if (v !== null) points.push((i * 100 / (SLOTS - 1)).toFixed(1) + "," + (26 - ((v - lo) / dv) * 24).toFixed(1));
    });
    svg.firstChild.setAttribute("points", points.join(" "));
  }

  function extendSpark(id, ts, value) {
    var slot = Math.floor(ts / step), spark = sparks[id];
    if (!spark) spark = sparks[id] = { first: slot, values: [] };
    var index = slot - spark.first;
    if (index < spark.values.length - 1 - SLOTS) {
      // Far older than the newest drawn: that one was dated ahead; start again.
      spark = sparks[id] = { first: slot, values: [] };
      index = 0;
    } else if (index < spark.values.length - 1) {
      return; // older than what is drawn
    }
    while (spark.values.length <= index) spark.values.push(null);
    spark.values[index] = value;
    while (spark.values.length > SLOTS) { spark.values.shift(); spark.first += 1; }
    drawSpark(id);
  }

  // A tile on the wire: i id, v value (text, null if faulted or none yet), t reading
  // time (ms), l level, f quality flags (absent when none).
  function updateTile(tile) {
    var el = document.getElementById(tile.i);
    if (!el) return;
    el.className = "tile " + tile.l;
    el.querySelector("i").textContent = tile.v === null ? "—" : tile.v;
    el.querySelector("em").textContent = tile.l;
    var words = (tile.f || []).join(", "), flags = el.querySelector("small.f");
    if (words && !flags) {
      flags = document.createElement("small");
      flags.className = "f";
      el.appendChild(flags);
    }
    if (flags) flags.textContent = words;
    if (tile.t !== null) {
      tileTs[tile.i] = tile.t;
      if (tile.v !== null) extendSpark(tile.i, tile.t, parseFloat(tile.v));
    }
  }

  // A device on the wire: i id, s last seen (ms), null when offline, r what its agent's
  // retained status says (null if unheard).
  function updateDevice(device) {
    seenTs[device.i] = { seen: device.s, reported: device.r };
  }

  function tickAges() {
    Object.keys(tileTs).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) el.querySelector("small").textContent = ago(tileTs[id]);
    });
    Object.keys(seenTs).forEach(function (id) {
      var card = document.getElementById(id);
      var el = card && card.querySelector("h3 > span");
      if (!el) return;
      var device = seenTs[id], online = device.seen !== null;
      el.className = online ? "on" : "off";
      el.textContent = online ? "online · last seen " + ago(device.seen)
        : device.reported ? "offline · agent: " + device.reported : "offline";
    });
  }

  // Reloads the alerts table, but not under an operator's hands: while a note is being
  // written or a button has focus, it waits.
  function refreshAlerts() {
    var live = document.getElementById("console:alerts-live");
    if (!live) return;
    var busy = live.contains(document.activeElement) ||
      Array.prototype.some.call(live.querySelectorAll("input[name=note]"), function (i) { return i.value !== ""; });
    if (busy) {
      if (!alertsPending) {
        alertsPending = true;
        setTimeout(function () { alertsPending = false; refreshAlerts(); }, 2000);
      }
      return;
    }
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    url.searchParams.delete("error");
    fetch(url, { credentials: "same-origin" }).then(function (r) {
      // A redirect is the login page (the session ended): not a table.
      if (r.ok && !r.redirected) return r.text();
    }).then(function (html) {
      if (html !== undefined) live.innerHTML = html;
    });
  }

  function apply(update) {
    var paused = document.getElementById("console:live-paused");
    if (paused) paused.hidden = update.live;
    var history = document.getElementById("console:history-unavailable");
    if (history) history.hidden = update.history;
    update.tiles.forEach(updateTile);
    update.devices.forEach(updateDevice);
    var count = document.getElementById("console:open-alerts");
    if (count) count.textContent = update.open_alerts;
    if (lastAlerts !== null && lastAlerts !== update.alerts_version) refreshAlerts();
    lastAlerts = update.alerts_version;
    // A device or channel came, went or changed: the overview is rebuilt by the server.
    if (lastPlant !== null && lastPlant !== update.plant && document.querySelector(".devices")) {
      window.location.reload();
    }
    lastPlant = update.plant;
    tickAges();
  }

  if (document.querySelector(".tile")) {
    fetch("/sparks", { credentials: "same-origin" }).then(function (r) {
      if (r.ok) return r.json();
    }).then(function (all) {
      if (!all) return;
      step = all.step;
      Object.keys(all.sparks).forEach(function (id) {
        var pair = all.sparks[id], mine = sparks[id];
        sparks[id] = { first: pair[0], values: pair[1] };
        // Values that arrived while this was loading go on top.
        if (mine) mine.values.forEach(function (v, i) { if (v !== null) extendSpark(id, (mine.first + i) * step, v); });
        drawSpark(id);
      });
    });
  }
  if (window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("plant", function (e) { apply(JSON.parse(e.data)); });
    source.onerror = function () {
      var paused = document.getElementById("console:live-paused");
      if (paused) paused.hidden = false;
      // Closed for good (the console restarted, or asks for a login): load the page
      // again, which says which.
      if (source.readyState === EventSource.CLOSED) setTimeout(function () { window.location.reload(); }, 5000);
    };
  }
  setInterval(tickAges, 1000);
})();
