// Flywheel dashboard: small helpers over the public HTTP APIs, and one function per page.
"use strict";

const Flywheel = (() => {
  // ----- fetching: one helper that checks the status and the shape of every answer -----
  const TOKEN_KEY = "flywheel-token";
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  const conn = { lastOk: null, down: false };
  const hhmm = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  function connBanner() {
    const b = document.getElementById("conn-banner");
    if (!b) return;
    b.hidden = !conn.down;
    document.body.classList.toggle("stale", conn.down);
    if (conn.down) {
      b.textContent = `Server unreachable — data as of ${conn.lastOk ? hhmm(conn.lastOk) : "never"}` +
        " (retrying; what you see may be out of date).";
    }
  }
  function markOk() { conn.lastOk = new Date(); if (conn.down) { conn.down = false; connBanner(); } }
  function markDown() { conn.down = true; connBanner(); }

  // api(url, {shape, method, body}) -> {ok, status, data, error}; never throws.
  //   shape: "array" (a JSON list), "object" (a JSON object), "text" (any text), "any".
  //   error: the server's own `error` text when it sent one, else what went wrong.
  // A network failure marks the server unreachable (the banner) until a later answer arrives.
  async function api(url, { shape = "any", method = "GET", body = undefined } = {}) {
    const headers = { Accept: shape === "text" ? "text/plain" : "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token()) headers.Authorization = `Bearer ${token()}`;
    let r, text;
    try {
      r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      text = await r.text();
    } catch (e) {
      markDown();
      return { ok: false, status: 0, data: null, error: "the server is unreachable", offline: true };
    }
    markOk();
    if (shape === "text" && r.ok) return { ok: true, status: r.status, data: text, error: null };
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!r.ok) {
      const said = data && typeof data === "object" && typeof data.error === "string" ? data.error : null;
      return { ok: false, status: r.status, data, error: said || `HTTP ${r.status} from ${url.split("?")[0]}` };
    }
    const bad = (what) => ({ ok: false, status: r.status, data, error: `unexpected answer from ${url.split("?")[0]}: expected ${what}` });
    if (shape === "array" && !Array.isArray(data)) return bad("a list");
    if (shape === "object" && (data === null || typeof data !== "object" || Array.isArray(data))) return bad("an object");
    const total = r.headers.get("X-Total-Count");  // list APIs that page say how many match
    return { ok: true, status: r.status, data, error: null, total: total === null ? null : Number(total) };
  }
  // The previous helper's contract ({status, body}), kept for callers that read both.
  async function getJSON(url) {
    const r = await api(url);
    return { status: r.status, body: r.ok ? r.data : (r.data && typeof r.data === "object" ? r.data : { error: r.error }) };
  }
  // A failed answer shown in place of a card's content (the server's error text, its status).
  function showError(node, res, what = "") {
    const text = `${what ? `${what}: ` : ""}${res.error}${res.status ? ` (HTTP ${res.status})` : ""}`;
    const p = el("p", { class: "error", role: "alert" }, text);
    if (node.tagName === "TBODY") {
      const cols = node.closest("table")?.querySelectorAll("thead th").length || 1;
      node.replaceChildren(el("tr", {}, el("td", { colspan: cols }, p)));
    } else {
      node.fwPlot?.destroy(); node.fwPlot = null;
      node.replaceChildren(p);
    }
    return null;
  }
  // Fetch and either return the data or show the error in `node` (returns null then).
  async function load(node, url, shape = "any", what = "") {
    const r = await api(url, { shape });
    if (!r.ok) return node ? showError(node, r, what) : null;
    return r.data;
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

  // ----- charts (uPlot), readable in both themes, with a text alternative -----
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#667085";
  const plots = new Set();
  document.addEventListener("fw-theme", () => { for (const p of plots) p.redraw(false, true); });
  const axisStyle = () => ({ stroke: () => cssVar("--fg"), grid: { stroke: () => cssVar("--grid"), width: 1 },
                             ticks: { stroke: () => cssVar("--grid"), width: 1 } });
  // Tick labels for a log10 axis: 1, 0.1, 0.01, 1e-3 ... (never "0" for a small p-value).
  function logTick(v) {
    if (v === null || v === undefined) return "";
    if (v >= 0.01 && v <= 1000) return String(+v.toPrecision(2));
    return `1e${Math.round(Math.log10(v))}`;
  }
  // Time tick labels that fit: the span picks the format (seconds, minutes, days).
  function timeTicks(u, splits) {
    const finite = splits.filter((t) => Number.isFinite(t));
    const span = finite.length > 1 ? finite[finite.length - 1] - finite[0] : 0;
    return splits.map((t) => {
      if (t === null || t === undefined) return "";
      const d = new Date(t * 1000);
      if (span < 600) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      if (span < 2 * 86400) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      return d.toLocaleDateString([], { month: "short", day: "numeric" });
    });
  }
  // A range with room around it: one point (or a flat line) gets a small window around its value,
  // not the library's default (which turns one timestamp into years).
  function padRange(min, max, { minSpan = 1, floor = null } = {}) {
    if (min === null || max === null || !isFinite(min) || !isFinite(max)) return [0, 1];
    if (max - min < 1e-12) {
      const half = Math.max(Math.abs(min) * 0.1, minSpan / 2) || 0.5;
      let lo = min - half;
      if (floor !== null && lo < floor && min >= floor) lo = floor;
      return [lo, max + half];
    }
    const pad = (max - min) * 0.05;
    let lo = min - pad;
    if (floor !== null && lo < floor && min >= floor) lo = floor;
    return [lo, max + pad];
  }
  // An x range from the data itself: uPlot widens a single x value before asking (a whole day
  // for time), so the range function looks at the data, then pads like padRange.
  function xRange(minSpan) {
    return (u, min, max) => {
      const xs = (u.data?.[0] || []).filter((v) => v !== null && Number.isFinite(v));
      if (xs.length) { min = xs[0]; max = xs[xs.length - 1]; }
      return padRange(min, max, { minSpan });
    };
  }
  // A text alternative for a chart: each series' last, min and max value over the points shown.
  function describe(container, title, xs, series, xFmt = fmt) {
    const parts = series.map((s) => {
      const vals = s.values.filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
      if (!vals.length) return `${s.label}: no data`;
      return `${s.label}: last ${fmt(vals[vals.length - 1])}, min ${fmt(Math.min(...vals))}, max ${fmt(Math.max(...vals))}`;
    });
    const span = xs.length ? ` over ${xs.length} point${xs.length === 1 ? "" : "s"} from ${xFmt(xs[0])} to ${xFmt(xs[xs.length - 1])}` : " (no points yet)";
    container.setAttribute("role", "img");
    container.setAttribute("aria-label", `${title}${span}. ${parts.join("; ")}`);
  }
  const timeFmt = (t) => new Date(t * 1000).toLocaleTimeString();
  function track(container, plot, height) {
    const width = () => Math.max(240, container.clientWidth - 4);
    container.fwObserver?.disconnect();
    container.fwObserver = new ResizeObserver(() => plot.setSize({ width: width(), height }));
    container.fwObserver.observe(container);
    const destroy = plot.destroy.bind(plot);
    plot.destroy = () => { plots.delete(plot); destroy(); };
    plots.add(plot);
    container.fwPlot = plot;
  }

  // A live time-series chart (points arrive while the page is open) keeping the last `keep`.
  function lineChart(container, series, keep = 150) {
    const data = [[], ...series.map(() => [])];
    const width = () => Math.max(240, container.clientWidth - 4);
    const title = container.closest(".card")?.querySelector("h2")?.textContent || "chart";
    const plot = new uPlot({
      width: width(), height: 220,
      // At least the last minute on the x axis, so that the first points do not span years.
      scales: { x: { time: true, range: (u) => {
        const xs = u.data[0], now = Date.now() / 1000;
        const lo = xs.length ? xs[0] : now, hi = xs.length ? xs[xs.length - 1] : now;
        return [Math.min(lo, hi - 60), hi];
      } }, y: { range: (_u, min, max) => padRange(min, max, { floor: 0 }) } },
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, spanGaps: true }))],
      axes: [{ ...axisStyle(), space: 80, values: timeTicks }, { ...axisStyle(), size: 55 }],
    }, data, container);
    track(container, plot, 220);
    describe(container, title, [], series.map((s) => ({ label: s.label, values: [] })));
    return {
      push(t, values) {
        data[0].push(t);
        values.forEach((v, i) => data[i + 1].push(v));
        if (data[0].length > keep) data.forEach((col) => col.shift());
        plot.setData(data);
        describe(container, title, data[0], series.map((s, i) => ({ label: s.label, values: data[i + 1] })), timeFmt);
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
  // POST/PUT with the pasted token (if any); returns {status, body}, never throws on HTTP errors.
  async function send(method, url, body) {
    const r = await api(url, { method, body: body || {} });
    return { status: r.status, body: r.ok ? r.data || {} : { ...(r.data || {}), error: r.error } };
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
  // Dark enough for white text on them (split bars), distinct enough for lines in both themes.
  const PALETTE = ["#2f5bd8", "#c4320a", "#0f7a50", "#7a4fd6", "#b54708", "#026aa2", "#c11574",
                   "#5a6473"];
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

  // A chart over numeric x (steps, versions): xs shared, series = [{label, values}]; redraws in
  // place. `integerX: true` gives integer ticks only (versions). One metric per chart: callers
  // draw small multiples rather than mixing scales on one axis.
  function xyChart(container, xs, series, { xLabel = "step", height = 220, integerX = false, title = null } = {}) {
    container.fwPlot?.destroy();
    container.replaceChildren();
    const width = () => Math.max(240, container.clientWidth - 4);
    const plot = new uPlot({
      width: width(), height,
      scales: { x: { time: false, range: xRange(integerX ? 2 : 1) },
                y: { range: (_u, min, max) => padRange(min, max, { minSpan: 0 }) } },
      series: [{ label: xLabel, value: (_u, v) => (v === null || v === undefined ? "–" : integerX ? `v${v}` : fmt(v)) },
        ...series.map((s, i) => ({
          label: s.label, stroke: s.stroke || color(i), width: 2, spanGaps: true,
          points: { show: true, size: xs.length < 3 ? 8 : 5 } }))],
      axes: [{ ...axisStyle(), label: xLabel, ...(integerX ? { incrs: [1, 2, 5, 10, 20, 50, 100], values: (_u, splits) => splits.map((v) => (Number.isInteger(v) ? `v${v}` : "")) } : {}) },
             { ...axisStyle(), size: 60 }],
    }, [xs, ...series.map((s) => s.values)], container);
    track(container, plot, height);
    describe(container, title || series.map((s) => s.label).join(", "), xs, series, integerX ? (v) => `v${v}` : fmt);
    return plot;
  }

  // A chart over time (xs in epoch seconds) with several series = [{label, values, stroke?,
  // dash?}]; `log: true` gives a log10 y axis with real tick labels (p-values), `yRange: [lo, hi]`
  // fixes the axis. Redraws in place; the plot stays reachable as container.fwPlot.
  function timeChart(container, xs, series, { height = 220, log = false, yRange = null, title = null } = {}) {
    container.fwPlot?.destroy();
    container.replaceChildren();
    const width = () => Math.max(240, container.clientWidth - 4);
    const y = log ? { distr: 3, log: 10 } : { range: (_u, min, max) => padRange(min, max, { minSpan: 0 }) };
    if (yRange) y.range = () => yRange;
    const plot = new uPlot({
      width: width(), height,
      scales: { x: { time: true, range: xRange(120) }, y },
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: s.stroke || color(i), width: s.width || 2, dash: s.dash,
        spanGaps: true, points: { show: xs.length < 40 } }))],
      axes: [{ ...axisStyle(), space: 80, values: timeTicks },
             { ...axisStyle(), size: 60, ...(log ? { values: (_u, splits) => splits.map(logTick) } : {}) }],
    }, [xs, ...series.map((s) => s.values)], container);
    track(container, plot, height);
    describe(container, title || container.closest(".card")?.querySelector("h2")?.textContent || "chart", xs, series, timeFmt);
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
                             "data-testid": "svg-chart",
                             "aria-label": `${names[0]} vs ${names[1]}, share of rows in ${labels.length} bins: ` +
                               labels.map((l, i) => `${h.kind === "categorical" ? l : `bin ${i + 1}`} ${(sets[0][i] * 100).toFixed(0)}% vs ${(sets[1][i] * 100).toFixed(0)}%`).join("; ") });
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
                             role: "img", "data-testid": "svg-chart",
                             "aria-label": rows.map((r) => `${r.label}: ${format(r.value)}`).join("; ") || "no data" });
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
                             "data-testid": "svg-chart",
                             "aria-label": rows.map((r) => `${r.label}: ${fmt(r.mean)}, interval ${fmt(r.low)} to ${fmt(r.high)}`).join("; ") });
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
  // Samples of /metrics, or null (the banner says why) when the server did not answer.
  async function scrapeMetrics() {
    const r = await api("/metrics", { shape: "text" });
    return r.ok ? parsePrometheus(r.data) : null;
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

  // Poll fn every ms while the page is open (first call now). Calls never overlap; an exception
  // is logged, never left uncaught; the fetch helper drives the "server unreachable" banner.
  function every(ms, fn, { now = true } = {}) {
    let busy = false;
    const run = async () => {
      if (busy) return;
      busy = true;
      try { await fn(); } catch (e) { console.warn(e); } finally { busy = false; }
    };
    if (now) run();
    return setInterval(run, ms);
  }

  // The page's subject: the decoded hash ("" for none).
  const subject = () => { try { return decodeURIComponent(location.hash.slice(1)); } catch { return ""; } };
  // Empty every panel named by id, with a note (a new subject must not show the old one's data).
  function resetPanels(ids, note = "Loading…") {
    for (const id of ids) {
      const node = document.getElementById(id);
      if (!node) continue;
      node.fwPlot?.destroy(); node.fwPlot = null;
      if (node.tagName === "TBODY" || node.tagName === "TABLE") (node.tBodies?.[0] || node).replaceChildren();
      else node.replaceChildren(el("p", { class: "muted" }, note));
    }
    for (const f of document.querySelectorAll(".flash")) { f.hidden = true; f.textContent = ""; }
  }

  // The token field in the header: paste once per tab (sessionStorage), shown masked. Its role
  // (GET /ui/api/whoami) enables or disables the action buttons.
  const who = { role: null, name: null };
  const ROLES = { reader: 1, writer: 2, admin: 3 };
  const canWrite = () => (ROLES[who.role] || 0) >= ROLES.writer;
  async function refreshRole() {
    who.role = null; who.name = null;
    if (token()) {
      const r = await api("/ui/api/whoami", { shape: "object" });
      if (r.ok) { who.role = r.data.role; who.name = r.data.name; }
    }
    const state = document.getElementById("token-state");
    if (state) state.textContent = !token() ? "no token: read only" : who.role ? `${who.name} (${who.role})` : "token not accepted";
    document.dispatchEvent(new CustomEvent("fw-role"));
    syncActions();
  }
  // Buttons marked data-needs-writer are disabled (with the reason) unless the token can write
  // and the button's own `fwPossible` check (if any) says the action applies now.
  function syncActions(root = document) {
    for (const b of root.querySelectorAll("[data-needs-writer]")) {
      const impossible = b.fwImpossible || "";
      b.disabled = !canWrite() || !!impossible;
      b.title = !canWrite() ? "needs a writer token: paste one in the token field at the top" : impossible;
    }
  }
  function tokenField() {
    const input = document.getElementById("token");
    if (!input) return;
    input.value = token();
    input.addEventListener("change", () => {
      const v = input.value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v); else sessionStorage.removeItem(TOKEN_KEY);
      refreshRole();
    });
    refreshRole();
  }
  document.addEventListener("DOMContentLoaded", tokenField);

  // Light or dark: the system's choice (prefers-color-scheme) until the toggle saves one.
  function effectiveTheme() {
    return document.documentElement.dataset.theme ||
      (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  }
  function themeToggle() {
    const b = document.getElementById("theme-toggle");
    if (!b) return;
    const label = () => { b.textContent = effectiveTheme() === "dark" ? "light theme" : "dark theme"; };
    label();
    b.addEventListener("click", () => {
      const next = effectiveTheme() === "dark" ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      localStorage.setItem("flywheel-theme", next);
      label();
      document.dispatchEvent(new CustomEvent("fw-theme"));
    });
  }
  document.addEventListener("DOMContentLoaded", themeToggle);

  // A card whose content is wider than itself scrolls sideways: it becomes a focusable, named
  // region so that keyboard users can scroll it too (WCAG: scrollable regions reachable).
  function markScrollable() {
    for (const card of document.querySelectorAll("main .card")) {
      if (card.scrollWidth > card.clientWidth + 1) {
        if (!card.hasAttribute("tabindex")) {
          card.setAttribute("tabindex", "0");
          card.setAttribute("role", "region");
          card.setAttribute("aria-label", card.querySelector("h2")?.textContent.trim() || "scrollable panel");
        }
      } else if (card.getAttribute("role") === "region") {
        card.removeAttribute("tabindex"); card.removeAttribute("role"); card.removeAttribute("aria-label");
      }
    }
  }
  let marking = false;
  const scheduleMark = () => { if (!marking) { marking = true; requestAnimationFrame(() => { marking = false; markScrollable(); }); } };
  document.addEventListener("DOMContentLoaded", () => {
    const main = document.querySelector("main");
    if (main) new MutationObserver(scheduleMark).observe(main, { childList: true, subtree: true });
    window.addEventListener("resize", scheduleMark);
    scheduleMark();
  });

  // ----- actions: a confirmation dialog with a typed reason, run and audited by the server -----
  // POST /ui/api/actions runs `method path body` through the system's own HTTP API with the
  // pasted token and records who, what, why and the outcome (GET /ui/api/actions lists them).
  function flash(text, ok) {
    const f = document.getElementById("flash") || document.getElementById("action-flash");
    if (!f) return;
    f.className = `flash ${ok ? "ok" : "bad"}`; f.textContent = text; f.hidden = false;
  }
  function confirmAction({ title, detail = "", action, target, method = "POST", path, body = () => ({}), onDone = null, fields = null }) {
    const dlg = document.getElementById("confirm");
    const reason = el("textarea", { id: "confirm-reason", rows: 3, "aria-required": "true", maxlength: 500 });
    const err = el("p", { class: "error", role: "alert", id: "confirm-error", hidden: "" });
    const ok = el("button", { type: "submit", class: "danger", id: "confirm-ok" }, "Confirm");
    const cancel = el("button", { type: "button", id: "confirm-cancel" }, "Cancel");
    const form = el("form", { method: "dialog" },
      el("h2", { id: "confirm-title" }, title), detail ? el("p", {}, detail) : "",
      ...(fields ? [fields] : []),
      el("label", { for: "confirm-reason" }, "Reason (required; recorded in the audit log)"), reason, err,
      el("div", { class: "toolbar end" }, cancel, ok));
    dlg.replaceChildren(form);
    dlg.setAttribute("aria-labelledby", "confirm-title");
    cancel.addEventListener("click", () => dlg.close());
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const why = reason.value.trim();
      if (why.length < 3) { err.hidden = false; err.textContent = "Type a reason (3 characters or more)."; reason.focus(); return; }
      let payload;
      try { payload = body(); } catch (x) { err.hidden = false; err.textContent = x.message; return; }
      ok.disabled = true;
      const r = await api("/ui/api/actions", { method: "POST", shape: "object",
        body: { action, target, reason: why, method, path, body: payload } });
      ok.disabled = false;
      if (!r.ok) { err.hidden = false; err.textContent = `Refused: ${r.error}${r.status ? ` (HTTP ${r.status})` : ""}`; return; }
      dlg.close();
      flash(`${title}: done (audit #${r.data.audit_id})`, true);
      if (onDone) await onDone(r.data.body);
      document.dispatchEvent(new CustomEvent("fw-acted"));
    });
    dlg.showModal();
    reason.focus();
  }
  // A button for an action: disabled without a writer token, or with `impossible` (a reason).
  function actionButton(label, spec, { impossible = "", id = null } = {}) {
    const b = el("button", { type: "button", "data-needs-writer": "", "data-action": id || spec.action });
    b.textContent = label;
    b.fwImpossible = impossible;
    b.addEventListener("click", () => confirmAction(spec));
    syncActions(b.parentNode || document);
    b.disabled = !canWrite() || !!impossible;
    b.title = !canWrite() ? "needs a writer token: paste one in the token field at the top" : impossible;
    return b;
  }
  // The audit of dashboard actions on one target, newest first, into a table body.
  async function auditInto(tbody, target) {
    const rows = await load(tbody, `/ui/api/actions?target=${encodeURIComponent(target)}&limit=20`, "array", "audit");
    if (!rows) return;
    if (!rows.length) { tbody.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No dashboard actions yet."))); return; }
    fillTable(tbody, rows.map((a) => [`#${a.id}`, when(a.at), a.action, a.actor, a.reason,
      pill(`HTTP ${a.status}`, a.status < 300 ? "ok" : "bad")]));
  }

  // ----- tables: sort, a column chooser and pages -----
  // dataTable(host, {id, columns: [{key, label, value(row), render(row)?, hidden?, fixed?}],
  //   pageSize, onSort(key, desc)?}) -> {set(rows), columns(), state}. The chosen columns persist
  // per table (localStorage). Columns with `server: true` are sorted by the server: onSort(key,
  // desc) fetches again and calls set() with its answer. With onPage(page) the server pages too:
  // set(rows, total) gets one page of rows and the server's total, and previous/next call
  // onPage(page), which fetches that page (offset page × pageSize) and calls set() again.
  function dataTable(host, { id, columns, pageSize = 25, onSort = null, onPage = null, caption = "" }) {
    const saved = JSON.parse(localStorage.getItem(`fw-cols-${id}`) || "null");
    const state = { sort: null, desc: false, page: 0, rows: [], total: 0, pageSize, shown: new Set(
      saved || columns.filter((c) => !c.hidden).map((c) => c.key)) };
    const table = el("table", { id });
    if (caption) table.append(el("caption", { class: "muted" }, caption));
    const thead = el("thead"), tbody = el("tbody");
    table.append(thead, tbody);
    const chooser = el("details", { class: "columns" }, el("summary", {}, "columns"));
    const pager = el("div", { class: "pager" });
    host.replaceChildren(chooser, table, pager);
    let cols = columns;
    function setColumns(next) {
      cols = next;
      chooser.replaceChildren(el("summary", {}, "columns"), ...cols.filter((c) => !c.fixed).map((c) => {
        const box = el("input", { type: "checkbox", "data-column": c.key });
        box.checked = state.shown.has(c.key);
        box.addEventListener("change", () => {
          if (box.checked) state.shown.add(c.key); else state.shown.delete(c.key);
          localStorage.setItem(`fw-cols-${id}`, JSON.stringify([...state.shown]));
          draw();
        });
        return el("label", {}, box, c.label);
      }));
    }
    const visible = () => cols.filter((c) => c.fixed || state.shown.has(c.key));
    function sorted() {
      if (!state.sort) return state.rows;
      const col = cols.find((c) => c.key === state.sort);
      if (!col || (onSort && col.server)) return state.rows;  // the server sorted these
      const v = (r) => col.value(r);
      return state.rows.slice().sort((a, b) => {
        const x = v(a), y = v(b);
        const nx = x === null || x === undefined || x === "", ny = y === null || y === undefined || y === "";
        if (nx || ny) return nx === ny ? 0 : nx ? 1 : -1;  // blanks last, either way
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
        return state.desc ? -c : c;
      });
    }
    function draw() {
      const vis = visible();
      thead.replaceChildren(el("tr", {}, ...vis.map((c) => {
        if (c.sortable === false) return el("th", { scope: "col" }, c.label);
        const b = el("button", { type: "button", class: "sort", "data-sort": c.key }, c.label +
          (state.sort === c.key ? (state.desc ? " ▼" : " ▲") : ""));
        b.addEventListener("click", () => {
          state.desc = state.sort === c.key ? !state.desc : false;
          state.sort = c.key; state.page = 0;
          if (onSort && c.server) onSort(c.key, state.desc); else draw();
        });
        return el("th", { scope: "col", "aria-sort": state.sort === c.key ? (state.desc ? "descending" : "ascending") : "none" }, b);
      })));
      const rows = sorted(), count = onPage ? state.total : rows.length, pages = Math.max(1, Math.ceil(count / pageSize));
      if (!onPage) state.page = Math.min(state.page, pages - 1);
      const slice = onPage ? rows : rows.slice(state.page * pageSize, (state.page + 1) * pageSize);
      tbody.replaceChildren(...slice.map((r) => {
        const tr = el("tr", r.fwAttrs || {});
        for (const c of vis) {
          const v = c.render ? c.render(r) : c.value(r);
          tr.append(el("td", { "data-col": c.key }, v instanceof Node ? v : v === null || v === undefined ? "–" : typeof v === "number" ? fmt(v) : String(v)));
        }
        return tr;
      }));
      if (!slice.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: vis.length, class: "muted" }, "Nothing to show.")));
      const prev = el("button", { type: "button", "data-page": "prev" }, "← previous"), next = el("button", { type: "button", "data-page": "next" }, "next →");
      prev.disabled = state.page === 0; next.disabled = state.page >= pages - 1;
      const go = (page) => { state.page = page; if (onPage) onPage(page); else draw(); };
      prev.addEventListener("click", () => go(state.page - 1));
      next.addEventListener("click", () => go(state.page + 1));
      pager.replaceChildren(prev, el("span", { class: "muted", "data-testid": "page-info" }, `page ${state.page + 1} of ${pages} · ${count} rows`), next);
      pager.hidden = count <= pageSize && state.page === 0;
    }
    setColumns(columns);
    return {
      set(rows, total = null) { state.rows = rows; state.total = total ?? rows.length; draw(); },
      // The offset and limit of the page shown (server paging).
      query() { return { offset: String(state.page * pageSize), limit: String(pageSize) }; },
      setColumns(next) { setColumns(next); draw(); },
      error(res, what) { showError(tbody, res, what); pager.hidden = true; },
      state, table, tbody,
    };
  }

  async function overview() {
    const storesBody = document.querySelector("#stores tbody");
    const healthPill = document.getElementById("health-status");
    async function health() {
      const r = await api("/healthz", { shape: "object" });
      if (r.offline) {  // nothing known now: say so instead of the last "ok"
        healthPill.textContent = "unknown"; healthPill.className = "pill";
        for (const td of storesBody.querySelectorAll("td:nth-child(2)")) td.replaceChildren(el("span", { class: "muted" }, "unknown"));
        return;
      }
      const body = r.data || {};
      healthPill.textContent = body.status || `HTTP ${r.status}`;
      healthPill.className = `pill ${body.status === "ok" ? "ok" : "bad"}`;
      if (!body.stores) { showError(storesBody, r, "health"); return; }
      fillTable(storesBody, Object.entries(body.stores).map(([name, s]) => [
        name, el("span", { class: s.ok ? "ok" : "bad" }, s.ok ? "up" : "down"), s.detail]));
    }
    const rps = lineChart(document.getElementById("chart-rps"), [{ label: "all routes", stroke: color(0) }]);
    const p99 = lineChart(document.getElementById("chart-p99"), [{ label: "p99 ms", stroke: color(1) }]);
    const routesBody = document.querySelector("#routes tbody");
    let prev = null, prevAt = 0;
    async function scrape() {
      const curr = await scrapeMetrics();
      if (!curr) { prev = null; return; }
      const now = Date.now() / 1000;
      if (prev) {
        const r = routeStats(prev, curr, now - prevAt);
        rps.push(now, [r.total]);
        p99.push(now, [r.p99 === null ? null : r.p99 * 1000]);
        fillTable(routesBody, r.stats.sort((a, b) => b.rps - a.rps).map((s) => [
          s.route, s.rps.toFixed(2), s.p99 === null ? "–" : (s.p99 * 1000).toFixed(1), s.errors]));
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
      const jobsBody = document.querySelector("#jobs tbody");
      const jobs = await load(jobsBody, "/training/jobs?limit=200", "array", "jobs");
      if (jobs) {
        const running = jobs.filter((j) => ["running", "admitted", "queued"].includes(j.state));
        fillTable(jobsBody, running.map((j) => [
          el("a", { href: `/ui/training#${encodeURIComponent(j.id)}` }, j.name), pill(j.state,
            j.state === "running" ? "ok" : ""), j.team, j.priority, j.restarts]));
      }
      const expBody = document.querySelector("#experiments tbody");
      const exps = await load(expBody, "/experiments?status=running", "array", "experiments");
      if (exps) {
        const live = await liveAllocations(exps);
        fillTable(expBody, exps.map((x) => [
          el("a", { href: `/ui/experiments#${encodeURIComponent(x.name)}` }, x.name), x.kind,
          allocationText(x, live.get(x.name))]));
      }
    }
    await Promise.all([health(), scrape(), systems()]);
    every(5000, systems, { now: false });
    every(5000, health, { now: false });
    every(2000, scrape, { now: false });
  }

  // A bandit's allocation is what its policy does now (GET .../bandit probabilities), not the
  // split it was created with; an A/B test's is its configured split.
  async function liveAllocations(exps) {
    const out = new Map();
    await Promise.all(exps.filter((x) => x.kind === "bandit").map(async (x) => {
      const r = await api(`/experiments/${encodeURIComponent(x.name)}/bandit`, { shape: "object" });
      if (r.ok && r.data.probabilities) out.set(x.name, r.data.probabilities);
    }));
    return out;
  }
  function allocationText(x, live) {
    if (x.kind === "bandit") {
      if (!live) return el("span", { class: "muted" }, "live allocation unavailable (contextual or no state)");
      return el("span", { "data-live-allocation": "" }, `live: ${Object.entries(live).map(([v, w]) => `${v} ${(w * 100).toFixed(0)}%`).join(" · ")}`);
    }
    return Object.entries(x.shares || {}).map(([v, w]) => `${v} ${(w * 100).toFixed(0)}%`).join(" · ");
  }

  return { dataTable, api, load, showError, subject, resetPanels, confirmAction, actionButton, auditInto,
           canWrite, who, syncActions, flash, liveAllocations, allocationText, conn, cssVar,
           getJSON, parsePrometheus, histogramQuantile, lineChart, fillTable, el, overview,
           send, svg, fmt, when, color, pill, button, link, empty, xyChart, timeChart, logTick, padRange, timeTicks,
           histogramSVG, alignSeries, barsSVG,
           intervalsSVG, sumBy, bucketsBy, bucketDelta, scrapeMetrics, servingStats, every,
           token, pages: {} };
})();
