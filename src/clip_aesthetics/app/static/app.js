// The review page: a ranked grid of stacks (best frame on top), keyboard review with undo, a large view
// with a 100% loupe, side-by-side compare and a "why" heat map. No framework and nothing from outside
// this server (the page's CSP forbids it).
"use strict";

const PAGE_SIZE = 120; // stacks per page: the grid stays light on a 10,000-photo shoot
const state = { groups: [], expanded: new Set(), page: 0, selected: null, viewer: false, loupe: false, compare: false };
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

// A photo's path inside the shoot as a URL path: every segment escaped, so '#', '?', '%' and spaces stay
// part of the name.
function urlPath(path) { return path.split("/").map(encodeURIComponent).join("/"); }

// --- loading -------------------------------------------------------------------------------------
async function boot() {
  let shownAt = 0;
  for (;;) {
    const status = await api("/api/status");
    $("folder").textContent = status.folder;
    $("export").hidden = !status.export_to;
    $("export").title = status.export_to ? `Copy the picks, their RAW files and sidecars to ${status.export_to}` : "";
    if (status.state === "ready") break;
    if (status.state === "failed") { say(`Analysis failed: ${status.error}`); $("progress").hidden = true; return; }
    $("progress").hidden = false;
    $("progress-bar").max = Math.max(1, status.total);
    $("progress-bar").value = status.done;
    $("progress-text").textContent = status.state === "analysing" && status.total
      ? `Analysing the shoot: ${status.done} of ${status.total} photos (the keys work once it is done)`
      : `Getting ready: ${status.phase}…`;
    if (status.state === "analysing" && status.done > 0 && Date.now() - shownAt > 2000) {
      shownAt = Date.now();
      await showSoFar();
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  $("progress").hidden = true;
  say("");
  await load();
}

// While the shoot is analysed: the photos so far, by score (stacks come when the analysis is done).
async function showSoFar() {
  try {
    const data = await api("/api/photos");
    if (!data.provisional) return;
    state.groups = data.groups;
    say(`${data.groups.length} photos analysed so far, best first`);
    refresh();
  } catch (error) { /* not analysed far enough yet */ }
}

async function load() {
  const data = await api("/api/photos");
  state.groups = data.groups;
  const n = data.groups.reduce((sum, g) => sum + g.frames.length, 0);
  document.title = `${n} photos · clip-aesthetics review`;
  if (!$("message").textContent) say(`${n} photos in ${data.groups.length} stacks${tasteNote(data.taste)}`);
  showProblems(data.errors, data.sidecar_errors);
  refresh();
}

function tasteNote(taste) {
  if (!taste) return "";
  return taste.applied ? ` · ranked by your taste (CV SRCC ${taste.cv_srcc.toFixed(2)})` : ` · your taste is ${taste.reason}`;
}

// Files that could not be read and sidecars that could not be parsed, listed so that nothing is silently left out.
function showProblems(errors, sidecars) {
  const items = [
    ...errors.map((e) => `${e.path}: not analysed (${e.error})`),
    ...sidecars.map((e) => `${e.path}: sidecar not read (${e.error})`),
  ];
  $("problems").hidden = items.length === 0;
  $("problems-count").textContent = `${items.length} problem${items.length === 1 ? "" : "s"}`;
  $("problems-list").replaceChildren(...items.map((text) => {
    const li = document.createElement("li"); li.textContent = text; return li;
  }));
}

// Re-render after the list or the filters changed. The selection stays when still shown; when it left the
// view (rated out of the "unrated" filter), the card that took its place is selected, not the first.
function refresh(previousIndex = 0) {
  const visible = visibleItems();
  if (!visible.some((item) => item.frame.path === state.selected)) {
    const next = visible[Math.min(previousIndex, visible.length - 1)];
    state.selected = next ? next.frame.path : null;
  }
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
  const shown = state.groups.map((g) => ({ stack: g.stack, frames: g.frames.filter((frame) => matches(frame, f)) }))
    .filter((g) => g.frames.length);
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  return { shown, pages };
}

// Every card in display order across all pages: a stack's cover, then its other frames when open.
// Stacks are tracked by their id (the burst), so re-ranking never opens a different stack.
function visibleItems() {
  const { shown } = pageGroups();
  const items = [];
  shown.forEach((g, index) => {
    const open = state.expanded.has(g.stack);
    g.frames.forEach((frame, k) => {
      if (k === 0 || open) items.push({ frame, stack: g.stack, size: g.frames.length, cover: k === 0, page: Math.floor(index / PAGE_SIZE) });
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
  el.dataset.stack = item.stack;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = frame.path;
  img.src = `/thumb/${urlPath(frame.path)}?v=${frame.thumb}`;
  el.append(img);
  if (item.cover && item.size > 1) {
    const stack = document.createElement("button");
    stack.type = "button";
    stack.className = "badge stack";
    stack.textContent = `${state.expanded.has(item.stack) ? "▾" : "▸"} ${item.size}`;
    stack.title = "Open or close this stack (S)";
    stack.addEventListener("click", (event) => { event.stopPropagation(); toggleStack(item.stack); });
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
  name.textContent = frame.raw ? `${frame.path} + ${frame.raw.split("/").pop()}` : frame.path;
  const rating = document.createElement("span");
  rating.className = "stars";
  rating.textContent = stars(frame.stars);
  rating.title = frame.machine ? "proposed by cull --xmp" : "your rating";
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

function toggleStack(stack) {
  if (state.expanded.has(stack)) state.expanded.delete(stack); else state.expanded.add(stack);
  render();
}

function findFrame(path) {
  for (const g of state.groups) for (const f of g.frames) if (f.path === path) return { frame: f, stack: g.stack };
  return null;
}
function currentFrame() { return findFrame(state.selected); }

// --- review keys: each writes the sidecar before the page shows it --------------------------------
function describe(frame) {
  if (frame.rejected) return frame.stars ? `rejected (${stars(frame.stars)} kept)` : "rejected";
  return frame.picked ? `picked, ${stars(frame.stars)}` : stars(frame.stars);
}

function applyResult(result) {
  const found = findFrame(result.path);
  if (!found) return null;
  Object.assign(found.frame, { stars: result.stars, picked: result.picked, rejected: result.rejected, machine: result.machine, sidecar_error: null });
  return found.frame;
}

async function send(path, body, done) {
  const selectedBefore = state.selected;
  const before = visibleItems().findIndex((i) => i.frame.path === state.selected);
  try {
    const result = await api(path, body);
    if (result.path === null) { say(done.none); return; }
    const frame = applyResult(result);
    say(`${done.verb}${result.path}: ${frame ? describe(frame) : ""}`);
    refresh(Math.max(0, before));
    // auto-advance, unless the photo left the filtered view (its successor is selected already)
    if (done.advance && $("advance").checked && state.selected === selectedBefore) move(1);
  } catch (error) {
    say(`Not saved: ${error.message}`);
  }
}

function label(action, starsValue) {
  const current = currentFrame();
  if (!current) return;
  send("/api/label", { path: current.frame.path, action, stars: starsValue }, { verb: "", advance: true });
}

function undo() { send("/api/undo", {}, { verb: "undone: ", none: "Nothing to undo." }); }
function redo() { send("/api/redo", {}, { verb: "redone: ", none: "Nothing to redo." }); }

async function learnTaste() {
  say("Learning your taste from your ratings…");
  try {
    const fit = await api("/api/taste", {});
    const verdict = fit.applied ? "ranks the photos now" : fit.reason;
    say(`Your taste: CV SRCC ${fit.cv_srcc.toFixed(2)} vs ${fit.generic_srcc.toFixed(2)} for the generic score (${fit.n_ratings} ratings); ${verdict}.`);
    await load();
  } catch (error) {
    say(`Cannot learn yet: ${error.message}`);
  }
}

// --- large view: loupe, compare, heat map ------------------------------------------------------------
function openViewer() { if (state.selected) { state.viewer = true; showViewer(); } }
function closeViewer() {
  state.viewer = false; state.loupe = false; state.compare = false;
  $("viewer").hidden = true;
}

function nextInView() {
  const items = visibleItems();
  const at = items.findIndex((i) => i.frame.path === state.selected);
  return items[at + 1] || items[at - 1] || null;
}

function showViewer() {
  const current = currentFrame();
  if (!current) return closeViewer();
  const { frame } = current;
  $("viewer").hidden = false;
  $("stage").classList.toggle("loupe", state.loupe);
  const source = state.loupe ? "original" : "photo";
  const wanted = `/${source}/${urlPath(frame.path)}?v=${frame.thumb}`;
  if ($("large").dataset.src !== wanted) {
    $("large").dataset.src = wanted;
    $("large").dataset.path = frame.path;
    $("large").src = wanted;
    clearHeat();
  }
  const other = state.compare ? nextInView() : null;
  $("other").hidden = !other;
  $("stage").classList.toggle("compare", Boolean(other));
  if (other) {
    $("other").dataset.path = other.frame.path;
    $("other").src = `/photo/${urlPath(other.frame.path)}?v=${other.frame.thumb}`;
  }
  $("large-name").textContent = other ? `${frame.path}  |  ${other.frame.path}` : frame.path;
  const info = [
    ["score", frame.score.toFixed(3)], ["stars", stars(frame.stars)], ["proposed", stars(frame.proposed_stars)],
    ["flag", frame.picked ? "pick" : frame.rejected ? "reject" : "none"],
    ["best of stack", frame.best ? "yes" : "no"], ["sharpness", frame.sharpness.toFixed(1)],
    ["checks", frame.flags.join(", ") || "none"], ["taken", frame.capture_time],
  ];
  if (frame.raw) info.push(["RAW", frame.raw]);
  $("large-info").replaceChildren(...info.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
}

function toggleLoupe() {
  if (!state.viewer) openViewer();
  state.loupe = !state.loupe; state.compare = false;
  showViewer();
  say(state.loupe ? "100% view (Z to fit)" : "");
}

function toggleCompare() {
  if (!state.viewer) openViewer();
  state.compare = !state.compare; state.loupe = false;
  showViewer();
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
  state.loupe = false; state.compare = false;
  showViewer();
  say("Computing the heat map…");
  try {
    const map = await api("/api/why", { path: current.frame.path });
    drawHeat(map);
    say(`Heat map of ${current.frame.path} over the whole frame`);
  } catch (error) {
    say(`No heat map: ${error.message}`);
  }
}

function drawHeat(map) {
  const img = $("large"), canvas = $("heat");
  canvas.width = img.clientWidth; canvas.height = img.clientHeight;
  canvas.style.left = `${img.offsetLeft}px`; canvas.style.top = `${img.offsetTop}px`;
  const [left, top, width, height] = map.crop;
  const grid = map.grid, rows = grid.length, cols = grid[0].length;
  const peak = Math.max(1e-9, ...grid.flat().map(Math.abs));
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const cw = (width * canvas.width) / cols, ch = (height * canvas.height) / rows;
  grid.forEach((row, r) => row.forEach((value, c) => {
    const alpha = (0.6 * Math.abs(value)) / peak;
    ctx.fillStyle = value >= 0 ? `rgba(255,60,60,${alpha})` : `rgba(60,140,255,${alpha})`;
    ctx.fillRect(left * canvas.width + c * cw, top * canvas.height + r * ch, cw, ch);
  }));
  canvas.hidden = false;
  $("why-legend").hidden = false;
}

async function exportPicks() {
  say("Exporting the picks…");
  try {
    const done = await api("/api/export", {});
    const problems = done.errors.length ? `; ${done.errors.length} not exported: ${done.errors[0]}` : "";
    say(`Copied ${done.picks} picks (${done.files} files) to ${done.to}${problems}`);
  } catch (error) {
    say(`Not exported: ${error.message}`);
  }
}

function toggleHelp() { $("help").hidden = !$("help").hidden; }

// --- wiring -------------------------------------------------------------------------------------------
const KEYS = {
  ArrowRight: () => move(1), ArrowLeft: () => move(-1), Enter: openViewer,
  Escape: () => { if (!$("help").hidden) toggleHelp(); else closeViewer(); },
  p: () => label("pick"), x: () => label("reject"), u: () => label("unflag"), w: why,
  z: toggleLoupe, c: toggleCompare, "?": toggleHelp,
  s: () => { const c = currentFrame(); if (c) toggleStack(c.stack); },
};

document.addEventListener("keydown", (event) => {
  const mod = event.ctrlKey || event.metaKey;
  if (mod && !event.altKey && event.key.toLowerCase() === "z") { // undo/redo, also from a filter
    event.preventDefault();
    if (event.shiftKey) redo(); else undo();
    return;
  }
  if (mod && !event.altKey && event.key.toLowerCase() === "y") { event.preventDefault(); redo(); return; }
  if (mod || event.altKey) return;
  const field = event.target.closest("input, select");
  // a drop-down keeps its own up/down keys but never eats left/right: those always move the selection
  if (field && !(field.tagName === "SELECT" && (event.key === "ArrowLeft" || event.key === "ArrowRight"))) return;
  if (field) field.blur(); // the keys that follow (stars, flags) belong to the grid too
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (/^[0-5]$/.test(key)) { event.preventDefault(); label("stars", Number(key)); return; }
  if (KEYS[key]) { event.preventDefault(); KEYS[key](); }
});

for (const id of ["filter-flag", "filter-stars", "filter-min", "filter-max"]) {
  $(id).addEventListener("input", () => { state.page = 0; refresh(); });
  // once a filter is chosen, the keys belong to the grid again
  $(id).addEventListener("change", (event) => { if (event.target.tagName === "SELECT") event.target.blur(); });
}
$("learn").addEventListener("click", learnTaste);
$("export").addEventListener("click", exportPicks);
$("why").addEventListener("click", why);
$("close").addEventListener("click", closeViewer);
$("help-close").addEventListener("click", toggleHelp);
$("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); render(); });
$("next").addEventListener("click", () => { state.page += 1; render(); });
window.addEventListener("resize", () => clearHeat());
boot().catch((error) => say(`Cannot load the shoot: ${error.message}`));
