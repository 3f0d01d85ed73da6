// The day's close on the box's page: takings by tender, what is still unsettled, and a bar chart
// of orders per hour (inline SVG built here: no script from the internet, the page's CSP allows
// none). Reads GET /api/v1/reports/day every 15 s while the dashboard shows.
"use strict";

(function () {
  const REFRESH_MS = 15000;
  const SVG = "http://www.w3.org/2000/svg";
  const HEADERS = { "Content-Type": "application/json", "X-Edgehub-Request": "1" };
  const TENDERS = { cash: "Cash 现金", qr: "QR code 扫码", card: "Card 银行卡" };
  const byId = (id) => document.getElementById(id);

  function money(cents, currency) {
    const sign = cents < 0 ? "-" : "";
    const n = Math.abs(cents);
    const units = Math.floor(n / 100).toLocaleString("en");
    return `${sign}${currency === "CNY" ? "¥" : currency + " "}${units}.${String(n % 100).padStart(2, "0")}`;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function drawChart(hours) {
    const chart = byId("day-chart");
    chart.replaceChildren();
    const max = Math.max(1, ...hours.map((h) => h.orders));
    const width = 480 / hours.length;
    hours.forEach((slot, i) => {
      const height = Math.round((slot.orders / max) * 120);
      const bar = svg("rect", { x: i * width + 2, y: 130 - height, width: width - 4, height: Math.max(height, 1),
                                class: slot.orders ? "bar" : "bar empty", "data-hour": slot.hour,
                                "data-orders": slot.orders });
      bar.appendChild(svg("title", {}, `${String(slot.hour).padStart(2, "0")}:00 — ${slot.orders} orders, ${slot.covers} covers`));
      chart.appendChild(bar);
      if (slot.orders) chart.appendChild(svg("text", { x: i * width + width / 2, y: 126 - height, "text-anchor": "middle" }, slot.orders));
      if (i % 3 === 0) chart.appendChild(svg("text", { x: i * width + 2, y: 150 }, String(slot.hour).padStart(2, "0")));
    });
  }

  function draw(report) {
    byId("day-name").textContent = `${report.day}${report.closed_at ? " (closed)" : ""}`;
    const figures = byId("day-figures");
    figures.replaceChildren();
    const unknown = report.payments.unknown.length;
    const rows = [
      ["Taken", money(report.takings.total_cents, report.currency)],
      ["Cash in the drawer", money(report.cash.net_cents, report.currency)],
      ["Orders", `${report.orders.count} (${report.orders.covers} covers)`],
      ["Payments still unknown", unknown ? `${unknown}: ${report.payments.unknown.map((p) => p.payment_id).join(", ")}` : "none"],
      ["Settled by an operator", String(report.payments.settled_by_operator.length)],
      ["Voids / amends / reprints", `${report.voids.orders} / ${report.amends} / ${report.reprints}`],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      if (k.startsWith("Payments still unknown") && unknown) dd.className = "state warn";
      figures.append(dt, dd);
    }
    const body = byId("day-tenders").querySelector("tbody");
    body.replaceChildren();
    for (const t of report.takings.by_tender) {
      const tr = document.createElement("tr");
      tr.dataset.tender = t.tender;
      for (const text of [TENDERS[t.tender] || t.tender, t.count, money(t.amount_cents, t.currency)]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    drawChart(report.hours);
  }

  async function refresh() {
    if (byId("dashboard").hidden) return;
    try {
      const response = await fetch("/api/v1/reports/day", { headers: HEADERS, credentials: "same-origin" });
      if (response.ok) draw(await response.json());
    } catch (e) { /* the status poll shows the box unreachable */ }
  }

  async function printDay() {
    const day = (byId("day-name").textContent || "").slice(0, 10);
    const out = byId("day-print-result");
    if (!day) return;
    const response = await fetch(`/api/v1/reports/day/${day}/print`, { method: "POST", headers: HEADERS, credentials: "same-origin" });
    const doc = await response.json().catch(() => ({}));
    out.textContent = response.ok ? `queued on ${doc.role}` : (doc.error || `failed (${response.status})`);
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("day-print").addEventListener("click", printDay);
    new MutationObserver(refresh).observe(byId("dashboard"), { attributes: true, attributeFilter: ["hidden"] });
    refresh();
    setInterval(refresh, REFRESH_MS);
  });
})();
