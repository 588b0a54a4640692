// Recommendations playground: a user's list with item names, reasons and stage latencies; the
// user's recent history; click or buy an item (a real POST /events, with the token pasted in the
// header) and watch the list change. Its reads ask for `preview=true`: the recommender then
// enrols nobody in experiments and logs no exposure, so the playground never skews an A/B test.
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, pill, button, empty } = F;
  const MAX_USER = 2 ** 62;

  // A user id is a whole number ≥ 0 (what the recommender's path accepts); anything else is
  // refused here, with the reason, before any request.
  function parseUser(text) {
    const t = String(text).trim();
    if (!t) return { error: "user: type a user id (a whole number, e.g. 12347)" };
    if (!/^\d+$/.test(t)) return { error: `user: ${JSON.stringify(t)} is not a whole number ≥ 0` };
    const n = Number(t);
    if (!Number.isSafeInteger(n) || n > MAX_USER) return { error: `user: ${t} is too large` };
    return { user: n };
  }
  F.parseUser = parseUser;

  F.pages.playground = async () => {
    const form = document.getElementById("rec-form"), userInput = document.getElementById("user"), surface = document.getElementById("surface");
    const list = document.getElementById("recs"), problem = document.getElementById("user-error");
    const latency = F.lineChart(document.getElementById("chart-latency"), [{ label: "total ms", stroke: F.color(0) }]);
    let previous = [];
    const names = new Map();  // item id -> {description, price}
    const PANELS = ["recs", "stages", "meta", "history", "fallback"];

    // Item names and prices from the catalogue's item features (the recommender's own view).
    async function itemInfo(ids) {
      const missing = [...new Set(ids)].filter((i) => !names.has(i));
      if (!missing.length) return;
      const r = await F.api("/features/online", { method: "POST", shape: "object", body: {
        features: ["recs_item_metadata:description", "recs_item_metadata:price"], entities: { item_id: missing } } });
      if (!r.ok) return;
      const vals = r.data.values || {};
      const desc = vals.description || vals["recs_item_metadata__description"] || [];
      const price = vals.price || vals["recs_item_metadata__price"] || [];
      missing.forEach((id, i) => names.set(id, { description: desc[i] ?? null, price: price[i] ?? null }));
    }
    const label = (id) => names.get(id)?.description || id;

    // The user's recent history: the recommender's stream feature (last items of the last day).
    async function recentHistory(user) {
      const box = document.getElementById("history");
      const r = await F.api("/features/online", { method: "POST", shape: "object", body: {
        features: ["recs_user_recent:last_items", "recs_user_recent:last_categories"], entities: { user_id: [user] } } });
      if (!r.ok) { F.showError(box, r, "recent history"); return; }
      const vals = r.data.values || {};
      const items = (vals.last_items || vals["recs_user_recent__last_items"] || [])[0] || [];
      if (!items.length) { empty(box, `No recent events for user ${user} (a new or quiet user: trending items first).`); return; }
      await itemInfo(items);
      box.replaceChildren(el("ol", { id: "history-list" }, ...items.map((i) => el("li", { "data-item": i }, `${label(i)} `, el("span", { class: "muted" }, `(${i})`)))));
    }

    async function load() {
      const parsed = parseUser(userInput.value);
      if (parsed.error) {
        // Nothing from the previous user stays on screen next to an invalid input.
        F.resetPanels(PANELS, "–");
        userInput.setAttribute("aria-invalid", "true");
        problem.textContent = parsed.error; problem.hidden = false;
        userInput.focus();
        return null;
      }
      userInput.removeAttribute("aria-invalid"); problem.hidden = true;
      const user = parsed.user;
      history.replaceState(null, "", `#${user}`);
      const r = await F.api(`/recommendations/${user}?k=10&surface=${encodeURIComponent(surface.value)}&preview=true`, { shape: "object" });
      if (!r.ok) { F.resetPanels(PANELS, "–"); F.showError(list, r, "recommendations"); return null; }
      const d = r.data, ids = d.items.map((i) => i.item_id);
      await itemInfo(ids);
      const fb = document.getElementById("fallback");
      if ((d.fallbacks || []).length) {
        fb.replaceChildren(el("p", { class: "banner bad-banner", role: "status", id: "fallback-banner" },
          `Fallback in use: ${d.fallbacks.join(", ")} — this list is not the full model's answer.`));
      } else fb.replaceChildren();
      list.replaceChildren(el("table", { id: "rec-table" },
        el("thead", {}, el("tr", {}, ...["#", "item", "name", "category", "score", "reasons", "try it"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...d.items.map((it, i) => el("tr", { class: previous.length && !previous.includes(it.item_id) ? "selected" : "", "data-item": it.item_id },
          el("td", {}, i + 1), el("td", {}, it.item_id), el("td", {}, names.get(it.item_id)?.description || "–"), el("td", {}, it.category), el("td", {}, fmt(it.score)),
          el("td", {}, ...it.reasons.map((x) => pill(x))),
          el("td", {}, button("click", () => send(user, it.item_id, "click"), { "data-action": `click-${it.item_id}` }),
            button("buy", () => send(user, it.item_id, "purchase"), { "data-action": `buy-${it.item_id}` })))))));
      document.getElementById("meta").replaceChildren(el("dl", { class: "kv" }, ...[
        ["strategy", d.strategy], ["surface", d.surface],
        ["experiment variant", d.preview ? "none (preview: not enrolled)" : d.experiment_variant || "–"],
        ["model versions", Object.entries(d.model_versions || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–"],
        ["fallbacks", (d.fallbacks || []).join(", ") || "none"]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
      const stages = Object.entries(d.latency_ms || {}).filter(([k]) => k !== "total");
      document.getElementById("stages").replaceChildren(F.barsSVG(stages.map(([k, v]) => ({ label: k, value: v })), { format: (x) => `${fmt(x, 2)} ms` }),
        el("p", { class: "muted" }, `total ${fmt(d.latency_ms?.total, 2)} ms`));
      latency.push(Date.now() / 1000, [d.latency_ms?.total ?? null]);
      await recentHistory(user);
      return ids;
    }

    async function send(user, item, type) {
      const r = await F.send("POST", "/events", { events: [{ user_id: user, item_id: item, event_type: type }] });
      if (r.status !== 200) { F.flash(`${type} on ${item}: refused (HTTP ${r.status}) ${r.body.error || ""}`, false); return; }
      F.flash(`${type} on ${item} posted (event ${r.body.ids?.[0] ?? "?"}); watching the list…`, true);
      const before = previous;
      // The event reaches the recommender through the event stream: poll until the list moves.
      for (let i = 0; i < 10; i++) {
        await new Promise((res) => setTimeout(res, 500));
        const ids = await load();
        if (ids && ids.join() !== before.join()) { previous = ids; F.flash(`${type} on ${item} posted; the list changed`, true); return; }
      }
      F.flash(`${type} on ${item} posted; the list did not change`, true);
    }

    form.addEventListener("submit", async (e) => { e.preventDefault(); previous = []; previous = (await load()) || []; });  // Enter submits
    document.getElementById("new-user").addEventListener("click", async () => {
      userInput.value = String(900000000 + Math.floor(Math.random() * 1e6)); previous = []; previous = (await load()) || [];
    });
    surface.addEventListener("change", async () => { previous = []; previous = (await load()) || []; });
    const fromHash = F.subject();
    if (fromHash) userInput.value = fromHash;
    previous = (await load()) || [];
    window.addEventListener("hashchange", async () => {
      if (F.subject() === userInput.value.trim()) return;
      userInput.value = F.subject(); previous = []; previous = (await load()) || [];
    });
  };
})();
