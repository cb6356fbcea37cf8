// The page's logic: describe the model, send each chosen photo to /api/classify, show each result.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;
let lastFiles = [];

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const percent = (x) => `${(100 * x).toFixed(1)}%`;
const colorOf = (name) => (info && info.classes.includes(name) ? info.colors[info.classes.indexOf(name)] : "#8a8f98");

function legend(target) {
  target.replaceChildren(
    ...info.classes.map((name, i) => element("span", {}, element("span", { class: "swatch", style: `background:${info.colors[i]}` }), name)),
    element("span", {}, element("span", { class: "swatch", style: "background:repeating-linear-gradient(45deg,#555 0 2px,#999 2px 6px)" }), "uncertain"),
  );
}

function showSettings() {
  $("stride-value").textContent = `${$("stride").value} px`;
  $("threshold-value").textContent = percent(+$("threshold").value);
}

async function describe() {
  try {
    const response = await fetch("/api/info");
    info = await response.json();
  } catch (e) {
    showError(`Cannot reach the server: ${e}`);
    return;
  }
  const model = info.model;
  $("model").textContent = `${info.classes.length} classes · ${model.variant} ResNet-50 + ${model.head} head · ` +
    `${model.image_size} px · best ${model.stage} checkpoint · ${info.patch.size} px patches · scenecls ${info.version}`;
  $("mode").value = info.patch.mode;
  for (const option of $("mode").options) option.disabled = !info.modes.includes(option.value);
  Object.assign($("stride"), { max: info.patch.size, value: info.patch.stride });
  $("threshold").value = info.patch.secondary_threshold;
  showSettings();
  legend($("legend"));
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function reason(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => `${d.loc.slice(-1)[0]}: ${d.msg}`).join("; ");
  return `HTTP ${status}`;
}

function bars(rows) {
  return element("div", { class: "bars" }, ...rows.flatMap(([name, value]) => [
    element("span", {}, name),
    element("span", { class: "bar" }, element("i", { style: `width:${percent(value)};background:${colorOf(name)}` })),
    element("span", { class: "num" }, percent(value)),
  ]));
}

function showResult(card, result) {
  const legendNode = element("div", { class: "legend" });
  legend(legendNode);
  const secondary = result.secondary.length
    ? result.secondary.map((s) => `${s.class} (${percent(s.coverage)})`).join(", ")
    : "none above the threshold";
  const coverage = Object.entries(result.coverage).sort((a, b) => b[1] - a[1]);
  const timing = result.timing;
  card.replaceChildren(
    element("h2", {}, result.image, element("small", {}, `${result.width}×${result.height} px · ${result.grid.rows}×${result.grid.cols} patches of ${result.patch.size} px, stride ${result.patch.stride}, ${result.patch.mode} mode`)),
    element("div", { class: "figure" },
      element("img", { class: "overlay", alt: `Patch classes of ${result.image}`, src: `data:image/png;base64,${result.overlay_png}` }),
      legendNode),
    element("div", { class: "summary" },
      element("p", { class: "label" }, "Major class"),
      element("p", { class: "major", style: `color:${colorOf(result.major)}` }, result.major),
      element("p", { class: "label" }, "Secondary classes"),
      element("p", { class: "secondary" }, secondary),
      element("p", { class: "label" }, "Coverage (share of patches)"),
      bars(coverage),
      element("p", { class: "label" }, "Whole image (top classes)"),
      bars(result.whole_image_top_k.map((t) => [t.class, t.probability])),
      element("p", { class: "timing" }, `Server: ${(1000 * timing.total_s).toFixed(0)} ms (decode ${(1000 * timing.decode_s).toFixed(0)}, analysis ${(1000 * timing.analysis_s).toFixed(0)}, overlay ${(1000 * timing.overlay_s).toFixed(0)}); round trip ${(1000 * result.round_trip_s).toFixed(0)} ms`),
      ...result.notes.map((note) => element("p", { class: "notes" }, `Note: ${note}`)),
    ),
  );
  card.dataset.state = "done";
}

async function classify(file, batch) {
  const card = element("article", { class: "card", "data-state": "busy" },
    element("h2", {}, file.name), element("p", { class: "spinner" }, "Classifying…"));
  batch.append(card);
  const query = new URLSearchParams({ mode: $("mode").value, stride: $("stride").value, threshold: $("threshold").value });
  const form = new FormData();
  form.append("file", file, file.name);
  const start = performance.now();
  try {
    const response = await fetch(`/api/classify?${query}`, { method: "POST", body: form });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error(reason(body, response.status) + (response.status === 503 ? " (server busy)" : ""));
    body.round_trip_s = (performance.now() - start) / 1000;
    showResult(card, body);
  } catch (e) {
    card.replaceChildren(element("h2", {}, file.name), element("p", { class: "failed" }, `Not classified: ${e.message}`));
    card.dataset.state = "failed";
  }
}

function run(files) {
  lastFiles = [...files];
  $("again").disabled = lastFiles.length === 0;
  showError("");
  const batch = element("div", { class: "batch" });  // newest selection first, its photos in order
  $("results").prepend(batch);
  lastFiles.forEach((file) => classify(file, batch));
}

document.addEventListener("DOMContentLoaded", () => {
  describe();
  $("files").addEventListener("change", (e) => { run(e.target.files); e.target.value = ""; });
  for (const id of ["stride", "threshold"]) $(id).addEventListener("input", showSettings);
  $("again").addEventListener("click", () => run(lastFiles));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); run(e.dataTransfer.files); });
});
