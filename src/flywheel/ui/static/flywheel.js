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
      scales: { x: { time: true } },
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

  async function overview() {
    const storesBody = document.querySelector("#stores tbody");
    const pill = document.getElementById("health-status");
    async function health() {
      const { status, body } = await getJSON("/healthz");
      pill.textContent = body.status || `HTTP ${status}`;
      pill.className = `pill ${body.status === "ok" ? "ok" : "bad"}`;
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
      prev = curr; prevAt = now;
    }
    await Promise.all([health(), scrape()]);
    setInterval(health, 5000);
    setInterval(scrape, 2000);
  }

  return { getJSON, parsePrometheus, histogramQuantile, lineChart, fillTable, el, overview };
})();
