// Slipway web UI: relative times, copy buttons, and the live build page (SSE).
// Plain JavaScript, no build step. Log text is only ever put into the page through
// textContent, never parsed as HTML. Selectors are documented in ui/mod.rs.
"use strict";
(function () {
  var ICONS = {
    pending: "\u25CB", running: "\u25D4", success: "\u2713", failure: "\u2717",
    killed: "\u25A0", error: "!", skipped: "\u21B7", online: "\u25CF", offline: "\u25CB"
  };
  var FINISHED = { success: 1, failure: 1, killed: 1, error: 1, skipped: 1 };
  var FAILED = { failure: 1, killed: 1, error: 1 };

  function each(root, selector, fn) {
    Array.prototype.forEach.call(root.querySelectorAll(selector), fn);
  }
  function cssString(s) {
    return '"' + String(s).replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
  }

  // ---- durations and times -------------------------------------------------------------
  function formatDuration(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }
  function formatAgo(ms) {
    var s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) s = 0;
    if (s < 45) return "just now";
    var m = Math.round(s / 60);
    if (m < 60) return m + " min ago";
    var h = Math.round(m / 60);
    if (h < 24) return h + (h === 1 ? " hour ago" : " hours ago");
    var d = Math.round(h / 24);
    if (d < 30) return d + (d === 1 ? " day ago" : " days ago");
    return new Date(ms).toLocaleDateString();
  }
  function tickDurations() {
    var now = Date.now();
    each(document, ".duration[data-started]:not([data-finished])", function (el) {
      el.textContent = formatDuration(now - Number(el.dataset.started));
    });
  }
  function tickAgo() {
    each(document, "time[data-ago]", function (el) {
      var ms = Date.parse(el.getAttribute("datetime"));
      if (isNaN(ms)) return;
      el.textContent = formatAgo(ms);
      el.title = new Date(ms).toLocaleString();
    });
  }
  function setDuration(el, started, finished) {
    if (!el) return;
    if (started == null) { el.textContent = "\u2013"; delete el.dataset.started; return; }
    el.dataset.started = String(started);
    if (finished != null) {
      el.dataset.finished = String(finished);
      el.textContent = formatDuration(finished - started);
    } else {
      delete el.dataset.finished;
      el.textContent = formatDuration(Date.now() - started);
    }
  }

  // ---- badges ----------------------------------------------------------------------------
  function makeBadge(status) {
    var known = Object.prototype.hasOwnProperty.call(ICONS, status);
    var b = document.createElement("span");
    b.className = "badge status-" + (known ? status : "unknown");
    b.dataset.status = status;
    var icon = document.createElement("span");
    icon.className = "icon";
    icon.setAttribute("aria-hidden", "true");
    icon.textContent = known ? ICONS[status] : "?";
    var label = document.createElement("span");
    label.className = "label";
    label.textContent = status;
    b.appendChild(icon);
    b.appendChild(label);
    return b;
  }
  function setBadge(container, status) {
    if (!container || !status) return;
    var old = container.querySelector(".badge");
    if (old && old.dataset.status === status) return;
    var b = makeBadge(status);
    if (old) old.replaceWith(b); else container.prepend(b);
  }

  // ---- ANSI SGR -> spans -----------------------------------------------------------------
  var COLORS = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];
  // CSI sequences, OSC sequences (BEL or ST terminated) and other two-byte escapes.
  var ESCAPES = /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;

  function applySgr(state, params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (c) { return c === "" ? 0 : Number(c); });
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) { state.fg = null; state.bg = null; state.bold = false; }
      else if (c === 1) state.bold = true;
      else if (c === 22) state.bold = false;
      else if (c >= 30 && c <= 37) state.fg = "ansi-fg-" + COLORS[c - 30];
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = "ansi-bg-" + COLORS[c - 40];
      else if (c === 49) state.bg = null;
      else if (c >= 90 && c <= 97) state.fg = "ansi-fg-bright-" + COLORS[c - 90];
      else if (c >= 100 && c <= 107) state.bg = "ansi-bg-" + COLORS[c - 100];
      else if (c === 38 || c === 48) {
        // 256-colour / true-colour: skip their arguments, keep the current colour.
        if (codes[i + 1] === 5) i += 2; else if (codes[i + 1] === 2) i += 4;
      }
    }
  }
  function pushText(parent, text, state) {
    if (!text) return;
    var classes = [];
    if (state.fg) classes.push(state.fg);
    if (state.bg) classes.push(state.bg);
    if (state.bold) classes.push("ansi-bold");
    var span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    span.textContent = text;
    parent.appendChild(span);
  }
  // Renders one log line into `parent`; `state` carries colours across lines.
  function renderAnsi(parent, line, state) {
    // A carriage return redraws the line: keep what was drawn last.
    var cr = line.replace(/\r+$/, "").lastIndexOf("\r");
    if (cr >= 0) line = line.slice(cr + 1);
    line = line.replace(/\r/g, "");
    var last = 0, m;
    ESCAPES.lastIndex = 0;
    while ((m = ESCAPES.exec(line)) !== null) {
      pushText(parent, line.slice(last, m.index), state);
      if (m[2] === "m" && m[0].charAt(1) === "[") applySgr(state, m[1] || "");
      last = ESCAPES.lastIndex;
      if (m[0].length === 0) ESCAPES.lastIndex++;
    }
    pushText(parent, line.slice(last), state);
  }

  // ---- log panels --------------------------------------------------------------------------
  function LogView(panel) {
    this.panel = panel;
    this.el = panel.querySelector(".log");
    this.seen = Object.create(null);
    this.count = 0;
    this.state = { fg: null, bg: null, bold: false };
    this.source = null;
    this.ended = false;
  }
  LogView.prototype.start = function () {
    if (this.source || this.ended || !this.el || !window.EventSource) return;
    var status = this.panel.dataset.status;
    if (status === "skipped") return;
    var self = this;
    var src = new EventSource(this.el.dataset.stream);
    this.source = src;
    src.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg.kind === "line") self.append(msg.seq, msg.line);
      else if (msg.kind === "lines") {
        for (var i = 0; i < msg.lines.length; i++) self.append(msg.seq + i, msg.lines[i]);
      } else if (msg.kind === "end") self.end();
    };
    src.onerror = function () {
      // CONNECTING: the browser retries by itself (lines already shown are skipped by seq).
      if (src.readyState === EventSource.CLOSED) {
        self.source = null;
        if (!self.count) self.note("The log is not available.");
      }
    };
  };
  LogView.prototype.atBottom = function () {
    var el = this.el;
    return el.scrollHeight - el.scrollTop - el.clientHeight < 8;
  };
  LogView.prototype.note = function (text) {
    var n = this.el.querySelector(".log-note");
    if (!n) { n = document.createElement("p"); n.className = "log-note"; this.el.appendChild(n); }
    n.textContent = text;
  };
  LogView.prototype.append = function (seq, text) {
    if (seq == null || this.seen[seq]) return;
    this.seen[seq] = true;
    var stick = this.atBottom();
    var note = this.el.querySelector(".log-note");
    if (note) note.remove();
    this.count++;
    var line = document.createElement("div");
    line.className = "line";
    line.dataset.seq = String(seq);
    var ln = document.createElement("span");
    ln.className = "ln";
    ln.textContent = String(this.count);
    var body = document.createElement("span");
    body.className = "text";
    renderAnsi(body, String(text == null ? "" : text), this.state);
    line.appendChild(ln);
    line.appendChild(body);
    // Lines arrive in order; one that is older than the last shown goes in its place.
    var next = null;
    var lastLine = this.el.lastElementChild;
    if (lastLine && lastLine.classList.contains("line") && Number(lastLine.dataset.seq) > seq) {
      each(this.el, ".line", function (l) {
        if (!next && Number(l.dataset.seq) > seq) next = l;
      });
    }
    this.el.insertBefore(line, next);
    if (next) this.renumber();
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  };
  LogView.prototype.renumber = function () {
    var i = 0;
    each(this.el, ".line > .ln", function (ln) { ln.textContent = String(++i); });
  };
  LogView.prototype.end = function () {
    this.ended = true;
    if (this.source) { this.source.close(); this.source = null; }
    var stick = this.atBottom();
    if (!this.count) this.note("No output.");
    if (!this.el.querySelector(".log-end")) {
      var e = document.createElement("div");
      e.className = "log-end";
      e.textContent = "end of log";
      this.el.appendChild(e);
    }
    if (stick) this.el.scrollTop = this.el.scrollHeight;
    this.panel.dataset.ended = "true";
  };

  // ---- build page ----------------------------------------------------------------------------
  function BuildPage(root) {
    this.root = root;
    this.views = Object.create(null);
    this.chosen = false; // the reader picked a step: stop following the running one
    this.current = null;
    this.events = null;
    var logs = root.querySelector(".logs");
    if (logs) logs.classList.add("js");
  }
  BuildPage.prototype.key = function (stage, step) { return stage + "\u0000" + step; };
  BuildPage.prototype.panelFor = function (stage, step) {
    return this.root.querySelector('.log-panel[data-stage="' + stage + '"][data-step=' + cssString(step) + "]");
  };
  BuildPage.prototype.open = function (panel, byReader) {
    if (!panel) return;
    if (byReader) this.chosen = true;
    if (this.current === panel) return;
    each(this.root, ".log-panel.open", function (p) { p.classList.remove("open"); });
    each(this.root, ".step.selected", function (s) { s.classList.remove("selected"); });
    panel.classList.add("open");
    this.current = panel;
    var stage = panel.dataset.stage, step = panel.dataset.step;
    var stepEl = this.root.querySelector('.step[data-stage="' + stage + '"][data-step=' + cssString(step) + "]");
    if (stepEl) stepEl.classList.add("selected");
    var k = this.key(stage, step);
    if (!this.views[k]) this.views[k] = new LogView(panel);
    var view = this.views[k];
    view.start();
    view.el.scrollTop = view.el.scrollHeight;
  };
  // The hash's panel, else the running step, else the first failed one, else the last.
  BuildPage.prototype.pick = function () {
    var panels = Array.prototype.slice.call(this.root.querySelectorAll(".log-panel"));
    if (!panels.length) return null;
    var running = panels.filter(function (p) { return p.dataset.status === "running"; });
    if (running.length) return running[running.length - 1];
    var failed = panels.filter(function (p) { return FAILED[p.dataset.status]; });
    if (failed.length) return failed[0];
    var ran = panels.filter(function (p) { return p.dataset.status !== "pending" && p.dataset.status !== "skipped"; });
    return ran.length ? ran[ran.length - 1] : panels[panels.length - 1];
  };
  BuildPage.prototype.init = function () {
    var self = this;
    each(this.root, "a.step-link", function (a) {
      a.addEventListener("click", function (ev) {
        var id = a.getAttribute("href").slice(1);
        var panel = document.getElementById(id);
        if (!panel) return;
        ev.preventDefault();
        if (history.replaceState) history.replaceState(null, "", "#" + id);
        self.open(panel, true);
        if (window.matchMedia && window.matchMedia("(max-width: 759px)").matches) {
          panel.scrollIntoView({ block: "start" });
        }
      });
    });
    each(this.root, ".wrap-toggle", function (box) {
      box.addEventListener("change", function () {
        var log = box.closest(".log-panel").querySelector(".log");
        log.classList.toggle("wrap", box.checked);
      });
    });
    var hash = location.hash && location.hash.slice(1);
    var fromHash = hash ? document.getElementById(hash) : null;
    if (fromHash && fromHash.classList.contains("log-panel")) this.open(fromHash, true);
    else this.open(this.pick(), false);
    if (this.root.dataset.events && window.EventSource) this.listen(this.root.dataset.events);
  };
  BuildPage.prototype.listen = function (url) {
    var self = this;
    var src = new EventSource(url);
    this.events = src;
    src.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      self.apply(msg);
    };
  };
  BuildPage.prototype.apply = function (msg) {
    var root = this.root;
    if (msg.kind === "step") {
      var sel = '[data-stage="' + msg.stage + '"][data-step=' + cssString(msg.step) + "]";
      each(root, ".step" + sel, function (el) {
        if (msg.status) { el.dataset.status = msg.status; setBadge(el.querySelector(".step-link"), msg.status); }
        if ("started" in msg || "finished" in msg) setDuration(el.querySelector(".duration"), msg.started, msg.finished);
        if ("exit_code" in msg) {
          var ec = el.querySelector(".exit-code");
          if (ec) {
            ec.hidden = msg.exit_code == null;
            ec.textContent = msg.exit_code == null ? "" : "exit " + msg.exit_code;
          }
        }
      });
      var panel = root.querySelector(".log-panel" + sel);
      if (panel && msg.status) {
        panel.dataset.status = msg.status;
        // Follow the running step until the reader picks one.
        if (msg.status === "running" && !this.chosen) this.open(panel, false);
      }
    } else if (msg.kind === "stage") {
      each(root, '.stage[data-stage="' + msg.stage + '"]', function (el) {
        if (msg.status) { el.dataset.status = msg.status; setBadge(el.querySelector(".stage-status"), msg.status); }
        if ("started" in msg || "finished" in msg) setDuration(el.querySelector(".stage-time .duration"), msg.started, msg.finished);
      });
    } else if (msg.kind === "build") {
      if (msg.status) {
        root.dataset.status = msg.status;
        setBadge(document.getElementById("build-status"), msg.status);
      }
      var d = root.querySelector("#build-duration .duration");
      if (d && msg.finished != null && d.dataset.started) setDuration(d, Number(d.dataset.started), msg.finished);
      else if (d && msg.started != null) setDuration(d, msg.started, msg.finished);
      if (msg.status && FINISHED[msg.status]) this.finish();
    }
  };
  BuildPage.prototype.finish = function () {
    var cancel = document.getElementById("cancel-form");
    if (cancel) cancel.remove();
    var promote = document.getElementById("promote-form");
    if (promote) promote.hidden = false;
    if (this.events) { this.events.close(); this.events = null; }
    // Running clocks stop where they are.
    each(this.root, ".duration[data-started]:not([data-finished])", function (el) {
      el.dataset.finished = String(Date.now());
    });
  };

  // ---- the stack page: its newest rollout, live ------------------------------------------------
  // The stream (/api/stacks/{env}/{stack}/events) sends the revision, every step so far and
  // each new one (`seq` from 1), and its status changes; steps the page already shows are
  // skipped by `seq`. The state follows the same rules as the server's first rendering.
  var STATE_TEXT = { held: "paused by a user", baking: "baking", succeeded: "succeeded", rolled_back: "rolled back",
    failed: "failed", paused: "paused after a failure", rolling: "rolling" };
  var OVER = { succeeded: true, failed: true, rolled_back: true, paused: true };
  function StackPage(root) {
    this.root = root;
    this.section = document.getElementById("rollout");
    this.list = document.getElementById("rollout-steps");
    this.seq = 0;
    var self = this;
    if (this.list) each(this.list, "li[data-seq]", function (li) { self.seq = Math.max(self.seq, Number(li.dataset.seq)); });
  }
  StackPage.prototype.init = function () {
    var self = this;
    // The buttons post without leaving the page; the stream shows what they did.
    each(this.root, "form.steer", function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.fetch || !window.URLSearchParams) return;
        ev.preventDefault();
        self.steer(form);
      });
    });
    if (this.root.dataset.events && window.EventSource) this.listen(this.root.dataset.events);
  };
  StackPage.prototype.steer = function (form) {
    var error = document.getElementById("rollout-error");
    var buttons = form.parentNode.querySelectorAll("button");
    var setBusy = function (busy) { Array.prototype.forEach.call(buttons, function (b) { b.disabled = busy; }); };
    setBusy(true);
    if (error) error.hidden = true;
    // The answer is a redirect back to this page: not followed, the stream shows the rest.
    fetch(form.action, { method: "POST", credentials: "same-origin", redirect: "manual",
                         body: new URLSearchParams(new FormData(form)) })
      .then(function (res) {
        setBusy(false);
        if (!res.ok && res.type !== "opaqueredirect" && error) {
          error.textContent = form.dataset.command + " was refused (" + res.status + "); reload the page";
          error.hidden = false;
        }
      }, function () {
        setBusy(false);
        if (error) { error.textContent = form.dataset.command + " did not reach the server"; error.hidden = false; }
      });
  };
  StackPage.prototype.listen = function (url) {
    var self = this;
    var src = new EventSource(url);
    this.events = src;
    src.onmessage = function (ev) {
      var msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      self.apply(msg);
    };
  };
  StackPage.prototype.setState = function (state) {
    var el = document.getElementById("rollout-state");
    if (el) { el.dataset.state = state; el.textContent = STATE_TEXT[state] || state; }
    var held = state === "held";
    each(this.root, 'form.steer[data-command="pause"]', function (f) { f.hidden = held; });
    each(this.root, 'form.steer[data-command="resume"]', function (f) { f.hidden = !held; });
  };
  StackPage.prototype.apply = function (msg) {
    if (!this.section) return;
    if (msg.kind === "revision") {
      // A newer revision than the one shown started meanwhile: show that one.
      if (String(msg.number) !== this.section.dataset.number) { location.reload(); return; }
      this.status(msg.status);
    } else if (msg.kind === "step") {
      if (msg.seq <= this.seq) return;
      this.seq = msg.seq;
      this.step(msg);
    } else if (msg.kind === "status") {
      this.status(msg.status);
    }
  };
  StackPage.prototype.step = function (msg) {
    var d = msg.detail || {};
    var li = document.createElement("li");
    li.dataset.seq = String(msg.seq);
    li.dataset.event = d.event || "";
    var when = document.createElement("span");
    when.className = "muted";
    when.textContent = "just now";
    li.appendChild(when);
    li.appendChild(document.createTextNode(" "));
    var service = document.createElement("code");
    service.textContent = d.service || "";
    li.appendChild(service);
    var text = " " + (d.event || "");
    if (d.new_weight != null) text += " " + d.new_weight + "%";
    li.appendChild(document.createTextNode(text));
    if (d.container) {
      li.appendChild(document.createTextNode(" "));
      var c = document.createElement("code");
      c.textContent = d.container;
      li.appendChild(c);
    }
    if (d.reason) li.appendChild(document.createTextNode(": " + d.reason));
    if (this.list) this.list.appendChild(li);
    if (d.event === "held") this.setState("held");
    else if (d.event === "resumed" || d.event === "bake_passed" || d.event === "promoted") this.setState("rolling");
    else if (d.event === "bake_started") this.setState("baking");
    else if (d.event === "traffic_shifted") {
      // Without a weight the new revision serves alone: a canary shown ends at 100%.
      var w = document.getElementById("canary-weight");
      if (w && d.new_weight != null) { w.hidden = false; w.querySelector(".weight").textContent = String(d.new_weight); }
      else if (w && !w.hidden) w.querySelector(".weight").textContent = "100";
    }
  };
  StackPage.prototype.status = function (status) {
    var number = this.section.dataset.number;
    each(this.root, 'tr.revision[data-number="' + number + '"]', function (tr) {
      tr.dataset.status = status;
      var chip = tr.querySelector(".revision-status");
      if (chip) chip.textContent = status;
    });
    if (OVER[status]) {
      this.setState(status);
      var controls = document.getElementById("rollout-controls");
      if (controls) controls.hidden = true;
      if (this.events) { this.events.close(); this.events = null; }
    }
  };

  // ---- service logs --------------------------------------------------------------------------
  // A live tail of collected records (SSE); pausing holds new records until resumed; the
  // search's matches are highlighted (the server already filtered by it).
  function ServiceLogs(root) {
    this.root = root;
    this.el = root.querySelector("#service-log");
    this.paused = false;
    this.held = [];
    this.count = 0;
    this.highlight = null;
    try { if (root.dataset.grep) this.highlight = new RegExp(root.dataset.grep, "g"); } catch (e) { this.highlight = null; }
  }
  ServiceLogs.prototype.init = function () {
    var self = this;
    var pause = document.getElementById("logs-pause");
    if (pause) pause.addEventListener("click", function () { self.setPaused(!self.paused); });
    each(this.root, ".wrap-toggle", function (box) {
      box.addEventListener("change", function () { self.el.classList.toggle("wrap", box.checked); });
    });
    if (!window.EventSource) return;
    var src = new EventSource(this.root.dataset.stream);
    this.source = src;
    src.onmessage = function (ev) {
      var r;
      try { r = JSON.parse(ev.data); } catch (e) { return; }
      if (self.paused) { self.held.push(r); self.showHeld(); } else self.append(r);
    };
    src.onerror = function () {
      if (src.readyState === EventSource.CLOSED) self.setState("closed", "disconnected");
    };
  };
  ServiceLogs.prototype.setState = function (state, text) {
    var chip = document.getElementById("logs-state");
    if (chip) { chip.dataset.state = state; chip.textContent = text; }
  };
  ServiceLogs.prototype.showHeld = function () {
    var p = document.getElementById("logs-held");
    if (!p) return;
    p.hidden = !this.paused;
    p.querySelector(".count").textContent = String(this.held.length);
  };
  ServiceLogs.prototype.setPaused = function (paused) {
    this.paused = paused;
    var b = document.getElementById("logs-pause");
    if (b) b.textContent = paused ? "Resume" : "Pause";
    this.setState(paused ? "paused" : "live", paused ? "paused" : "live");
    if (!paused) {
      var held = this.held;
      this.held = [];
      for (var i = 0; i < held.length; i++) this.append(held[i]);
    }
    this.showHeld();
  };
  ServiceLogs.prototype.append = function (r) {
    var stick = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 8;
    var line = document.createElement("div");
    line.className = "line record" + (r.stream === "stderr" ? " stderr" : "");
    line.dataset.service = r.service || "";
    line.dataset.replica = r.replica == null ? "" : String(r.replica);
    line.dataset.revision = r.revision || "";
    var meta = document.createElement("span");
    meta.className = "ln meta";
    meta.textContent = (r.service || "") + (r.replica == null ? "" : "." + r.replica);
    meta.title = (r.time || "") + " " + (r.container || "") + (r.revision ? " revision " + r.revision : "") + " " + (r.stream || "");
    var body = document.createElement("span");
    body.className = "text";
    renderAnsi(body, String(r.line == null ? "" : r.line), { fg: null, bg: null, bold: false });
    if (this.highlight) this.mark(body);
    line.appendChild(meta);
    line.appendChild(body);
    this.el.appendChild(line);
    this.count++;
    // A tail keeps the newest few thousand records on the page.
    while (this.count > 5000 && this.el.firstElementChild) { this.el.firstElementChild.remove(); this.count--; }
    if (stick) this.el.scrollTop = this.el.scrollHeight;
  };
  // Wraps the search's matches in <mark>, span by span (colours stay as they were).
  ServiceLogs.prototype.mark = function (body) {
    var re = this.highlight;
    each(body, "span", function (span) {
      var text = span.textContent, last = 0, m, out = [];
      re.lastIndex = 0;
      while ((m = re.exec(text)) !== null) {
        if (m[0].length === 0) { re.lastIndex++; continue; }
        out.push(document.createTextNode(text.slice(last, m.index)));
        var mark = document.createElement("mark");
        mark.textContent = m[0];
        out.push(mark);
        last = m.index + m[0].length;
      }
      if (!out.length) return;
      out.push(document.createTextNode(text.slice(last)));
      span.textContent = "";
      for (var i = 0; i < out.length; i++) span.appendChild(out[i]);
    });
  };

  // ---- every page ----------------------------------------------------------------------------
  function copyButtons() {
    each(document, "button[data-copy]", function (b) {
      b.addEventListener("click", function () {
        var text = b.dataset.copy;
        var done = function () { var t = b.textContent; b.textContent = "Copied"; setTimeout(function () { b.textContent = t; }, 1200); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(done, function () {});
        } else {
          var input = b.parentNode.querySelector("input");
          if (input) { input.select(); try { document.execCommand("copy"); done(); } catch (e) { /* selected for the reader */ } }
        }
      });
    });
  }
  function runForm() {
    var form = document.getElementById("run-form");
    if (!form) return;
    each(form, "[data-kind]", function (field) {
      var pick = function () {
        var radio = form.querySelector('input[name="kind"][value="' + field.dataset.kind + '"]');
        if (radio && !radio.disabled) radio.checked = true;
      };
      field.addEventListener("focus", pick);
      field.addEventListener("change", pick);
    });
  }

  function start() {
    tickAgo();
    tickDurations();
    setInterval(tickDurations, 1000);
    setInterval(tickAgo, 30000);
    copyButtons();
    runForm();
    var root = document.getElementById("build");
    if (root) {
      var page = new BuildPage(root);
      window.slipwayBuild = page;
      page.init();
    }
    var logs = document.getElementById("service-logs");
    if (logs) {
      var logsPage = new ServiceLogs(logs);
      window.slipwayLogs = logsPage;
      logsPage.init();
    }
    var stack = document.getElementById("stack");
    if (stack) {
      var stackPage = new StackPage(stack);
      window.slipwayStack = stackPage;
      stackPage.init();
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
