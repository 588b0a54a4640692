// Traces page: search stored traces (GET /traces), a waterfall per trace (GET /traces/{id}),
// each span's attributes. Filters come from the form or the URL (?name=&service=&attr=K=V&
// min_duration_ms=&trace=ID), so other pages link here (e.g. a model's recent traces:
// /ui/traces?attr=flywheel.model=churn).
"use strict";

const FlywheelTraces = (() => {
  const FIELDS = ["name", "service", "attr", "min_duration_ms"];

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function authHeaders() {
    const input = document.getElementById("token");
    const token = input && input.value.trim();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // {ok, status, data, error}; never throws (the shared helper's shape when it exists).
  async function api(url) {
    if (window.Flywheel && typeof Flywheel.api === "function") {
      return Flywheel.api(url, { shape: "object" });
    }
    try {
      const r = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() } });
      const data = await r.json().catch(() => null);
      if (!r.ok) return { ok: false, status: r.status, data, error: (data && data.error) || `HTTP ${r.status} from ${url}` };
      return { ok: true, status: r.status, data, error: null };
    } catch (e) {
      return { ok: false, status: 0, data: null, error: `server unreachable (${e})` };
    }
  }

  function ms(v) { return v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(1)} ms`; }

  function queryFromForm() {
    const params = new URLSearchParams();
    for (const f of FIELDS) {
      const v = document.querySelector(`[name=${f}]`).value.trim();
      if (v) params.set(f, v);
    }
    if (document.getElementById("f-errors").checked) params.set("errors_only", "true");
    params.set("limit", "50");
    return params;
  }

  async function search(pushState = true) {
    const params = queryFromForm();
    const status = document.getElementById("traces-status");
    status.textContent = "Searching…";
    if (pushState) history.replaceState(null, "", `?${params.toString()}`);
    const r = await api(`/traces?${params.toString()}`);
    const tbody = document.querySelector("#traces tbody");
    if (!r.ok) {
      tbody.replaceChildren();
      status.textContent = `Search failed: ${r.error}`;
      return;
    }
    const traces = r.data.traces || [];
    tbody.replaceChildren(...traces.map((t) => {
      const link = el("a", { href: `#trace=${t.trace_id}`, "data-trace": t.trace_id }, t.trace_id.slice(0, 16));
      link.addEventListener("click", (ev) => { ev.preventDefault(); show(t.trace_id); });
      const tokens = t.input_tokens || t.output_tokens ? `${t.input_tokens}/${t.output_tokens}` : "";
      return el("tr", {},
        el("td", {}, link), el("td", {}, t.root_name || "(root not stored)"),
        el("td", {}, t.root_service || ""), el("td", {}, t.start_time.slice(0, 23).replace("T", " ")),
        el("td", {}, ms(t.duration_ms)), el("td", {}, t.span_count),
        el("td", { class: t.error_count ? "bad" : "" }, t.error_count || ""), el("td", {}, tokens));
    }));
    status.textContent = traces.length ? `${traces.length} traces, newest first` : "No trace matches these filters.";
  }

  function depthOf(spans) {
    const byId = new Map(spans.map((s) => [s.span_id, s]));
    const depth = new Map();
    const get = (s) => {
      if (depth.has(s.span_id)) return depth.get(s.span_id);
      const parent = s.parent_span_id && byId.get(s.parent_span_id);
      const d = parent && parent !== s ? get(parent) + 1 : 0;
      depth.set(s.span_id, d);
      return d;
    };
    spans.forEach(get);
    return depth;
  }

  // Spans in tree order (parents before children, siblings by start time).
  function treeOrder(spans) {
    const ids = new Set(spans.map((s) => s.span_id));
    const children = new Map();
    for (const s of spans) {
      const p = s.parent_span_id && ids.has(s.parent_span_id) ? s.parent_span_id : null;
      if (!children.has(p)) children.set(p, []);
      children.get(p).push(s);
    }
    const out = [];
    const walk = (p) => {
      for (const s of (children.get(p) || []).sort((a, b) => a.start_ns - b.start_ns)) {
        out.push(s);
        walk(s.span_id);
      }
    };
    walk(null);
    return out;
  }

  function showSpan(span) {
    document.getElementById("span-title").textContent = `Span attributes: ${span.name}`;
    const dl = document.getElementById("span-attrs");
    const rows = [["span id", span.span_id], ["parent", span.parent_span_id || "(root)"],
      ["service", span.service], ["kind", span.kind], ["status", span.status + (span.status_message ? `: ${span.status_message}` : "")],
      ["duration", ms(span.duration_ms)],
      ...Object.entries(span.attributes).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)])];
    for (const e of span.events || []) rows.push([`event ${e.name}`, JSON.stringify(e.attributes)]);
    dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  async function show(traceId) {
    history.replaceState(null, "", `${location.search}#trace=${traceId}`);
    const title = document.getElementById("trace-title");
    const tbody = document.querySelector("#waterfall tbody");
    const r = await api(`/traces/${encodeURIComponent(traceId)}`);
    if (!r.ok) {
      title.textContent = `Waterfall: ${r.error}`;
      tbody.replaceChildren();
      return;
    }
    const { trace, spans } = r.data;
    title.textContent = `Waterfall: ${trace.trace_id} (${trace.span_count} spans, ${ms(trace.duration_ms)})`;
    const t0 = trace.start_ns;
    const total = Math.max(1, Number(trace.duration_ms) * 1e6);
    const depth = depthOf(spans);
    tbody.replaceChildren(...treeOrder(spans).map((s) => {
      const left = ((s.start_ns - t0) / total) * 100;
      const width = Math.max(0.3, ((s.end_ns - s.start_ns) / total) * 100);
      const genai = "gen_ai.operation.name" in s.attributes;
      const bar = el("div", { class: `bar${s.status === "error" ? " error" : genai ? " genai" : ""}`,
        style: `left:${left.toFixed(3)}%;width:${width.toFixed(3)}%`, title: `${s.name}: ${ms(s.duration_ms)}` });
      const row = el("tr", { "data-span": s.span_id, tabindex: "0" },
        el("td", { class: "name", style: `padding-left:${6 + 14 * depth.get(s.span_id)}px` }, s.name),
        el("td", { class: "muted" }, ms(s.duration_ms)),
        el("td", { class: "lane" }, bar));
      const select = () => {
        tbody.querySelectorAll("tr.selected").forEach((x) => x.classList.remove("selected"));
        row.classList.add("selected");
        showSpan(s);
      };
      row.addEventListener("click", select);
      row.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(); });
      return row;
    }));
    const first = tbody.querySelector("tr");
    if (first) first.click();
  }

  function init() {
    const params = new URLSearchParams(location.search);
    for (const f of FIELDS) {
      const v = params.get(f);
      if (v) document.querySelector(`[name=${f}]`).value = v;
    }
    if (params.get("errors_only") === "true") document.getElementById("f-errors").checked = true;
    document.getElementById("trace-search").addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
    search(false);
    const m = /trace=([0-9a-f]{32})/.exec(location.hash);
    if (m) show(m[1]);
  }

  return { init, search, show };
})();
