// The merchant page: reads the merchant's own API with its token (kept in this tab's
// sessionStorage, never in the URL); every string from the API goes in through textContent.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const METRICS = ["impressions", "clicks", "likes", "shares", "add_to_carts", "purchases"];

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function fmt(x) {
    if (x === null || x === undefined) return "–";
    return typeof x === "number" && !Number.isInteger(x) ? x.toFixed(3) : String(x);
  }

  async function api(path) {
    const m = sessionStorage.getItem("merchant"), t = sessionStorage.getItem("merchantToken");
    const resp = await fetch(`/v1/merchants/${encodeURIComponent(m)}${path}`, {
      headers: { Authorization: `Bearer ${t}` },
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error((body.error && body.error.message) || resp.status);
    return body;
  }

  // horizontal bars: [[label, value], ...]
  function bars(rows, id) {
    const w = 420, h = 22 * rows.length + 4, max = Math.max(1, ...rows.map((r) => r[1]));
    const s = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
                           "data-plot": id });
    rows.forEach(([label, v], i) => {
      const y = 2 + i * 22;
      s.appendChild(svg("text", { x: 0, y: y + 14 }, label));
      s.appendChild(svg("rect", { x: 110, y, height: 18, width: Math.max(1, (v / max) * 240),
                                  fill: "#e4393c", class: "bar" }));
      s.appendChild(svg("text", { x: 356, y: y + 14 }, fmt(v)));
    });
    return s;
  }

  // a lift with its interval, on an axis from -100% to the largest bound
  function liftPlot(lift, ci) {
    const w = 420, h = 40, lo = Math.min(-1, ci[0]), hi = Math.max(1, ci[1]);
    const x = (v) => 10 + ((v - lo) / (hi - lo)) * (w - 20);
    const s = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, "data-plot": "lift" });
    s.appendChild(svg("line", { x1: x(0), x2: x(0), y1: 0, y2: 30, stroke: "#999" }));
    s.appendChild(svg("line", { x1: x(ci[0]), x2: x(ci[1]), y1: 15, y2: 15, stroke: "#222",
                                "stroke-width": 2, class: "ci" }));
    s.appendChild(svg("circle", { cx: x(lift), cy: 15, r: 4, fill: "#e4393c" }));
    s.appendChild(svg("text", { x: x(0) + 3, y: 38 }, "0"));
    return s;
  }

  function table(node, rows, cols) {
    node.replaceChildren();
    const head = el("tr");
    cols.forEach((c) => head.appendChild(el("th", c)));
    node.appendChild(head);
    rows.forEach((r) => {
      const tr = el("tr");
      cols.forEach((c) => tr.appendChild(el("td", fmt(r[c]), typeof r[c] === "number" ? "n" : "")));
      node.appendChild(tr);
    });
  }

  async function campaigns() {
    const box = $("campaigns");
    box.replaceChildren();
    const { campaigns: list } = await api("/campaigns");
    if (!list.length) box.appendChild(el("p", "No campaigns yet."));
    for (const c of list) {
      const div = el("div", null, "campaign");
      div.dataset.campaign = c.campaign_id;
      div.appendChild(el("h3", `${c.campaign_id} · ${c.status}`));
      div.appendChild(el("p", `${c.delivered_impressions} / ${c.budget_impressions} impressions,`
        + ` ${c.users_reached} users, posts ${c.post_ids.join(", ")}`));
      const rep = await api(`/campaigns/${encodeURIComponent(c.campaign_id)}/report`);
      const g = rep.groups;
      div.appendChild(bars([["exposed", g.exposed.purchases_per_user],
                            ["holdout", g.holdout.purchases_per_user]], "groups"));
      const lift = rep.lift === null ? "–" : `${(rep.lift * 100).toFixed(1)}%`;
      const ci = rep.lift_ci
        ? ` [${(rep.lift_ci[0] * 100).toFixed(1)}%, ${(rep.lift_ci[1] * 100).toFixed(1)}%]` : "";
      div.appendChild(el("p", `lift ${lift}${ci}` + (rep.srm.mismatch ? " · sample ratio mismatch!" : ""),
                         "lift"));
      if (rep.lift_ci) div.appendChild(liftPlot(rep.lift, rep.lift_ci));
      box.appendChild(div);
    }
  }

  async function load() {
    $("status").textContent = "Loading…";
    try {
      const [byPost, byAuthor, byChannel] = await Promise.all(
        ["post", "author", "channel"].map((by) => api(`/report?by=${by}`)));
      $("funnel").replaceChildren(
        bars(METRICS.map((k) => [k, byPost.totals[k] || 0]), "funnel"));
      $("channels").replaceChildren(
        bars(byChannel.rows.map((r) => [r.channel, r.purchases || 0]), "channels"));
      const top = (rows) => rows.slice().sort((a, b) => (b.purchases || 0) - (a.purchases || 0)
        || (b.impressions || 0) - (a.impressions || 0)).slice(0, 10);
      table($("posts"), top(byPost.rows), ["post_id", "impressions", "clicks", "purchases", "revenue"]);
      table($("authors"), top(byAuthor.rows), ["author_id", "impressions", "purchases", "revenue"]);
      const chains = byPost.share_chains || [];
      table($("chains"), chains.slice(0, 10), chains.length ? Object.keys(chains[0]) : ["none"]);
      $("main").hidden = false;
      await campaigns();
      $("status").textContent = "";
    } catch (e) {
      $("main").hidden = true;
      $("status").textContent = `Cannot open: ${e.message}`;
    }
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("merchant", $("merchant").value.trim());
    sessionStorage.setItem("merchantToken", $("token").value.trim());
    $("token").value = "";
    load();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.clear();
    $("main").hidden = true;
    $("status").textContent = "Forgotten.";
  });
  if (sessionStorage.getItem("merchantToken")) {
    $("merchant").value = sessionStorage.getItem("merchant");
    load();
  }
})();
