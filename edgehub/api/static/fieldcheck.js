// The installer's field check on the box's page: a button per device (app.js puts it in the
// device's row through FieldCheck.cell) and one result view (#field-check). The check itself runs
// in the hub, on the driver it holds (POST /api/v1/devices/{id}/field-check); a scanner's check
// waits for one scan. Every value goes in through textContent: bytes from devices are not markup.
"use strict";

const FieldCheck = (() => {
  const WAIT_S = 30;
  const running = new Set();
  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function when(at) {
    return typeof at === "number" ? new Date(at * 1000).toLocaleString() : "";
  }

  // The bytes a device sent, 16 a row, hex then printable ASCII.
  function rawRows(hex) {
    const bytes = (hex || "").split(" ").filter(Boolean).map((b) => parseInt(b, 16));
    const rows = [];
    for (let i = 0; i < bytes.length; i += 16) {
      const chunk = bytes.slice(i, i + 16);
      const text = chunk.map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
      rows.push(`${chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ").padEnd(47)}  ${text}`);
    }
    return rows.join("\n");
  }

  function show(record) {
    const view = $("field-check");
    view.hidden = false;
    view.dataset.device = record.device_id;
    view.dataset.ok = String(Boolean(record.ok));
    const head = $("field-check-head");
    head.textContent = `${record.kind} ${record.device_id} (${record.driver} at ${record.address}): ` +
      `${record.ok ? "passed" : "FAILED"} ${when(record.at)}`;
    head.className = record.ok ? "state ok" : "state fail";
    const list = $("field-check-steps");
    list.replaceChildren();
    for (const step of record.steps || []) {
      const li = el("li");
      li.dataset.step = step.name;
      li.append(el("span", step.ok ? "ok" : "fail", `status state ${step.ok ? "ok" : "fail"}`),
        el("span", `${step.name}: ${step.detail}`));
      if (step.raw_hex) li.append(el("pre", rawRows(step.raw_hex), "raw"));
      list.append(li);
    }
    const profile = Object.entries(record.profile || {});
    $("field-check-profile").textContent = profile.length
      ? `Profile it points to ([[device]] keys): ${profile.map(([k, v]) => `${k} = ${JSON.stringify(v)}`).join(", ")}`
      : "";
  }

  async function call(method, id) {
    const path = `/api/v1/devices/${encodeURIComponent(id)}/field-check`;
    const options = { method, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Edgehub-Request": "1" } };
    if (method === "POST") options.body = JSON.stringify({ wait_s: WAIT_S });
    const response = await fetch(path, options);
    let doc = null;
    try { doc = await response.json(); } catch (e) { doc = null; }
    return { ok: response.ok, status: response.status, doc };
  }

  function say(text, good) {
    const note = $("field-check-note");
    note.textContent = text;
    note.className = good ? "notice ok" : "notice fail";
    note.hidden = !text;
  }

  async function run(device, button) {
    const id = device.device_id || device.id;
    running.add(id);
    button.disabled = true;
    button.textContent = device.kind === "scanner" ? `Scan a barcode now (${WAIT_S} s)…` : "Checking…";
    say(device.kind === "scanner" ? `Waiting up to ${WAIT_S} s for a scan on ${id}…` : `Checking ${id}…`, true);
    let r;
    try { r = await call("POST", id); } catch (e) { r = { ok: false, status: 0, doc: null }; }
    running.delete(id);
    button.disabled = false;
    button.textContent = "Field check";
    if (r.ok && r.doc) { say("", true); show(r.doc); }
    else say(`Field check of ${id} could not run: ${(r.doc && r.doc.error) || r.status}`, false);
  }

  async function open(id) {
    const r = await call("GET", id);
    if (r.ok && r.doc) show(r.doc);
    else say(`No field check of ${id} kept: ${(r.doc && r.doc.error) || r.status}`, false);
  }

  // What goes in a device's row: the button and the last check's outcome (click to see it).
  function cell(device) {
    const id = device.device_id || device.id;
    const box = el("span", null, "field-check");
    const button = el("button", running.has(id) ? "Checking…" : "Field check");
    button.type = "button";
    button.dataset.fieldCheck = id;
    button.disabled = running.has(id);
    button.addEventListener("click", () => run(device, button));
    box.append(button);
    const last = device.field_check;
    if (last) {
      const badge = el("button", `${last.ok ? "passed" : "failed"} ${when(last.at)}`,
        `link state ${last.ok ? "ok" : "fail"}`);
      badge.type = "button";
      badge.dataset.fieldCheckResult = id;
      badge.addEventListener("click", () => open(id));
      box.append(badge);
    }
    return box;
  }

  return { cell, show };
})();
