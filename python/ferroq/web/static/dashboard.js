/* The dashboard's page script: one live stream per tab (FerroqProgress.LiveStream), the
 * connection state in the header, live regions refreshed from the server when the file
 * changes, the events tail, the throughput chart (inline SVG) and the actions.
 * Task data is only ever written with textContent (or taken from the server's own
 * autoescaped HTML); the CSP allows no inline script, so nothing injected can run. */
(function () {
  "use strict";
  var body = document.body;
  var root = body.getAttribute("data-root") || "";
  var page = body.getAttribute("data-page");
  var queue = body.getAttribute("data-queue");
  var stateEl = document.getElementById("conn-state");
  var retryBtn = document.getElementById("conn-retry");

  function api(path) {
    return root + path + (queue ? (path.indexOf("?") < 0 ? "?" : "&") + "queue=" + encodeURIComponent(queue) : "");
  }

  function showState(name, info) {
    var text = name;
    if (name === "reconnecting") { text = "reconnecting in " + info.delay + "s (attempt " + info.attempt + ")"; }
    stateEl.textContent = text;
    stateEl.setAttribute("data-state", name);
    retryBtn.hidden = name === "live" || name === "hidden";
  }

  function flash(text, bad) {
    var el = document.getElementById("flash");
    el.textContent = text;
    el.className = bad ? "bad" : "";
    el.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(function () { el.hidden = true; }, 6000);
  }

  // -- live regions: re-read this page from the server and swap its [data-live] parts -------
  var refreshing = false, again = false, lastRefresh = 0, pending = null;
  function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    fetch(location.href, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");  // inert: no script runs
        document.querySelectorAll("[data-live][id]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (fresh) { el.replaceWith(document.importNode(fresh, true)); }
        });
        sampleThroughput();
      })
      .catch(function () { /* the stream's state shows the trouble */ })
      .then(function () {
        refreshing = false;
        if (again) { again = false; scheduleRefresh(); }
      });
  }
  // At most one refresh every 300 ms, the last change always shown. The server shares one
  // overview among all tabs for up to 0.5 s, so a change also asks once more after that.
  var followUp = null;
  function scheduleRefresh() {
    clearTimeout(followUp);
    followUp = setTimeout(function () { followUp = null; refresh(); }, 900);
    if (pending) { return; }
    var wait = Math.max(0, 300 - (Date.now() - lastRefresh));
    pending = setTimeout(function () { pending = null; refresh(); }, wait);
  }

  // -- the events tail ---------------------------------------------------------------------
  var rows = document.getElementById("event-rows");
  function cell(tr, text) { var td = document.createElement("td"); td.textContent = text; tr.appendChild(td); return td; }
  function addEventRow(e) {
    if (!rows) { return; }
    var kind = rows.getAttribute("data-kind");
    if (kind && e.kind !== kind) { return; }
    if (rows.querySelector('tr[data-event-id="' + Number(e.id) + '"]')) { return; }
    var tr = document.createElement("tr");
    tr.setAttribute("data-event-id", String(e.id));
    cell(tr, String(e.id));
    cell(tr, e.at);
    var badge = document.createElement("span");
    badge.className = "badge ev-" + String(e.kind).replace(/[^a-z_]/g, "");
    badge.textContent = e.kind;
    cell(tr, "").appendChild(badge);
    cell(tr, e.group || "");
    var td = cell(tr, "");
    if (e.task_id) {
      var a = document.createElement("a");
      a.href = root + "/tasks/" + Number(e.task_id) + (queue ? "?queue=" + encodeURIComponent(queue) : "");
      a.textContent = String(e.task_id);
      td.appendChild(a);
    }
    cell(tr, JSON.stringify(e.detail)).className = "detail";
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > 500) { rows.removeChild(rows.lastChild); }
  }

  // -- the throughput chart (overview) -------------------------------------------------------
  var samples = [];
  function total(attr) {
    var n = 0;
    document.querySelectorAll("article.queue").forEach(function (a) { n += Number(a.getAttribute(attr)) || 0; });
    return n;
  }
  function sampleThroughput() {
    var svg = document.getElementById("throughput");
    if (!svg) { return; }
    samples.push({t: Date.now(), completed: total("data-completed"), dead: total("data-dead")});
    if (samples.length > 120) { samples.shift(); }
    drawChart(svg);
  }
  function rates(key) {
    var out = [];
    for (var i = 1; i < samples.length; i++) {
      var dt = (samples[i].t - samples[i - 1].t) / 1000;
      out.push(dt > 0 ? Math.max(0, samples[i][key] - samples[i - 1][key]) / dt : 0);
    }
    return out;
  }
  function drawChart(svg) {
    var ns = "http://www.w3.org/2000/svg", w = 600, h = 120;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var series = {completed: rates("completed"), dead: rates("dead")};
    var max = 1;
    Object.keys(series).forEach(function (k) { series[k].forEach(function (v) { max = Math.max(max, v); }); });
    Object.keys(series).forEach(function (k) {
      var values = series[k];
      if (values.length < 1) { return; }
      var step = w / Math.max(1, values.length - 1);
      var points = values.map(function (v, i) {
        return (i * step).toFixed(1) + "," + (h - 4 - (v / max) * (h - 20)).toFixed(1);
      }).join(" ");
      var line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", values.length === 1 ? "0," + points.split(",")[1] + " " + w + "," + points.split(",")[1] : points);
      line.setAttribute("class", "line " + k);
      svg.appendChild(line);
    });
    var label = document.createElementNS(ns, "text");
    label.setAttribute("x", "4");
    label.setAttribute("y", "12");
    label.textContent = "max " + max.toFixed(1) + "/s";
    svg.appendChild(label);
  }
  if (document.getElementById("throughput")) {
    sampleThroughput();
    setInterval(refresh, 5000);  // a rate needs samples even when nothing changes
  }

  // -- actions -----------------------------------------------------------------------------
  function post(path, payload) {
    return fetch(api(path), {method: "POST", credentials: "same-origin",
                             headers: {"Content-Type": "application/json"}, body: JSON.stringify(payload || {})})
      .then(function (r) { return r.json().then(function (d) { return {ok: r.ok, status: r.status, data: d}; }); });
  }
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("[data-post]") : null;
    if (!btn) { return; }
    btn.disabled = true;
    post(btn.getAttribute("data-post")).then(function (r) {
      flash(r.ok ? "done" : (r.data.error || "failed (" + r.status + ")"), !r.ok);
      scheduleRefresh();
    }, function () { flash("the request failed: is the server up?", true); })
      .then(function () { btn.disabled = false; });
  });

  var bulk = document.getElementById("bulk");
  if (bulk) {
    var confirmBox = bulk.querySelector(".confirm"), prompt = bulk.querySelector(".prompt");
    var typed = bulk.querySelector(".typed"), chosen = null, expected = null;
    var filter = {status: bulk.getAttribute("data-status"), group: bulk.getAttribute("data-group"),
                  name: bulk.getAttribute("data-name")};
    var query = Object.keys(filter).filter(function (k) { return filter[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(filter[k]); }).join("&");
    bulk.querySelectorAll("[data-bulk]").forEach(function (btn) {
      btn.addEventListener("click", function () {
        chosen = btn.getAttribute("data-bulk");
        fetch(api("/api/tasks/bulk/" + chosen + (query ? "?" + query : "")), {credentials: "same-origin"})
          .then(function (r) { return r.json().then(function (d) { return {ok: r.ok, data: d}; }); })
          .then(function (r) {
            if (!r.ok) { flash(r.data.error, true); return; }
            expected = r.data.count;
            prompt.textContent = chosen + " " + expected + " " + r.data.statuses.join("/") +
              " task(s)? Type " + expected + " to confirm:";
            typed.value = "";
            confirmBox.hidden = false;
            typed.focus();
          });
      });
    });
    bulk.querySelector(".cancel-bulk").addEventListener("click", function () { confirmBox.hidden = true; });
    bulk.addEventListener("submit", function (ev) { ev.preventDefault(); });
    bulk.querySelector(".go").addEventListener("click", function () {
      if (typed.value.trim() !== String(expected)) { flash("type " + expected + " to confirm", true); return; }
      var payload = {status: filter.status ? filter.status.split(",") : [], group: filter.group || null,
                     name: filter.name || null, confirm: expected};
      post("/api/tasks/bulk/" + chosen, payload).then(function (r) {
        confirmBox.hidden = true;
        flash(r.ok ? chosen + ": " + r.data.done + " of " + r.data.matched + " task(s)" : r.data.error, !r.ok);
        scheduleRefresh();
      });
    });
  }

  // -- the stream --------------------------------------------------------------------------
  var after = rows ? rows.getAttribute("data-last-event-id") : null;
  var stream = new FerroqProgress.LiveStream(root + "/api/stream", {
    ferroq: function (e) { addEventRow(e); scheduleRefresh(); },
    change: function () { scheduleRefresh(); },
    hello: function () {}
  }, {onState: function (name, info) {
    showState(name, info);
    if (name === "live") { scheduleRefresh(); }  // catch up on what changed while away
  }, after: after});
  retryBtn.addEventListener("click", function () { stream.retryNow(); });
  window.ferroqDashboard = {stream: stream, refresh: refresh};
})();
