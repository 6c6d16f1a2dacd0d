// The guard's status screen: renders /api/state, stays live on /api/events (SSE),
// reconnects by itself, and sends the guard's actions with the session's CSRF token.
// Everything shown is set with textContent: nothing from the gate becomes markup.
"use strict";
(function () {
  const I18N = window.GATED_I18N;
  const $ = (id) => document.getElementById(id);
  const html = document.documentElement;
  let lang = localStorage.getItem("gated.lang") || html.dataset.defaultLang || "zh-CN";
  if (!I18N[lang]) lang = "zh-CN";
  let state = null;
  let me = null;
  let events = [];
  let es = null;
  let needSession = false; // the server asked for a login before it shows anything
  let lastMessage = 0;
  let audio = null;
  let soundWanted = localStorage.getItem("gated.sound") !== "off";

  function t(key, vars) {
    let s = I18N[lang][key];
    if (s === undefined) s = key;
    for (const k in vars || {}) s = s.replace("{" + k + "}", vars[k]);
    return s;
  }
  const reason = (r) => I18N[lang].r[r] || r;
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function localTime(ts) {
    const d = new Date(ts);
    return isNaN(d) ? "" : d.toLocaleTimeString(lang, { hour12: false });
  }
  function toast(msg) {
    const box = $("toast");
    box.textContent = msg;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }

  // -- rendering ----------------------------------------------------------------------

  function applyLang() {
    html.lang = lang;
    document.title = t("title");
    document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
    $("lang").textContent = lang === "en" ? "中文" : "EN";
    render();
  }

  function who(e) {
    const cred = e.credential || {};
    if (e.person && e.person.name) return e.person.name;
    if (e.person && e.person.id) return e.person.id;
    if (cred.kind === "remote") return t("remote");
    return t("unknown_person");
  }
  function temp(e) {
    return typeof e.temperature_c === "number" ? e.temperature_c.toFixed(1) + "\u00a0°C" : "";
  }

  function renderVerdict() {
    const box = $("verdict");
    const v = state && state.current;
    const age = v ? (Date.now() - new Date(v.ts).getTime()) / 1000 : Infinity;
    box.className = "verdict";
    const color = $("v-color");
    const reasons = $("v-reasons");
    reasons.replaceChildren();
    if (!v || (age > 120 && v.decision !== "needs_guard")) {
      box.classList.add("idle");
      $("v-word").textContent = t("waiting");
      $("v-name").textContent = "";
      $("v-temp").textContent = "";
      $("v-ago").textContent = "";
      color.hidden = true;
      box.dataset.decision = "";
      fitVerdict(box);
      return;
    }
    box.classList.add(v.decision);
    if (age > 30) box.classList.add("stale");
    box.dataset.decision = v.decision;
    box.dataset.seq = v.seq;
    $("v-word").textContent = t(v.decision);
    $("v-name").textContent = who(v);
    const col = v.credential && v.credential.color;
    color.hidden = !col;
    if (col) {
      color.className = "chip " + col;
      color.textContent = t("color_" + col);
    }
    const tempBox = $("v-temp");
    tempBox.textContent = temp(v);
    tempBox.classList.toggle("fever", typeof v.temperature_c === "number" && v.temperature_c >= state.fever_c);
    for (const r of v.reasons || []) reasons.append(el("li", null, reason(r)));
    let ago = t("ago", { s: Math.max(0, Math.round(age)) });
    if (v.guard) ago += " · " + t("by", { g: v.guard });
    $("v-ago").textContent = ago;
    fitVerdict(box);
  }

  // The card's words shrink (down to half size) until every line, "12 s ago" too, is in
  // the card: a two-line verdict under an alarm bar fills a 1024x600 booth screen.
  function fitVerdict(box) {
    let fit = 1;
    box.style.setProperty("--fit", "1");
    while (box.scrollHeight > box.clientHeight && fit > 0.5) {
      fit -= 0.05;
      box.style.setProperty("--fit", fit.toFixed(2));
    }
  }

  // What a guard typed into a clinical-reading field survives the re-renders of live updates.
  const typed = {};
  // Local deadline (ms) of each pending item, from the left_s the server last sent.
  const until = {};
  function takeDeadlines(list) {
    const now = Date.now();
    for (const p of list || []) until[p.id] = now + (p.left_s || 0) * 1000;
  }
  const secondsLeft = (p) => Math.max(0, Math.round(((until[p.id] || 0) - Date.now()) / 1000));

  function pendingCard(p) {
    const card = el("div", "pend" + (p.recheck ? " recheck" : ""));
    card.dataset.event = p.id;
    const top = el("div", "who", who(p) + " ");
    const col = p.credential && p.credential.color;
    if (col) top.append(el("span", "chip " + col, t("color_" + col)));
    if (temp(p)) top.append(" ", el("span", p.recheck ? "ptemp fever" : "ptemp", temp(p)));
    card.append(top);
    const why = (p.reasons || []).map(reason).join(" · ");
    card.append(el("div", "why", p.recheck ? t("recheck_why", { r: why }) : why));
    const row = el("div", "row");
    // A fever denial is re-checked with a clinical reading; a verdict with no valid
    // temperature of the gate's own needs one to be granted.
    const needsTemp = p.recheck
      || (p.reasons || []).some((r) => r === "temp_missing" || r === "temp_invalid");
    let input = null;
    if (needsTemp) {
      input = el("input");
      input.type = "number"; input.step = "0.1"; input.inputMode = "decimal";
      input.min = state.valid_temp_c[0]; input.max = state.valid_temp_c[1];
      input.placeholder = "°C";
      input.setAttribute("aria-label", t("confirm_temp"));
      input.className = "confirm";
      input.dataset.event = p.id;
      input.value = typed[p.id] || "";
      input.oninput = () => { typed[p.id] = input.value; };
      input.onkeydown = (ev) => { if (ev.key === "Enter" && me) decide(p.id, true, input); };
      input.disabled = !me;
      row.append(el("span", "confirm-label", t("confirm_temp")), input);
    }
    const ok = el("button", "btn go approve", t(p.recheck ? "recheck_ok" : "approve"));
    const no = el("button", "btn stop deny", t(p.recheck ? "recheck_deny" : "deny"));
    ok.type = no.type = "button";
    ok.disabled = no.disabled = !me;
    ok.onclick = () => decide(p.id, true, input);
    no.onclick = () => decide(p.id, false, input);
    row.append(ok, no);
    const left = el("span", "left", me ? t("left", { s: secondsLeft(p) }) : t("login_to_decide"));
    row.append(left);
    card.append(row);
    return card;
  }

  function renderPending() {
    const box = $("pending");
    const focused = document.activeElement;
    const refocus = focused && focused.classList.contains("confirm") ? focused.dataset.event : null;
    box.replaceChildren();
    const list = (state && state.pending) || [];
    if (!list.length) {
      box.append(el("div", "empty", t("no_pending")));
      return;
    }
    for (const p of list) box.append(pendingCard(p));
    if (refocus) {
      const again = box.querySelector(".confirm[data-event='" + CSS.escape(refocus) + "']");
      if (again) again.focus();
    }
  }

  function tickPending() {
    if (!me || !state) return;
    for (const p of state.pending || []) {
      const card = document.querySelector(".pend[data-event='" + CSS.escape(p.id) + "']");
      const left = card && card.querySelector(".left");
      if (left) left.textContent = t("left", { s: secondsLeft(p) });
    }
  }

  function renderToday() {
    const box = $("today");
    box.replaceChildren();
    const c = (state && state.today) || {};
    for (const [key, label] of [["in", "in"], ["out", "out"], ["denied", "c_denied"], ["fever", "c_fever"], ["overrides", "overrides"]]) {
      const cell = el("div");
      cell.dataset.counter = key;
      cell.append(el("b", null, String(c[key] || 0)), el("span", null, t(label)));
      box.append(cell);
    }
  }

  function renderTop() {
    $("clock").textContent = new Date().toLocaleTimeString(lang, { hour12: false });
    if (!state) return;
    $("gate").textContent = state.gate.site + " / " + state.gate.id;
    const mode = $("mode");
    mode.className = "mode " + (state.fire ? "fire" : state.mode);
    mode.textContent = state.fire ? t("fire_on") : t("mode") + ": " + t(state.mode);
    const duty = $("duty");
    const guards = state.guards_on_duty || [];
    duty.textContent = guards.length ? t("on_duty") + ": " + guards.join(", ") : t("nobody");
    duty.classList.toggle("nobody", !guards.length);
    $("loginbtn").textContent = me ? t("logout") + " " + me.guard : t("login");
    $("loginbtn").hidden = !state.login && !me;
    $("guardbox").hidden = !me;
    const modes = $("modes");
    modes.replaceChildren();
    for (const m of ["normal", "locked", "free", "guard_only"]) {
      const b = el("button", "btn small" + (state.mode === m ? " on" : ""), t(m));
      b.type = "button";
      b.dataset.mode = m;
      b.onclick = () => act("/api/mode", { mode: m });
      modes.append(b);
    }
    $("sound").textContent = audio && audio.state === "running" && soundWanted ? "♪ " + t("sound_on") : t("sound_off");
  }

  function num(n) {
    return Number(n || 0).toLocaleString(lang === "en" ? "en" : "zh-CN");
  }

  function renderHealth() {
    const box = $("devices");
    box.replaceChildren();
    if (!state) return;
    for (const [name, h] of Object.entries(state.devices || {})) {
      const d = el("span", "dev" + (h.ok ? "" : " bad"), t(name) + ": " + (h.ok ? t("dev_ok") : t("dev_bad")));
      if (h.detail) d.title = h.detail;
      d.dataset.device = name;
      box.append(d);
    }
    for (const [name, p] of Object.entries(state.peers || {})) {
      const o = p.online ? t("peer_online") : t("peer_offline");
      const words = t("peer", { g: name, n: num(p.through), m: num(p.missing), o: o });
      box.append(el("span", "dev" + (p.missing ? " warn" : "") + (p.online ? "" : " bad"), words));
      box.lastChild.dataset.peer = name;
    }
    const b = state.broker;
    let text = t("broker") + ": ";
    let cls = "dev";
    if (!b.configured) { text += t("broker_none"); cls += " warn"; }
    else if (b.connected === true) text += t("broker_up");
    else if (b.connected === false) { text += t("broker_down"); cls += " bad"; }
    else { text += t("broker_unknown"); cls += " warn"; }
    if (b.backlog) text += " · " + t("backlog", { n: b.backlog });
    if (state.registry_version != null) text += " · " + t("registry_version", { n: state.registry_version });
    box.append(el("span", cls, text));
    if (state.clock_synced === false) box.append(el("span", "dev warn", t("clock_unsynced")));
  }

  function describe(e) {
    if (e.kind === "decision") {
      const rs = (e.reasons || []).map(reason).join(", ");
      let s = t(e.decision) + " · " + who(e);
      if (temp(e)) s += " · " + temp(e);
      if (rs) s += " · " + rs;
      if (typeof e.confirm_temp_c === "number") s += " · " + t("clinical", { c: e.confirm_temp_c.toFixed(1) });
      if (e.guard) s += " · " + t("by", { g: e.guard });
      return s;
    }
    if (e.kind === "passage") return e.ref ? (e.passed ? t("passed") : t("not_passed")) : t("no_grant");
    if (e.kind === "alarm") {
      const where = e.alarm === "tamper" && e.device ? " · " + t(e.device) : "";
      return t(e.alarm) + where + (e.person && e.person.name ? " · " + e.person.name : "");
    }
    if (e.kind === "ack") return t(e.alarm || "alarm") + (e.guard ? " · " + t("by", { g: e.guard }) : "");
    if (e.kind === "mode") return t(e.mode) + (e.by ? " · " + t("by", { g: e.by }) : "");
    if (e.kind === "guard_on") return e.guard || "";
    if (e.kind === "guard_off") return (e.guard || "") + (e.detail === "restart" ? " · " + t("off_restart") : "");
    if (e.kind === "device") {
      const cleared = e.ref && String(e.detail || "").startsWith("tamper cleared") ? " · " + t("tamper_cleared") : "";
      return t(e.device) + ": " + (e.ok ? t("dev_ok") : t("dev_bad")) + cleared;
    }
    if (e.kind === "purge") return t("purged", { n: e.events || 0 });
    if (e.kind === "revoke") {
      const r = e.what === "pass" ? String(e.ref || "").slice(0, 8) : e.ref || "";
      return t("revoked_" + e.what, { r }) + (e.by ? " · " + t("by", { g: e.by }) : "");
    }
    return "";
  }

  function renderEvents() {
    const list = $("events");
    list.replaceChildren();
    for (const e of events) {
      const li = el("li", e.kind === "alarm" ? "alarm" : e.decision || e.kind);
      li.dataset.seq = e.seq;
      li.append(el("time", null, localTime(e.ts)), el("span", "kind", t("k_" + e.kind)), el("span", null, describe(e)));
      list.append(li);
    }
  }

  function renderAlarms() {
    const open = (state && state.alarms) || [];
    const bar = $("alarmbar");
    bar.hidden = !open.length;
    if (open.length) {
      const a = open[open.length - 1];
      bar.dataset.event = a.id;
      let what = t(a.alarm) + " · " + localTime(a.ts);
      if (a.person && a.person.name) what += " · " + a.person.name;
      if (open.length > 1) what += " (+" + (open.length - 1) + ")";
      $("alarm-what").textContent = what;
    }
  }

  function render() {
    renderTop();
    renderVerdict();
    renderPending();
    renderToday();
    renderHealth();
    renderEvents();
    renderAlarms();
  }

  // -- sound (Web Audio, no file) ----------------------------------------------------------

  function ensureAudio() {
    if (!audio) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      audio = new Ctx();
    }
    if (audio.state === "suspended") audio.resume().then(renderTop, () => {});
  }
  function beep() {
    if (!audio || audio.state !== "running" || !soundWanted) return;
    const now = audio.currentTime;
    for (let i = 0; i < 3; i++) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "square";
      osc.frequency.value = i % 2 ? 660 : 880;
      gain.gain.setValueAtTime(0.0001, now + i * 0.25);
      gain.gain.exponentialRampToValueAtTime(0.3, now + i * 0.25 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.25 + 0.2);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + i * 0.25);
      osc.stop(now + i * 0.25 + 0.22);
    }
    window.gatedBeeps = (window.gatedBeeps || 0) + 1;
  }
  setInterval(() => { if (state && state.alarms && state.alarms.length) beep(); }, 2000);

  // -- live link ---------------------------------------------------------------------------

  function setLink(ok) {
    $("linkbar").hidden = ok;
    document.body.classList.toggle("offline", !ok);
    document.body.dataset.link = ok ? "up" : "down";
  }

  function connect() {
    if (es) es.close();
    es = new EventSource("/api/events");
    es.addEventListener("hello", (m) => {
      const s = JSON.parse(m.data);
      const restarted = state && state.boot !== s.boot;
      state = s;
      takeDeadlines(s.pending);
      events = s.events || [];
      lastMessage = Date.now();
      setLink(true);
      if (restarted || (me && !s.guards_on_duty.includes(me.guard))) refreshMe();
      render();
    });
    es.addEventListener("state", (m) => {
      const s = JSON.parse(m.data);
      s.events = undefined;
      takeDeadlines(s.pending);
      state = Object.assign(state || {}, s);
      lastMessage = Date.now();
      render();
    });
    es.addEventListener("event", (m) => {
      const e = JSON.parse(m.data);
      lastMessage = Date.now();
      if (events.some((x) => x.seq === e.seq)) return;
      events.unshift(e);
      events.length = Math.min(events.length, 50);
      if (state && e.kind === "alarm") {
        state.alarms = (state.alarms || []).concat([e]);
        beep();
      }
      if (state && e.kind === "ack") state.alarms = (state.alarms || []).filter((x) => x.id !== e.ref);
      if (state && e.kind === "decision") state.current = e;
      render();
    });
    es.addEventListener("ack", (m) => {
      const a = JSON.parse(m.data);
      lastMessage = Date.now();
      if (state) state.alarms = (state.alarms || []).filter((x) => x.id !== a.event);
      renderAlarms();
    });
    es.onmessage = () => { lastMessage = Date.now(); };
    es.onopen = () => { lastMessage = Date.now(); };
    es.onerror = () => {
      setLink(false);
      if (es.readyState === EventSource.CLOSED) {
        if (!state) probeSession();
        setTimeout(connect, 2000);
      }
    };
  }

  // Beyond loopback the stream and /api/state need a session (a 401): with no state yet
  // the page learns it here, and a guard can log in from a remote screen.
  async function probeSession() {
    try {
      const r = await fetch("/api/state", { credentials: "same-origin" });
      const was = needSession;
      needSession = r.status === 401;
      if (needSession && !was && !$("logindlg").open) openLogin();
    } catch (err) { /* no answer at all: the link bar says so */ }
  }
  // The server sends a comment every 10 s; silence for 25 s means a dead link.
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > 25000) {
      setLink(false);
      lastMessage = Date.now();
      connect();
    }
    renderVerdict();
    tickPending();
    $("clock").textContent = new Date().toLocaleTimeString(lang, { hour12: false });
  }, 1000);

  async function refreshMe() {
    try {
      const r = await fetch("/api/state", { credentials: "same-origin" });
      if (!r.ok) return;
      const s = await r.json();
      me = s.me;
      state = s;
      takeDeadlines(s.pending);
      events = s.events || events;
      render();
    } catch (err) { /* the stream reconnects and calls again */ }
  }

  // -- guard actions --------------------------------------------------------------------

  async function post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (me) headers["X-CSRF-Token"] = me.csrf;
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "same-origin" });
    let data = {};
    try { data = await r.json(); } catch (err) { data = {}; }
    return { status: r.status, data, headers: r.headers };
  }

  async function act(path, body) {
    ensureAudio();
    try {
      const r = await post(path, body);
      if (r.status === 401) { me = null; render(); openLogin(); return false; }
      if (r.status !== 200) { toast(t("error", { e: r.data.error || r.status })); return false; }
      return true;
    } catch (err) {
      toast(t("error", { e: String(err) }));
      return false;
    }
  }

  async function decide(id, grant, input) {
    const body = { event: id, grant };
    if (input && input.value !== "") body.confirm_temp_c = Number(input.value);
    if (await act("/api/guard/decide", body)) delete typed[id];
  }

  function openLogin() {
    if (!needSession && (!state || !state.login)) { toast(t("login_off")); return; }
    $("loginerr").textContent = "";
    $("pin").value = "";
    $("logindlg").showModal();
    $("guard").focus();
  }

  $("loginbtn").onclick = async () => {
    ensureAudio();
    if (!me) { openLogin(); return; }
    if (await act("/api/guard/logout", {})) { me = null; render(); }
  };
  $("logincancel").onclick = () => $("logindlg").close();
  $("loginform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await post("/api/guard/login", { guard: $("guard").value.trim(), pin: $("pin").value });
    $("pin").value = "";
    if (r.status === 200) {
      me = { guard: r.data.guard, csrf: r.data.csrf };
      $("logindlg").close();
      if (needSession) { needSession = false; connect(); }
      render();
    } else if (r.status === 429) {
      $("loginerr").textContent = t("locked_out", { s: r.headers.get("Retry-After") || "?" });
    } else if (r.status === 401) {
      $("loginerr").textContent = t("wrong_pin");
    } else {
      $("loginerr").textContent = r.data.error || String(r.status);
    }
  });
  $("open").onclick = () => act("/api/gate/open", {});
  $("ack").onclick = async () => {
    ensureAudio();
    const id = $("alarmbar").dataset.event;
    if (!id) return;
    if (await act("/api/alarm/ack", { event: id }) && state) {
      state.alarms = state.alarms.filter((x) => x.id !== id);
      renderAlarms();
    }
  };
  $("lang").onclick = () => {
    lang = lang === "en" ? "zh-CN" : "en";
    localStorage.setItem("gated.lang", lang);
    applyLang();
  };
  $("sound").onclick = () => {
    const running = audio && audio.state === "running";
    if (running && soundWanted) soundWanted = false;
    else { soundWanted = true; ensureAudio(); }
    localStorage.setItem("gated.sound", soundWanted ? "on" : "off");
    renderTop();
  };
  // Browsers start audio only after a gesture: the first touch anywhere enables it.
  document.addEventListener("pointerdown", ensureAudio, { once: true });
  document.addEventListener("keydown", ensureAudio, { once: true });
  window.addEventListener("resize", renderVerdict);

  setLink(true);
  applyLang();
  refreshMe().then(connect);
  ensureAudio();
})();
