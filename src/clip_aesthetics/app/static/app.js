// The review page: a ranked grid of stacks (best frame on top), keyboard review, a large view with a
// "why" heat map. No framework and nothing from outside this server (the page's CSP forbids it).
"use strict";

const PAGE_SIZE = 120; // stacks per page: the grid stays light on a 10,000-photo shoot
const state = { groups: [], expanded: new Set(), page: 0, selected: null, viewer: false, why: null };
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `${response.status} ${response.statusText}`);
  return data;
}

function say(text) { $("message").textContent = text; }

// --- loading -------------------------------------------------------------------------------------
async function boot() {
  for (;;) {
    const status = await api("/api/status");
    $("folder").textContent = status.folder;
    if (status.state === "ready") break;
    if (status.state === "failed") { say(`Analysis failed: ${status.error}`); return; }
    $("progress").hidden = false;
    $("progress-bar").max = Math.max(1, status.total);
    $("progress-bar").value = status.done;
    $("progress-text").textContent = `Analysing the shoot: ${status.done} of ${status.total || "?"} photos`;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  $("progress").hidden = true;
  await load();
}

async function load() {
  const data = await api("/api/photos");
  state.groups = data.groups;
  const n = data.groups.reduce((sum, g) => sum + g.frames.length, 0);
  const taste = data.taste ? ` · ranked by your taste (CV SRCC ${data.taste.cv_srcc.toFixed(2)})` : "";
  document.title = `${n} photos · clip-aesthetics review`;
  if (!$("message").textContent) say(`${n} photos in ${data.groups.length} stacks${taste}`);
  refresh();
}

// Re-render after the list or the filters changed; the selection stays when still shown, else the first.
function refresh() {
  const visible = visibleItems();
  if (!visible.some((item) => item.frame.path === state.selected)) state.selected = visible.length ? visible[0].frame.path : null;
  const item = visible.find((i) => i.frame.path === state.selected);
  if (item) state.page = item.page;
  render();
}

// --- filters and the visible list ----------------------------------------------------------------
function filters() {
  return {
    flag: $("filter-flag").value, stars: Number($("filter-stars").value),
    low: parseFloat($("filter-min").value), high: parseFloat($("filter-max").value),
  };
}

function matches(frame, f) {
  if (f.flag === "picks" && !frame.picked) return false;
  if (f.flag === "rejects" && !frame.rejected) return false;
  if (f.flag === "unrated" && (frame.stars > 0 || frame.rejected)) return false;
  if (frame.stars < f.stars) return false;
  if (!Number.isNaN(f.low) && frame.score < f.low) return false;
  if (!Number.isNaN(f.high) && frame.score > f.high) return false;
  return true;
}

function pageGroups() {
  const f = filters();
  const shown = state.groups.map((g) => ({ group: g.group, frames: g.frames.filter((frame) => matches(frame, f)) }))
    .filter((g) => g.frames.length);
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  return { shown, pages };
}

// Every card in display order across all pages: a stack's cover, then its other frames when open.
function visibleItems() {
  const { shown } = pageGroups();
  const items = [];
  shown.forEach((g, index) => {
    const open = state.expanded.has(g.group);
    g.frames.forEach((frame, k) => {
      if (k === 0 || open) items.push({ frame, group: g.group, size: g.frames.length, cover: k === 0, page: Math.floor(index / PAGE_SIZE) });
    });
  });
  return items;
}

// --- rendering -------------------------------------------------------------------------------------
function stars(n) { return "★".repeat(n) + "☆".repeat(5 - n); }

function card(item) {
  const { frame } = item;
  const el = document.createElement("figure");
  el.className = "card" + (item.cover ? "" : " sibling") + (frame.rejected ? " rejected" : "");
  el.dataset.path = frame.path;
  el.dataset.group = item.group;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = frame.path;
  img.src = `/thumb/${encodeURI(frame.path)}?v=${frame.thumb}`;
  el.append(img);
  if (item.cover && item.size > 1) {
    const stack = document.createElement("button");
    stack.type = "button";
    stack.className = "badge stack";
    stack.textContent = `${state.expanded.has(item.group) ? "▾" : "▸"} ${item.size}`;
    stack.title = "Open or close this stack (S)";
    stack.addEventListener("click", (event) => { event.stopPropagation(); toggleStack(item.group); });
    el.append(stack);
  }
  if (frame.picked || frame.rejected) {
    const flag = document.createElement("span");
    flag.className = `badge flag ${frame.picked ? "pick" : "reject"}`;
    flag.textContent = frame.picked ? "⚑ pick" : "✕ reject";
    el.append(flag);
  }
  if (frame.flags.length) {
    const tech = document.createElement("span");
    tech.className = "badge tech";
    tech.textContent = frame.flags.join(" · ");
    el.append(tech);
  }
  const meta = document.createElement("figcaption");
  meta.className = "meta";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = frame.path;
  const rating = document.createElement("span");
  rating.className = "stars";
  rating.textContent = stars(frame.stars);
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = frame.score.toFixed(2);
  meta.append(name, rating, score);
  el.append(meta);
  el.addEventListener("click", () => select(frame.path));
  el.addEventListener("dblclick", () => openViewer());
  return el;
}

function render() {
  const { pages } = pageGroups();
  const items = visibleItems().filter((item) => item.page === state.page);
  $("grid").replaceChildren(...items.map(card));
  $("pager").hidden = pages < 2;
  $("page").textContent = `page ${state.page + 1} of ${pages}`;
  markSelection();
  if (state.viewer) showViewer();
}

function markSelection() {
  for (const el of document.querySelectorAll(".card")) {
    const on = el.dataset.path === state.selected;
    el.classList.toggle("selected", on);
    if (on) el.scrollIntoView({ block: "nearest" });
  }
}

function select(path) {
  state.selected = path;
  const item = visibleItems().find((i) => i.frame.path === path);
  if (item && item.page !== state.page) { state.page = item.page; render(); return; }
  markSelection();
  if (state.viewer) showViewer();
}

function move(step) {
  const items = visibleItems();
  const at = items.findIndex((i) => i.frame.path === state.selected);
  const next = items[Math.min(items.length - 1, Math.max(0, at + step))];
  if (next) select(next.frame.path);
}

function toggleStack(group) {
  if (state.expanded.has(group)) state.expanded.delete(group); else state.expanded.add(group);
  render();
}

function currentFrame() {
  for (const g of state.groups) for (const f of g.frames) if (f.path === state.selected) return { frame: f, group: g.group };
  return null;
}

// --- review keys: each writes the sidecar before the page shows it --------------------------------
async function label(action, starsValue) {
  const current = currentFrame();
  if (!current) return;
  try {
    const result = await api("/api/label", { path: current.frame.path, action, stars: starsValue });
    Object.assign(current.frame, { stars: result.stars, picked: result.picked, rejected: result.rejected });
    say(`${current.frame.path}: ${result.rejected ? "rejected" : result.picked ? "picked, " + stars(result.stars) : stars(result.stars)}`);
    refresh();
  } catch (error) {
    say(`Not saved: ${error.message}`);
  }
}

async function learnTaste() {
  say("Learning your taste from your ratings…");
  try {
    const fit = await api("/api/taste", {});
    say(`Your taste: CV SRCC ${fit.cv_srcc.toFixed(2)} vs ${fit.generic_srcc.toFixed(2)} for the generic score (${fit.n_ratings} ratings); re-ranked.`);
    await load();
  } catch (error) {
    say(`Cannot learn yet: ${error.message}`);
  }
}

// --- large view and heat map ------------------------------------------------------------------------
function openViewer() { if (state.selected) { state.viewer = true; showViewer(); } }
function closeViewer() { state.viewer = false; $("viewer").hidden = true; }

function showViewer() {
  const current = currentFrame();
  if (!current) return closeViewer();
  const { frame } = current;
  $("viewer").hidden = false;
  if ($("large").dataset.path !== frame.path) {
    $("large").dataset.path = frame.path;
    $("large").src = `/photo/${encodeURI(frame.path)}?v=${frame.thumb}`;
    clearHeat();
  }
  $("large-name").textContent = frame.path;
  const info = [
    ["score", frame.score.toFixed(3)], ["stars", stars(frame.stars)],
    ["flag", frame.picked ? "pick" : frame.rejected ? "reject" : "none"],
    ["best of stack", frame.best ? "yes" : "no"], ["sharpness", frame.sharpness.toFixed(1)],
    ["checks", frame.flags.join(", ") || "none"], ["taken", frame.capture_time],
  ];
  $("large-info").replaceChildren(...info.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}

function clearHeat() {
  const canvas = $("heat");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.hidden = true;
  $("why-legend").hidden = true;
}

async function why() {
  const current = currentFrame();
  if (!current) return;
  say("Computing the heat map…");
  try {
    const map = await api("/api/why", { path: current.frame.path });
    drawHeat(map);
    say(`Heat map of ${current.frame.path}: score ${map.score.toFixed(3)}`);
  } catch (error) {
    say(`No heat map: ${error.message}`);
  }
}

function drawHeat(map) {
  const img = $("large"), canvas = $("heat");
  canvas.width = img.clientWidth; canvas.height = img.clientHeight;
  canvas.style.left = `${img.offsetLeft}px`; canvas.style.top = `${img.offsetTop}px`;
  const [left, top, width, height] = map.crop;
  const grid = map.grid, n = grid.length;
  const peak = Math.max(1e-9, ...grid.flat().map(Math.abs));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const cw = (width * canvas.width) / n, ch = (height * canvas.height) / n;
  grid.forEach((row, r) => row.forEach((value, c) => {
    const alpha = (0.6 * Math.abs(value)) / peak;
    ctx.fillStyle = value >= 0 ? `rgba(255,60,60,${alpha})` : `rgba(60,140,255,${alpha})`;
    ctx.fillRect(left * canvas.width + c * cw, top * canvas.height + r * ch, cw, ch);
  }));
  canvas.hidden = false;
  $("why-legend").hidden = false;
}

// --- wiring -------------------------------------------------------------------------------------------
const KEYS = {
  ArrowRight: () => move(1), ArrowLeft: () => move(-1), Enter: openViewer, Escape: closeViewer,
  p: () => label("pick"), x: () => label("reject"), u: () => label("unflag"), w: () => { openViewer(); why(); },
  s: () => { const c = currentFrame(); if (c) toggleStack(c.group); },
};

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (/^[0-5]$/.test(key)) { event.preventDefault(); label("stars", Number(key)); return; }
  if (KEYS[key]) { event.preventDefault(); KEYS[key](); }
});

for (const id of ["filter-flag", "filter-stars", "filter-min", "filter-max"]) {
  $(id).addEventListener("input", () => { state.page = 0; refresh(); });
}
$("learn").addEventListener("click", learnTaste);
$("why").addEventListener("click", why);
$("close").addEventListener("click", closeViewer);
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); render(); });
$("next").addEventListener("click", () => { state.page += 1; render(); });
window.addEventListener("resize", () => clearHeat());
boot().catch((error) => say(`Cannot load the shoot: ${error.message}`));
