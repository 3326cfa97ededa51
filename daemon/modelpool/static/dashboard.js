// modelpool dashboard: polls dashboard.json every 2 s and redraws in place.
// Plain DOM and inline SVG, no libraries. Everything shown comes from the JSON and
// goes in as text (textContent / createTextNode), never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const HIDDEN_POLL_MS = 15000;
  const TIMEOUT_MS = 5000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  let lastOk = 0;
  let timer = 0;

  // ------------------------------------------------------------------ DOM helpers

  function build(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.setAttribute("class", value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

  // ------------------------------------------------------------------ formatting

  const num = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));

  function usd(n) {
    if (n === null || n === undefined) return "–";
    if (n === 0) return "$0";
    if (Math.abs(n) >= 100) return "$" + n.toFixed(0);
    if (Math.abs(n) >= 1) return "$" + n.toFixed(2);
    return "$" + n.toPrecision(2);
  }

  function secs(n) {
    if (n === null || n === undefined) return "–";
    if (n < 1) return Math.round(n * 1000) + " ms";
    if (n < 60) return n.toFixed(n < 10 ? 2 : 1) + " s";
    return Math.round(n / 60) + " min";
  }

  function duration(n) {
    n = Math.max(0, Math.round(n));
    if (n < 60) return n + "s";
    if (n < 3600) return Math.floor(n / 60) + "m " + (n % 60) + "s";
    if (n < 86400) return Math.floor(n / 3600) + "h " + Math.floor((n % 3600) / 60) + "m";
    return Math.floor(n / 86400) + "d " + Math.floor((n % 86400) / 3600) + "h";
  }

  const ago = (unix, now) => (unix ? duration(now - unix) + " ago" : "–");
  const pct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(r < 0.1 ? 1 : 0) + "%");
  const clock = (unix) => new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const amount = (unit, n) => (unit === "usd" ? usd(n) : num(n) + " tok");

  function limits(map) {
    const parts = Object.entries(map || {}).map(([kind, gate]) =>
      gate.limit === null || gate.limit === undefined
        ? `${kind} ${num(gate.headroom)}`
        : `${kind} ${num(gate.headroom)}/${num(gate.limit)}`);
    return parts.length ? parts.join(" · ") : "no limits";
  }

  // ------------------------------------------------------------------ charts

  function barChart(container, points, series, format) {
    const width = Math.max(260, Math.floor(container.clientWidth || 600));
    const height = 150;
    const total = (p) => series.reduce((sum, one) => sum + (p[one.key] || 0), 0);
    const peak = Math.max(...points.map((p) => (p ? total(p) : 0)));
    const max = niceCeil(peak);
    const ticks = [0, max / 2, max];
    const left = 10 + 6.5 * Math.max(...ticks.map((v) => format(v).length));
    const right = 6, top = 8, bottom = 20;
    const plotW = width - left - right, plotH = height - top - bottom;
    const slot = plotW / points.length;
    const y = (v) => top + plotH - (v / max) * plotH;
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": container.id });
    for (const v of ticks) {
      svg.append(s("line", { class: "grid-line", x1: left, x2: width - right, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    }
    points.forEach((p, i) => {
      if (!p) return;
      const x = left + i * slot + 0.5;
      const w = Math.max(1, slot - 1);
      const group = s("g", { class: p.filled ? "filled" : null });
      let base = 0;
      for (const one of series) {
        const v = p[one.key] || 0;
        if (v > 0) {
          group.append(s("rect", { class: "bar " + one.cls, x, width: w, y: y(base + v), height: y(base) - y(base + v) }));
        }
        base += v;
      }
      const parts = series.map((one) => `${one.label} ${format(p[one.key] || 0)}`);
      group.append(s("title", null, `${clock(p.t)}  ${parts.join(", ")}${p.filled ? " (spread over a gap)" : ""}`));
      group.append(s("rect", { x, width: w, y: top, height: plotH, fill: "transparent" }));
      svg.append(group);
    });
    const labels = [[0, "−60 min"], [Math.floor(points.length / 2), "−30"], [points.length - 1, "now"]];
    for (const [i, label] of labels) {
      const anchor = i === 0 ? "start" : i === points.length - 1 ? "end" : "middle";
      const x = i === points.length - 1 ? width - right : left + i * slot;
      svg.append(s("text", { x, y: height - 5, "text-anchor": anchor }, label));
    }
    container.replaceChildren(svg);
  }

  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const step = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * step) return m * step;
    return 10 * step;
  }

  const fmtCount = (v) => (v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(+v.toFixed(1)));

  // ------------------------------------------------------------------ sections

  function renderHeader(d) {
    $("generation").textContent = "generation " + d.generation;
    const r = d.last_reload;
    const chip = $("reload-chip");
    chip.className = "chip " + (r.result === "rejected" ? "bad" : "ok");
    chip.textContent = `last reload ${r.result} · ${r.trigger} · ${ago(r.at, d.now)}`;
    const ready = $("ready");
    ready.className = "chip " + (d.ready ? "ok" : "bad");
    ready.textContent = d.ready ? "ready" : "not ready";
  }

  function renderOverview(d) {
    const pts = d.history.points.filter(Boolean);
    const sum = (key) => pts.reduce((a, p) => a + p[key], 0);
    const requests = sum("requests"), errors = sum("errors");
    const models = Object.values(d.models);
    const open = models.filter((m) => m.breaker.state !== "closed").length;
    const tiles = [
      ["requests, last hour", num(requests)],
      ["errors, last hour", num(errors) + (requests ? ` (${pct(errors / requests)})` : "")],
      ["rejected, last hour", num(sum("rejected"))],
      ["cost, last hour", usd(sum("cost_usd"))],
      ["in flight", num(models.reduce((a, m) => a + m.in_flight, 0))],
      ["queued", num(d.pools.reduce((a, p) => a + p.queue.depth, 0))],
      ["breakers not closed", `${open} of ${models.length}`],
      ["up", duration(d.now - d.started_at)],
    ];
    $("overview").replaceChildren(...tiles.map(([label, value]) =>
      h("div", { class: "tile" }, h("div", { class: "value" }, value), h("div", { class: "label" }, label))));
  }

  function renderCharts(d) {
    barChart($("chart-requests"), d.history.points, [
      { key: "errors", cls: "err", label: "errors" },
      { key: "rejected", cls: "rej", label: "rejected" },
      { key: "ok", cls: "", label: "ok" },
    ], fmtCount);
    barChart($("chart-cost"), d.history.points, [{ key: "cost_usd", cls: "cost", label: "cost" }], usd);
  }

  function breakerCell(b) {
    const label = { closed: "closed", open: "open", half_open: "half-open" }[b.state] || b.state;
    const notes = [];
    if (b.state === "open") notes.push(b.reopens_in_s > 0 ? `trial in ${duration(b.reopens_in_s)}` : "trial due");
    if (b.state === "half_open") notes.push("one trial in flight");
    if (b.rate_limited) notes.push("upstream asked to wait");
    if (b.reason && b.state !== "closed") notes.push(b.reason);
    if (b.state === "closed" && b.consecutive_failures) notes.push(`${b.consecutive_failures} failure(s) in a row`);
    return h("td", null, h("span", { class: "breaker", "data-state": b.state }, label),
      notes.length ? h("span", { class: "sub" }, notes.join(" · ")) : null);
  }

  // Quantiles come from histogram buckets: below the lowest bound or above the highest,
  // all that is known is that side of it.
  function estimate(v, range) {
    if (v === null || v === undefined) return "–";
    if (range && v < range[0]) return "<" + secs(range[0]);
    if (range && v >= range[1]) return "≥" + secs(range[1]);
    return secs(v);
  }

  function quantiles(q, range) {
    if (!q || !q.count) return h("td", { class: "num muted" }, "–");
    return h("td", { class: "num", title: `${q.count} answers in the window; estimates from histogram buckets` },
      `${estimate(q.p50, range)} / ${estimate(q.p95, range)}`);
  }

  function memberRow(name, m, member, strategy, range) {
    const health = m.health && m.health !== "unknown" ? ` · health ${m.health}` : "";
    const weight = !member ? "" : strategy === "weighted" ? ` · weight ${member.weight}`
      : strategy === "priority" ? ` · tier ${member.priority}` : "";
    return h("tr", { "data-model": name },
      h("td", null, h("strong", null, name), h("span", { class: "sub" }, `${m.provider} (${m.type})${weight}${health}`)),
      breakerCell(m.breaker),
      h("td", { class: "num" }, num(m.in_flight)),
      h("td", null, h("span", { class: "mono" }, limits(m.limits))),
      quantiles(m.latency_s, range),
      quantiles(m.ttft_s, range),
      h("td", { class: "num", title: `${m.failed} of ${m.attempts} attempts` }, pct(m.error_rate)));
  }

  // A table whose cells carry their column's name, so a narrow screen can stack them.
  function table(head, rows, numeric, titles) {
    for (const row of rows) {
      [...row.children].forEach((cell, i) => cell.setAttribute("data-label", head[i]));
    }
    return h("div", { class: "scroll" }, h("table", { class: "stack" },
      h("thead", null, h("tr", null, ...head.map((t, i) =>
        h("th", { class: numeric.includes(i) ? "num" : null, title: (titles || {})[i] }, t)))),
      h("tbody", null, ...rows)));
  }

  function membersTable(rows, d) {
    const head = ["model", "breaker", "in flight", "limit headroom", "latency p50 / p95", "TTFT p50 / p95", "errors"];
    const window = `over the last ${duration(d.window_s)}`;
    return table(head, rows, [2, 4, 5, 6], { 4: window, 5: window, 6: window });
  }

  function renderPools(d) {
    const cards = d.pools.map((p) => {
      const rows = p.members.map((member) => memberRow(member.model, d.models[member.model], member, p.strategy, d.latency_buckets_s));
      const meta = [`strategy ${p.strategy}`, `queue ${p.queue.depth}/${p.queue.max_waiting}`, limits(p.limits)];
      if (p.failover.length) meta.push("failover → " + p.failover.join(" → "));
      return h("section", { class: "card", "data-pool": p.name },
        h("div", { class: "pool-head" },
          h("span", { class: "dot " + (p.can_serve ? "ok" : "bad"), title: p.can_serve ? "can serve" : "nothing can serve" }),
          h("h2", null, p.name), p.description ? h("span", { class: "muted" }, p.description) : null),
        h("div", { class: "pool-meta" }, meta.join(" · ")),
        membersTable(rows, d));
    });
    const loose = Object.entries(d.models).filter(([, m]) => !m.pooled);
    if (loose.length) {
      cards.push(h("section", { class: "card", "data-pool": "" },
        h("div", { class: "pool-head" }, h("h2", null, "Models in no pool"),
          h("span", { class: "muted" }, "served when a request names them")),
        membersTable(loose.map(([name, m]) => memberRow(name, m, null, null, d.latency_buckets_s)), d)));
    }
    $("pools").replaceChildren(...cards);
  }

  function budgetCell(budgets, now) {
    if (!budgets.length) return h("td", { class: "muted" }, "no budget");
    return h("td", null, ...budgets.map((b) => {
      const used = Math.min(100, (b.spent / b.cap) * 100);
      const held = Math.min(100 - used, (b.reserved / b.cap) * 100);
      const bar = h("div", { class: "meter" + (b.spent >= b.cap ? " over" : ""), title: `resets in ${duration(b.resets_at - now)}` },
        h("div", { class: "used" }), h("div", { class: "held" }));
      bar.children[0].style.width = used + "%";
      bar.children[1].style.left = used + "%";
      bar.children[1].style.width = held + "%";
      const reserved = b.reserved > 0 ? ` + ${amount(b.unit, b.reserved)} held` : "";
      return h("div", { "data-budget": `${b.unit}/${b.period}` }, bar,
        h("span", { class: "sub" }, `${amount(b.unit, b.spent)} of ${amount(b.unit, b.cap)} per ${b.period} (${pct(b.spent / b.cap)})${reserved}`));
    }));
  }

  function renderClients(d) {
    const c = d.clients;
    $("clients-day").textContent = `spend today (${c.day}, UTC) and budgets`;
    const notes = [];
    if (!c.store) notes.push(h("p", { class: "muted" }, "usage.store is none: spend is kept only in budget meters."));
    if (c.error) notes.push(h("p", { class: "banner" }, c.error));
    if (!c.list.length) {
      $("clients").replaceChildren(...notes, h("p", { class: "muted" }, "No clients configured and no usage recorded this month."));
      return;
    }
    const head = ["client", "today", "budgets", "requests today", "errors", "tokens today", "this month"];
    const rows = c.list.map((client) => h("tr", { "data-client": client.name },
      h("td", null, h("strong", null, client.name === "-" ? "(no client key)" : client.name),
        client.configured ? null : h("span", { class: "sub" }, "not in the config")),
      h("td", { class: "num", "data-field": "today" }, usd(client.today.cost_usd),
        client.today.cost_unknown ? h("span", { class: "sub" }, `+${client.today.cost_unknown} unpriced`) : null),
      budgetCell(client.budgets, d.now),
      h("td", { class: "num" }, num(client.today.requests)),
      h("td", { class: "num" }, num(client.today.errors)),
      h("td", { class: "num" }, num(client.today.tokens)),
      h("td", { class: "num" }, usd(client.month.cost_usd))));
    $("clients").replaceChildren(...notes, table(head, rows, [1, 3, 4, 5, 6]));
  }

  function diffList(diff) {
    const rows = [];
    for (const kind of ["pools", "models", "providers", "clients"]) {
      const c = diff[kind];
      if (!c) continue;
      const items = [
        ...c.added.map((n) => h("span", { class: "chip add" }, "+" + n)),
        ...c.removed.map((n) => h("span", { class: "chip del" }, "−" + n)),
        ...c.changed.map((n) => h("span", { class: "chip chg" }, "~" + n)),
      ];
      if (items.length) rows.push(h("dt", null, kind), h("dd", null, h("div", { class: "diff" }, ...items)));
    }
    if ((diff.restart_needed || []).length) {
      rows.push(h("dt", null, "needs restart"), h("dd", null, diff.restart_needed.join(", ")));
    }
    return rows;
  }

  function renderReload(d) {
    const r = d.last_reload;
    const result = h("span", { class: "chip " + (r.result === "rejected" ? "bad" : "ok"), "data-result": r.result }, r.result);
    const rows = [
      h("dt", null, "serving"), h("dd", null, `generation ${d.generation} · config ${d.config.digest} · loaded ${ago(d.config.loaded_at, d.now)}`),
      h("dt", null, "last reload"), h("dd", null, result, ` ${r.trigger} · ${ago(r.at, d.now)} · ${r.duration_ms} ms`),
    ];
    if (r.summary) rows.push(h("dt", null, "summary"), h("dd", null, r.summary));
    rows.push(...diffList(r.diff || {}));
    const errors = r.errors && r.errors.length
      ? [h("p", { class: "muted" }, `Rejected: generation ${r.generation} keeps serving.`), h("pre", { class: "errors" }, r.errors.join("\n"))]
      : [];
    $("reload").replaceChildren(h("dl", { class: "kv" }, ...rows), ...errors);
  }

  function render(d) {
    for (const p of d.history.points) if (p) p.ok = Math.max(0, p.requests - p.errors - p.rejected);
    renderHeader(d);
    renderOverview(d);
    renderCharts(d);
    renderPools(d);
    renderClients(d);
    renderReload(d);
  }

  // ------------------------------------------------------------------ polling

  function banner(text) {
    const el = $("banner");
    el.hidden = !text;
    el.textContent = text || "";
  }

  function setLive() {
    const el = $("live");
    if (!lastOk) return;
    const age = (Date.now() - lastOk) / 1000;
    el.dataset.live = age < (POLL_MS / 1000) * 3 ? "live" : "stale";
    el.textContent = el.dataset.live === "live" ? `live · updated ${Math.round(age)}s ago` : `stale · last update ${duration(age)} ago`;
  }

  async function poll() {
    clearTimeout(timer);
    try {
      // The browser sends the admin token it asked for when the page loaded (HTTP Basic).
      const signal = AbortSignal.timeout ? AbortSignal.timeout(TIMEOUT_MS) : undefined;  // Safari < 16
      const response = await fetch("dashboard.json", { cache: "no-store", signal });
      if (response.status === 401) {
        banner("The admin token was refused (changed since this page loaded?): reload the page to give it again.");
      } else if (response.status === 403) {
        banner("Refused: without server.admin_token, /admin/* is served to this host only.");
      } else if (!response.ok) {
        banner(`The daemon answered ${response.status}; retrying.`);
      } else {
        const data = await response.json();
        $("main").hidden = false;
        banner("");
        render(data);
        lastOk = Date.now();
      }
    } catch (err) {
      banner(`Cannot reach the daemon (${err.name === "TimeoutError" ? "timed out" : err.message}); retrying.`);
    }
    setLive();
    timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
    setInterval(setLive, 1000);
    poll();
  });
})();
