// The box's page: log in, then poll /api/v1/status every 2 s and draw what it says.
// Plain DOM, no build step. Every value from the box goes in through textContent, never as HTML:
// device names come from the LAN and must not become markup. Each <section> of the page has its
// own draw function in SECTIONS: a new part of the box adds its section there.
"use strict";

const POLL_MS = 2000;
const NOTICE_MS = { ok: 8000, fail: 20000 };  // how long a button's result stays on screen
const HEADERS = { "Content-Type": "application/json", "X-Edgehub-Request": "1" };
let timer = null;
let lastStatus = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function duration(seconds) {
  if (seconds === undefined || seconds === null) return "—";
  const s = Math.round(seconds);
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function api(method, path, body) {
  const options = { method, headers: HEADERS, credentials: "same-origin" };
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  let doc = null;
  try { doc = await response.json(); } catch (e) { doc = null; }
  if (response.status === 401 && path !== "/api/v1/login") showLogin("Your session ended: log in again.");
  return { status: response.status, ok: response.ok, doc };
}

function showLogin(message) {
  if (timer) { clearInterval(timer); timer = null; }
  $("dashboard").hidden = true;
  $("summary").hidden = true;
  forget();
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("secret").focus();
}

// Logged out: nothing of the box stays on the page, under the login form or in the title.
function forget() {
  lastStatus = null;
  $("store-name").textContent = "edgehub";
  document.title = "edgehub — store box";
  for (const id of ["store-id", "version", "uptime", "broker-state", "refreshed", "sync-result"]) $(id).textContent = "";
  for (const table of document.querySelectorAll("#dashboard table tbody")) table.replaceChildren();
  for (const list of document.querySelectorAll("#dashboard dl, #doctor-results")) list.replaceChildren();
  $("printing").textContent = "";
  $("banner").hidden = true;
  hideNotice();
}

function showDashboard() {
  $("login-view").hidden = true;
  $("dashboard").hidden = false;
  $("summary").hidden = false;
  refresh();
  if (!timer) timer = setInterval(refresh, POLL_MS);
}

// A phone shows each table row as a card of "label  value" lines: the labels come from the header.
function labelCells(table) {
  const labels = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  for (const row of table.querySelectorAll("tbody tr")) {
    [...row.children].forEach((td, i) => { if (labels[i]) td.dataset.label = labels[i]; else td.classList.add("action"); });
  }
}

// Device ids and role names: each one an unbreakable word, the list breaks only between them.
function ids(list, empty) {
  const td = el("td", null, "id");
  const names = (list || []).filter(Boolean);
  if (!names.length) { td.textContent = empty; return td; }
  names.forEach((name, i) => { if (i) td.append(", "); td.append(el("span", name)); });
  return td;
}

// --- shapes from other components, flattened the same way the server's doctor does ---------

function deviceRows(section) {
  const list = Array.isArray(section) ? section : (section && section.devices) || [];
  return list.map((e) => Object.assign({}, e.info || {}, e.health || {}, e));
}

function roleRows(section) {
  let list = Array.isArray(section) ? section : (section && section.roles) || [];
  if (!Array.isArray(list)) list = Object.entries(list).map(([role, v]) => Object.assign({ role }, v));
  return list.map((r) => {
    const devices = r.devices || [];
    return Object.assign({
      role: r.role || r.name,
      primary: devices[0] || null,
      spares: devices.slice(1),
      serving: r.device === undefined ? null : r.device,
    }, r);
  });
}

// --- drawing --------------------------------------------------------------------------------

function drawHeader(s) {
  $("store-name").textContent = s.store_name || "Store box";
  $("store-id").textContent = s.store_id;
  document.title = `edgehub — ${s.store_id}`;
  $("version").textContent = s.version;
  $("uptime").textContent = duration(s.uptime_s);
  // The box's HTTPS certificate: the browser must show the same fingerprint (docs/security.md).
  const fp = s.https && s.https.fingerprint;
  $("https").hidden = !fp;
  $("fingerprint").textContent = fp || "";
  const connected = s.broker && s.broker.connected;
  $("broker-state").textContent = connected ? "connected" : "NOT connected";
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  const banner = $("banner");
  banner.hidden = connected;
  banner.replaceChildren();
  if (!connected) {
    banner.append(el("span", `The store broker is not connected: ${(s.broker && s.broker.last_error) || "reconnecting"}. ` +
      "No orders come in and the kitchen screens get nothing new."));
    if (s.broker && s.broker.advice) banner.append(el("span", `What to do: ${s.broker.advice}`, "advice"));
  }
}

function drawDevices(section) {
  const body = $("devices").querySelector("tbody");
  body.replaceChildren();
  const empty = $("devices-empty");
  if (section === undefined || section === null) {
    empty.hidden = false; empty.textContent = "Devices: not configured on this box.";
    return;
  }
  const rows = deviceRows(section);
  empty.hidden = rows.length > 0;
  empty.textContent = "No devices found yet: plug in printers, scanners, scales and pinpads.";
  for (const d of rows) {
    const id = d.device_id || d.id;
    const tr = el("tr");
    tr.dataset.device = id;
    tr.append(el("td", d.kind), el("td", d.model || d.driver || ""), el("td", d.transport || ""),
      ids([id], ""), el("td", d.state, `state ${d.state}`), el("td", d.reason || ""));
    const cell = el("td", null, "action");
    if (d.kind === "printer") {
      const button = el("button", "Test print");
      button.type = "button";
      button.addEventListener("click", () => testPrint(id, button));
      cell.append(button);
    }
    if (typeof FieldCheck !== "undefined") cell.append(FieldCheck.cell(d));  // fieldcheck.js
    tr.append(cell);
    body.append(tr);
  }
  labelCells($("devices"));
}

function drawRoles(section) {
  const body = $("roles").querySelector("tbody");
  // The table is redrawn every poll: keep what the installer is typing into a row's bind field.
  const typing = new Map();
  let focused = null;
  for (const input of body.querySelectorAll("input[data-role]")) {
    if (input.dataset.dirty === "1") typing.set(input.dataset.role, input.value);
    if (input === document.activeElement) focused = input.dataset.role;
  }
  body.replaceChildren();
  const empty = $("roles-empty");
  const configured = section !== undefined && section !== null;
  $("bind-new").hidden = !configured;
  if (!configured) { empty.hidden = false; empty.textContent = "Roles: not configured on this box."; return; }
  const rows = roleRows(section);
  empty.hidden = rows.length > 0;
  empty.textContent = "No roles bound yet: bind a device to a role below.";
  for (const r of rows) {
    const tr = el("tr");
    tr.dataset.role = r.role;
    const state = r.state || (r.serving ? "serving" : "down");
    tr.append(ids([r.role], ""), ids([r.primary], "—"), ids(r.spares, "—"), ids([r.serving], "nobody"),
      el("td", r.reason ? `${state}: ${r.reason}` : state, `state ${state}`));
    const cell = el("td", null, "action");
    const form = el("form", null, "inline");
    const input = el("input");
    input.dataset.role = r.role;
    input.value = [r.primary, ...(r.spares || [])].filter(Boolean).join(", ");
    if (typing.has(r.role)) { input.value = typing.get(r.role); input.dataset.dirty = "1"; }
    input.addEventListener("input", () => { input.dataset.dirty = "1"; });
    input.setAttribute("aria-label", `devices for ${r.role}`);
    const button = el("button", "Bind");
    form.append(input, button);
    form.addEventListener("submit", (ev) => { ev.preventDefault(); bind(r.role, input.value); });
    cell.append(form);
    tr.append(cell);
    body.append(tr);
    if (focused === r.role) input.focus();
  }
  labelCells($("roles"));
  const jobs = section.print;
  $("printing").textContent = jobs && typeof jobs.printed === "number"
    ? `Print jobs: ${jobs.printed} printed${jobs.reprints ? `, ${jobs.reprints} reprinted` : ""}` +
      `${jobs.failed ? `, ${jobs.failed} failed` : ""}${jobs.rejected ? `, ${jobs.rejected} refused` : ""}.`
    : "";
}

const KINDS = {
  pos: "till", handheld: "handheld", kds: "kitchen screen", kiosk: "kiosk", pager: "pager gateway",
  display: "customer display",
};

function since(at) {
  if (typeof at !== "number") return "—";
  return `${new Date(at * 1000).toLocaleTimeString()} (${duration(Date.now() / 1000 - at)} ago)`;
}

// Which terminals are connected now, from the broker's own events (docs/front.md).
function drawTerminals(section) {
  const body = $("terminals").querySelector("tbody");
  body.replaceChildren();
  if (!section) { $("terminals-count").textContent = "not available"; return; }
  const rows = section.terminals || [];
  $("terminals-count").textContent = `${section.connected} of ${section.configured} connected`;
  for (const t of rows) {
    const tr = el("tr");
    tr.dataset.terminal = t.terminal;
    const state = t.state === "unknown" ? "not seen yet" : t.state;
    tr.append(el("td", t.terminal, "id"), el("td", KINDS[t.kind] || t.kind), el("td", state, `state ${t.state}`),
      el("td", since(t.since)), el("td", t.address || "—"), el("td", t.reason || ""));
    body.append(tr);
  }
  const screens = Object.entries(section.web_screens || {});
  const note = $("terminals-note");
  const parts = [];
  if (screens.length) parts.push(`Kitchen screens in a browser: ${screens.map(([s, n]) => `${s} ${n}`).join(", ")}.`);
  if (section.complete === false) {
    parts.push(`The broker counts ${section.broker_clients} clients, more than the box has seen connect: `
      + "a terminal that connected before the box started shows once it reconnects.");
  }
  note.hidden = parts.length === 0;
  note.textContent = parts.join(" ");
  labelCells($("terminals"));
}

// The store's time server (chrony): where the box's time comes from, what the store gets.
function drawClock(c) {
  const state = $("clock-state");
  const dl = $("clock");
  const body = $("clock-sources").querySelector("tbody");
  dl.replaceChildren();
  body.replaceChildren();
  if (!c) { state.textContent = "not available"; state.className = "state unknown"; return; }
  const word = c.running === null ? "not checked yet" : !c.running ? "not running"
    : c.synchronised ? "synchronised" : c.serving_own_clock ? "own clock" : "not synchronised";
  state.textContent = word;
  state.className = `state ${c.running && c.synchronised ? "ok" : c.running === false ? "fail" : "warn"}`;
  $("clock-summary").textContent = c.summary || "";
  if (c.running) {
    dl.append(el("dt", "Follows"), el("dd", c.reference || "nothing yet"),
      el("dt", "Stratum"), el("dd", c.stratum === null ? "—" : c.stratum),
      el("dt", "Offset"), el("dd", typeof c.offset_ms === "number" ? `${c.offset_ms} ms` : "—"));
    if (typeof c.last_update_age_s === "number") dl.append(el("dt", "Last update"), el("dd", `${duration(c.last_update_age_s)} ago`));
  }
  dl.append(el("dt", "Serves the store"), el("dd", c.serve ? `yes, UDP ${c.port} to ${(c.allow || []).join(", ")}` : "no (clock.serve = false)"));
  for (const src of c.sources || []) {
    const tr = el("tr");
    tr.dataset.source = src.name;
    tr.append(el("td", src.name, "id"), el("td", src.state), el("td", src.stratum),
      el("td", `${src.offset_ms} ms`), el("td", src.last_rx_s === null ? "never" : `${duration(src.last_rx_s)} ago`));
    body.append(tr);
  }
  labelCells($("clock-sources"));
}

function drawOutbox(outbox, uplink) {
  const body = $("outbox").querySelector("tbody");
  body.replaceChildren();
  const streams = (outbox && outbox.streams) || [];
  const perStream = (uplink && uplink.streams) || {};
  // No cloud: nothing is ever sent, so no "0 of N sent" and no Sync button that can only fail.
  const noCloud = !uplink || uplink.enabled === false;
  $("sync").disabled = noCloud;
  $("sync").title = noCloud ? "this box has no cloud configured" : "";
  for (const s of streams) {
    const tr = el("tr");
    tr.dataset.stream = s.stream;
    const replay = el("td");
    const info = typeof s.produced === "number" ? s
      : Array.isArray(perStream) ? perStream.find((x) => x.stream === s.stream) : perStream[s.stream];
    // The uplink counts each stream's rows: produced = waiting + acked by the cloud + dropped.
    if (noCloud) {
      replay.textContent = "kept on the box (no cloud)";
    } else if (info && typeof info === "object" && typeof info.produced === "number" && info.produced > 0) {
      const bar = el("progress");
      bar.max = info.produced; bar.value = info.acked || 0;
      replay.append(bar, el("span", ` ${info.acked || 0} of ${info.produced} sent`));
    } else {
      replay.textContent = uplink ? linkState(uplink) : "—";
    }
    tr.append(el("td", s.stream), el("td", s.depth), el("td", duration(s.oldest_age_s)), replay);
    body.append(tr);
  }
  labelCells($("outbox"));
  const empty = $("outbox-empty");
  empty.hidden = streams.length > 0;
  empty.textContent = "Nothing is waiting for the cloud.";
  const dl = $("uplink");
  dl.replaceChildren();
  if (noCloud) {
    dl.append(el("dt", "Uplink"), el("dd", "not configured on this box: the journal keeps everything"));
    return;
  }
  dl.append(el("dt", "link"), el("dd", linkState(uplink)));
  const replayInfo = uplink.replay || {};
  if (typeof replayInfo.rate_per_s === "number") dl.append(el("dt", "replay rate"), el("dd", `${replayInfo.rate_per_s} rows/s`));
  const sync = uplink.sync || {};
  if (typeof sync.total === "number" && sync.total > 0) {
    const dd = el("dd");
    const bar = el("progress");
    bar.max = sync.total; bar.value = sync.sent || 0;
    dd.append(bar, el("span", ` ${sync.sent || 0} of ${sync.total} (${sync.state})`));
    dd.id = "sync-progress";
    dl.append(el("dt", "sync"), dd);
  }
  for (const [key, value] of Object.entries(uplink)) {
    if (value !== null && typeof value === "object") continue;
    dl.append(el("dt", key.replace(/_/g, " ")), el("dd", value));
  }
}

function linkState(uplink) {
  const link = uplink.link || {};
  if (uplink.enabled === false) return "not configured (disabled)";
  return link.state ? `${link.state}${link.last_error ? `: ${link.last_error}` : ""}` : "unknown";
}

function drawSystem(system) {
  const dl = $("system");
  dl.replaceChildren();
  if (!system) { dl.append(el("dt", "System"), el("dd", "not available")); return; }
  const disk = system.disk || {}, mem = system.memory || {}, cpu = system.cpu || {}, proc = system.process || {};
  const rows = [
    ["Disk free", `${bytes(disk.free_bytes)} of ${bytes(disk.total_bytes)} (${disk.free_percent}%)`],
    ["Memory available", `${bytes(mem.available_bytes)} of ${bytes(mem.total_bytes)}`],
    ["CPU temperature", typeof cpu.temperature_c === "number" ? `${cpu.temperature_c} °C` : "no sensor"],
    ["Load (1 min)", typeof cpu.load_1m === "number" ? cpu.load_1m.toFixed(2) : "—"],
    ["edgehub memory", bytes(proc.rss_bytes)],
  ];
  for (const [k, v] of rows) dl.append(el("dt", k), el("dd", v));
  dl.lastChild.id = "rss";
  dl.children[1].id = "disk";
  dl.children[5].id = "temperature";
}

// A pair of boxes (docs/pair.md): how many boxes hold every acked order, said loudly when one.
function clock(at) {
  return at ? new Date(at * 1000).toLocaleString() : "—";
}

function drawPair(pair) {
  const section = $("pair"), banner = $("pair-banner");
  section.hidden = !pair;
  if (!pair) { banner.hidden = true; return; }
  const one = pair.copies !== 2;
  banner.hidden = !one;
  banner.textContent = one
    ? `ONE COPY since ${clock(pair.one_copy_since)}: every order taken since is on this box only (${pair.one_copy_reason || "the standby is not in sync"}).`
    : "";
  $("pair-copies").textContent = one ? "one copy" : "two copies";
  const standby = pair.standby || {};
  const refused = (pair.refused || {}).reason;
  const rows = [
    ["This box", `${pair.box}: ${pair.role} since ${clock(pair.role_since)}`],
    ["Floating address", `${pair.address} (${pair.holds_address ? "on this box" : "not on this box"})`],
    ["The other box", `${standby.box || (pair.peer_seen || {}).box || "?"} at ${pair.peer}: ${standby.state || "—"}`],
    ["Copies", one ? `ONE since ${clock(pair.one_copy_since)}` : `two (the standby holds record ${standby.acked_seq})`],
    ["Epoch / record", `${pair.epoch} / ${pair.seq}`],
  ];
  if (refused) rows.push(["REFUSED", refused]);
  const last = (pair.takeovers || []).slice(-1)[0];
  if (last) rows.push(["Last takeover", `${clock(last.at)} (epoch ${last.epoch}, ready in ${last.seconds} s)`]);
  const dl = $("pair-facts");
  dl.replaceChildren();
  for (const [k, v] of rows) dl.append(el("dt", k), el("dd", v, k === "REFUSED" ? "state fail" : ""));
}

async function refresh() {
  let result;
  try { result = await api("GET", "/api/v1/status"); } catch (e) {
    return stale("The box does not answer. Retrying…");
  }
  if (result.status === 401) return;  // the login form is showing
  if (!result.ok || !result.doc) {
    return stale(`The box answered ${result.status}${result.doc && result.doc.error ? ": " + result.doc.error : ""}. Retrying…`);
  }
  document.body.classList.remove("stale");
  const s = result.doc;
  lastStatus = s;
  drawHeader(s);
  for (const section of SECTIONS) await section.draw(s);
}

// The page's sections in order, each drawn from the status (a part of the box that grows a
// section of its own adds it here, with its <section> in index.html).
const SECTIONS = [
  { id: "kitchen-section", draw: (s) => drawKitchen(s) },
  { id: "devices-section", draw: (s) => drawDevices(s.devices) },
  { id: "terminals-section", draw: (s) => drawTerminals(s.terminals) },
  { id: "roles-section", draw: (s) => drawRoles(s.roles) },
  { id: "outbox-section", draw: (s) => drawOutbox(s.outbox, s.uplink) },
  { id: "clock-section", draw: (s) => drawClock(s.clock) },
  { id: "pair", draw: (s) => drawPair(s.pair) },
  { id: "system-section", draw: (s) => drawSystem(s.system) },
];

// Orders taken and the kitchen: open tickets per station and the link that sets up its screen.
async function drawKitchen(s) {
  const orders = $("orders");
  orders.replaceChildren();
  const intake = s.intake || {};
  orders.append(el("dt", "Orders in the journal"), el("dd", (s.journal && s.journal.orders) ?? "—"));
  orders.append(el("dt", "Since the hub started"),
    el("dd", `${intake.accepted || 0} accepted, ${intake.rejected || 0} rejected, ${intake.duplicates || 0} re-sent`));
  orders.lastChild.id = "orders-since-start";
  const body = $("kitchen").querySelector("tbody");
  const empty = $("kitchen-empty");
  if (!s.kitchen) {
    body.replaceChildren();
    empty.hidden = false; empty.textContent = "The kitchen is not configured on this box.";
    return;
  }
  const r = await api("GET", "/api/v1/kitchen/screens");
  if (!r.ok || !r.doc) return;
  body.replaceChildren();
  empty.hidden = r.doc.screens.length > 0;
  empty.textContent = "No stations yet: they come with the first order, or from [kitchen.stations].";
  for (const st of r.doc.screens) {
    const tr = el("tr");
    tr.dataset.station = st.station;
    const open = el("td", null, "action");
    const link = el("a", `Open the ${st.station} screen`);
    // The link carries the station's screen secret: opened once on a kitchen tablet, the screen keeps it.
    link.href = st.url; link.target = "_blank"; link.rel = "noopener";
    open.append(link);
    if (!st.secret) open.append(el("span", " (no screen secret drives this station yet: see docs/kitchen.md)", "muted"));
    tr.append(el("td", st.station), el("td", st.open), el("td", st.connected), open);
    body.append(tr);
  }
  labelCells($("kitchen"));
}

// What is on the page is the last answer, not the box now: greyed out under the banner.
function stale(text) {
  $("banner").hidden = false;
  $("banner").textContent = text;
  $("broker-state").textContent = "not known";
  document.body.classList.add("stale");
}

// --- actions --------------------------------------------------------------------------------

function say(node, text, good) {
  node.textContent = text;
  node.className = good ? "state ok" : "state fail";
}

async function testPrint(id, button) {
  button.disabled = true;
  const r = await api("POST", `/api/v1/devices/${encodeURIComponent(id)}/test-print`);
  button.disabled = false;
  alertBanner(r.ok ? `Test slip printed on ${id}.` : `Test print on ${id} failed: ${(r.doc && r.doc.error) || r.status}`, r.ok);
}

async function bind(role, text) {
  const devices = text.split(/[\s,]+/).filter(Boolean);
  if (!devices.length && !confirm(`Bind nothing to ${role}? The role goes down until a device is bound.`)) return;
  const r = await api("PUT", `/api/v1/roles/${encodeURIComponent(role)}`, { devices });
  if (!r.ok) {
    alertBanner(`Binding ${role} failed: ${(r.doc && r.doc.error) || r.status}`, false);
  } else if (r.doc && r.doc.state === "down") {
    // Bound, but nothing serves it (a typo, a device not plugged in yet): not a success to show in green.
    alertBanner(`${role} bound to ${devices.join(", ") || "nothing"}, but it is down: ${r.doc.reason}`, false);
  } else {
    alertBanner(`${role} bound to ${devices.join(", ")}.`, true);
  }
  if (r.ok) {
    for (const input of $("roles").querySelectorAll("input[data-role]")) {
      if (input.dataset.role === role) delete input.dataset.dirty;
    }
  }
  refresh();
}

// What the last button did: replaces the one before, leaves on its own after a while (a failure
// stays longer) or with its × (the status banner is the poll's own).
let noticeTimer = null;
function alertBanner(text, good) {
  const notice = $("notice");
  $("notice-text").textContent = text;
  notice.className = good ? "notice ok" : "notice fail";
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, good ? NOTICE_MS.ok : NOTICE_MS.fail);
}

