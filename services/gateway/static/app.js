// MagicLens search page: plain JS over the gateway's JSON API (no build step).
"use strict";

const MAX_UPLOAD = 10 * 1024 * 1024;
const $ = (id) => document.getElementById(id);
const state = { imageId: null, file: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function banner(message) {
  const b = $("banner");
  b.textContent = message || "";
  b.hidden = !message;
}

async function getJSON(url, options) {
  const resp = await fetch(url, options);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) {
    const err = new Error(data.error || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function chooseId(imageId) {
  state.imageId = imageId;
  state.file = null;
  const p = $("preview");
  p.src = `/images/${imageId}`;
  p.hidden = false;
  $("drop-hint").hidden = true;
  $("query-info").textContent = `query: pool image #${imageId}`;
  $("clear-image").hidden = false;
}

// Back to a text-only query: the instruction alone describes what to find.
function clearImage() {
  state.imageId = null;
  state.file = null;
  const p = $("preview");
  p.hidden = true;
  p.removeAttribute("src");
  $("drop-hint").hidden = false;
  $("clear-image").hidden = true;
  $("query-info").textContent = "query: text only";
}

function chooseFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) { banner(`${file.name} is not an image`); return; }
  if (file.size > MAX_UPLOAD) {
    banner(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is 10 MB`);
    return;
  }
  state.file = file;
  state.imageId = null;
  const p = $("preview");
  p.src = URL.createObjectURL(file);
  p.hidden = false;
  $("drop-hint").hidden = true;
  $("query-info").textContent = `query: uploaded ${file.name}`;
  $("clear-image").hidden = false;
}

function resultCard(hit, rank) {
  const img = el("img", { src: hit.src, alt: hit.alt_text || hit.page_title || `image ${hit.image_id}`,
                          loading: "lazy" });
  const page = hit.page_url
    ? el("a", { href: hit.page_url, target: "_blank", rel: "noopener noreferrer",
                text: hit.page_title || hit.page_url, class: "page" })
    : el("span", { class: "page muted", text: "no source page" });
  const card = el("figure", { class: "card result", "data-image-id": String(hit.image_id) },
    img,
    el("figcaption", {},
      el("span", { class: "rank", text: `#${rank}` }),
      el("span", { class: "score", text: hit.score.toFixed(4) }),
      page,
      el("button", { type: "button", class: "again", text: "use as query" })));
  card.querySelector(".again").addEventListener("click", () => { chooseId(hit.image_id); });
  return card;
}

async function runSearch() {
  const q = $("instruction").value.trim();
  const k = $("k").value;
  const textOnly = !state.imageId && !state.file;
  if (textOnly && !q) {
    banner("Choose a query image, or type what to find (text alone searches by description).");
    return;
  }
  if (q.length > 1000) { banner("The instruction is longer than 1000 characters."); return; }
  const results = $("results");
  results.replaceChildren(el("p", { class: "muted", text: "searching…" }));
  $("results-title").hidden = false;
  try {
    let data;
    if (textOnly) {
      history.replaceState(null, "", `/?${new URLSearchParams({ q, k })}`);
      data = await getJSON("/api/search", {
        method: "POST", body: JSON.stringify({ instruction: q, k: Number(k) }),
        headers: { "Content-Type": "application/json" } });
    } else if (state.imageId) {
      const params = new URLSearchParams({ image_id: state.imageId, q, k });
      history.replaceState(null, "", `/?${params}`);
      data = await getJSON(`/api/search?${params}`);
    } else {
      const params = new URLSearchParams({ q, k });
      data = await getJSON(`/api/search?${params}`, {
        method: "POST", body: state.file,
        headers: { "Content-Type": state.file.type || "application/octet-stream" } });
    }
    banner(data.partial ? `Partial results: shards ${data.missing_shards.join(", ")} did not answer.` : "");
    $("results-meta").textContent =
      `${data.hits.length} results for “${q || "(no instruction)"}”${textOnly ? " (text only)" : ""} · model ${data.model_version || "?"}`;
    results.replaceChildren(...data.hits.map((h, i) => resultCard(h, i + 1)));
    if (!data.hits.length) results.replaceChildren(el("p", { class: "muted", text: "No results." }));
    document.body.dataset.searchState = "done";
  } catch (err) {
    results.replaceChildren(el("p", { class: "error", text: err.message }));
    if (err.status === 503) banner(`Search is unavailable: ${err.message}`);
    document.body.dataset.searchState = "error";
  }
}

async function loadPool() {
  const box = $("pool");
  try {
    const data = await getJSON("/api/pool?n=24");
    box.replaceChildren(...data.images.map((im) => {
      const card = el("figure", { class: "card pick", "data-image-id": String(im.image_id),
                                  title: im.page_title || im.alt_text || "" },
        el("img", { src: im.src, alt: im.alt_text || `image ${im.image_id}`, loading: "lazy" }),
        el("figcaption", { text: `#${im.image_id}` }));
      card.addEventListener("click", () => chooseId(im.image_id));
      return card;
    }));
    if (!data.images.length) box.replaceChildren(el("p", { class: "muted", text: "The pool is empty: ingest pages or run `magiclens index --images DIR`." }));
  } catch (err) {
    box.replaceChildren(el("p", { class: "error", text: `Pool unavailable: ${err.message}` }));
  }
}

async function loadExamples() {
  try {
    const data = await getJSON("/api/examples");
    if (!data.examples.length) return;
    $("examples").replaceChildren(...data.examples.map((ex) => {
      const b = el("button", { type: "button", class: "example" },
        el("img", { src: `/images/${ex.image_id}`, alt: "" }),
        el("span", { text: ex.title || ex.instruction }));
      b.addEventListener("click", () => {
        chooseId(ex.image_id);
        $("instruction").value = ex.instruction;
        runSearch();
      });
      return b;
    }));
    $("examples-box").hidden = false;
  } catch (err) {
    $("examples-box").hidden = false;
    $("examples").replaceChildren(el("p", { class: "error", text: err.message }));
  }
}

async function checkHealth() {
  try {
    const data = await getJSON("/api/health");
    if (!data.search.available) banner(`Search is unavailable: ${data.search.error}`);
    document.body.dataset.search = data.search.available ? "up" : "down";
  } catch (err) {
    banner(`The gateway did not answer: ${err.message}`);
  }
}

function init() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", (e) => chooseFile(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    chooseFile(e.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  $("reshuffle").addEventListener("click", loadPool);
  $("clear-image").addEventListener("click", clearImage);

  const params = new URLSearchParams(location.search);
  const health = checkHealth();
  loadPool();
  loadExamples();
  const id = params.get("image_id");
  if (id && /^\d{1,19}$/.test(id)) {
    chooseId(id);
    $("instruction").value = params.get("q") || "";
    if (params.get("k")) $("k").value = params.get("k");
    health.then(runSearch);
  } else if ((params.get("q") || "").trim()) {  // a text-only query by URL
    $("instruction").value = params.get("q");
    if (params.get("k")) $("k").value = params.get("k");
    health.then(runSearch);
  }
}

init();
