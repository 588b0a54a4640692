// Recommendations playground: a user's list with reasons and stage latencies; click or buy an
// item (a real POST /events, with the token pasted in the header) and watch the list change.
"use strict";

(() => {
  const F = Flywheel;
  const { el, fmt, getJSON, pill, button, empty } = F;

  F.pages.playground = async () => {
    const userInput = document.getElementById("user"), surface = document.getElementById("surface");
    const list = document.getElementById("recs"), flash = document.getElementById("flash");
    const latency = F.lineChart(document.getElementById("chart-latency"), [{ label: "total ms", stroke: "#3056d3" }]);
    let previous = [];
    function say(ok, text) { flash.className = `flash ${ok ? "ok" : "bad"}`; flash.textContent = text; flash.hidden = false; }

    async function load() {
      const user = Number(userInput.value);
      history.replaceState(null, "", `#${user}`);
      const r = await getJSON(`/recommendations/${user}?k=10&surface=${surface.value}`);
      if (r.status !== 200) { empty(list, r.body.error || `HTTP ${r.status}`); return null; }
      const d = r.body, ids = d.items.map((i) => i.item_id);
      list.replaceChildren(el("table", { id: "rec-table" },
        el("thead", {}, el("tr", {}, ...["#", "item", "category", "score", "reasons", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...d.items.map((it, i) => el("tr", { class: previous.length && !previous.includes(it.item_id) ? "selected" : "", "data-item": it.item_id },
          el("td", {}, i + 1), el("td", {}, it.item_id), el("td", {}, it.category), el("td", {}, fmt(it.score)),
          el("td", {}, ...it.reasons.map((x) => pill(x))),
          el("td", {}, button("click", () => send(user, it.item_id, "click"), { "data-action": `click-${it.item_id}` }),
            button("buy", () => send(user, it.item_id, "purchase"), { "data-action": `buy-${it.item_id}` })))))));
      document.getElementById("meta").replaceChildren(el("dl", { class: "kv" }, ...[
        ["strategy", d.strategy], ["surface", d.surface], ["experiment variant", d.experiment_variant || "–"],
        ["model versions", Object.entries(d.model_versions || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "–"],
        ["fallbacks", (d.fallbacks || []).join(", ") || "none"]].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
      const stages = Object.entries(d.latency_ms || {}).filter(([k]) => k !== "total");
      document.getElementById("stages").replaceChildren(F.barsSVG(stages.map(([k, v]) => ({ label: k, value: v })), { format: (x) => `${fmt(x, 2)} ms` }),
        el("p", { class: "muted" }, `total ${fmt(d.latency_ms?.total, 2)} ms`));
      latency.push(Date.now() / 1000, [d.latency_ms?.total ?? null]);
      return ids;
    }

    async function send(user, item, type) {
      const r = await F.send("POST", "/events", { events: [{ user_id: user, item_id: item, event_type: type }] });
      if (r.status !== 200) { say(false, `${type} on ${item}: refused (HTTP ${r.status}) ${r.body.error || ""}`); return; }
      say(true, `${type} on ${item} posted (event ${r.body.ids?.[0] ?? "?"}); watching the list…`);
      const before = previous;
      // The event reaches the recommender through the event stream: poll until the list moves.
      for (let i = 0; i < 10; i++) {
        await new Promise((res) => setTimeout(res, 500));
        const ids = await load();
        if (ids && ids.join() !== before.join()) { previous = ids; say(true, `${type} on ${item} posted; the list changed`); return; }
      }
      say(true, `${type} on ${item} posted; the list did not change`);
    }

    document.getElementById("load").addEventListener("click", async () => { previous = []; previous = (await load()) || []; });
    document.getElementById("new-user").addEventListener("click", async () => {
      userInput.value = String(900000000 + Math.floor(Math.random() * 1e6)); previous = []; previous = (await load()) || [];
    });
    surface.addEventListener("change", async () => { previous = []; previous = (await load()) || []; });
    const fromHash = Number(decodeURIComponent(location.hash.slice(1)));
    if (Number.isInteger(fromHash) && fromHash > 0) userInput.value = String(fromHash);
    previous = (await load()) || [];
  };
})();
