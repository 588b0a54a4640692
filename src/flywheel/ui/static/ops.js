// Pages over live systems: Training (jobs, logs, inventory), Endpoints (serving), Experiments.
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, when, fillTable, pill, link, empty } = F;
  const STATE_KIND = { running: "ok", succeeded: "ok", failed: "bad", cancelled: "", queued: "", admitted: "" };

  // ---------- Training ----------
  F.pages.training = async () => {
    const stateSel = document.getElementById("state");
    let jobs = [];
    const ACTIVE = ["running", "admitted", "queued"];
    const jobsTable = F.dataTable(document.getElementById("jobs-table"), { id: "jobs", columns: [
      { key: "name", label: "job", fixed: true, value: (j) => j.name, render: (j) => link(j.name, () => { location.hash = j.id; }) },
      { key: "state", label: "state", fixed: true, value: (j) => j.state, render: (j) => pill(j.state, STATE_KIND[j.state] ?? "") },
      { key: "team", label: "team", value: (j) => j.team },
      { key: "priority", label: "priority", value: (j) => j.priority },
      { key: "resources", label: "resources", value: (j) => {
        const res = j.spec?.resources || {}, procs = (res.nodes || 1) * (res.procs_per_node || 1);
        return `${procs} proc · ${procs * (res.cpus_per_proc || 0)} CPU · ${procs * (res.gpus_per_proc || 0)} GPU`; } },
      { key: "restarts", label: "restarts", value: (j) => j.restarts, render: (j) => `${j.restarts}/${j.spec?.max_restarts ?? "–"}` },
      { key: "preemptions", label: "preemptions", value: (j) => j.preemptions, hidden: true },
      { key: "placement", label: "placement", hidden: true, value: (j) => (j.placement || []).map((p) => `${p.node}${p.gpus?.length ? ` gpu ${p.gpus.join(",")}` : ""}`).join(" ") },
      { key: "submitted", label: "submitted", value: (j) => j.submitted_at || "", render: (j) => when(j.submitted_at) },
    ], onPage: () => loadJobs() });
    // One page of jobs from the server (limit/offset; X-Total-Count says how many match).
    async function loadJobs() {
      const q = new URLSearchParams(jobsTable.query());
      if (stateSel.value) q.set("state", stateSel.value);
      const r = await F.api(`/training/jobs?${q}`, { shape: "array" });
      if (!r.ok) { jobsTable.error(r, "jobs"); document.getElementById("job-counts").textContent = ""; return; }
      jobs = r.data;
      const total = r.total ?? jobs.length;
      if (!jobs.length && total && jobsTable.state.page > 0) { jobsTable.state.page = Math.ceil(total / jobsTable.state.pageSize) - 1; await loadJobs(); return; }
      jobsTable.set(jobs, total);
      const counts = {};
      for (const j of jobs) counts[j.state] = (counts[j.state] || 0) + 1;
      document.getElementById("job-counts").textContent = `${total} ${stateSel.value || ""} job${total === 1 ? "" : "s"}`.replace("  ", " ") +
        (jobs.length ? ` · on this page: ${Object.entries(counts).map(([st, n]) => `${n} ${st}`).join(", ")}` : "");
    }
    const usage = F.lineChart(document.getElementById("chart-usage"), [{ label: "CPUs used", stroke: F.color(0) }, { label: "GPUs used", stroke: F.color(2) }, { label: "queued jobs", stroke: F.color(1) }]);
    async function inventory() {
      const r = await F.api("/training/inventory", { shape: "object" });
      if (!r.ok) { F.showError(document.querySelector("#nodes tbody"), r, "inventory"); return; }
      const inv = r.data, nodes = inv.nodes || [];
      fillTable(document.querySelector("#nodes tbody"), nodes.map((n) => [n.name, n.host, `${n.cpus_used} / ${n.cpus}`,
        `${n.gpus_used} / ${(n.gpus || []).length}`, el("div", { class: "split", style: "height:14px;margin:0", role: "img", "aria-label": `${n.cpus_used} of ${n.cpus} CPUs used` },
          el("span", { style: `width:${(100 * n.cpus_used) / Math.max(1, n.cpus)}%;background:${F.color(0)};padding:0` }),
          el("span", { style: "flex:1;background:var(--grid);padding:0" }))]));
      document.getElementById("inv-summary").textContent = `${inv.total_cpus} CPUs, ${inv.total_gpus} GPUs · ${inv.running_jobs} running · ${inv.queued_jobs} queued`;
      fillTable(document.querySelector("#quotas tbody"), Object.entries(inv.quotas || {}).map(([team, q]) => [team, q.cpus ?? "∞", q.gpus ?? "∞", q.jobs ?? "∞", q.weight ?? 1]));
      usage.push(Date.now() / 1000, [nodes.reduce((a, n) => a + n.cpus_used, 0), nodes.reduce((a, n) => a + n.gpus_used, 0), inv.queued_jobs]);
    }
    // One small chart per metric key (different scales never share an axis).
    function drawJobMetrics(j) {
      const box = document.getElementById("job-metrics");
      const keys = [...new Set((j.metrics || []).map((m) => m.key))].sort();
      if (!keys.length) { box.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy()); empty(box, "This job reported no metrics (yet)."); return; }
      const ids = keys.map((k) => `job-metric-${k.replace(/[^a-zA-Z0-9_-]/g, "_")}`);
      if (ids.some((id) => !document.getElementById(id))) {
        box.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy());
        box.replaceChildren(...keys.map((k, i) => el("div", {}, el("h3", {}, k), el("div", { class: "chart", id: ids[i], "data-testid": "chart" }))));
      }
      keys.forEach((k, i) => {
        const ms = j.metrics.filter((m) => m.key === k);
        F.xyChart(document.getElementById(ids[i]), ms.map((m) => m.step), [{ label: k, values: ms.map((m) => m.value) }], { title: `${k} by step` });
      });
    }
    let logTimer = null, metricTimer = null, shown = null;
    const PANELS = ["job", "log", "job-metrics", "job-actions"];
    async function show() {
      const id = F.subject() || jobs.find((j) => j.state === "running")?.id || jobs[0]?.id;
      const detail = document.getElementById("job"), logBox = document.getElementById("log");
      clearInterval(logTimer); clearInterval(metricTimer);
      if (id !== shown) { F.resetPanels(PANELS); document.getElementById("job-name").textContent = id || "Job"; }
      shown = id;
      if (!id) { empty(detail, "No jobs yet: `flywheel jobs submit job.yaml`."); logBox.textContent = ""; empty(document.getElementById("job-metrics"), "–"); return; }
      const r = await F.api(`/training/jobs/${encodeURIComponent(id)}`, { shape: "object" });
      if (id !== shown) return;
      if (!r.ok) {
        F.showError(detail, r, `job ${id}`); logBox.textContent = "";
        empty(document.getElementById("job-metrics"), "–"); document.getElementById("job-actions").replaceChildren();
        return;
      }
      const j = r.data;
      document.getElementById("job-name").textContent = `${j.name} (${j.id})`;
      detail.replaceChildren(
        el("dl", { class: "kv" }, ...[["state", j.state], ["reason", j.reason || "–"], ["team", j.team], ["priority", j.priority], ["attempt", j.attempt],
          ["restarts", `${j.restarts} of ${j.spec?.max_restarts ?? "–"}`], ["preemptions", j.preemptions], ["entrypoint", j.spec?.entrypoint],
          ["started", when(j.started_at)], ["finished", when(j.finished_at)],
          ["run", j.run_id ? el("a", { href: `/ui/run#${encodeURIComponent(j.run_id)}` }, j.run_id) : "–"],
          ["model", j.model_version ? el("a", { href: `/ui/models#${encodeURIComponent(String(j.model_version).split("/")[0])}` }, j.model_version) : "–"]]
          .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")])),
        el("h3", {}, "History"),
        el("table", {}, el("tbody", {}, ...(j.events || []).map((e) => el("tr", {}, ...[when(e.at), `${e.from || "–"} → ${e.to}`, `attempt ${e.attempt}`, e.reason].map((c) => el("td", {}, c)))))));
      const active = ACTIVE.includes(j.state);
      document.getElementById("job-actions").replaceChildren(
        F.actionButton("cancel job", { title: `Cancel ${j.name}`, detail: "A running job gets SIGTERM, checkpoints and stops; a queued one is dropped.",
          action: "job.cancel", target: `job:${j.id}`, path: `/training/jobs/${encodeURIComponent(j.id)}/cancel`, onDone: async () => { await loadJobs(); await show(); } },
          { impossible: active ? "" : `the job is ${j.state}`, id: "job-cancel" }),
        F.actionButton("retry job", { title: `Retry ${j.name}`, detail: "Submits the same spec again as a new job (the queue, quotas and priority apply).",
          action: "job.retry", target: `job:${j.id}`, path: "/training/jobs", body: () => ({ spec: j.spec }),
          onDone: async (made) => { await loadJobs(); if (made?.id) location.hash = made.id; } },
          { impossible: active ? `the job is still ${j.state}; cancel it first` : "", id: "job-retry" }));
      drawJobMetrics(j);
      async function tail() {
        const lr = await F.api(`/training/jobs/${encodeURIComponent(id)}/logs`, { shape: "object" });
        if (id !== shown) return;
        if (!lr.ok) { logBox.textContent = `logs: ${lr.error}`; return; }
        const logs = lr.data.files || {};
        const text = Object.entries(logs).filter(([, t]) => t).map(([f, t]) => `==> ${f} <==\n${t.split("\n").slice(-80).join("\n")}`).join("\n");
        const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.textContent = text || "(no output yet)";
        if (atEnd) logBox.scrollTop = logBox.scrollHeight;
      }
      await tail();
      if (active) {
        logTimer = F.every(2000, tail, { now: false });
        metricTimer = F.every(5000, async () => {
          const again = await F.api(`/training/jobs/${encodeURIComponent(id)}`, { shape: "object" });
          if (again.ok && id === shown) drawJobMetrics(again.data);
        }, { now: false });
      }
    }
    stateSel.addEventListener("change", () => { jobsTable.state.page = 0; loadJobs(); });
    window.addEventListener("hashchange", show);
    await Promise.all([loadJobs(), inventory()]);
    await show();
    F.every(5000, loadJobs, { now: false });
    F.every(2000, inventory, { now: false });
  };

  // ---------- Endpoints ----------
  const EP_PANELS = ["split", "totals", "canary", "shadow", "drift", "ep-history", "ep-actions", "events", "ep-audit"];
  F.pages.endpoints = async () => {
    const listBody = document.querySelector("#endpoints tbody");
    const endpoints = await F.load(listBody, "/serving/endpoints", "array", "endpoints");
    if (endpoints) {
      fillTable(listBody, endpoints.map((e) => [link(e.name, () => { location.hash = e.name; }), e.model,
        (e.effective_routes || e.routes).map((r) => `v${r.version}:${fmt(r.weight)}`).join(" "), e.shadow ? `v${e.shadow.version} (${fmt(e.shadow.share * 100)}%)` : "–",
        e.canary ? pill(e.canary.state || "canary", e.canary.state === "rolled_back" ? "bad" : "") : "–", e.revision]));
    }
    window.addEventListener("hashchange", () => location.reload());  // a new subject: a clean page
    const name = F.subject() || endpoints?.[0]?.name;
    const noCharts = () => document.querySelectorAll("[data-testid=chart]").forEach((c) => { c.removeAttribute("data-testid"); empty(c, "–"); });
    if (!name) {
      F.resetPanels(EP_PANELS, endpoints ? "No endpoints yet: `flywheel serve deploy NAME --model M --version V`." : "The endpoint list did not load.");
      noCharts();
      return;
    }
    document.querySelectorAll(".ep-name").forEach((n) => { n.textContent = name; });
    if (endpoints && !endpoints.some((e) => e.name === name)) {
      F.resetPanels(EP_PANELS, `No endpoint named ${JSON.stringify(name)}: pick one from the list above.`);
      noCharts();
      return;
    }
    F.resetPanels(EP_PANELS);
    const knownVersions = new Set();
    let ep = null, registryVersions = [];
    const regModel = endpoints?.find((e) => e.name === name)?.model;
    if (regModel) {
      const rv = await F.api(`/registry/models/${encodeURIComponent(regModel)}`, { shape: "object" });
      if (rv.ok) registryVersions = (rv.data.versions || []).filter((v) => !(v.stages || []).includes("archived")).map((v) => v.version);
    }
    function versionSelect(id, versions, selected) {
      const sel = el("select", { id, "aria-label": "version" }, ...versions.map((v) => el("option", { value: v }, `v${v}`)));
      if (selected !== undefined) sel.value = String(selected);
      return sel;
    }
    function actions() {
      const base = `/serving/endpoints/${encodeURIComponent(name)}`, target = `endpoint:${name}`;
      const c = ep.canary, running = c && c.state === "running", paused = c && c.state === "paused", active = running || paused;
      const routes = ep.routes || [];
      const primary = routes.slice().sort((x, y) => y.weight - x.weight)[0]?.version;
      const deploySel = versionSelect("deploy-version", registryVersions, registryVersions.filter((v) => v !== primary).at(-1));
      const splitFields = el("div", { class: "toolbar" }, ...routes.map((r) => el("label", {}, `v${r.version} weight `,
        el("input", { type: "number", min: 0, max: 100, step: "any", value: r.weight, "data-split-version": r.version, style: "width:6em" }))));
      const shadowSel = versionSelect("shadow-version", registryVersions, registryVersions.at(-1));
      const box = document.getElementById("ep-actions");
      box.replaceChildren(
        F.actionButton("abort canary", { title: `Abort the canary of ${name}`, detail: `All traffic goes back to v${c?.baseline}; the reason is recorded on the endpoint too.`,
          action: "endpoint.canary_abort", target, path: `${base}/rollback`, body: () => ({ reason: document.getElementById("confirm-reason").value.trim() }), onDone: describe },
          { impossible: active ? "" : "no canary is running", id: "canary-abort" }),
        paused
          ? F.actionButton("resume canary", { title: `Resume the canary of ${name}`, detail: `v${c.candidate} stays at ${c.weight}% and its gates run again from step ${(c.step ?? 0) + 1}: it may advance or roll back on its own.`,
            action: "endpoint.canary_resume", target, path: `${base}/resume`, body: () => ({ reason: document.getElementById("confirm-reason").value.trim() }), onDone: describe },
            { id: "canary-pause" })
          : F.actionButton("pause canary", { title: `Pause the canary of ${name}`, detail: `v${c?.candidate} keeps ${c?.weight}% of the traffic; it will not advance or roll back on its own, and its answers are not counted, until resumed.`,
            action: "endpoint.canary_pause", target, path: `${base}/pause`, body: () => ({ reason: document.getElementById("confirm-reason").value.trim() }), onDone: describe },
            { impossible: running ? "" : "no canary is running", id: "canary-pause" }),
        F.actionButton("deploy / roll back…", { title: `Deploy a version of ${ep.model} on ${name}`, detail: "All traffic moves to the chosen version at once (pick the previous one to roll back).",
          fields: el("label", {}, "version ", deploySel), action: "endpoint.deploy", target, path: `${base}/deploy`,
          body: () => ({ version: Number(deploySel.value) }), onDone: describe },
          { impossible: active ? `a canary is ${c.state}: abort it first` : registryVersions.length ? "" : "no registered versions", id: "endpoint-deploy" }),
        F.actionButton("edit split…", { title: `Edit the traffic split of ${name}`, detail: "Weights are relative; the shadow is kept.", fields: splitFields,
          action: "endpoint.split", target, method: "PUT", path: base, onDone: describe,
          body: () => {
            const next = [...splitFields.querySelectorAll("input")].map((i) => ({ version: Number(i.dataset.splitVersion), weight: Number(i.value) }));
            if (next.some((r) => !Number.isFinite(r.weight) || r.weight < 0)) throw new Error("weights: each must be a number ≥ 0");
            if (!next.some((r) => r.weight > 0)) throw new Error("weights: at least one must be above 0");
            return { model: ep.model, routes: next, shadow: ep.shadow ? { version: ep.shadow.version, share: ep.shadow.share } : null };
          } },
          { impossible: active ? `a canary is ${c.state}: abort it first` : "", id: "endpoint-split" }),
        ep.shadow
          ? F.actionButton(`stop shadow v${ep.shadow.version}`, { title: `Stop the shadow (v${ep.shadow.version}) of ${name}`, action: "endpoint.shadow_off", target,
            path: `${base}/shadow`, body: () => ({ version: null }), onDone: describe }, { id: "shadow-toggle" })
          : F.actionButton("start shadow…", { title: `Start a shadow of ${name}`, detail: "Mirrors every request to the version; its answers are compared, never returned", fields: el("label", {}, "version ", shadowSel), action: "endpoint.shadow_on", target,
            path: `${base}/shadow`, body: () => ({ version: Number(shadowSel.value), share: 1.0 }), onDone: describe },
            { impossible: registryVersions.length ? "" : "no registered versions", id: "shadow-toggle" }));
    }
    async function describe() {
      const r = await F.api(`/serving/endpoints/${encodeURIComponent(name)}`, { shape: "object" });
      if (!r.ok) { for (const id of ["split", "canary", "events"]) F.showError(document.getElementById(id).tBodies?.[0] || document.getElementById(id), r, `endpoint ${name}`); return; }
      ep = r.data;
      const routes = ep.effective_routes || ep.routes, total = routes.reduce((a, x) => a + x.weight, 0) || 1;
      for (const x of [...routes, ...(ep.shadow ? [ep.shadow] : [])]) knownVersions.add(String(x.version));
      document.getElementById("split").replaceChildren(
        el("div", { class: "split", "data-testid": "split", role: "img", "aria-label": `traffic split: ${routes.map((x) => `v${x.version} ${((100 * x.weight) / total).toFixed(0)}%`).join(", ")}` },
          ...routes.map((x, i) => el("span", { style: `width:${(100 * x.weight) / total}%;background:${F.color(i)}` }, `v${x.version} ${((100 * x.weight) / total).toFixed(0)}%`))),
        el("p", { class: "muted" }, `model ${ep.model} · revision ${ep.revision} · updated ${when(ep.updated_at)}`, ep.shadow ? ` · shadow v${ep.shadow.version} gets ${fmt(ep.shadow.share * 100)}% of requests mirrored` : ""));
      const c = ep.canary, canary = document.getElementById("canary");
      if (!c) empty(canary, "No canary: the split above is static.");
      else {
        const steps = c.steps || [], at = c.step ?? 0;
        const stepColor = (i) => (c.state === "succeeded" || i < at ? F.color(2) : c.state === "rolled_back" && i === at ? F.color(1) : i === at ? F.color(4) : F.color(7));
        canary.replaceChildren(
          el("p", {}, pill(c.state, c.state === "rolled_back" ? "bad" : c.state === "paused" ? "" : "ok"), ` v${c.candidate} over v${c.baseline}: ${c.weight}% of traffic now`,
            c.state === "paused" ? " (paused: held at this share, gates stopped until resumed)" : ""),
          el("div", { class: "split", "data-testid": "canary-steps" }, ...steps.map((st, i) => el("span", { style: `flex:1;background:${stepColor(i)}` }, `${st}%`))),
          el("h3", {}, "Gates (per step)"),
          el("dl", { class: "kv", id: "gates" }, ...[["requests per step", c.step_requests], ["max error rate", c.max_error_rate],
            ["max p99", c.max_p99_ms === null ? "none" : `${fmt(c.max_p99_ms)} ms`], ["step", `${Math.min(at + 1, steps.length)} of ${steps.length}`],
            ["last verdict", c.reason || "–"], ["rollout", c.rollout_id]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")])));
      }
      fillTable(document.querySelector("#events tbody"), (ep.events || []).slice().reverse().slice(0, 50).map((e) => [when(e.at), e.kind, e.actor || "–",
        typeof e.detail === "object" && e.detail ? (e.detail.reason || JSON.stringify(e.detail)).slice(0, 160) : String(e.detail ?? "")]));
      actions();
      await F.auditInto(document.querySelector("#ep-audit tbody"), `endpoint:${name}`);
    }
    document.addEventListener("fw-role", () => { if (ep) actions(); });
    const versionsSeen = [];
    let latencyPlot = null, errorPlot = null, rpsPlot = null;
    const series = { t: [], p99: new Map(), err: new Map(), rps: new Map() };
    function rebuild() {
      const mk = (id, label) => {
        const node = document.getElementById(id);
        node.fwPlot?.destroy();
        node.replaceChildren();
        const now = () => Date.now() / 1000;
        const plot = new uPlot({ width: Math.max(240, node.clientWidth - 4), height: 200,
          scales: { x: { time: true, range: (u) => {
            const xs = u.data[0], lo = xs.length ? xs[0] : now(), hi = xs.length ? xs[xs.length - 1] : now();
            return [Math.min(lo, hi - 60), hi];
          } },
                    y: { range: (_u, a, b) => (a === null || b === null ? [0, 1] : [Math.min(0, a), b > a ? b * 1.1 : a + 1]) } },
          series: [{}, ...versionsSeen.map((v, i) => ({ label: `v${v} ${label}`, stroke: F.color(i), width: 2, spanGaps: true }))],
          axes: [{ stroke: () => F.cssVar("--fg"), grid: { stroke: () => F.cssVar("--grid") }, space: 80, values: F.timeTicks }, { size: 55, stroke: () => F.cssVar("--fg"), grid: { stroke: () => F.cssVar("--grid") } }] },
          [series.t, ...versionsSeen.map(() => [])], node);
        node.fwPlot = plot;
        node.setAttribute("role", "img");
        node.setAttribute("aria-label", `${label} per version of ${name}, live since the page opened: ${versionsSeen.map((v) => `v${v}`).join(", ") || "no traffic yet"}`);
        return plot;
      };
      latencyPlot = mk("chart-latency", "p99 ms"); errorPlot = mk("chart-errors", "errors %"); rpsPlot = mk("chart-rps", "req/s");
    }
    let prev = null, prevAt = 0;
    async function scrape() {
      const curr = await F.scrapeMetrics(), now = Date.now() / 1000;
      if (!curr) { prev = null; return; }
      const mine = (x) => x.labels.endpoint === name;
      // Shadow disagreement (cumulative since the server started).
      const dis = F.bucketsBy(curr, "flywheel_serving_shadow_disagreement_bucket", (l) => l.version, mine);
      const disCount = F.sumBy(curr, "flywheel_serving_shadow_disagreement_count", (l) => l.version, mine);
      const disSum = F.sumBy(curr, "flywheel_serving_shadow_disagreement_sum", (l) => l.version, mine);
      const shadowBox = document.getElementById("shadow");
      if (dis.size) {
        const parts = [];
        for (const [v, buckets] of dis) {
          const n = disCount.get(v) || 0;
          const rows = buckets.map(([le, c], i) => ({ label: `≤ ${le === Infinity ? "∞" : le}`, value: c - (i ? buckets[i - 1][1] : 0) }));
          parts.push(el("p", {}, `shadow v${v}: ${n} compared requests, mean disagreement ${fmt(n ? (disSum.get(v) || 0) / n : null)}, p50 ${fmt(F.histogramQuantile(0.5, buckets))}`), F.barsSVG(rows, { format: (x) => fmt(x, 0) }));
        }
        shadowBox.replaceChildren(...parts);
      } else empty(shadowBox, "No shadow comparisons recorded by this server.");
      if (prev) {
        const stats = F.servingStats(prev, curr, now - prevAt, (l) => (l.endpoint === name ? l.version : null));
        stats.delete(null);
        let grew = false;
        for (const v of [...knownVersions, ...stats.keys()]) if (!versionsSeen.includes(v)) { versionsSeen.push(v); versionsSeen.sort(); grew = true; }
        series.t.push(now);
        for (const v of versionsSeen) {
          const st = stats.get(v);
          for (const [k, val] of [["p99", st && st.p99 !== null ? st.p99 * 1000 : null], ["err", st ? st.errorRate * 100 : null], ["rps", st ? st.rps : null]]) {
            if (!series[k].has(v)) series[k].set(v, new Array(series.t.length - 1).fill(null));
            series[k].get(v).push(val);
          }
        }
        if (series.t.length > 150) { series.t.shift(); for (const k of ["p99", "err", "rps"]) for (const col of series[k].values()) col.shift(); }
        if (grew || !latencyPlot) rebuild(); // with no traffic yet: empty axes
        latencyPlot.setData([series.t, ...versionsSeen.map((v) => series.p99.get(v))]);
        errorPlot.setData([series.t, ...versionsSeen.map((v) => series.err.get(v))]);
        rpsPlot.setData([series.t, ...versionsSeen.map((v) => series.rps.get(v))]);
        const totals = [...stats.entries()].map(([v, st]) => ({ label: `v${v}`, value: st.total }));
        if (totals.length) document.getElementById("totals").replaceChildren(F.barsSVG(totals, { format: (x) => fmt(x, 0) }));
        else empty(document.getElementById("totals"), "No requests yet.");
      }
      prev = curr; prevAt = now;
    }
    async function drift() {
      const windowSel = document.getElementById("drift-window");
      const box = document.getElementById("drift");
      const r = await F.api(`/serving/endpoints/${encodeURIComponent(name)}/drift?window=${encodeURIComponent(windowSel.value)}`, { shape: "object" });
      if (!r.ok) { F.showError(box, r, "drift"); return; }
      const d = r.data, feats = d.features || [];
      const verdictKind = d.verdict === "drift" ? "bad" : d.verdict === "no_drift" ? "ok" : "";
      const parts = [el("p", {}, pill(d.verdict, verdictKind), ` ${d.current_rows} logged rows in the last ${d.window} vs ${d.reference_rows} rows of ${d.reference}`)];
      if (feats.length) {
        parts.push(el("table", { id: "drift-table" }, el("thead", {}, el("tr", {}, ...["feature", "kind", "PSI", "KS", "χ²", "p (raw)", "drifted"].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...feats.map((f) => el("tr", {}, ...[f.feature, f.kind, fmt(f.psi), fmt(f.ks_statistic), fmt(f.chi2_statistic), fmt(f.p_value)].map((c) => el("td", {}, c)),
            el("td", {}, pill(f.drifted ? "yes" : "no", f.drifted ? "bad" : "ok")))))),
          el("h3", {}, "PSI per feature (0.1 moderate, 0.25 major)"),
          F.barsSVG(feats.map((f) => ({ label: f.feature, value: f.psi ?? f.effect ?? 0, color: f.drifted ? F.color(1) : F.color(2) }))));
        // Each feature's distribution: the reference (training data) against the window, same bins.
        const refName = (d.reference || "").startsWith("training dataset") ? "training" : "reference";
        const hists = feats.filter((f) => f.histogram && (f.histogram.reference || []).length);
        if (hists.length) {
          parts.push(el("h3", {}, `Distributions: ${refName} vs live (share of rows per bin)`),
            el("div", { class: "hists", id: "drift-histograms" }, ...hists.map((f) => el("figure", { "data-feature": f.feature },
              el("figcaption", {}, f.feature, " ", pill(f.drifted ? "drifted" : "stable", f.drifted ? "bad" : "ok")),
              F.histogramSVG(f.histogram, { names: [refName, `live (${d.window})`] })))));
        }
      }
      box.replaceChildren(...parts);
    }
    document.getElementById("drift-window").addEventListener("change", () => drift().catch(console.warn));
    // Logged requests and p99 per version over the chosen range, asked of the server (since).
    async function trafficHistory() {
      const rangeSel = document.getElementById("ep-history-range"), box = document.getElementById("ep-history");
      const since = rangeSel.value ? Math.floor(Date.now() / 1000 - Number(rangeSel.value)) : null;
      const r = await F.api(`/serving/endpoints/${encodeURIComponent(name)}/history?buckets=60${since === null ? "" : `&since=${since}`}`, { shape: "object" });
      if (!r.ok) { F.showError(box, r, "history"); return; }
      const versions = Object.keys(r.data.versions || {}), xs = r.data.times || [];
      box.querySelectorAll(".chart").forEach((c) => c.fwPlot?.destroy());
      if (!versions.length) { empty(box, "No logged requests in this range (the prediction log is sampled: serving.prediction_log_sample_rate)."); return; }
      const req = el("div", { class: "chart", id: "chart-hist-requests", "data-testid": "chart" }), p99 = el("div", { class: "chart", id: "chart-hist-p99", "data-testid": "chart" });
      box.replaceChildren(el("div", {}, el("h3", {}, "logged requests"), req), el("div", {}, el("h3", {}, "p99 latency (ms)"), p99));
      F.timeChart(req, xs, versions.map((v, i) => ({ label: `v${v}`, values: r.data.versions[v].requests, stroke: F.color(i) })), { title: `logged requests per version of ${name}` });
      F.timeChart(p99, xs, versions.map((v, i) => ({ label: `v${v}`, values: r.data.versions[v].p99_ms, stroke: F.color(i) })), { title: `p99 latency per version of ${name}` });
    }
    document.getElementById("ep-history-range").addEventListener("change", () => trafficHistory().catch(console.warn));
    await Promise.all([describe(), scrape(), drift(), trafficHistory()]);
    F.every(3000, describe, { now: false });
    F.every(2000, scrape, { now: false });
    F.every(15000, drift, { now: false });
    F.every(15000, trafficHistory, { now: false });
  };

  // ---------- Experiments ----------
  // A significant difference is good or bad by the metric's direction ("increase": higher is
  // better). A significant loss is red, a significant win green; not significant stays grey.
  function verdict(c, direction) {
    if (c.breached) return { text: "guardrail breached", kind: "bad" };
    if (!c.significant) return { text: "not significant", kind: "" };
    const better = direction === "decrease" ? c.diff < 0 : c.diff > 0;
    return better ? { text: "significant win", kind: "ok" } : { text: "significant loss", kind: "bad" };
  }
  F.verdict = verdict;
  const EXP_PANELS = ["variants", "metrics", "chart-seq", "chart-diff", "arms", "probs", "chart-alloc", "exp-actions", "exp-audit", "srm"];
  F.pages.experiments = async () => {
    const listBody = document.querySelector("#experiments tbody");
    const exps = await F.load(listBody, "/experiments", "array", "experiments");
    const live = exps ? await F.liveAllocations(exps.filter((x) => x.status === "running")) : new Map();
    if (exps) {
      fillTable(listBody, exps.map((x) => [link(x.name, () => { location.hash = x.name; }), x.kind,
        pill(x.status, x.status === "running" ? "ok" : ""), F.allocationText(x, live.get(x.name)),
        x.winner || "–", when(x.started_at)]));
    }
    window.addEventListener("hashchange", () => location.reload());  // a new subject: a clean page
    const name = F.subject() || exps?.find((x) => x.kind === "ab")?.name || exps?.[0]?.name;
    const noCharts = () => document.querySelectorAll("[data-testid=chart]").forEach((c) => { c.removeAttribute("data-testid"); empty(c, "–"); });
    if (!name || (exps && !exps.some((x) => x.name === name))) {
      F.resetPanels(EXP_PANELS, !name ? (exps ? "No experiments yet: `flywheel experiments create exp.yaml`." : "The experiment list did not load.")
        : `No experiment named ${JSON.stringify(name)}: pick one from the list above.`);
      noCharts();
      return;
    }
    F.resetPanels(EXP_PANELS);
    document.querySelectorAll(".exp-name").forEach((n) => { n.textContent = name; });
    let info = exps?.find((x) => x.name === name);
    const isBandit = info?.kind === "bandit";
    document.getElementById("ab-cards").hidden = isBandit;
    document.getElementById("bandit-cards").hidden = !isBandit;
    (isBandit ? document.querySelectorAll("#ab-cards [data-testid=chart]") : document.querySelectorAll("#bandit-cards [data-testid=chart]")).forEach((c) => c.removeAttribute("data-testid"));
    const target = `experiment:${name}`, base = `/experiments/${encodeURIComponent(name)}`;
    async function refreshInfo() {
      const r = await F.api(base, { shape: "object" });
      if (r.ok) info = r.data;
      actions();
    }
    function actions() {
      if (!info) return;
      const running = info.status === "running";
      const variants = Object.keys(info.shares || {});
      const winnerSel = el("select", { id: "ship-variant", "aria-label": "variant to ship" }, ...variants.map((v) => el("option", { value: v }, v)));
      const weightFields = el("div", { class: "toolbar" }, ...variants.map((v) => el("label", {}, `${v} `,
        el("input", { type: "number", min: 0, step: "any", value: +(info.shares[v] * 100).toFixed(2), "data-weight": v, style: "width:6em" }))));
      const trafficField = el("input", { type: "number", id: "traffic-share", min: 0.01, max: 1, step: 0.01, value: info.traffic ?? 1, style: "width:6em" });
      document.getElementById("exp-actions").replaceChildren(
        F.actionButton("stop", { title: `Stop ${name}`, detail: "Every unit gets control from now on; the layer's traffic is released.", action: "experiment.stop", target,
          path: `${base}/stop`, body: () => ({}), onDone: refreshInfo }, { impossible: running ? "" : `the experiment is ${info.status}`, id: "exp-stop" }),
        F.actionButton("ship…", { title: `Stop ${name} and ship a variant`, detail: "Every unit gets the chosen variant from now on.", fields: el("label", {}, "variant ", winnerSel),
          action: "experiment.ship", target, path: `${base}/stop`, body: () => ({ winner: winnerSel.value }), onDone: refreshInfo },
          { impossible: running ? "" : `the experiment is ${info.status}`, id: "exp-ship" }),
        F.actionButton("change traffic…", { title: `Change the traffic of ${name}`, detail: isBandit ? "A bandit sets its own weights: only its share of the layer changes." : "Weights are relative; units move only as much as needed.",
          fields: el("div", {}, isBandit ? "" : weightFields, el("label", {}, "share of the layer (0–1] ", trafficField)),
          action: "experiment.traffic", target, path: `${base}/traffic`, onDone: refreshInfo,
          body: () => {
            const traffic = Number(trafficField.value);
            if (!(traffic > 0 && traffic <= 1)) throw new Error("traffic: must be in (0, 1]");
            if (isBandit) return { traffic };
            const weights = Object.fromEntries([...weightFields.querySelectorAll("input")].map((i) => [i.dataset.weight, Number(i.value)]));
            if (Object.values(weights).some((w) => !Number.isFinite(w) || w < 0)) throw new Error("weights: each must be a number ≥ 0");
            return { weights, traffic };
          } }, { impossible: running ? "" : `the experiment is ${info.status}`, id: "exp-traffic" }));
      F.auditInto(document.querySelector("#exp-audit tbody"), target);
    }
    document.addEventListener("fw-role", actions);
    await refreshInfo();
    async function report() {
      const r = await F.api(`${base}/report`, { shape: "object" });
      if (!r.ok) { F.showError(document.querySelector("#variants tbody"), r, "report"); F.showError(document.getElementById("metrics"), r, "report"); return; }
      const rep = r.data, srm = rep.srm;
      document.getElementById("srm").replaceChildren(srm ? pill(srm.flagged ? `SRM! p=${fmt(srm.p_value)}` : `no SRM (p=${fmt(srm.p_value)})`, srm.flagged ? "bad" : "ok") : "");
      fillTable(document.querySelector("#variants tbody"), (rep.variants || []).map((v) => [v.name, v.units, v.exposures, `${(v.expected_share * 100).toFixed(1)}%`,
        `${(v.observed_share * 100).toFixed(1)}%`]));
      const mbox = document.getElementById("metrics");
      const parts = [];
      for (const m of rep.metrics || []) {
        parts.push(el("h3", {}, `${m.name} `, el("small", { class: "muted" }, `${m.role} · ${m.kind} of ${m.event} · want ${m.direction}`)));
        parts.push(F.intervalsSVG((m.variants || []).map((v) => ({ label: `${v.variant} (n=${v.n})`, mean: v.mean, low: v.ci_low ?? v.mean, high: v.ci_high ?? v.mean }))));
        const cmp = m.comparisons || [];
        if (cmp.length) {
          const heads = [["vs control"], ["diff"], ["relative"], ["95% CI"], ["p (raw)", "unadjusted fixed-horizon p-value; the CLI's \"p\""],
            ["p (Holm)", "adjusted for the number of comparisons (Holm); decides \"significant\""], ["sequential p", "always-valid p-value"], ["test"], ["verdict"]];
          parts.push(el("table", { class: "comparisons", "data-metric": m.name }, el("thead", {}, el("tr", {}, ...heads.map(([h, t]) => el("th", t ? { title: t, scope: "col" } : { scope: "col" }, h)))),
            el("tbody", {}, ...cmp.map((c) => {
              const v = verdict(c, m.direction);
              return el("tr", { "data-variant": c.variant }, ...[c.variant, fmt(c.diff), c.relative === null ? "–" : `${(c.relative * 100).toFixed(1)}%`,
                `[${fmt(c.ci_low)}, ${fmt(c.ci_high)}]`, fmt(c.p_value), fmt(c.p_value_adjusted), fmt(c.sequential_p_value), c.test].map((x) => el("td", {}, x)),
              el("td", {}, pill(v.text, v.kind)));
            }))));
          parts.push(el("p", { class: "muted" }, "p (raw) is the unadjusted p-value the CLI prints as \"p\"; p (Holm) is adjusted for the number of comparisons and decides the verdict; the verdict's colour follows the metric's direction."));
          parts.push(F.intervalsSVG(cmp.map((c) => ({ label: `${c.variant} − ${c.control}`, mean: c.diff, low: c.ci_low, high: c.ci_high })), { zero: 0 }));
        }
      }
      if (rep.warnings?.length) parts.push(...rep.warnings.map((w) => el("p", { class: "bad" }, w)));
      mbox.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted" }, "No metrics defined.")]));
    }
    // The primary metric over the experiment's life (GET .../history), over the chosen range: the
    // always-valid p-value (solid), the fixed-horizon p-value (dashed), and each difference.
    const rangeSel = document.getElementById("history-range");
    async function history() {
      // The server keeps the whole life and spreads the 60 points over the range asked (since).
      const since = rangeSel && rangeSel.value ? Math.floor(Date.now() / 1000 - Number(rangeSel.value)) : null;
      const r = await F.api(`${base}/history?buckets=60${since === null ? "" : `&since=${since}`}`, { shape: "object" });
      const seqBox = document.getElementById("chart-seq"), diffBox = document.getElementById("chart-diff");
      if (!r.ok) { for (const box of [seqBox, diffBox]) { box.removeAttribute("data-testid"); F.showError(box, r, "history"); } return; }
      const points = r.data.points || [];
      const treatments = points.length ? points[points.length - 1].comparisons.map((c) => c.variant) : [];
      if (!treatments.length) {
        for (const box of [seqBox, diffBox]) { box.removeAttribute("data-testid"); empty(box, "No exposures in this range."); }
        return;
      }
      const xs = points.map((p) => p.time), alpha = r.data.alpha;
      document.getElementById("history-metric").textContent = `${r.data.metric.name}, ${points[points.length - 1].units} units by the end`;
      const floor = (v) => (v === null || v === undefined ? null : Math.max(v, 1e-12));
      const pSeries = treatments.flatMap((v, i) => [
        { label: `${v} sequential p`, values: points.map((p) => floor(p.comparisons[i].sequential_p_value)), stroke: F.color(i) },
        { label: `${v} p (raw)`, values: points.map((p) => floor(p.comparisons[i].p_value)), stroke: F.color(i), dash: [6, 4], width: 1 }]);
      pSeries.push({ label: `alpha ${alpha}`, values: xs.map(() => alpha), stroke: F.color(7), dash: [2, 3], width: 1 });
      seqBox.setAttribute("data-testid", "chart");
      F.timeChart(seqBox, xs, pSeries, { log: true, title: "p-value over time (log scale)" });
      const dSeries = treatments.flatMap((v, i) => [
        { label: `${v} − ${r.data.control}`, values: points.map((p) => p.comparisons[i].diff), stroke: F.color(i) },
        { label: "CI low", values: points.map((p) => p.comparisons[i].ci_low), stroke: F.color(i), dash: [4, 4], width: 1 },
        { label: "CI high", values: points.map((p) => p.comparisons[i].ci_high), stroke: F.color(i), dash: [4, 4], width: 1 }]);
      dSeries.push({ label: "0", values: xs.map(() => 0), stroke: F.color(7), dash: [2, 3], width: 1 });
      diffBox.setAttribute("data-testid", "chart");
      F.timeChart(diffBox, xs, dSeries, { title: "difference over time" });
    }
    rangeSel?.addEventListener("change", () => history().catch(console.warn));
    // The bandit's live allocation: what its policy gives each arm now (GET .../bandit).
    async function bandit() {
      const r = await F.api(`${base}/bandit`, { shape: "object" });
      if (!r.ok) { F.showError(document.querySelector("#arms tbody"), r, "bandit"); return; }
      const b = r.data, st = b.state || {}, arms = st.arms || [];
      fillTable(document.querySelector("#arms tbody"), arms.map((a, i) => [a, fmt(st.pulls?.[i], 0), fmt(st.reward_sum?.[i]),
        fmt(st.pulls?.[i] ? st.reward_sum[i] / st.pulls[i] : null), b.probabilities ? `${(b.probabilities[a] * 100).toFixed(1)}%` : "contextual"]));
      if (b.probabilities) {
        document.getElementById("probs").replaceChildren(F.barsSVG(arms.map((a) => ({ label: a, value: b.probabilities[a] })), { max: 1, format: (x) => `${(x * 100).toFixed(1)}%` }));
      }
    }
    // The arm probabilities recorded at every state update (GET .../history).
    let allocVersion = -1;
    async function allocation() {
      const r = await F.api(`${base}/history`, { shape: "object" });
      const box = document.getElementById("chart-alloc");
      if (!r.ok) { box.removeAttribute("data-testid"); F.showError(box, r, "allocation"); return; }
      const a = r.data.allocation, pts = a?.points || [];
      if (!pts.length) { box.removeAttribute("data-testid"); empty(box, "No allocation recorded yet."); return; }
      if (pts[pts.length - 1].version === allocVersion) return;
      allocVersion = pts[pts.length - 1].version;
      document.getElementById("alloc-note").textContent = `${pts.length} updates, version ${allocVersion}${a.contextual ? " · mean over each update's contexts" : ""}`;
      box.setAttribute("data-testid", "chart");
      F.timeChart(box, pts.map((p) => p.time), a.arms.map((arm, i) => ({ label: arm, values: pts.map((p) => p.probabilities[i]) })), { yRange: [0, 1], title: "allocation over time" });
    }
    if (isBandit) {
      await Promise.all([bandit(), allocation()]);
      F.every(2000, bandit, { now: false });
      F.every(3000, allocation, { now: false });
    } else {
      await Promise.all([report(), history()]);
      F.every(3000, report, { now: false });
      F.every(10000, history, { now: false });
    }
  };
})();
