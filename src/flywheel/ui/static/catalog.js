// Pages over catalogs: Features (catalog + lineage graph), Runs (tracking), Models (registry).
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, when, getJSON, fillTable, pill, link, button, empty, svg } = F;
  const hashName = () => decodeURIComponent(location.hash.slice(1));

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
    const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "lineage", role: "img",
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
        svg("rect", { x: p.x, y: p.y, width: boxW, height: boxH, fill: "#fff", stroke: c }),
        svg("text", { x: p.x + 8, y: p.y + 13, fill: c, "font-size": 10 }, n.kind.replaceAll("_", " ")),
        svg("text", { x: p.x + 8, y: p.y + 27, fill: "#1d2330" }, label),
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
    const tbody = document.querySelector("#catalog tbody");
    const { body } = await getJSON("/features/catalog");
    const objects = body.objects || [];
    const latest = new Map();
    for (const o of objects) if (!latest.has(o.name) || latest.get(o.name).version < o.version) latest.set(o.name, o);
    const kinds = [...new Set(objects.map((o) => o.kind))].sort();
    kindSel.append(...kinds.map((k) => el("option", { value: k }, k.replaceAll("_", " "))));
    const render = () => {
      const q = search.value.trim().toLowerCase(), k = kindSel.value;
      const rows = [...latest.values()].filter((o) => (!k || o.kind === k) && (!q ||
        [o.name, o.description, o.owner, JSON.stringify(o.tags), ...(o.spec.schema || []).map((f) => f.name)]
          .join(" ").toLowerCase().includes(q)));
      fillTable(tbody, rows.map((o) => [link(o.name, () => { location.hash = o.name; }),
        o.kind.replaceAll("_", " "), `v${o.version}`, o.owner || "–", o.description || "", when(o.updated_at)]));
      document.getElementById("count").textContent = `${rows.length} of ${latest.size}`;
    };
    search.addEventListener("input", render);
    kindSel.addEventListener("change", render);
    render();
    const ds = await getJSON("/features/datasets");
    fillTable(document.querySelector("#datasets tbody"), (ds.body.datasets || []).map((d) => [
      link(d.name, () => { location.hash = d.name; }), d.row_count, (d.features || []).length]));

    async function show() {
      const name = hashName() || [...latest.values()].find((o) => o.kind === "feature_view")?.name;
      const detail = document.getElementById("detail"), lineage = document.getElementById("lineage");
      if (!name) { empty(detail, "The catalog is empty: apply a feature repo with `flywheel features apply`."); empty(lineage, "–"); return; }
      document.getElementById("detail-name").textContent = name;
      const isDataset = (ds.body.datasets || []).some((d) => d.name === name);
      if (isDataset) {
        const d = (await getJSON(`/features/datasets/${encodeURIComponent(name)}`)).body;
        const stats = Object.entries(d.stats || {});
        detail.replaceChildren(
          el("p", {}, `Training dataset · ${d.row_count} rows · ${(d.files || []).length} Parquet file(s)`),
          el("table", {}, el("thead", {}, el("tr", {}, ...["column", "dtype", "nulls", "min", "mean", "max"].map((h) => el("th", {}, h)))),
            el("tbody", {}, ...stats.map(([c, s]) => el("tr", {}, ...[c, s.dtype, s.nulls, fmt(s.min), fmt(s.mean), fmt(s.max)].map((v) => el("td", {}, v ?? "–")))))));
        await drawLineage(lineage, d.lineage || await datasetLineage(name));
        return;
      }
      const r = await getJSON(`/features/catalog/${encodeURIComponent(name)}`);
      if (r.status !== 200) { empty(detail, r.body.error || `HTTP ${r.status}`); empty(lineage, "–"); return; }
      const d = r.body, cur = d.versions[d.versions.length - 1], spec = cur.spec || {};
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
        const g = (await getJSON(`/features/catalog/${encodeURIComponent(o.name)}`)).body.versions?.at(-1)?.lineage;
        if (g && g.nodes.some((n) => n.kind === "training_dataset" && n.id === name)) return { ...g, root: { kind: "training_dataset", id: name } };
      }
      return null;
    }
    window.addEventListener("hashchange", show);
    await show();
  };

  // ---------- Runs ----------
  F.pages.runs = async () => {
    const expSel = document.getElementById("experiment"), search = document.getElementById("search");
    const tbody = document.querySelector("#runs tbody");
    const exps = (await getJSON("/tracking/experiments")).body || [];
    expSel.append(...exps.map((e) => el("option", { value: e.name }, `${e.name} (${e.runs})`)));
    let runs = [];
    const selected = new Set();
    const metricKeys = () => [...new Set(runs.filter((r) => selected.has(r.id)).flatMap((r) => Object.keys(r.metrics || {})))].sort();
    async function load() {
      const q = expSel.value ? `?experiment=${encodeURIComponent(expSel.value)}&limit=500` : "?limit=500";
      runs = (await getJSON(`/tracking/runs${q}`)).body || [];
      if (hashName() && runs.some((r) => r.id === hashName())) selected.add(hashName());
      if (selected.size === 0 && runs.length) runs.slice(0, 2).forEach((r) => selected.add(r.id));
      render();
      await charts();
    }
    function render() {
      const q = search.value.trim().toLowerCase();
      const shown = runs.filter((r) => !q || [r.name, r.id, r.status, r.user, ...Object.entries({ ...r.params, ...r.tags }).map(([k, v]) => `${k}=${v}`)]
        .join(" ").toLowerCase().includes(q));
      const keys = [...new Set(shown.flatMap((r) => Object.keys(r.metrics || {})))].sort().slice(0, 4);
      document.querySelector("#runs thead tr").replaceChildren(...["", "run", "status", "started", "params", ...keys].map((h) => el("th", {}, h)));
      fillTable(tbody, shown.map((r) => {
        const box = el("input", { type: "checkbox", "aria-label": `compare ${r.name}` });
        box.checked = selected.has(r.id);
        box.addEventListener("change", () => { box.checked ? selected.add(r.id) : selected.delete(r.id); charts(); });
        return [box, r.name, pill(r.status, r.status === "finished" ? "ok" : r.status === "failed" ? "bad" : ""), when(r.start_time),
          Object.entries(r.params || {}).map(([k, v]) => `${k}=${v}`).join(" "),
          ...keys.map((k) => fmt(r.metrics?.[k]?.last))];
      }));
    }
    let generation = 0;  // a newer call wins: an older one stops at its next await
    async function charts() {
      const gen = ++generation;
      const ids = [...selected];
      const box = document.getElementById("metric-charts");
      if (!ids.length) { empty(box, "Tick runs to chart and compare them."); document.getElementById("compare").replaceChildren(); return; }
      const cmp = (await getJSON(`/tracking/compare?${ids.map((i) => `run_ids=${encodeURIComponent(i)}`).join("&")}`)).body;
      if (gen !== generation) return;
      renderCompare(cmp, ids);
      box.replaceChildren();
      for (const key of metricKeys()) {
        const parts = await Promise.all(ids.map(async (id) => {
          const r = runs.find((x) => x.id === id);
          if (!r?.metrics?.[key]) return { steps: [], values: [] };
          return (await getJSON(`/tracking/runs/${id}/metrics/${encodeURIComponent(key)}`)).body;
        }));
        if (gen !== generation) return;
        const { xs, ys } = F.alignSeries(parts);
        const card = el("div", {}, el("h3", {}, key), el("div", { class: "chart", "data-testid": "chart", id: `chart-${key.replace(/[^a-zA-Z0-9_-]/g, "_")}` }));
        box.append(card);
        F.xyChart(card.lastChild, xs, ids.map((id, i) => ({ label: runs.find((x) => x.id === id)?.name || id, values: ys[i] })));
      }
    }
    function renderCompare(cmp, ids) {
      const node = document.getElementById("compare");
      const sel = ids.map((id) => runs.find((r) => r.id === id)).filter(Boolean);
      const params = [...new Set(sel.flatMap((r) => Object.keys(r.params || {})))].sort();
      const metrics = [...new Set(sel.flatMap((r) => Object.keys(r.metrics || {})))].sort();
      const row = (label, vals) => el("tr", {}, el("th", {}, label), ...vals.map((v) => el("td", {}, v)));
      node.replaceChildren(el("table", {},
        el("thead", {}, row("", sel.map((r) => r.name))),
        el("tbody", {},
          ...params.map((p) => row(p, sel.map((r) => r.params?.[p] ?? "–"))),
          ...metrics.map((m) => row(`${m} (last)`, sel.map((r) => fmt(r.metrics?.[m]?.last)))),
          ...metrics.map((m) => row(`${m} (min)`, sel.map((r) => fmt(r.metrics?.[m]?.min)))),
          row("commit", sel.map((r) => (r.git_commit || "–").slice(0, 10))),
          row("run id", sel.map((r) => r.id)))));
      if (cmp && cmp.error) node.append(el("p", { class: "bad" }, cmp.error));
    }
    expSel.addEventListener("change", () => { selected.clear(); load(); });
    search.addEventListener("input", render);
    await load();
  };

  // ---------- Models ----------
  F.pages.models = async () => {
    const tbody = document.querySelector("#models tbody"), flash = document.getElementById("flash");
    let models = [];
    function say(ok, text) { flash.className = `flash ${ok ? "ok" : "bad"}`; flash.textContent = text; flash.hidden = false; }
    async function act(label, url, body) {
      const r = await F.send("POST", url, body);
      if (r.status === 200) say(true, `${label}: done${r.body.audit ? ` (audit #${r.body.audit.id})` : ""}`);
      else say(false, `${label}: refused (HTTP ${r.status}) ${r.body.error || ""}${r.status === 401 ? " — paste a writer token in the token field" : ""}`);
      await load();
      return r.status;
    }
    async function load() {
      models = (await getJSON("/registry/models")).body || [];
      fillTable(tbody, models.map((m) => [link(m.name, () => { location.hash = m.name; }), `v${m.latest_version}`,
        Object.entries(m.stages || {}).map(([s, v]) => `${s}: v${v}`).join(" · ") || "–", m.description || "", when(m.created_at)]));
      await show();
    }
    async function show() {
      const name = hashName() || models[0]?.name;
      const box = document.getElementById("versions");
      if (!name) { empty(box, "No models registered yet."); return; }
      document.getElementById("model-name").textContent = name;
      const r = await getJSON(`/registry/models/${encodeURIComponent(name)}`);
      if (r.status !== 200) { empty(box, r.body.error || `HTTP ${r.status}`); return; }
      const versions = r.body.versions || [];
      const metricKeys = [...new Set(versions.flatMap((v) => Object.keys(v.metrics || {})))].sort();
      const head = ["version", "stages", "flavor", ...metricKeys, "run", "created", "actions"];
      const rows = versions.slice().reverse().map((v) => {
        const base = `/registry/models/${encodeURIComponent(name)}/versions/${v.version}`;
        const archived = (v.stages || []).includes("archived");
        const actions = archived ? ["archived"] : [
          button("→ staging", () => act(`${name} v${v.version} → staging`, `${base}/stage`, { stage: "staging", reason: "promoted from the dashboard" }), { "data-action": `staging-${v.version}` }),
          button("→ production", () => act(`${name} v${v.version} → production`, `${base}/stage`, { stage: "production", reason: "promoted from the dashboard" }), { "data-action": `production-${v.version}` }),
          button("archive", () => act(`${name} v${v.version} archive`, `${base}/archive`, { reason: "archived from the dashboard" }))];
        return el("tr", { "data-version": v.version },
          el("td", {}, `v${v.version}`), el("td", {}, ...(v.stages || []).map((s) => pill(s, s === "production" ? "ok" : ""))),
          el("td", {}, v.flavor), ...metricKeys.map((k) => el("td", {}, fmt(v.metrics?.[k]))),
          el("td", {}, v.run_id ? el("a", { href: `/ui/runs#${v.run_id}` }, v.run_id.slice(0, 8)) : "–"),
          el("td", {}, when(v.created_at)), el("td", {}, ...actions));
      });
      const stages = [...new Set(versions.flatMap((v) => v.stages || []))].filter((s) => s !== "archived");
      box.replaceChildren(
        el("table", { id: "version-table" }, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)),
        el("div", { class: "toolbar" }, ...stages.map((s) => button(`roll back ${s}`, () =>
          act(`${name} ${s} rollback`, `/registry/models/${encodeURIComponent(name)}/rollback`, { stage: s, reason: "rolled back from the dashboard" }), { "data-action": `rollback-${s}` }))));
      // Metrics of every version side by side.
      const chart = document.getElementById("version-metrics");
      if (metricKeys.length && versions.length) {
        F.xyChart(chart, versions.map((v) => v.version), metricKeys.map((k) => ({ label: k, values: versions.map((v) => v.metrics?.[k] ?? null) })), { xLabel: "version" });
      } else empty(chart, "No version metrics.");
      const audit = (await getJSON(`/registry/audit?name=${encodeURIComponent(name)}`)).body || [];
      fillTable(document.querySelector("#audit tbody"), audit.slice().reverse().map((a) => [`#${a.id}`, when(a.at), a.action || "set", a.stage,
        a.from_version === null ? "–" : `v${a.from_version}`, a.to_version === null ? "–" : `v${a.to_version}`, a.actor || "–", a.reason || ""]));
      const mvLineage = versions.length ? (await getJSON(`/registry/models/${encodeURIComponent(name)}/versions/${versions.at(-1).version}/lineage`)).body : null;
      await drawLineage(document.getElementById("lineage"), mvLineage);
    }
    window.addEventListener("hashchange", show);
    await load();
  };

  F.lineageSVG = lineageSVG;
})();
