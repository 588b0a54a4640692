// Flywheel dashboard: small helpers over the public HTTP APIs, and one function per page.
"use strict";

const Flywheel = (() => {
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await r.json().catch(() => ({}));
    return { status: r.status, body };
  }

  // Prometheus text exposition -> [{name, labels, value}] (comments and blank lines skipped).
  function parsePrometheus(text) {
    const out = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw.startsWith("#")) continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || "").matchAll(label)) labels[l[1]] = l[2];
      out.push({ name: m[1], labels, value: Number(m[3]) });
    }
    return out;
  }

  // Quantile from cumulative histogram buckets [[le, count], ...] sorted by le.
  function histogramQuantile(q, buckets) {
    const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
    if (!total) return null;
    const rank = q * total;
    let prevLe = 0, prevCount = 0;
    for (const [le, count] of buckets) {
      if (count >= rank) {
        if (!isFinite(le)) return prevLe;
        const inBucket = count - prevCount;
        return inBucket ? prevLe + (le - prevLe) * ((rank - prevCount) / inBucket) : le;
      }
      prevLe = le; prevCount = count;
    }
    return prevLe;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function fillTable(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
      c instanceof Node ? el("td", {}, c) : el("td", {}, c)))));
  }

  // A time-series chart that keeps the last `keep` points; series = [{label, stroke}].
  function lineChart(container, series, keep = 150) {
    const data = [[], ...series.map(() => [])];
    const width = () => Math.max(240, container.clientWidth - 4);
    const plot = new uPlot({
      width: width(), height: 220,
      // At least the last minute on the x axis, so that the first points do not span years.
      scales: { x: { time: true, range: (_u, min, max) => [Math.min(min ?? Date.now() / 1000, (max ?? Date.now() / 1000) - 60), max ?? Date.now() / 1000] } },
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2 }))],
      axes: [{}, { size: 50 }],
    }, data, container);
    window.addEventListener("resize", () => plot.setSize({ width: width(), height: 220 }));
    return {
      push(t, values) {
        data[0].push(t);
        values.forEach((v, i) => data[i + 1].push(v));
        if (data[0].length > keep) data.forEach((col) => col.shift());
        plot.setData(data);
      },
    };
  }

  // Per-route request rate, p99 and errors between two scrapes of /metrics.
  function routeStats(prev, curr, seconds) {
    const key = (s) => `${s.labels.method} ${s.labels.route}`;
    const sum = (samples, name, match) => {
      const acc = new Map();
      for (const s of samples) if (s.name === name && match(s)) acc.set(key(s), (acc.get(key(s)) || 0) + s.value);
      return acc;
    };
    const reqNow = sum(curr, "flywheel_http_requests_total", () => true);
    const reqPrev = sum(prev, "flywheel_http_requests_total", () => true);
    const errNow = sum(curr, "flywheel_http_requests_total", (s) => s.labels.status >= "500");
    const errPrev = sum(prev, "flywheel_http_requests_total", (s) => s.labels.status >= "500");
    const buckets = (samples) => {
      const acc = new Map();
      for (const s of samples) {
        if (s.name !== "flywheel_http_request_duration_seconds_bucket") continue;
        const k = key(s), le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
        if (!acc.has(k)) acc.set(k, new Map());
        acc.get(k).set(le, (acc.get(k).get(le) || 0) + s.value);
      }
      return acc;
    };
    const bNow = buckets(curr), bPrev = buckets(prev);
    const stats = [];
    const all = new Map();
    for (const [k, n] of reqNow) {
      const delta = n - (reqPrev.get(k) || 0);
      const les = [...(bNow.get(k) || new Map()).entries()].sort((a, b) => a[0] - b[0])
        .map(([le, c]) => [le, c - ((bPrev.get(k) || new Map()).get(le) || 0)]);
      les.forEach(([le, c]) => all.set(le, (all.get(le) || 0) + c));
      stats.push({ route: k, rps: delta / seconds, p99: histogramQuantile(0.99, les),
                   errors: (errNow.get(k) || 0) - (errPrev.get(k) || 0) });
    }
    const total = stats.reduce((a, s) => a + s.rps, 0);
    const p99 = histogramQuantile(0.99, [...all.entries()].sort((a, b) => a[0] - b[0]));
    return { stats, total, p99 };
  }


  // ----- shared helpers for the pages -----
  const TOKEN_KEY = "flywheel-token";
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  // POST/PUT with the pasted token (if any); returns {status, body}, never throws on HTTP errors.
  async function send(method, url, body) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const r = await fetch(url, { method, headers, body: JSON.stringify(body || {}) });
    const data = await r.json().catch(() => ({}));
    return { status: r.status, body: data };
  }

  const SVGNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function fmt(v, digits = 3) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(2) : v.toFixed(digits);
  }
  const when = (iso) => (iso ? new Date(iso.endsWith("Z") || iso.includes("+") ? iso : iso + "Z")
    .toLocaleString() : "–");
  const PALETTE = ["#3056d3", "#c4320a", "#12875a", "#9e77ed", "#f79009", "#0ba5ec", "#ee46bc",
                   "#667085"];
  const color = (i) => PALETTE[i % PALETTE.length];

  function pill(text, kind = "") { return el("span", { class: `pill ${kind}` }, text); }
  function button(text, onClick, attrs = {}) {
    const b = el("button", { type: "button", ...attrs }, text);
    b.addEventListener("click", onClick);
    return b;
  }
  function link(text, onClick) {
    const a = el("a", { href: "#" }, text);
    a.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
    return a;
  }
  function empty(node, text) { node.replaceChildren(el("p", { class: "muted" }, text)); }

  // A chart over numeric x (steps): xs shared, series = [{label, values}]; redraws in place.
  function xyChart(container, xs, series, { xLabel = "step", height = 220 } = {}) {
    container.fwPlot?.destroy();
    container.replaceChildren();
    const width = () => Math.max(240, container.clientWidth - 4);
    const plot = new uPlot({
      width: width(), height,
      scales: { x: { time: false } },
      series: [{ label: xLabel }, ...series.map((s, i) => ({
        label: s.label, stroke: s.stroke || color(i), width: 2, spanGaps: true }))],
      axes: [{ label: xLabel }, { size: 60 }],
    }, [xs, ...series.map((s) => s.values)], container);
    container.fwObserver?.disconnect();  // a redraw replaces the previous plot and observer
    container.fwObserver = new ResizeObserver(() => plot.setSize({ width: width(), height }));
    container.fwObserver.observe(container);
    container.fwPlot = plot;
    return plot;
  }

  // A chart over time (xs in epoch seconds) with several series = [{label, values, stroke?,
  // dash?}]; `log: true` gives a log10 y axis (p-values), `yRange: [lo, hi]` fixes the axis.
  // Redraws in place; the plot stays reachable as container.fwPlot (the tests read its data).
  function timeChart(container, xs, series, { height = 220, log = false, yRange = null } = {}) {
    container.fwPlot?.destroy();
    container.replaceChildren();
    const width = () => Math.max(240, container.clientWidth - 4);
    const y = log ? { distr: 3, log: 10 } : {};
    if (yRange) y.range = () => yRange;
    const plot = new uPlot({
      width: width(), height,
      scales: { x: { time: true }, y },
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.stroke || color(i), width: s.width || 2, dash: s.dash,
        spanGaps: true, points: { show: xs.length < 40 } }))],
      axes: [{}, { size: 60 }],
    }, [xs, ...series.map((s) => s.values)], container);
    container.fwObserver?.disconnect();
    container.fwObserver = new ResizeObserver(() => plot.setSize({ width: width(), height }));
    container.fwObserver.observe(container);
    container.fwPlot = plot;
    return plot;
  }

  // Two samples over the same bins as SVG bars, as shares of each sample (so samples of different
  // sizes compare): h = {kind: "numeric", edges, reference, current} or {kind: "categorical",
  // categories, reference, current} (counts). names = [reference label, current label].
  function histogramSVG(h, { names = ["reference", "live"], width = 340, height = 150 } = {}) {
    const colors = ["#3056d3", "#f79009"];
    const labels = h.kind === "categorical" ? h.categories : h.reference.map((_, i) => i);
    const share = (xs) => { const t = xs.reduce((a, b) => a + b, 0) || 1; return xs.map((v) => v / t); };
    const sets = [share(h.reference), share(h.current)];
    const top = Math.max(1e-12, ...sets.flat());
    const left = 36, bottom = 28, plotW = width - left - 6, plotH = height - bottom - 18;
    const slot = plotW / Math.max(1, labels.length), bar = Math.max(1, (slot - 2) / 2);
    const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "hist", role: "img",
                             "data-testid": "svg-chart" });
    box.append(svg("line", { x1: left, x2: left + plotW, y1: 18 + plotH, y2: 18 + plotH, class: "zero" }),
               svg("text", { x: 0, y: 24, class: "val" }, `${(top * 100).toFixed(0)}%`),
               svg("text", { x: 0, y: 18 + plotH, class: "val" }, "0"));
    sets.forEach((values, k) => {
      values.forEach((v, i) => {
        const hgt = (v / top) * plotH;
        box.append(svg("rect", { x: left + i * slot + 1 + k * bar, y: 18 + plotH - hgt, width: bar,
                                 height: hgt, fill: colors[k], "data-series": k ? "current" : "reference" },
          svg("title", {}, `${names[k]} ${h.kind === "categorical" ? labels[i] :
            `[${fmt(h.edges[i])}, ${fmt(h.edges[i + 1])})`}: ${(v * 100).toFixed(1)}%`)));
      });
    });
    if (h.kind === "categorical") {
      labels.forEach((c, i) => box.append(svg("text", { x: left + i * slot + slot / 2, y: height - 14,
        class: "val", "text-anchor": "middle" }, String(c).length > 8 ? `${String(c).slice(0, 7)}…` : c)));
    } else if (h.edges.length) {
      box.append(svg("text", { x: left, y: height - 14, class: "val" }, fmt(h.edges[0])),
                 svg("text", { x: left + plotW, y: height - 14, class: "val", "text-anchor": "end" },
                     fmt(h.edges[h.edges.length - 1])));
    }
    names.forEach((n, k) => box.append(
      svg("rect", { x: left + k * 110, y: 2, width: 10, height: 10, fill: colors[k] }),
      svg("text", { x: left + k * 110 + 14, y: 11, class: "lbl" }, n)));
    return box;
  }

  // Merge per-run {steps, values} into one x column and aligned y columns (null where absent).
  function alignSeries(parts) {
    const xs = [...new Set(parts.flatMap((p) => p.steps))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = parts.map((p) => {
      const col = new Array(xs.length).fill(null);
      p.steps.forEach((s, i) => { col[index.get(s)] = p.values[i]; });
      return col;
    });
    return { xs, ys };
  }

  // Horizontal bars as SVG: rows = [{label, value, color?}].
  function barsSVG(rows, { max = null, format = fmt, width = 420 } = {}) {
    const rowH = 22, labelW = 150, top = max ?? Math.max(1e-12, ...rows.map((r) => r.value || 0));
    const box = svg("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 4}`, class: "bars",
                             role: "img", "data-testid": "svg-chart" });
    rows.forEach((r, i) => {
      const y = i * rowH + 2, w = Math.max(1, ((r.value || 0) / top) * (width - labelW - 70));
      box.append(
        svg("text", { x: 0, y: y + 15, class: "lbl" }, r.label),
        svg("rect", { x: labelW, y: y + 3, width: w, height: rowH - 8, rx: 3,
                      fill: r.color || color(i) }),
        svg("text", { x: labelW + w + 6, y: y + 15, class: "val" }, format(r.value)));
    });
    return box;
  }

  // Interval plot (forest plot) as SVG: rows = [{label, mean, low, high, color?}].
  function intervalsSVG(rows, { width = 460, zero = null } = {}) {
    const rowH = 26, labelW = 120, right = 20;
    const lo = Math.min(...rows.map((r) => r.low), zero ?? Infinity);
    const hi = Math.max(...rows.map((r) => r.high), zero ?? -Infinity);
    const pad = (hi - lo) * 0.08 || 0.01;
    const x = (v) => labelW + ((v - (lo - pad)) / (hi - lo + 2 * pad)) * (width - labelW - right);
    const h = rows.length * rowH + 22;
    const box = svg("svg", { viewBox: `0 0 ${width} ${h}`, class: "bars", role: "img",
                             "data-testid": "svg-chart" });
    if (zero !== null) box.append(svg("line", { x1: x(zero), x2: x(zero), y1: 0, y2: h - 18,
                                                 class: "zero" }));
    rows.forEach((r, i) => {
      const y = i * rowH + 13, c = r.color || color(i);
      box.append(
        svg("text", { x: 0, y: y + 4, class: "lbl" }, r.label),
        svg("line", { x1: x(r.low), x2: x(r.high), y1: y, y2: y, stroke: c, "stroke-width": 3 }),
        svg("circle", { cx: x(r.mean), cy: y, r: 5, fill: c }),
        svg("title", {}, `${r.label}: ${fmt(r.mean)} [${fmt(r.low)}, ${fmt(r.high)}]`));
    });
    box.append(svg("text", { x: labelW, y: h - 4, class: "val" }, fmt(lo - pad)),
               svg("text", { x: width - right, y: h - 4, class: "val", "text-anchor": "end" },
                   fmt(hi + pad)));
    return box;
  }

  // Sum of samples of one metric grouped by a key function over labels.
  function sumBy(samples, name, keyOf, match = () => true) {
    const acc = new Map();
    for (const s of samples) {
      if (s.name !== name || !match(s)) continue;
      const k = keyOf(s.labels);
      acc.set(k, (acc.get(k) || 0) + s.value);
    }
    return acc;
  }
  // Cumulative buckets per key: Map(key -> [[le, count], ...]) sorted by le.
  function bucketsBy(samples, name, keyOf, match = () => true) {
    const acc = new Map();
    for (const s of samples) {
      if (s.name !== name || !match(s)) continue;
      const k = keyOf(s.labels), le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      if (!acc.has(k)) acc.set(k, new Map());
      acc.get(k).set(le, (acc.get(k).get(le) || 0) + s.value);
    }
    const out = new Map();
    for (const [k, m] of acc) out.set(k, [...m.entries()].sort((a, b) => a[0] - b[0]));
    return out;
  }
  function bucketDelta(now, prev) {
    const p = new Map(prev || []);
    return now.map(([le, c]) => [le, c - (p.get(le) || 0)]);
  }
  async function scrapeMetrics() {
    return parsePrometheus(await (await fetch("/metrics")).text());
  }

  // Serving traffic per (endpoint, version) between two scrapes.
  function servingStats(prev, curr, seconds, keyOf) {
    const isErr = (s) => !String(s.labels.code || "").startsWith("2");
    const req = (x) => sumBy(x, "flywheel_serving_requests_total", keyOf);
    const err = (x) => sumBy(x, "flywheel_serving_requests_total", keyOf, isErr);
    const lat = (x) => bucketsBy(x, "flywheel_serving_request_duration_seconds_bucket", keyOf);
    const [rN, rP, eN, eP, lN, lP] = [req(curr), req(prev), err(curr), err(prev), lat(curr),
                                      lat(prev)];
    const out = new Map();
    for (const [k, n] of rN) {
      const d = n - (rP.get(k) || 0), e = (eN.get(k) || 0) - (eP.get(k) || 0);
      const q = histogramQuantile(0.99, bucketDelta(lN.get(k) || [], lP.get(k)));
      out.set(k, { rps: d / seconds, errorRate: d > 0 ? e / d : 0, p99: q, total: n });
    }
    return out;
  }

  // Poll fn every ms while the page is open (first call now); errors are shown, not thrown.
  function every(ms, fn) {
    const run = () => fn().catch((e) => { console.warn(e); });
    run();
    return setInterval(run, ms);
  }

  // The token field in the header: paste once per tab (sessionStorage), shown masked.
  function tokenField() {
    const input = document.getElementById("token");
    if (!input) return;
    input.value = token();
    input.addEventListener("change", () => {
      const v = input.value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
    });
  }
  document.addEventListener("DOMContentLoaded", tokenField);

  async function overview() {
    const storesBody = document.querySelector("#stores tbody");
    const healthPill = document.getElementById("health-status");
    async function health() {
      const { status, body } = await getJSON("/healthz");
      healthPill.textContent = body.status || `HTTP ${status}`;
      healthPill.className = `pill ${body.status === "ok" ? "ok" : "bad"}`;
      fillTable(storesBody, Object.entries(body.stores || {}).map(([name, s]) => [
        name, el("span", { class: s.ok ? "ok" : "bad" }, s.ok ? "up" : "down"), s.detail]));
    }
    const rps = lineChart(document.getElementById("chart-rps"), [{ label: "all routes", stroke: "#3056d3" }]);
    const p99 = lineChart(document.getElementById("chart-p99"), [{ label: "p99 ms", stroke: "#c4320a" }]);
    const routesBody = document.querySelector("#routes tbody");
    let prev = null, prevAt = 0;
    async function scrape() {
      const text = await (await fetch("/metrics")).text();
      const now = Date.now() / 1000;
      const curr = parsePrometheus(text);
      if (prev) {
        const r = routeStats(prev, curr, now - prevAt);
        rps.push(now, [r.total]);
        p99.push(now, [r.p99 === null ? null : r.p99 * 1000]);
        fillTable(routesBody, r.stats.sort((a, b) => b.rps - a.rps).map((s) => [
          s.route, s.rps.toFixed(2), s.p99 === null ? "–" : (s.p99 * 1000).toFixed(1), s.errors]));
      }
      if (prev) {
        const eps = servingStats(prev, curr, now - prevAt, (l) => l.endpoint);
        fillTable(document.querySelector("#endpoints-live tbody"), [...eps.entries()]
          .sort((a, b) => b[1].rps - a[1].rps).map(([name, s]) => [
            el("a", { href: `/ui/endpoints#${encodeURIComponent(name)}` }, name), s.rps.toFixed(2),
            s.p99 === null ? "–" : (s.p99 * 1000).toFixed(1),
            `${(s.errorRate * 100).toFixed(2)}%`]));
      }
      prev = curr; prevAt = now;
    }
    async function systems() {
      const jobs = await getJSON("/training/jobs?limit=200");
      const running = (jobs.body || []).filter?.((j) => ["running", "admitted", "queued"]
        .includes(j.state)) || [];
      fillTable(document.querySelector("#jobs tbody"), running.map((j) => [
        el("a", { href: `/ui/training#${encodeURIComponent(j.id)}` }, j.name), pill(j.state,
          j.state === "running" ? "ok" : ""), j.team, j.priority, j.restarts]));
      const exps = await getJSON("/experiments?status=running");
      fillTable(document.querySelector("#experiments tbody"), (exps.body || []).map?.((x) => [
        el("a", { href: `/ui/experiments#${encodeURIComponent(x.name)}` }, x.name), x.kind,
        Object.entries(x.shares || {}).map(([v, w]) => `${v} ${(w * 100).toFixed(0)}%`)
          .join(" · ")]) || []);
    }
    await Promise.all([health(), scrape(), systems()]);
    setInterval(systems, 5000);
    setInterval(health, 5000);
    setInterval(scrape, 2000);
  }

  return { getJSON, parsePrometheus, histogramQuantile, lineChart, fillTable, el, overview,
           send, svg, fmt, when, color, pill, button, link, empty, xyChart, timeChart,
           histogramSVG, alignSeries, barsSVG,
           intervalsSVG, sumBy, bucketsBy, bucketDelta, scrapeMetrics, servingStats, every,
           token, pages: {} };
})();
