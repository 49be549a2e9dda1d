// Status page: pipeline counts, model versions with metrics, index size and freshness.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const n = document.createElement(tag);
  if (text !== undefined && text !== null) n.textContent = String(text);
  if (cls) n.className = cls;
  return n;
}

function table(header, rows) {
  const t = el("table");
  const tr = el("tr");
  header.forEach((h) => tr.append(el("th", h)));
  t.append(tr);
  for (const r of rows) {
    const row = el("tr");
    r.forEach((c) => row.append(el("td", c)));
    t.append(row);
  }
  return t;
}

function render(data) {
  const s = data.search;
  if (s.available) {
    $("index").replaceChildren(table(
      ["model", "vectors", "shards up", "freshness p50"],
      [[s.model_version || "–", s.num_vectors, `${s.shards_up} / ${s.shards}`,
        `${s.freshness_p50_s.toFixed(1)} s`]]));
  } else {
    $("index").replaceChildren(el("p", s.error, "error"));
    $("banner").textContent = `Search is unavailable: ${s.error}`;
    $("banner").hidden = false;
  }
  if (!data.database.available) {
    $("pipeline").replaceChildren(el("p", data.database.error, "error"));
    $("models").replaceChildren();
    return;
  }
  const rows = Object.entries(data.counts).map(([name, counts]) => {
    if (counts === null) return [name, "–", "not created yet"];
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    return [name, total, Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ")];
  });
  $("pipeline").replaceChildren(table(["table", "rows", "by status"], rows));
  const snaps = Object.entries(data.index || {});
  if (snaps.length) {
    $("index").append(table(["serving snapshots of", "vectors", "shards", "newest"],
      snaps.map(([v, x]) => [v, x.vectors, x.shards, x.newest_snapshot || "–"])));
  }
  if (!data.models.length) {
    $("models").replaceChildren(el("p", "No model versions yet.", "muted"));
  } else {
    $("models").replaceChildren(table(["version", "config", "status", "metrics", "embedded images", "created"],
      data.models.map((m) => [m.model_version, m.config_name, m.status,
        Object.entries(m.metrics).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join(" · ") || "–",
        data.embeddings[m.model_version] || 0, m.created_at.replace("T", " ").slice(0, 19)])));
  }
}

async function refresh() {
  try {
    const resp = await fetch("/api/status");
    render(await resp.json());
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "yes";
  } catch (err) {
    $("banner").textContent = `The gateway did not answer: ${err.message}`;
    $("banner").hidden = false;
  }
}

refresh();
setInterval(refresh, 10000);
