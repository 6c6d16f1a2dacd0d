// The fleet page: every gate, the fleet's open alarms (live over /api/events, with a
// sound), the day's red and black lists, a day's report and 14 days of compliance.
// Everything shown is set with textContent: nothing a gate sent becomes markup.
"use strict";
(function () {
  const I18N = window.GATED_HUB_I18N;
  const $ = (id) => document.getElementById(id);
  const html = document.documentElement;
  const SVG = "http://www.w3.org/2000/svg";
  let lang = localStorage.getItem("gated.hub.lang") || html.dataset.defaultLang || "zh-CN";
  if (!I18N[lang]) lang = "zh-CN";
  let session = null;
  let gates = [];
  let alarms = [];
  let report = null;
  let reportError = null;
  let history = null;
  let es = null;
  let lastMessage = 0;
  let audio = null;
  let soundWanted = localStorage.getItem("gated.hub.sound") !== "off";

  function t(key, vars) {
    let s = I18N[lang][key];
    if (s === undefined) s = key;
    for (const k in vars || {}) s = s.replace("{" + k + "}", vars[k]);
    return s;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function num(n) { return Number(n || 0).toLocaleString(lang === "en" ? "en" : "zh-CN"); }
  function pct(x) { return x === null || x === undefined ? "—" : (x * 100).toFixed(1) + "%"; }
  // Times in the district's zone ([report] timezone), whatever the browser's.
  function localTime(ts) {
    const d = new Date(ts);
    if (isNaN(d)) return "";
    const zone = session && session.timezone;
    try { return d.toLocaleString(lang, { hour12: false, timeZone: zone || undefined }); }
    catch (err) { return d.toLocaleString(lang, { hour12: false }); }
  }
  function clockTime() {
    const zone = session && session.timezone;
    try { return new Date().toLocaleTimeString(lang, { hour12: false, timeZone: zone || undefined }); }
    catch (err) { return new Date().toLocaleTimeString(lang, { hour12: false }); }
  }
  function age(s) {
    if (s === null || s === undefined) return "";
    if (s < 90) return Math.round(s) + (lang === "en" ? " s" : " 秒");
    if (s < 5400) return Math.round(s / 60) + (lang === "en" ? " min" : " 分钟");
    if (s < 172800) return Math.round(s / 3600) + (lang === "en" ? " h" : " 小时");
    return Math.round(s / 86400) + (lang === "en" ? " d" : " 天");
  }
  function toast(msg) {
    const box = $("toast");
    box.textContent = msg;
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 4000);
  }
  const key = (g) => g.site + "/" + g.gate;

  // -- rendering ----------------------------------------------------------------------

  function applyLang() {
    html.lang = lang;
    document.title = t("title");
    document.querySelectorAll("[data-i18n]").forEach((e) => { e.textContent = t(e.dataset.i18n); });
    $("lang").textContent = lang === "en" ? "中文" : "EN";
    render();
  }

  function renderTop() {
    $("clock").textContent = clockTime();
    const online = gates.filter((g) => g.online).length;
    $("summary").textContent = t("summary", { n: gates.length, o: online, a: alarms.length });
    const me = session && session.me;
    $("who").textContent = me ? t("operator") + ": " + me.operator : "";
    $("loginbtn").textContent = me ? t("logout") : t("login");
    $("loginbtn").hidden = !(session && session.login) && !me;
    $("sound").textContent = audio && audio.state === "running" && soundWanted ? "♪ " + t("sound_on") : t("sound_off");
  }

  function gateRow(g) {
    const tr = el("tr", "gate-row rank-" + g.rank);
    tr.dataset.gate = key(g);
    tr.dataset.attention = (g.attention || []).join(" ");
    const name = el("th", "g-name");
    name.scope = "row";
    name.append(el("div", "g-id", key(g)));
    const tags = el("div", "tags");
    for (const a of g.attention || []) tags.append(el("span", "tag " + a, t("a_" + a)));
    name.append(tags);
    tr.append(name);
    const state = el("td", g.online ? "ok" : "bad");
    state.append(el("div", null, g.online ? t("online") : (g.last_seen ? t("offline") : t("never"))));
    if (g.last_seen_age_s !== null) state.append(el("div", "dim", t("seen_ago", { t: age(g.last_seen_age_s) })));
    tr.append(state);
    tr.append(el("td", "mode " + (g.mode || ""), g.mode ? t(g.mode) : "—"));
    const dev = el("td", "devs");
    const names = Object.keys(g.devices || {});
    if (!names.length) dev.textContent = t("no_devices");
    for (const n of names) {
      const d = g.devices[n];
      const s = el("span", "dev" + (d.ok ? "" : " bad"), t(n) + (d.ok ? "" : ": " + t("dev_bad")));
      if (d.detail) s.title = d.detail;
      dev.append(s);
    }
    tr.append(dev);
    tr.append(el("td", "num" + (g.backlog ? " warn" : ""), g.backlog === null ? "—" : num(g.backlog)));
    const reg = el("td", g.behind ? "warn" : "");
    reg.textContent = g.registry_version === null ? t("no_registry") : "v" + g.registry_version;
    if (g.latest_version !== null) reg.append(el("div", "dim", g.behind ? t("behind", { v: g.latest_version }) : t("up_to_date")));
    tr.append(reg);
    const cont = el("td", "cont");
    cont.append(el("div", null, t("through", { n: num(g.through) })));
    if (g.missing) cont.append(el("div", "bad-text", t("missing", { n: num(g.missing) })));
    if (g.conflicts) cont.append(el("div", "bad-text conflicts", t("conflicts", { n: num(g.conflicts) })));
    if (g.purged) cont.append(el("div", "dim", t("purged", { n: num(g.purged) })));
    tr.append(cont);
    const last = el("td", "last");
    if (g.last_event_ts) {
      last.append(el("div", null, localTime(g.last_event_ts)));
      last.append(el("div", "dim", t("k_" + g.last_event_kind)));
    } else last.textContent = "—";
    tr.append(last);
    const clock = el("td", g.clock_synced === false ? "warn" : "");
    clock.append(el("div", null, g.clock_synced === false ? t("unsynced") : g.clock_synced ? t("synced") : "—"));
    if (g.skew_s !== null && g.skew_s !== undefined) clock.append(el("div", "dim", t("skew", { s: g.skew_s })));
    tr.append(clock);
    return tr;
  }

  function sortGates() {
    gates.sort((a, b) => a.rank - b.rank || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  }

  function renderGates() {
    const body = $("gate-rows");
    body.replaceChildren(...gates.map(gateRow));
  }

  function renderAlarms() {
    const box = $("alarms");
    box.hidden = !alarms.length;
    $("alarm-count").textContent = alarms.length ? "(" + alarms.length + ")" : "";
    const list = $("alarm-list");
    list.replaceChildren();
    for (const a of alarms) {
      const li = el("li", "alarm " + (a.alarm || ""));
      li.dataset.alarm = key(a) + "/" + a.seq;
      let what = t(a.alarm) + " · " + key(a) + " · " + localTime(a.ts);
      if (a.person && a.person.name) what += " · " + a.person.name;
      if (typeof a.temperature_c === "number") what += " · " + a.temperature_c.toFixed(1) + "\u00a0°C";
      if (a.alarm === "tamper" && a.device) what += " · " + t(a.device);
      li.append(el("span", "what", what));
      const b = el("button", "btn ack", t("ack"));
      b.type = "button";
      b.onclick = () => acknowledge(a);
      li.append(b);
      list.append(li);
    }
  }

  function table(head, rows) {
    const tb = el("table", "rtable");
    const tr = el("tr");
    for (const h of head) { const th = el("th", null, t(h)); th.scope = "col"; tr.append(th); }
    tb.append(el("thead"));
    tb.firstChild.append(tr);
    const body = el("tbody");
    for (const r of rows) {
      const row = el("tr");
      for (const c of r) row.append(el("td", null, c));
      body.append(row);
    }
    tb.append(body);
    return tb;
  }

  function renderLists() {
    $("lists-date").textContent = report ? report.date : "";
    const black = $("black");
    const red = $("red");
    black.replaceChildren();
    red.replaceChildren();
    if (!report) return;
    for (const b of report.black || []) {
      const why = (b.why || []).map((w) => { const k = "why_" + w; return I18N[lang][k] ? t(k) : String(w); });
      const li = el("li", null, b.site + "/" + b.gate + " · " + t("share", { p: pct(b.share) }) + (why.length ? " · " + why.join("、") : ""));
      li.dataset.gate = b.site + "/" + b.gate;
      black.append(li);
    }
    for (const r of report.red || []) {
      const li = el("li", null, r.site + "/" + r.gate + " · " + t("share", { p: pct(r.share) }));
      li.dataset.gate = r.site + "/" + r.gate;
      red.append(li);
    }
    if (!black.children.length) black.append(el("li", "dim", t("none")));
    if (!red.children.length) red.append(el("li", "dim", t("none")));
  }

  function renderReport() {
    const box = $("report-body");
    box.replaceChildren();
    if (reportError) { box.append(el("p", "dim", t("no_report", { e: reportError }))); return; }
    if (!report) return;
    const sites = Object.entries(report.sites || {});
    box.append(el("h3", null, t("r_sites")));
    box.append(table(
      ["h_site", "h_gates", "h_passages", "h_checked", "h_share", "h_fever", "h_tailgates", "h_unattended", "h_missing"],
      sites.map(([s, v]) => [s, num(v.gates), num(v.passages), num(v.checked), pct(v.share), num(v.fever_alarms), num(v.tailgates), num(v.unattended_periods), num(v.missing)])
    ));
    box.append(el("h3", null, t("r_gates")));
    box.append(table(
      ["h_gate", "h_online", "h_passages", "h_share", "h_denied", "h_fever", "h_tailgates", "h_unattended", "h_missing"],
      (report.gates || []).map((g) => {
        const c = g.compliance || {};
        const d = g.decisions || {};
        return [g.site + "/" + g.gate, g.online ? t("online") : t("offline"), num(c.passages), pct(c.share),
          num((d.denied || 0) + (d.guard_denied || 0)), num((g.fever_alarms || []).length), num((g.passages || {}).tailgates),
          num((g.unattended_periods || []).length), num(g.missing)];
      })
    ));
    const cards = report.unregistered_cards || [];
    if (cards.length) {
      box.append(el("h3", null, t("r_cards")));
      box.append(table(["h_site", "h_card", "h_count"], cards.map((c) => [c.site, c.card, num(c.count)])));
    }
    const select = $("report-site");
    const chosen = select.value;
    const known = new Set([...select.options].map((o) => o.value));
    for (const g of gates) {
      if (!known.has(g.site)) { select.append(el("option", null, g.site)); select.lastChild.value = g.site; known.add(g.site); }
    }
    select.value = chosen;
  }

  // One row per gate: a bar per day, its height the share checked; red under black_below.
  function renderChart() {
    const box = $("chart");
    box.replaceChildren();
    if (!history) return;
    const days = history.days || [];
    const below = session ? session.black_below : 0.95;
    const w = 14, gap = 3, h = 34;
    const tb = el("table", "ctable");
    const body = el("tbody");
    for (const [name, shares] of Object.entries(history.gates || {})) {
      const tr = el("tr");
      tr.dataset.gate = name;
      const th = el("th", null, name);
      th.scope = "row";
      tr.append(th);
      const td = el("td");
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("width", days.length * (w + gap));
      svg.setAttribute("height", h);
      svg.setAttribute("role", "img");
      const last = shares.length ? shares[shares.length - 1] : null;
      svg.setAttribute("aria-label", name + ": " + pct(last));
      shares.forEach((s, i) => {
        const r = document.createElementNS(SVG, "rect");
        const bh = s === null ? 2 : Math.max(2, Math.round(s * (h - 2)));
        r.setAttribute("x", i * (w + gap));
        r.setAttribute("y", h - bh);
        r.setAttribute("width", w);
        r.setAttribute("height", bh);
        r.setAttribute("class", s === null ? "bar none" : s < below ? "bar low" : "bar good");
        const tip = document.createElementNS(SVG, "title");
        tip.textContent = (days[i] || "") + ": " + (s === null ? t("no_data") : pct(s));
        r.append(tip);
        svg.append(r);
      });
      td.append(svg);
      tr.append(td);
      tr.append(el("td", "num" + (last !== null && last < below ? " bad-text" : ""), pct(last)));
      body.append(tr);
    }
    tb.append(body);
    if (!body.children.length) box.append(el("p", "dim", t("no_data")));
    else box.append(tb);
  }

  function render() {
    renderTop();
    renderAlarms();
    renderGates();
    renderLists();
    renderReport();
    renderChart();
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
    for (let i = 0; i < 2; i++) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = i ? 988 : 740;
      gain.gain.setValueAtTime(0.0001, now + i * 0.3);
      gain.gain.exponentialRampToValueAtTime(0.3, now + i * 0.3 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.3 + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(now + i * 0.3);
      osc.stop(now + i * 0.3 + 0.27);
    }
    window.gatedBeeps = (window.gatedBeeps || 0) + 1;
  }
  setInterval(() => { if (alarms.length) beep(); }, 3000);

  // -- data ----------------------------------------------------------------------------

  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin" });
    let data = null;
    try { data = await r.json(); } catch (err) { data = null; }
    return { status: r.status, data };
  }

  async function loadSession() {
    const r = await getJSON("/api/session");
    if (r.status === 200) session = r.data;
    if (!$("report-date").value && session) $("report-date").value = session.today;
    return session;
  }

  async function loadReport() {
    const day = $("report-date").value;
    const site = $("report-site").value;
    const q = new URLSearchParams();
    if (day) q.set("date", day);
    if (site) q.set("site", site);
    const r = await getJSON("/api/report/daily?" + q.toString());
    if (r.status === 200) { report = r.data; reportError = null; }
    else reportError = (r.data && r.data.error) || String(r.status);
    const c = await getJSON("/api/compliance?days=14" + (day ? "&date=" + day : ""));
    if (c.status === 200) history = c.data;
    render();
  }

  function setLink(ok) {
    $("linkbar").hidden = ok;
    document.body.classList.toggle("offline", !ok);
    document.body.dataset.link = ok ? "up" : "down";
  }

  function upsertGate(g) {
    const i = gates.findIndex((x) => key(x) === key(g));
    if (i >= 0) gates[i] = g; else gates.push(g);
    sortGates();
  }

  function connect() {
    if (es) es.close();
    es = new EventSource("/api/events");
    es.addEventListener("hello", (m) => {
      const s = JSON.parse(m.data);
      gates = s.gates || [];
      alarms = s.alarms || [];
      sortGates();
      lastMessage = Date.now();
      setLink(true);
      render();
    });
    es.addEventListener("gate", (m) => {
      lastMessage = Date.now();
      upsertGate(JSON.parse(m.data));
      renderTop();
      renderGates();
    });
    es.addEventListener("alarm", (m) => {
      const a = JSON.parse(m.data);
      lastMessage = Date.now();
      if (alarms.some((x) => key(x) === key(a) && x.seq === a.seq)) return;
      alarms.unshift(a);
      beep();
      renderTop();
      renderAlarms();
    });
    es.addEventListener("alarms", (m) => {
      const open = JSON.parse(m.data);
      lastMessage = Date.now();
      const had = new Set(alarms.map((x) => key(x) + "/" + x.seq));
      if (open.some((x) => !had.has(key(x) + "/" + x.seq))) beep();
      alarms = open;
      renderTop();
      renderAlarms();
    });
    es.addEventListener("ack", (m) => {
      const a = JSON.parse(m.data);
      lastMessage = Date.now();
      alarms = alarms.filter((x) => !(key(x) === key(a) && x.seq === a.seq));
      renderTop();
      renderAlarms();
    });
    es.onmessage = () => { lastMessage = Date.now(); };
    es.onopen = () => { lastMessage = Date.now(); };
    es.onerror = () => {
      setLink(false);
      if (es.readyState === EventSource.CLOSED) setTimeout(start, 2000);
    };
  }
  setInterval(() => {
    if (lastMessage && Date.now() - lastMessage > 25000) {
      setLink(false);
      lastMessage = Date.now();
      connect();
    }
    $("clock").textContent = clockTime();
  }, 1000);
  setInterval(() => { if (session && (!session.login_needed || session.me)) loadReport(); }, 300000);

  // Off this machine nothing but the shell is served until an operator logs in.
  async function start() {
    try { await loadSession(); } catch (err) { setLink(false); setTimeout(start, 2000); return; }
    if (!session) { setLink(false); setTimeout(start, 2000); return; }
    setLink(true);
    render();
    if (session.login_needed && !session.me) { openLogin(); return; }
    connect();
    loadReport();
  }

  // -- operator actions -------------------------------------------------------------------

  async function post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (session && session.me) headers["X-CSRF-Token"] = session.me.csrf;
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "same-origin" });
    let data = {};
    try { data = await r.json(); } catch (err) { data = {}; }
    return { status: r.status, data, headers: r.headers };
  }

  async function acknowledge(a) {
    ensureAudio();
    try {
      const r = await post("/api/alarms/ack", { site: a.site, gate: a.gate, seq: a.seq });
      if (r.status === 401) { if (session) session.me = null; openLogin(); return; }
      if (r.status !== 200) { toast(t("error", { e: r.data.error || r.status })); return; }
      alarms = alarms.filter((x) => !(key(x) === key(a) && x.seq === a.seq));
      renderTop();
      renderAlarms();
    } catch (err) {
      toast(t("error", { e: String(err) }));
    }
  }

  function openLogin() {
    if (session && !session.login) { toast(t("login_off")); return; }
    $("loginerr").textContent = session && session.login_needed && !session.me ? t("login_first") : "";
    $("pin").value = "";
    if (!$("logindlg").open) $("logindlg").showModal();
    $("operator").focus();
  }

  $("loginbtn").onclick = async () => {
    ensureAudio();
    if (!(session && session.me)) { openLogin(); return; }
    const r = await post("/api/logout", {});
    if (r.status === 200) { session.me = null; if (es) es.close(); start(); }
  };
  $("logincancel").onclick = () => $("logindlg").close();
  $("loginform").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    ensureAudio();
    const r = await post("/api/login", { operator: $("operator").value.trim(), pin: $("pin").value });
    $("pin").value = "";
    if (r.status === 200) {
      $("logindlg").close();
      await loadSession();
      connect();
      loadReport();
      render();
    } else if (r.status === 429) {
      $("loginerr").textContent = t("locked_out", { s: r.headers.get("Retry-After") || "?" });
    } else if (r.status === 401) {
      $("loginerr").textContent = t("wrong_pin");
    } else {
      $("loginerr").textContent = r.data.error || String(r.status);
    }
  });
  $("report-form").addEventListener("submit", (ev) => { ev.preventDefault(); loadReport(); });
  $("lang").onclick = () => {
    lang = lang === "en" ? "zh-CN" : "en";
    localStorage.setItem("gated.hub.lang", lang);
    applyLang();
  };
  $("sound").onclick = () => {
    const running = audio && audio.state === "running";
    if (running && soundWanted) soundWanted = false;
    else { soundWanted = true; ensureAudio(); }
    localStorage.setItem("gated.hub.sound", soundWanted ? "on" : "off");
    renderTop();
  };
  document.addEventListener("pointerdown", ensureAudio, { once: true });
  document.addEventListener("keydown", ensureAudio, { once: true });

  applyLang();
  ensureAudio();
  start();
})();
