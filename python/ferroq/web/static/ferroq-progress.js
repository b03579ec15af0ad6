/* ferroq-progress.js: live streams from a ferroq dashboard (served by ferroq.web at
 * {root}/static/ferroq-progress.js). No dependencies.
 *
 *   FerroqProgress.watchTask("/ferroq", 42, {
 *     onProgress: function (fraction, message) { ... },   // 0..1, text or null
 *     onDone: function (outcome) { ... },   // {status: "completed", result} | {status: "dead", error} | {status: "cancelled"}
 *     onError: function (err) { ... },      // {status: 404, error: "..."} (a "task_error" event): no such task; the stream ends
 *     onState: function (state, info) { ... }  // "live" | "reconnecting" ({delay, attempt}) | "offline" | "hidden"
 *   });                                      // returns {close(), retryNow()}
 *
 * Reconnection: after a dropped connection it waits 1 s, 2 s, 4 s ... capped at 30 s, each
 * with +-10% jitter, and starts over from 1 s after a successful connection; after
 * `maxAttempts` failures in a row it goes "offline" until retryNow(). The stream is closed
 * while the tab is hidden and reopened when it is shown (browsers allow few connections
 * per host). Task data is only ever handed to your callbacks, never written as HTML.
 */
(function (global) {
  "use strict";

  /** Seconds to wait before reconnection attempt number `attempt` (1, 2, ...). */
  function backoff(attempt, random) {
    var base = Math.min(30, Math.pow(2, Math.max(0, attempt - 1)));
    var r = random === undefined ? Math.random() : random;
    return base * (1 + 0.1 * (2 * r - 1));
  }

  /**
   * An EventSource that reconnects with our policy and resumes after the last event id.
   * handlers: {eventName: function (data, messageEvent)}; data is the parsed JSON.
   * options: {onState, after (first id to resume after), maxAttempts (default 10),
   *           isFinal (function (eventName) -> true to stop after it), closeWhenHidden (default true)}
   */
  function LiveStream(url, handlers, options) {
    this.url = url;
    this.handlers = handlers || {};
    this.options = options || {};
    this.lastId = this.options.after == null ? null : String(this.options.after);
    this.attempt = 0;
    this.source = null;
    this.timer = null;
    this.tick = null;
    this.closed = false;
    this.finished = false;
    var self = this;
    if (this.options.closeWhenHidden !== false && global.document) {
      this.onVisibility = function () {
        if (self.closed || self.finished) { return; }
        if (document.hidden) { self.disconnect(); self.state("hidden"); } else { self.attempt = 0; self.connect(); }
      };
      document.addEventListener("visibilitychange", this.onVisibility);
    }
    this.onOnline = function () { if (!self.closed && !self.finished && !self.source) { self.retryNow(); } };
    global.addEventListener("online", this.onOnline);
    if (!(global.document && document.hidden && this.options.closeWhenHidden !== false)) { this.connect(); }
  }

  LiveStream.prototype.state = function (name, info) {
    if (this.options.onState) { this.options.onState(name, info || {}); }
  };

  LiveStream.prototype.fullUrl = function () {
    if (this.lastId === null) { return this.url; }
    return this.url + (this.url.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(this.lastId);
  };

  LiveStream.prototype.connect = function () {
    this.disconnect();
    var self = this;
    var source = new EventSource(this.fullUrl());
    this.source = source;
    source.onopen = function () { self.attempt = 0; self.state("live"); };
    source.onerror = function () {
      if (self.source !== source) { return; }
      self.disconnect();
      self.reconnectLater();
    };
    source.addEventListener("end", function () {  // the server's stream lifetime: reconnect at once
      if (self.source === source) { self.connect(); }
    });
    Object.keys(this.handlers).forEach(function (name) {
      source.addEventListener(name, function (e) {
        if (self.source !== source) { return; }
        if (e.lastEventId) { self.lastId = e.lastEventId; }
        var data = null;
        try { data = JSON.parse(e.data); } catch (err) { data = e.data; }
        self.handlers[name](data, e);
        if (self.options.isFinal && self.options.isFinal(name)) { self.finish(); }
      });
    });
  };

  LiveStream.prototype.disconnect = function () {
    if (this.source) { this.source.close(); this.source = null; }
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    if (this.tick) { clearInterval(this.tick); this.tick = null; }
  };

  LiveStream.prototype.reconnectLater = function () {
    var maxAttempts = this.options.maxAttempts || 10;
    this.attempt += 1;
    if (this.attempt > maxAttempts || global.navigator && global.navigator.onLine === false) {
      this.state("offline", {attempt: this.attempt - 1});
      return;
    }
    var self = this;
    var delay = backoff(this.attempt);
    var due = Date.now() + delay * 1000;
    var show = function () {
      self.state("reconnecting", {delay: Math.max(0, Math.ceil((due - Date.now()) / 1000)), attempt: self.attempt});
    };
    show();
    this.tick = setInterval(show, 1000);
    this.timer = setTimeout(function () { self.timer = null; self.connect(); }, delay * 1000);
  };

  LiveStream.prototype.retryNow = function () {
    if (this.closed || this.finished) { return; }
    this.attempt = 0;
    this.connect();
  };

  LiveStream.prototype.finish = function () {
    this.finished = true;
    this.disconnect();
  };

  LiveStream.prototype.close = function () {
    this.closed = true;
    this.disconnect();
    if (this.onVisibility) { document.removeEventListener("visibilitychange", this.onVisibility); }
    global.removeEventListener("online", this.onOnline);
  };

  var FINAL = {result: "completed", failed: "dead", cancelled: "cancelled"};

  /** Follows one task: see the top of this file. */
  function watchTask(root, taskId, callbacks) {
    var cb = callbacks || {};
    var url = String(root || "").replace(/\/$/, "") + "/api/tasks/" + encodeURIComponent(taskId) + "/stream";
    var handlers = {
      progress: function (d) { if (cb.onProgress) { cb.onProgress(d.progress, d.message, d); } },
      status: function (d) { if (cb.onStatus) { cb.onStatus(d.status, d); } },
      task_error: function (d) { if (cb.onError) { cb.onError(d); } }
    };
    Object.keys(FINAL).forEach(function (name) {
      handlers[name] = function (d) { if (cb.onDone) { cb.onDone(d); } };
    });
    var stream = new LiveStream(url, handlers, {
      onState: cb.onState,
      isFinal: function (name) { return name in FINAL || name === "task_error"; }
    });
    return {close: function () { stream.close(); }, retryNow: function () { stream.retryNow(); }, stream: stream};
  }

  global.FerroqProgress = {backoff: backoff, LiveStream: LiveStream, watchTask: watchTask};
})(window);
