// Pages over live systems: Training (jobs, logs, inventory), Endpoints (serving), Experiments.
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, when, getJSON, fillTable, pill, link, empty } = F;
  const hashName = () => decodeURIComponent(location.hash.slice(1));
  const STATE_KIND = { running: "ok", succeeded: "ok", failed: "bad", cancelled: "", queued: "", admitted: "" };

  // ---------- Training ----------
  F.pages.training = async () => {
    const stateSel = document.getElementById("state");
    let jobs = [];
    async function loadJobs() {
      const q = stateSel.value ? `?state=${encodeURIComponent(stateSel.value)}&limit=200` : "?limit=200";
      jobs = (await getJSON(`/training/jobs${q}`)).body || [];
      fillTable(document.querySelector("#jobs tbody"), jobs.map((j) => {
        const res = j.spec?.resources || {};
        const procs = (res.nodes || 1) * (res.procs_per_node || 1);
        return [link(j.name, () => { location.hash = j.id; }), pill(j.state, STATE_KIND[j.state] ?? ""), j.team, j.priority,
          `${procs} proc · ${procs * (res.cpus_per_proc || 0)} CPU · ${procs * (res.gpus_per_proc || 0)} GPU`,
          `${j.restarts}/${j.spec?.max_restarts ?? "–"}`, j.preemptions, (j.placement || []).map((p) => `${p.node}${p.gpus?.length ? ` gpu ${p.gpus.join(",")}` : ""}`).join(" ") || "–",
          when(j.submitted_at)];
      }));
      const counts = {};
      for (const j of jobs) counts[j.state] = (counts[j.state] || 0) + 1;
      document.getElementById("job-counts").textContent = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(" · ");
    }
    const usage = F.lineChart(document.getElementById("chart-usage"), [{ label: "CPUs used", stroke: "#3056d3" }, { label: "GPUs used", stroke: "#12875a" }, { label: "queued jobs", stroke: "#c4320a" }]);
    async function inventory() {
      const inv = (await getJSON("/training/inventory")).body;
      const nodes = inv.nodes || [];
      fillTable(document.querySelector("#nodes tbody"), nodes.map((n) => [n.name, n.host, `${n.cpus_used} / ${n.cpus}`,
        `${n.gpus_used} / ${(n.gpus || []).length}`, el("div", { class: "split", style: "height:14px;margin:0" },
          el("span", { style: `width:${(100 * n.cpus_used) / Math.max(1, n.cpus)}%;background:#3056d3;padding:0` }),
          el("span", { style: `flex:1;background:#e4e7ec;padding:0` }))]));
      document.getElementById("inv-summary").textContent = `${inv.total_cpus} CPUs, ${inv.total_gpus} GPUs · ${inv.running_jobs} running · ${inv.queued_jobs} queued`;
      fillTable(document.querySelector("#quotas tbody"), Object.entries(inv.quotas || {}).map(([team, q]) => [team, q.cpus ?? "∞", q.gpus ?? "∞", q.jobs ?? "∞", q.weight ?? 1]));
      usage.push(Date.now() / 1000, [nodes.reduce((a, n) => a + n.cpus_used, 0), nodes.reduce((a, n) => a + n.gpus_used, 0), inv.queued_jobs]);
    }
    function drawJobMetrics(j) {
      const chart = document.getElementById("job-metrics");
      const keys = [...new Set((j.metrics || []).map((m) => m.key))];
      if (keys.length) {
        const parts = keys.map((k) => { const ms = j.metrics.filter((m) => m.key === k); return { steps: ms.map((m) => m.step), values: ms.map((m) => m.value) }; });
        const { xs, ys } = F.alignSeries(parts);
        chart.setAttribute("data-testid", "chart");
        F.xyChart(chart, xs, keys.map((k, i) => ({ label: k, values: ys[i] })));
      } else { chart.removeAttribute("data-testid"); empty(chart, "This job reported no metrics (yet)."); }
    }
    let logTimer = null, metricTimer = null;
    async function show() {
      const id = hashName() || jobs.find((j) => j.state === "running")?.id || jobs[0]?.id;
      const detail = document.getElementById("job"), logBox = document.getElementById("log");
      clearInterval(logTimer); clearInterval(metricTimer);
      if (!id) { empty(detail, "No jobs yet: `flywheel jobs submit job.yaml`."); logBox.textContent = ""; return; }
      const r = await getJSON(`/training/jobs/${encodeURIComponent(id)}`);
      if (r.status !== 200) { empty(detail, r.body.error || `HTTP ${r.status}`); return; }
      const j = r.body;
      document.getElementById("job-name").textContent = `${j.name} (${j.id})`;
      detail.replaceChildren(
        el("dl", { class: "kv" }, ...[["state", j.state], ["reason", j.reason || "–"], ["team", j.team], ["priority", j.priority], ["attempt", j.attempt],
          ["restarts", `${j.restarts} of ${j.spec?.max_restarts ?? "–"}`], ["preemptions", j.preemptions], ["entrypoint", j.spec?.entrypoint],
          ["started", when(j.started_at)], ["finished", when(j.finished_at)], ["run", j.run_id || "–"], ["model", j.model_version || "–"]]
          .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")])),
        el("h3", {}, "History"),
        el("table", {}, el("tbody", {}, ...(j.events || []).map((e) => el("tr", {}, ...[when(e.at), `${e.from || "–"} → ${e.to}`, `attempt ${e.attempt}`, e.reason].map((c) => el("td", {}, c)))))));
      drawJobMetrics(j);
      async function tail() {
        const logs = (await getJSON(`/training/jobs/${encodeURIComponent(id)}/logs`)).body.files || {};
        const text = Object.entries(logs).filter(([, t]) => t).map(([f, t]) => `==> ${f} <==\n${t.split("\n").slice(-80).join("\n")}`).join("\n");
        const atEnd = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
        logBox.textContent = text || "(no output yet)";
        if (atEnd) logBox.scrollTop = logBox.scrollHeight;
      }
      await tail();
      if (["running", "admitted", "queued"].includes(j.state)) {
        logTimer = setInterval(() => tail().catch(console.warn), 2000);
        metricTimer = setInterval(async () => {
          const again = await getJSON(`/training/jobs/${encodeURIComponent(id)}`);
          if (again.status === 200) drawJobMetrics(again.body);
        }, 5000);
      }
    }
    stateSel.addEventListener("change", loadJobs);
    window.addEventListener("hashchange", show);
    await Promise.all([loadJobs(), inventory()]);
    await show();
    setInterval(() => loadJobs().catch(console.warn), 5000);
    setInterval(() => inventory().catch(console.warn), 2000);
  };

  // ---------- Endpoints ----------
  F.pages.endpoints = async () => {
    const endpoints = (await getJSON("/serving/endpoints")).body || [];
    fillTable(document.querySelector("#endpoints tbody"), endpoints.map((e) => [link(e.name, () => { location.hash = e.name; }), e.model,
      (e.effective_routes || e.routes).map((r) => `v${r.version}:${fmt(r.weight)}`).join(" "), e.shadow ? `v${e.shadow.version} (${fmt(e.shadow.share * 100)}%)` : "–",
      e.canary ? pill(e.canary.state || "canary", e.canary.state === "rolled_back" ? "bad" : "") : "–", e.revision]));
    const name = hashName() || endpoints[0]?.name;
    if (!name) {
      for (const id of ["split", "canary", "events", "drift"]) empty(document.getElementById(id), "No endpoints yet: `flywheel serve deploy NAME --model M --version V`.");
      for (const c of document.querySelectorAll("[data-testid=chart]")) c.removeAttribute("data-testid");
      return;
    }
    document.querySelectorAll(".ep-name").forEach((n) => { n.textContent = name; });
    async function describe() {
      const r = await getJSON(`/serving/endpoints/${encodeURIComponent(name)}`);
      if (r.status !== 200) { empty(document.getElementById("split"), r.body.error || `HTTP ${r.status}`); return; }
      const ep = r.body, routes = ep.effective_routes || ep.routes, total = routes.reduce((a, x) => a + x.weight, 0) || 1;
      for (const x of [...routes, ...(ep.shadow ? [ep.shadow] : [])]) knownVersions.add(String(x.version));
      document.getElementById("split").replaceChildren(
        el("div", { class: "split", "data-testid": "split" }, ...routes.map((x, i) => el("span", { style: `width:${(100 * x.weight) / total}%;background:${F.color(i)}` }, `v${x.version} ${((100 * x.weight) / total).toFixed(0)}%`))),
        el("p", { class: "muted" }, `model ${ep.model} · revision ${ep.revision} · updated ${when(ep.updated_at)}`, ep.shadow ? ` · shadow v${ep.shadow.version} gets ${fmt(ep.shadow.share * 100)}% of requests mirrored` : ""));
      const c = ep.canary, canary = document.getElementById("canary");
      if (!c) empty(canary, "No canary: the split above is static.");
      else {
        const steps = c.steps || [], at = c.step ?? 0;
        const stepColor = (i) => (c.state === "succeeded" || i < at ? "#12875a" : c.state === "rolled_back" && i === at ? "#c4320a" : i === at ? "#f79009" : "#98a2b3");
        canary.replaceChildren(
          el("p", {}, pill(c.state, c.state === "rolled_back" ? "bad" : "ok"), ` v${c.candidate} over v${c.baseline}: ${c.weight}% of traffic now`),
          el("div", { class: "split", "data-testid": "canary-steps" }, ...steps.map((s, i) => el("span", { style: `flex:1;background:${stepColor(i)}` }, `${s}%`))),
          el("h3", {}, "Gates (per step)"),
          el("dl", { class: "kv", id: "gates" }, ...[["requests per step", c.step_requests], ["max error rate", c.max_error_rate],
            ["max p99", c.max_p99_ms === null ? "none" : `${fmt(c.max_p99_ms)} ms`], ["step", `${Math.min(at + 1, steps.length)} of ${steps.length}`],
            ["last verdict", c.reason || "–"], ["rollout", c.rollout_id]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "–")])));
      }
      fillTable(document.querySelector("#events tbody"), (ep.events || []).slice().reverse().slice(0, 50).map((e) => [when(e.at), e.kind, e.actor || "–",
        typeof e.detail === "object" ? (e.detail.reason || JSON.stringify(e.detail)).slice(0, 160) : String(e.detail)]));
    }
    const versionsSeen = [], knownVersions = new Set();
    let latencyPlot = null, errorPlot = null, rpsPlot = null;
    const series = { t: [], p99: new Map(), err: new Map(), rps: new Map() };
    function rebuild() {
      const mk = (id, label) => {
        const node = document.getElementById(id);
        node.replaceChildren();
        const now = () => Date.now() / 1000;
        return new uPlot({ width: Math.max(240, node.clientWidth - 4), height: 200,
          scales: { x: { time: true, range: (_u, a, b) => [Math.min(a ?? now(), (b ?? now()) - 60), b ?? now()] },
                    y: { range: (_u, a, b) => (a === null || b === null ? [0, 1] : [Math.min(0, a), b > a ? b * 1.1 : a + 1]) } },
          series: [{}, ...versionsSeen.map((v, i) => ({ label: `v${v} ${label}`, stroke: F.color(i), width: 2, spanGaps: true }))], axes: [{}, { size: 55 }] },
          [series.t, ...versionsSeen.map(() => [])], node);
      };
      latencyPlot = mk("chart-latency", "p99 ms"); errorPlot = mk("chart-errors", "errors %"); rpsPlot = mk("chart-rps", "req/s");
    }
    let prev = null, prevAt = 0;
    async function scrape() {
      const curr = await F.scrapeMetrics(), now = Date.now() / 1000;
      const mine = (s) => s.labels.endpoint === name;
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
          const s = stats.get(v);
          for (const [k, val] of [["p99", s && s.p99 !== null ? s.p99 * 1000 : null], ["err", s ? s.errorRate * 100 : null], ["rps", s ? s.rps : null]]) {
            if (!series[k].has(v)) series[k].set(v, new Array(series.t.length - 1).fill(null));
            series[k].get(v).push(val);
          }
        }
        if (series.t.length > 150) { series.t.shift(); for (const k of ["p99", "err", "rps"]) for (const col of series[k].values()) col.shift(); }
        if (grew || !latencyPlot) rebuild(); // with no traffic yet: empty axes
        latencyPlot.setData([series.t, ...versionsSeen.map((v) => series.p99.get(v))]);
        errorPlot.setData([series.t, ...versionsSeen.map((v) => series.err.get(v))]);
        rpsPlot.setData([series.t, ...versionsSeen.map((v) => series.rps.get(v))]);
        const totals = [...stats.entries()].map(([v, s]) => ({ label: `v${v}`, value: s.total }));
        if (totals.length) document.getElementById("totals").replaceChildren(F.barsSVG(totals, { format: (x) => fmt(x, 0) }));
        else empty(document.getElementById("totals"), "No requests yet.");
      }
      prev = curr; prevAt = now;
    }
    async function drift() {
      const windowSel = document.getElementById("drift-window");
      const r = await getJSON(`/serving/endpoints/${encodeURIComponent(name)}/drift?window=${encodeURIComponent(windowSel.value)}`);
      const box = document.getElementById("drift");
      if (r.status !== 200) { empty(box, r.body.error || `HTTP ${r.status}`); return; }
      const d = r.body, feats = d.features || [];
      const verdictKind = d.verdict === "drift" ? "bad" : d.verdict === "no_drift" ? "ok" : "";
      const parts = [el("p", {}, pill(d.verdict, verdictKind), ` ${d.current_rows} logged rows in the last ${d.window} vs ${d.reference_rows} rows of ${d.reference}`)];
      if (feats.length) {
        parts.push(el("table", { id: "drift-table" }, el("thead", {}, el("tr", {}, ...["feature", "kind", "PSI", "KS", "χ²", "p", "drifted"].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...feats.map((f) => el("tr", {}, ...[f.feature, f.kind, fmt(f.psi), fmt(f.ks_statistic), fmt(f.chi2_statistic), fmt(f.p_value)].map((c) => el("td", {}, c)),
            el("td", {}, pill(f.drifted ? "yes" : "no", f.drifted ? "bad" : "ok")))))),
          el("h3", {}, "PSI per feature (0.1 moderate, 0.25 major)"),
          F.barsSVG(feats.map((f) => ({ label: f.feature, value: f.psi ?? f.effect ?? 0, color: f.drifted ? "#c4320a" : "#12875a" }))));
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
    await Promise.all([describe(), scrape(), drift()]);
    setInterval(() => describe().catch(console.warn), 3000);
    setInterval(() => scrape().catch(console.warn), 2000);
    setInterval(() => drift().catch(console.warn), 15000);
    window.addEventListener("hashchange", () => location.reload());
  };

  // ---------- Experiments ----------
  F.pages.experiments = async () => {
    const exps = (await getJSON("/experiments")).body || [];
    fillTable(document.querySelector("#experiments tbody"), exps.map((x) => [link(x.name, () => { location.hash = x.name; }), x.kind,
      pill(x.status, x.status === "running" ? "ok" : ""), Object.entries(x.shares || {}).map(([v, w]) => `${v} ${(w * 100).toFixed(0)}%`).join(" · "),
      x.winner || "–", when(x.started_at)]));
    const name = hashName() || exps.find((x) => x.kind === "ab")?.name || exps[0]?.name;
    if (!name) { empty(document.getElementById("variants"), "No experiments yet: `flywheel experiments create exp.yaml`."); document.querySelectorAll("[data-testid=chart]").forEach((c) => c.removeAttribute("data-testid")); return; }
    document.querySelectorAll(".exp-name").forEach((n) => { n.textContent = name; });
    const info = exps.find((x) => x.name === name);
    const isBandit = info?.kind === "bandit";
    document.getElementById("ab-cards").hidden = isBandit;
    document.getElementById("bandit-cards").hidden = !isBandit;
    (isBandit ? document.querySelectorAll("#ab-cards [data-testid=chart]") : document.querySelectorAll("#bandit-cards [data-testid=chart]")).forEach((c) => c.removeAttribute("data-testid"));
    async function report() {
      const r = await getJSON(`/experiments/${encodeURIComponent(name)}/report`);
      if (r.status !== 200) { empty(document.getElementById("variants"), r.body.error || `HTTP ${r.status}`); return; }
      const rep = r.body, srm = rep.srm;
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
          parts.push(el("table", {}, el("thead", {}, el("tr", {}, ...["vs control", "diff", "relative", "95% CI", "p", "sequential p", "test", ""].map((h) => el("th", {}, h)))),
            el("tbody", {}, ...cmp.map((c) => el("tr", {}, ...[c.variant, fmt(c.diff), c.relative === null ? "–" : `${(c.relative * 100).toFixed(1)}%`,
              `[${fmt(c.ci_low)}, ${fmt(c.ci_high)}]`, fmt(c.p_value_adjusted ?? c.p_value), fmt(c.sequential_p_value), c.test].map((x) => el("td", {}, x)),
              el("td", {}, c.breached ? pill("guardrail breached", "bad") : c.significant ? pill("significant", "ok") : pill("not yet")))))));
          parts.push(F.intervalsSVG(cmp.map((c) => ({ label: `${c.variant} − ${c.control}`, mean: c.diff, low: c.ci_low, high: c.ci_high })), { zero: 0 }));
        }
      }
      if (rep.warnings?.length) parts.push(...rep.warnings.map((w) => el("p", { class: "bad" }, w)));
      mbox.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted" }, "No metrics defined.")]));
    }
    // The primary metric over the experiment's life (GET .../history): the always-valid p-value
    // (solid), the fixed-horizon p-value (dashed), and each treatment's difference with its CI.
    async function history() {
      const r = await getJSON(`/experiments/${encodeURIComponent(name)}/history?buckets=60`);
      const seqBox = document.getElementById("chart-seq"), diffBox = document.getElementById("chart-diff");
      const points = r.status === 200 ? r.body.points || [] : [];
      const treatments = points.length ? points[points.length - 1].comparisons.map((c) => c.variant) : [];
      if (!treatments.length) {
        for (const box of [seqBox, diffBox]) { box.removeAttribute("data-testid"); empty(box, r.body?.error || "No exposures yet."); }
        return;
      }
      const xs = points.map((p) => p.time), alpha = r.body.alpha;
      document.getElementById("history-metric").textContent = `${r.body.metric.name}, ${points[points.length - 1].units} units by the end`;
      const floor = (v) => (v === null || v === undefined ? null : Math.max(v, 1e-12));
      const pSeries = treatments.flatMap((v, i) => [
        { label: `${v} sequential p`, values: points.map((p) => floor(p.comparisons[i].sequential_p_value)), stroke: F.color(i) },
        { label: `${v} p`, values: points.map((p) => floor(p.comparisons[i].p_value)), stroke: F.color(i), dash: [6, 4], width: 1 }]);
      pSeries.push({ label: `alpha ${alpha}`, values: xs.map(() => alpha), stroke: "#98a2b3", dash: [2, 3], width: 1 });
      seqBox.setAttribute("data-testid", "chart");
      F.timeChart(seqBox, xs, pSeries, { log: true });
      const dSeries = treatments.flatMap((v, i) => [
        { label: `${v} − ${r.body.control}`, values: points.map((p) => p.comparisons[i].diff), stroke: F.color(i) },
        { label: "CI low", values: points.map((p) => p.comparisons[i].ci_low), stroke: F.color(i), dash: [4, 4], width: 1 },
        { label: "CI high", values: points.map((p) => p.comparisons[i].ci_high), stroke: F.color(i), dash: [4, 4], width: 1 }]);
      dSeries.push({ label: "0", values: xs.map(() => 0), stroke: "#98a2b3", dash: [2, 3], width: 1 });
      diffBox.setAttribute("data-testid", "chart");
      F.timeChart(diffBox, xs, dSeries);
    }
    async function bandit() {
      const r = await getJSON(`/experiments/${encodeURIComponent(name)}/bandit`);
      if (r.status !== 200) return;
      const b = r.body, st = b.state || {}, arms = st.arms || [];
      fillTable(document.querySelector("#arms tbody"), arms.map((a, i) => [a, fmt(st.pulls?.[i], 0), fmt(st.reward_sum?.[i]),
        fmt(st.pulls?.[i] ? st.reward_sum[i] / st.pulls[i] : null), b.probabilities ? `${(b.probabilities[a] * 100).toFixed(1)}%` : "contextual"]));
      if (b.probabilities) {
        document.getElementById("probs").replaceChildren(F.barsSVG(arms.map((a) => ({ label: a, value: b.probabilities[a] })), { max: 1, format: (x) => `${(x * 100).toFixed(1)}%` }));
      }
    }
    // The arm probabilities recorded at every state update (GET .../history).
    let allocVersion = -1;
    async function allocation() {
      const r = await getJSON(`/experiments/${encodeURIComponent(name)}/history`);
      const box = document.getElementById("chart-alloc");
      const a = r.status === 200 ? r.body.allocation : null;
      const pts = a?.points || [];
      if (!pts.length) { box.removeAttribute("data-testid"); empty(box, r.body?.error || "No allocation recorded yet."); return; }
      if (pts[pts.length - 1].version === allocVersion) return;
      allocVersion = pts[pts.length - 1].version;
      document.getElementById("alloc-note").textContent = `${pts.length} updates, version ${allocVersion}${a.contextual ? " · mean over each update's contexts" : ""}`;
      box.setAttribute("data-testid", "chart");
      F.timeChart(box, pts.map((p) => p.time), a.arms.map((arm, i) => ({ label: arm, values: pts.map((p) => p.probabilities[i]) })), { yRange: [0, 1] });
    }
    if (isBandit) {
      await Promise.all([bandit(), allocation()]);
      setInterval(() => bandit().catch(console.warn), 2000);
      setInterval(() => allocation().catch(console.warn), 3000);
    } else {
      await Promise.all([report(), history()]);
      setInterval(() => report().catch(console.warn), 3000);
      setInterval(() => history().catch(console.warn), 10000);
    }
    window.addEventListener("hashchange", () => location.reload());
  };
})();