function hideNotice() {
  clearTimeout(noticeTimer);
  $("notice").hidden = true;
  $("notice-text").textContent = "";
}

async function runDoctor() {
  const list = $("doctor-results");
  list.replaceChildren(el("li", "Running the self-check…"));
  $("doctor").disabled = true;
  const r = await api("POST", "/api/v1/doctor");
  $("doctor").disabled = false;
  list.replaceChildren();
  if (!r.ok || !r.doc) { list.append(el("li", `The self-check could not run (${r.status}).`)); return; }
  for (const c of r.doc.checks) {
    const li = el("li");
    li.dataset.check = c.name;
    li.append(el("span", c.status, `status state ${c.status}`), el("span", `${c.name}: ${c.message}`));
    if (c.action && c.status !== "ok") li.append(el("span", `→ ${c.action}`, "action"));
    list.append(li);
  }
  list.dataset.ok = String(r.doc.ok);
}

async function syncNow() {
  const node = $("sync-result");
  node.textContent = "…";
  const r = await api("POST", "/api/v1/sync");
  say(node, r.ok ? "Sync started." : (r.doc && r.doc.error) || `failed (${r.status})`, r.ok);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/api/v1/login", { secret: $("secret").value });
    $("secret").value = "";
    if (r.ok) showDashboard();
    else $("login-error").textContent = r.status === 429 ? "Too many wrong tries: wait a minute." : "Wrong token or PIN.";
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/v1/logout"); showLogin(""); });
  $("doctor").addEventListener("click", runDoctor);
  $("notice-close").addEventListener("click", hideNotice);
  $("sync").addEventListener("click", syncNow);
  $("bind-new").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const role = $("bind-role").value.trim();
    if (role) bind(role, $("bind-devices").value);
  });
  // Already logged in (the cookie survives a reload)? Then go straight to the dashboard.
  const probe = await fetch("/api/v1/status", { headers: HEADERS, credentials: "same-origin" });
  if (probe.ok) showDashboard(); else showLogin("");
});
