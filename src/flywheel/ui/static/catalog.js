// Pages over catalogs: Features (catalog + lineage graph), Runs (tracking), Models (registry).
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, when, fillTable, pill, link, empty, svg } = F;

  // ---------- lineage graph (SVG, layered left to right by longest path) ----------
  const KIND_COLORS = {
    data_source: "#f79009", event_stream: "#f79009", feature_view: "#3056d3",
    on_demand_feature_view: "#3056d3", stream_feature_view: "#3056d3", feature_service: "#9e77ed",
    training_dataset: "#0ba5ec", run: "#667085", job: "#667085", model_version: "#12875a",
    endpoint: "#c4320a", experiment: "#ee46bc",
  };
  function nodeHref(kind, id) {
    const name = id.split("@")[0];
    if (kind === "model_version") return `/ui/models#${encodeURIComponent(id.split("/")[0])}`;
    if (kind === "run") return `/ui/runs#${encodeURIComponent(id)}`;
    if (kind === "endpoint") return `/ui/endpoints#${encodeURIComponent(id)}`;
    if (kind === "experiment") return `/ui/experiments#${encodeURIComponent(id)}`;
    if (kind === "job") return `/ui/training#${encodeURIComponent(id)}`;
    if (kind === "training_dataset") return `/ui/features#${encodeURIComponent(id)}`;
    return `/ui/features#${encodeURIComponent(name)}`;
  }

  // graph = {root: {kind, id}, nodes: [{kind, id}], edges: [{src: "kind:id", dst, relation}]}
  function lineageSVG(graph) {
    const key = (n) => `${n.kind}:${n.id}`;
    const nodes = new Map(graph.nodes.map((n) => [key(n), n]));
    const edges = graph.edges.filter((e) => nodes.has(e.src) && nodes.has(e.dst));
    const rank = new Map([...nodes.keys()].map((k) => [k, 0]));
    for (let i = 0; i < nodes.size; i++) {
      let changed = false;
      for (const e of edges) {
        if (rank.get(e.dst) < rank.get(e.src) + 1) { rank.set(e.dst, rank.get(e.src) + 1); changed = true; }
      }
      if (!changed) break;
    }
    const columns = [];
    for (const [k, r] of rank) (columns[r] ||= []).push(k);
    columns.forEach((c) => c.sort());
    const colW = 190, boxW = 160, boxH = 34, gapY = 14, pad = 10;
    const height = Math.max(...columns.map((c) => c.length)) * (boxH + gapY) + pad * 2;
    const width = columns.length * colW + pad;
    const pos = new Map();
    columns.forEach((col, ci) => {
      const offset = (height - col.length * (boxH + gapY)) / 2;
      col.forEach((k, ri) => pos.set(k, { x: pad + ci * colW, y: offset + ri * (boxH + gapY) }));
    });
    const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "lineage", role: "group",
                             "data-testid": "svg-chart", "aria-label": "lineage graph" });
    for (const e of edges) {
      const a = pos.get(e.src), b = pos.get(e.dst);
      const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2, mx = (x1 + x2) / 2;
      box.append(svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` },
                     svg("title", {}, `${e.src} → ${e.dst} (${e.relation})`)));
    }
    const rootKey = graph.root ? key(graph.root) : null;
    for (const [k, n] of nodes) {
      const p = pos.get(k), c = KIND_COLORS[n.kind] || "#667085";
      const label = n.kind === "run" ? n.id.slice(0, 10) : n.id.length > 24 ? `${n.id.slice(0, 23)}…` : n.id;
      const a = svg("a", { href: nodeHref(n.kind, n.id) },
        svg("rect", { x: p.x, y: p.y, width: boxW, height: boxH, stroke: c }),
        svg("text", { x: p.x + 8, y: p.y + 13, fill: c, "font-size": 10 }, n.kind.replaceAll("_", " ")),
        svg("text", { x: p.x + 8, y: p.y + 27, class: "name" }, label),
        svg("title", {}, `${n.kind}: ${n.id}`));
      box.append(svg("g", { class: `node${k === rootKey ? " root" : ""}`, "data-node": k }, a));
    }
    return box;
  }

  async function drawLineage(container, graph) {
    if (!graph || !graph.nodes || graph.nodes.length === 0) { empty(container, "No lineage recorded."); return; }
    container.replaceChildren(lineageSVG(graph));
  }

  // ---------- Features ----------
  F.pages.features = async () => {
    const search = document.getElementById("search"), kindSel = document.getElementById("kind");
    const catalogHost = document.getElementById("catalog-table");
    const table = F.dataTable(catalogHost, { id: "catalog", columns: [
      { key: "name", label: "name", fixed: true, value: (o) => o.name, render: (o) => link(o.name, () => { location.hash = o.name; }) },
      { key: "kind", label: "kind", value: (o) => o.kind.replaceAll("_", " ") },
      { key: "version", label: "version", value: (o) => o.version, render: (o) => `v${o.version}` },
      { key: "owner", label: "owner", value: (o) => o.owner || "" },
      { key: "description", label: "description", value: (o) => o.description || "" },
      { key: "updated", label: "updated", value: (o) => o.updated_at || "", render: (o) => when(o.updated_at) },
    ] });
    const r = await F.api("/features/catalog", { shape: "object" });
    const latest = new Map();
    if (!r.ok || !Array.isArray(r.data.objects)) {
      table.error(r.ok ? { error: "unexpected answer from /features/catalog: no objects list", status: r.status } : r, "catalog");
    } else {
      for (const o of r.data.objects) if (!latest.has(o.name) || latest.get(o.name).version < o.version) latest.set(o.name, o);
      const kinds = [...new Set(r.data.objects.map((o) => o.kind))].sort();
      kindSel.append(...kinds.map((k) => el("option", { value: k }, k.replaceAll("_", " "))));
    }
    const render = () => {
      if (!r.ok) return;
      const q = search.value.trim().toLowerCase(), k = kindSel.value;
      const rows = [...latest.values()].filter((o) => (!k || o.kind === k) && (!q ||
        [o.name, o.description, o.owner, JSON.stringify(o.tags), ...((o.spec || {}).schema || []).map((f) => f.name)]
          .join(" ").toLowerCase().includes(q)));
      table.set(rows);
      document.getElementById("count").textContent = `${rows.length} of ${latest.size}`;
    };
    search.addEventListener("input", render);
    kindSel.addEventListener("change", render);
    render();
    const dsBody = document.querySelector("#datasets tbody");
    const dsr = await F.api("/features/datasets", { shape: "object" });
    const datasets = dsr.ok && Array.isArray(dsr.data.datasets) ? dsr.data.datasets : null;
    if (!datasets) F.showError(dsBody, dsr.ok ? { error: "unexpected answer from /features/datasets", status: dsr.status } : dsr, "datasets");
    else fillTable(dsBody, datasets.map((d) => [link(d.name, () => { location.hash = d.name; }), d.row_count, (d.features || []).length]));

    let shown = null;
    async function show() {
      const name = F.subject() || [...latest.values()].find((o) => o.kind === "feature_view")?.name;
      const detail = document.getElementById("detail"), lineage = document.getElementById("lineage");
      if (name !== shown) F.resetPanels(["detail", "lineage"]);
      shown = name;
      document.getElementById("detail-name").textContent = name || "…";
      if (!name) {
        if (r.ok) empty(detail, "The catalog is empty: apply a feature repo with `flywheel features apply`.");
        else empty(detail, "The catalog did not load (see above).");
        empty(lineage, "–");
        return;
      }
      const isDataset = (datasets || []).some((d) => d.name === name);
      if (isDataset) {
        const dr = await F.api(`/features/datasets/${encodeURIComponent(name)}`, { shape: "object" });
        if (name !== shown) return;
        if (!dr.ok) { F.showError(detail, dr, `dataset ${name}`); empty(lineage, "–"); return; }
        const d = dr.data, stats = Object.entries(d.stats || {});
        detail.replaceChildren(
          el("p", {}, `Training dataset · ${d.row_count} rows · ${(d.files || []).length} Parquet file(s)`),
          el("table", {}, el("thead", {}, el("tr", {}, ...["column", "dtype", "nulls", "min", "mean", "max"].map((h) => el("th", {}, h)))),
            el("tbody", {}, ...stats.map(([c, st]) => el("tr", {}, ...[c, st.dtype, st.nulls, fmt(st.min), fmt(st.mean), fmt(st.max)].map((v) => el("td", {}, v ?? "–")))))));
        await drawLineage(lineage, d.lineage || await datasetLineage(name));
        return;
      }
      const cr = await F.api(`/features/catalog/${encodeURIComponent(name)}`, { shape: "object" });
      if (name !== shown) return;
      if (!cr.ok) { F.showError(detail, cr, `catalog object ${name}`); empty(lineage, "–"); return; }
      const d = cr.data, cur = d.versions[d.versions.length - 1], spec = cur.spec || {};
      const parts = [el("p", {}, `${d.kind.replaceAll("_", " ")} · v${cur.version} · owner ${cur.owner || "–"} · ${cur.description || ""}`)];
      if (cur.freshness) {
        const until = cur.freshness.materialized_until;
        const lagH = until ? (Date.now() - Date.parse(until)) / 3.6e6 : null;
        parts.push(el("p", {}, "Freshness: materialized until ", el("strong", {}, until ? when(until) : "never"),
          lagH === null ? "" : ` (${lagH.toFixed(1)} h ago)`, ` · ${cur.freshness.rows ?? "–"} rows online`,
          spec.ttl ? ` · ttl ${(spec.ttl / 86400).toFixed(1)} d` : ""));
      }
      const schema = spec.schema || (spec.aggregations || []).map((a) => ({ name: a.name || `${a.column}_${a.function}_${a.window}`, dtype: a.function, description: `${a.column} over ${a.window}` }))
        || [];
      if (schema.length) {
        parts.push(el("h3", {}, "Schema"), el("table", { id: "schema" },
          el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "description"))),
          el("tbody", {}, ...schema.map((f) => el("tr", {}, el("td", {}, f.name), el("td", {}, f.dtype), el("td", {}, f.description || ""))))));
      }
      if (spec.features) parts.push(el("h3", {}, "Features"), el("p", {}, spec.features.join(", ")));
      if (spec.source) parts.push(el("p", { class: "muted" }, `source: ${spec.source.path || spec.source.name || JSON.stringify(spec.source)}`));
      parts.push(el("h3", {}, "Versions"), el("table", {}, el("tbody", {}, ...d.versions.map((v) =>
        el("tr", {}, el("td", {}, `v${v.version}`), el("td", {}, v.ref), el("td", {}, when(v.created_at)))))));
      if (d.history && d.history.length) parts.push(el("h3", {}, "History"), el("table", {}, el("tbody", {}, ...d.history.map((h) =>
        el("tr", {}, el("td", {}, when(h.at)), el("td", {}, h.action), el("td", {}, `v${h.version}`), el("td", {}, h.detail || ""))))));
      detail.replaceChildren(...parts);
      await drawLineage(lineage, cur.lineage);
    }
    // A dataset's lineage: the graph of a feature service that feeds it (from the catalog).
    async function datasetLineage(name) {
      for (const o of latest.values()) {
        if (o.kind !== "feature_service") continue;
        const g = (await F.api(`/features/catalog/${encodeURIComponent(o.name)}`, { shape: "object" })).data?.versions?.at(-1)?.lineage;
        if (g && g.nodes.some((n) => n.kind === "training_dataset" && n.id === name)) return { ...g, root: { kind: "training_dataset", id: name } };
      }
      return null;
    }
    window.addEventListener("hashchange", show);
    await show();
  };

  // ---------- Runs ----------
  // The hash is shareable: `#compare=ID,ID` ticks those runs (one id alone works too).
  function compareFromHash() {
    const h = F.subject();
    if (!h) return [];
    return (h.startsWith("compare=") ? h.slice(8) : h).split(",").filter(Boolean);
  }
  F.pages.runs = async () => {
    const expSel = document.getElementById("experiment"), search = document.getElementById("search");
    const rangeSel = document.getElementById("metric-range");
    const fromIn = document.getElementById("metric-from"), untilIn = document.getElementById("metric-until");
    // since/until (Unix seconds) for the metric history: a preset (last hour, ...) or from/until.
    function metricRange() {
      const secs = (input) => (input.value ? new Date(input.value).getTime() / 1000 : null);
      const since = rangeSel.value ? Date.now() / 1000 - Number(rangeSel.value) : secs(fromIn), until = secs(untilIn);
      if (since !== null && until !== null && until < since) return { error: "range: until is before from" };
      const q = new URLSearchParams();
      if (since !== null) q.set("since", String(Math.floor(since)));
      if (until !== null) q.set("until", String(Math.ceil(until)));
      return { query: q.size ? `?${q}` : "" };
    }
    const er = await F.api("/tracking/experiments", { shape: "array" });
    if (er.ok) expSel.append(...er.data.map((e) => el("option", { value: e.name }, `${e.name} (${e.runs})`)));
    else F.flash(`experiments: ${er.error}`, false);
    let runs = [], orderBy = null, total = 0;
    const seen = new Map();  // every run loaded so far, by id (the ticked ones may be on other pages)
    const selected = new Set(compareFromHash());
    const shareHash = () => {
      const h = selected.size ? `#compare=${[...selected].map(encodeURIComponent).join(",")}` : " ";
      history.replaceState(null, "", h.trim() ? h : location.pathname);
      const share = document.getElementById("share");
      share.href = `${location.origin}${location.pathname}${selected.size ? h : ""}`;
    };
    const base = [
      { key: "pick", label: "compare", fixed: true, sortable: false, value: () => null, render: (r) => {
        const box = el("input", { type: "checkbox", "aria-label": `compare ${r.name}` });
        box.checked = selected.has(r.id);
        box.addEventListener("change", () => { if (box.checked) selected.add(r.id); else selected.delete(r.id); shareHash(); charts(); });
        return box;
      } },
      { key: "name", label: "run", fixed: true, value: (r) => r.name, render: (r) => el("a", { href: `/ui/run#${encodeURIComponent(r.id)}` }, r.name) },
      { key: "status", label: "status", value: (r) => r.status, render: (r) => pill(r.status, r.status === "finished" ? "ok" : r.status === "failed" ? "bad" : "") },
      { key: "started", label: "started", value: (r) => r.start_time || "", render: (r) => when(r.start_time) },
      { key: "params", label: "params", value: (r) => Object.entries(r.params || {}).map(([k, v]) => `${k}=${v}`).join(" ") },
    ];
    let metricCols = [];
    // The server pages (limit/offset, X-Total-Count) and sorts by a metric; the search box
    // filters the page shown.
    const table = F.dataTable(document.getElementById("runs-table"), { id: "runs", columns: base, onSort: (key, desc) => {
      orderBy = `${desc ? "-" : ""}${key.slice(2)}`; load(false);
    }, onPage: () => load(false) });
    async function load(reset = true) {
      if (reset) table.state.page = 0;
      const q = new URLSearchParams(table.query());
      if (expSel.value) q.set("experiment", expSel.value);
      if (orderBy && !reset) q.set("order_by", orderBy);
      const r = await F.api(`/tracking/runs?${q}`, { shape: "array" });
      if (!r.ok) { table.error(r, "runs"); return; }
      runs = r.data;
      total = r.total ?? runs.length;
      for (const x of runs) seen.set(x.id, x);
      if (selected.size === 0 && runs.length && reset) runs.slice(0, 2).forEach((x) => selected.add(x.id));
      // Every metric is a column the user may show (the chooser); all are shown until hidden.
      const keys = [...new Set(runs.flatMap((x) => Object.keys(x.metrics || {})))].sort();
      const next = keys.map((k) => ({ key: `m:${k}`, label: k, server: true, value: (x) => x.metrics?.[k]?.last ?? null }));
      if (next.map((c) => c.key).join() !== metricCols.map((c) => c.key).join()) {
        metricCols = next;
        for (const c of next) if (!localStorage.getItem("fw-cols-runs")) table.state.shown.add(c.key);
        table.setColumns([...base, ...metricCols]);
      }
      render();
      shareHash();
      await charts();
    }
    function render() {
      const q = search.value.trim().toLowerCase();
      table.set(runs.filter((r) => !q || [r.name, r.id, r.status, r.user, ...Object.entries({ ...r.params, ...r.tags }).map(([k, v]) => `${k}=${v}`)]
        .join(" ").toLowerCase().includes(q)), total);
    }
    let generation = 0;  // a newer call wins: an older one stops at its next await
    async function charts() {
      const gen = ++generation;
      const ids = [...selected];
      const box = document.getElementById("metric-charts");
      if (!ids.length) { box.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy()); empty(box, "Tick runs to chart and compare them."); document.getElementById("compare").replaceChildren(); return; }
      const cr = await F.api(`/tracking/compare?${ids.map((i) => `run_ids=${encodeURIComponent(i)}`).join("&")}`);
      if (gen !== generation) return;
      renderCompare(cr, ids);
      // Ticked runs may be on another page (or only in a shared URL): fetch those once.
      for (const id of ids) {
        if (seen.has(id)) continue;
        const one = await F.api(`/tracking/runs/${encodeURIComponent(id)}`, { shape: "object" });
        if (one.ok) seen.set(id, one.data);
      }
      if (gen !== generation) return;
      const keys = [...new Set(ids.filter((id) => seen.has(id)).flatMap((id) => Object.keys(seen.get(id).metrics || {})))].sort();
      // The server keeps every point with its time: it answers only those in the range.
      const range = metricRange();
      if (range.error) { F.flash(range.error, false); return; }
      const cards = [];
      for (const key of keys) {
        const parts = await Promise.all(ids.map(async (id) => {
          const r = seen.get(id);
          if (!r?.metrics?.[key]) return { steps: [], values: [] };
          const h = await F.api(`/tracking/runs/${id}/metrics/${encodeURIComponent(key)}${range.query}`, { shape: "object" });
          if (!h.ok) return { steps: [], values: [] };
          return { steps: h.data.steps, values: h.data.values };
        }));
        if (gen !== generation) return;
        cards.push([key, parts]);
      }
      box.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy());
      box.replaceChildren();
      for (const [key, parts] of cards) {
        const { xs, ys } = F.alignSeries(parts);
        const card = el("div", {}, el("h3", {}, key), el("div", { class: "chart", "data-testid": xs.length ? "chart" : "none", id: `chart-${key.replace(/[^a-zA-Z0-9_-]/g, "_")}` }));
        box.append(card);
        if (!xs.length) { empty(card.lastChild, "No points in this range."); continue; }
        F.xyChart(card.lastChild, xs, ids.map((id, i) => ({ label: seen.get(id)?.name || id, values: ys[i] })), { title: `${key} by step` });
      }
      if (!cards.length) empty(box, "The ticked runs have no metrics.");
    }
    function renderCompare(cr, ids) {
      const node = document.getElementById("compare");
      const sel = ids.map((id) => seen.get(id)).filter(Boolean);
      const params = [...new Set(sel.flatMap((r) => Object.keys(r.params || {})))].sort();
      const metrics = [...new Set(sel.flatMap((r) => Object.keys(r.metrics || {})))].sort();
      const row = (label, vals) => el("tr", {}, el("th", { scope: "row" }, label), ...vals.map((v) => el("td", {}, v)));
      node.replaceChildren(el("table", {},
        el("thead", {}, el("tr", {}, el("th", {}, ""), ...sel.map((r) => el("th", { scope: "col" }, el("a", { href: `/ui/run#${encodeURIComponent(r.id)}` }, r.name))))),
        el("tbody", {},
          ...params.map((p) => row(p, sel.map((r) => r.params?.[p] ?? "–"))),
          ...metrics.map((m) => row(`${m} (last)`, sel.map((r) => fmt(r.metrics?.[m]?.last)))),
          ...metrics.map((m) => row(`${m} (min)`, sel.map((r) => fmt(r.metrics?.[m]?.min)))),
          row("commit", sel.map((r) => (r.git_commit || "–").slice(0, 10))),
          row("run id", sel.map((r) => r.id)))));
      if (!cr.ok) node.append(el("p", { class: "error", role: "alert" }, `compare: ${cr.error}`));
    }
    expSel.addEventListener("change", () => { selected.clear(); orderBy = null; history.replaceState(null, "", location.pathname); load(); });
    search.addEventListener("input", render);
    rangeSel.addEventListener("change", () => { fromIn.value = ""; untilIn.value = ""; charts(); });
    fromIn.addEventListener("change", () => { rangeSel.value = ""; charts(); });
    untilIn.addEventListener("change", charts);
    window.addEventListener("hashchange", () => {
      const ids = compareFromHash();
      if (ids.join() === [...selected].join()) return;
      selected.clear(); ids.forEach((i) => selected.add(i)); render(); charts();
    });
    await load();
  };

  // ---------- Run detail ----------
  F.pages.run = async () => {
    const PANELS = ["run-summary", "run-params", "run-metrics", "run-tags", "run-artifacts", "run-links", "run-charts"];
    async function show() {
      const id = F.subject();
      F.resetPanels(PANELS);
      document.getElementById("run-title").textContent = id ? `Run ${id}` : "Run";
      if (!id) { F.resetPanels(PANELS, "No run given: open one from the Runs page."); return; }
      const r = await F.api(`/tracking/runs/${encodeURIComponent(id)}`, { shape: "object" });
      if (id !== F.subject()) return;
      if (!r.ok) { F.showError(document.getElementById("run-summary"), r, `run ${id}`); F.resetPanels(PANELS.slice(1), "–"); return; }
      const run = r.data;
      document.getElementById("run-title").textContent = `Run ${run.name}`;
      const kv = (pairs) => el("dl", { class: "kv" }, ...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")]));
      document.getElementById("run-summary").replaceChildren(kv([["id", run.id], ["experiment", run.experiment], ["status", pill(run.status, run.status === "finished" ? "ok" : run.status === "failed" ? "bad" : "")],
        ["user", run.user], ["started", when(run.start_time)], ["ended", when(run.end_time)], ["commit", run.git_commit || "–"]]));
      const params = Object.entries(run.params || {});
      document.getElementById("run-params").replaceChildren(params.length ? kv(params) : el("p", { class: "muted" }, "No params."));
      const tags = Object.entries(run.tags || {});
      document.getElementById("run-tags").replaceChildren(tags.length ? kv(tags) : el("p", { class: "muted" }, "No tags."));
      const metrics = Object.entries(run.metrics || {}).sort(([a], [b]) => a.localeCompare(b));
      document.getElementById("run-metrics").replaceChildren(metrics.length ? el("table", { id: "run-metric-table" },
        el("thead", {}, el("tr", {}, ...["metric", "last", "min", "max", "points"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...metrics.map(([k, m]) => el("tr", {}, ...[k, fmt(m.last), fmt(m.min), fmt(m.max), m.count ?? "–"].map((v) => el("td", {}, v)))))) : el("p", { class: "muted" }, "No metrics."));
      const arts = run.artifacts || [];
      document.getElementById("run-artifacts").replaceChildren(arts.length ? el("ul", {}, ...arts.map((a) => {
        const nameOf = typeof a === "string" ? a : a.name || a.path;
        return el("li", {}, el("a", { href: `/tracking/runs/${encodeURIComponent(run.id)}/artifacts/${nameOf.split("/").map(encodeURIComponent).join("/")}` }, nameOf),
          typeof a === "object" && a.size !== undefined ? ` (${a.size} bytes)` : "");
      })) : el("p", { class: "muted" }, "No artifacts."));
      // Links: the training job that made it (a tag or the job list) and the model versions from it.
      const links = [];
      const jobs = await F.api("/training/jobs?limit=1000", { shape: "array" });
      for (const j of jobs.ok ? jobs.data.filter((x) => x.run_id === run.id) : []) links.push(el("li", {}, "job ", el("a", { href: `/ui/training#${encodeURIComponent(j.id)}` }, j.name), ` (${j.state})`));
      const models = await F.api("/registry/models", { shape: "array" });
      for (const m of models.ok ? models.data : []) {
        const mr = await F.api(`/registry/models/${encodeURIComponent(m.name)}`, { shape: "object" });
        for (const v of mr.ok ? mr.data.versions || [] : []) if (v.run_id === run.id) links.push(el("li", {}, "model version ", el("a", { href: `/ui/models#${encodeURIComponent(m.name)}` }, `${m.name} v${v.version}`), (v.stages || []).length ? ` (${v.stages.join(", ")})` : ""));
      }
      document.getElementById("run-links").replaceChildren(links.length ? el("ul", {}, ...links) : el("p", { class: "muted" }, "No job or model version refers to this run."));
      const charts = document.getElementById("run-charts");
      charts.replaceChildren();
      for (const [k] of metrics) {
        const h = await F.api(`/tracking/runs/${encodeURIComponent(run.id)}/metrics/${encodeURIComponent(k)}`, { shape: "object" });
        if (!h.ok || id !== F.subject()) continue;
        const node = el("div", { class: "chart", "data-testid": "chart", id: `run-chart-${k.replace(/[^a-zA-Z0-9_-]/g, "_")}` });
        charts.append(el("div", {}, el("h3", {}, k), node));
        F.xyChart(node, h.data.steps, [{ label: k, values: h.data.values }], { title: `${k} by step` });
      }
      if (!metrics.length) empty(charts, "No metrics.");
    }
    window.addEventListener("hashchange", show);
    await show();
  };

  // ---------- Models ----------
  F.pages.models = async () => {
    const tbody = document.querySelector("#models tbody");
    let models = [];
    async function load() {
      const r = await F.api("/registry/models", { shape: "array" });
      if (!r.ok) { F.showError(tbody, r, "models"); F.resetPanels(["versions", "version-metrics", "lineage"], "–"); return; }
      models = r.data;
      fillTable(tbody, models.map((m) => [link(m.name, () => { location.hash = m.name; }), `v${m.latest_version}`,
        Object.entries(m.stages || {}).map(([s, v]) => `${s}: v${v}`).join(" · ") || "–", m.description || "", when(m.created_at)]));
      await show();
    }
    // Which versions serve traffic now: from every endpoint's effective routes (and shadows).
    async function servingNow(name) {
      const r = await F.api("/serving/endpoints", { shape: "array" });
      const out = new Map();  // version -> [text]
      if (!r.ok) return { out, error: r.error };
      for (const ep of r.data.filter((e) => e.model === name)) {
        const routes = ep.effective_routes || ep.routes || [];
        const total = routes.reduce((a, x) => a + x.weight, 0) || 1;
        for (const x of routes) if (x.weight > 0) (out.get(x.version) || out.set(x.version, []).get(x.version)).push(`${ep.name} ${((100 * x.weight) / total).toFixed(0)}%`);
        if (ep.shadow) (out.get(ep.shadow.version) || out.set(ep.shadow.version, []).get(ep.shadow.version)).push(`${ep.name} shadow`);
      }
      return { out, error: null };
    }
    let shown = null, versionsTable = null;
    async function show() {
      const name = F.subject() || models[0]?.name;
      const box = document.getElementById("versions");
      if (name !== shown) { F.resetPanels(["versions", "version-metrics", "lineage", "audit", "serving-note"]); versionsTable = null; }
      shown = name;
      document.getElementById("model-name").textContent = name || "…";
      if (!name) { empty(box, "No models registered yet."); return; }
      const r = await F.api(`/registry/models/${encodeURIComponent(name)}`, { shape: "object" });
      if (name !== shown) return;
      if (!r.ok) { F.showError(box, r, `model ${name}`); F.resetPanels(["version-metrics", "lineage", "audit", "serving-note"], "–"); return; }
      const versions = r.data.versions || [];
      const serving = await servingNow(name);
      if (name !== shown) return;  // the subject changed while this answer was on its way
      const metricKeys = [...new Set(versions.flatMap((v) => Object.keys(v.metrics || {})))].sort();
      const mBase = `/registry/models/${encodeURIComponent(name)}`;
      const stageAction = (v, stage) => F.actionButton(`→ ${stage}`, { title: `${name} v${v.version} → ${stage}`, action: "model.stage", target: `model:${name}`,
        path: `${mBase}/versions/${v.version}/stage`, body: () => ({ stage, reason: document.getElementById("confirm-reason").value.trim() }), onDone: load },
        { impossible: (v.stages || []).includes(stage) ? `v${v.version} is already ${stage}` : "", id: `${stage}-${v.version}` });
      const columns = [
        { key: "version", label: "version", fixed: true, value: (v) => v.version, render: (v) => `v${v.version}` },
        { key: "actions", label: "actions", fixed: true, sortable: false, value: () => null, render: (v) => ((v.stages || []).includes("archived") ? "archived" : el("span", {},
          stageAction(v, "staging"), stageAction(v, "production"),
          F.actionButton("archive", { title: `Archive ${name} v${v.version}`, action: "model.archive", target: `model:${name}`, path: `${mBase}/versions/${v.version}/archive`,
            body: () => ({ reason: document.getElementById("confirm-reason").value.trim() }), onDone: load },
          { impossible: serving.out.has(v.version) ? `v${v.version} is serving traffic now` : "", id: `archive-${v.version}` }))) },
        { key: "serving", label: "serving now", fixed: true, value: (v) => (serving.out.get(v.version) || []).join(", "), render: (v) => {
          const on = serving.out.get(v.version);
          return on ? pill(`serving: ${on.join(", ")}`, "serving") : el("span", { class: "muted" }, "–");
        } },
        { key: "stages", label: "stages", value: (v) => (v.stages || []).join(" "), render: (v) => el("span", {}, ...(v.stages || []).map((st) => pill(st, st === "production" ? "ok" : ""))) },
        { key: "flavor", label: "flavor", value: (v) => v.flavor },
        ...metricKeys.map((k) => ({ key: `m:${k}`, label: k, value: (v) => v.metrics?.[k] ?? null })),
        { key: "run", label: "run", value: (v) => v.run_id || "", render: (v) => (v.run_id ? el("a", { href: `/ui/run#${encodeURIComponent(v.run_id)}` }, v.run_id.slice(0, 8)) : "–") },
        { key: "created", label: "created", value: (v) => v.created_at || "", render: (v) => when(v.created_at) },
      ];
      if (!versionsTable) {
        box.replaceChildren(el("div", { id: "versions-host" }), el("div", { class: "toolbar", id: "rollbacks" }));
        versionsTable = F.dataTable(document.getElementById("versions-host"), { id: "version-table", columns, pageSize: 20 });
      } else versionsTable.setColumns(columns);
      const ordered = versions.slice().reverse();
      ordered.forEach((v) => { v.fwAttrs = { "data-version": v.version }; });
      versionsTable.set(ordered);
      const stages = [...new Set(versions.flatMap((v) => v.stages || []))].filter((st) => st !== "archived");
      document.getElementById("rollbacks").replaceChildren(...stages.map((st) => F.actionButton(`roll back ${st}`, { title: `Roll back ${name} ${st}`,
        detail: `${st} goes back to the version it had before its last change.`, action: "model.rollback", target: `model:${name}`, path: `${mBase}/rollback`,
        body: () => ({ stage: st, reason: document.getElementById("confirm-reason").value.trim() }), onDone: load }, { id: `rollback-${st}` })));
      // The registry's stages and what is served can differ (a canary moves traffic, not stages).
      const prod = versions.find((v) => (v.stages || []).includes("production"));
      const note = document.getElementById("serving-note");
      const servedVersions = [...serving.out.entries()].filter(([, on]) => on.some((t) => !t.endsWith("shadow"))).map(([v]) => v);
      if (serving.error) note.replaceChildren(el("p", { class: "error", role: "alert" }, `serving now: ${serving.error}`));
      else if (prod && servedVersions.length && !servedVersions.includes(prod.version)) note.replaceChildren(el("p", { class: "error", role: "alert" },
        `The registry's production is v${prod.version}, but endpoints serve ${servedVersions.map((v) => `v${v}`).join(", ")} now.`));
      else note.replaceChildren();
      // Metrics of every version: one small chart per metric (scales differ), integer version axis.
      const chart = document.getElementById("version-metrics");
      chart.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy());
      if (metricKeys.length && versions.length) {
        chart.replaceChildren(...metricKeys.map((k) => el("div", {}, el("h3", {}, k), el("div", { class: "chart", "data-testid": "chart", id: `vm-${k.replace(/[^a-zA-Z0-9_-]/g, "_")}` }))));
        metricKeys.forEach((k) => {
          const pts = versions.filter((v) => typeof v.metrics?.[k] === "number");
          F.xyChart(document.getElementById(`vm-${k.replace(/[^a-zA-Z0-9_-]/g, "_")}`), pts.map((v) => v.version), [{ label: k, values: pts.map((v) => v.metrics[k]) }],
            { xLabel: "version", integerX: true, height: 180, title: `${k} by version` });
        });
      } else empty(chart, "No version metrics.");
      const audit = await F.load(document.querySelector("#audit tbody"), `/registry/audit?name=${encodeURIComponent(name)}`, "array", "audit");
      if (name !== shown) return;
      if (audit) fillTable(document.querySelector("#audit tbody"), audit.slice().reverse().map((a) => [`#${a.id}`, when(a.at), a.action || "set", a.stage,
        a.from_version === null ? "–" : `v${a.from_version}`, a.to_version === null ? "–" : `v${a.to_version}`, a.actor || "–", a.reason || ""]));
      if (versions.length) {
        const lr = await F.api(`/registry/models/${encodeURIComponent(name)}/versions/${versions.at(-1).version}/lineage`, { shape: "object" });
        if (name !== shown) return;
        if (lr.ok) await drawLineage(document.getElementById("lineage"), lr.data);
        else F.showError(document.getElementById("lineage"), lr, "lineage");
      }
    }
    window.addEventListener("hashchange", show);
    await load();
  };

  F.lineageSVG = lineageSVG;
})();
