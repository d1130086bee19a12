// The job console: plain DOM code against the JSON API; no build step, no CDN.
// The API key lives in sessionStorage (or localStorage with "remember") and is
// sent as an Authorization header, never in a URL; images are presigned URLs.
"use strict";

const KEY_NAME = "shortdrama-api-key";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const state = { handlers: [], cursor: null, pollTimer: null, stream: null };

function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME) || "";
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", "Bearer " + key);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    notice("This worker needs an API key: enter it at the top right.", true);
    document.getElementById("api-key").focus();
  }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function notice(text, isError = false) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

function ago(epoch) {
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(1)} s`;
}

function duration(job) {
  const t = job.timings || {};
  if (t.total_s !== null && t.total_s !== undefined) return seconds(t.total_s);
  if (!TERMINAL.has(job.status)) return seconds(Date.now() / 1000 - job.created_at) + "…";
  return "";
}

function statusBadge(job) {
  return el("span", { class: `status ${job.status}` }, job.status);
}

function progressBar(job) {
  const pct = Math.max(0, Math.min(100, job.progress || 0));
  return el("span", {},
    el("span", { class: "bar", title: `${pct}%` }, el("span", { style: `width:${pct}%` })),
    " ", job.stage && !TERMINAL.has(job.status) ? job.stage : `${Math.round(pct)}%`);
}

function isImage(file) {
  return (file.content_type || "").startsWith("image/");
}

// -- job list ------------------------------------------------------------------

function jobRow(job) {
  const inputs = Object.entries(job.input_urls || {}).slice(0, 3)
    .map(([field, url]) => el("img", { class: "thumb input-thumb", src: url, alt: field, title: field, loading: "lazy" }));
  const results = (job.files || []).filter(isImage).slice(0, 2)
    .map((file) => el("img", { class: "thumb result-thumb", src: file.url, alt: file.name, title: file.name, loading: "lazy" }));
  const cancel = TERMINAL.has(job.status) ? "" : el("button", {
    class: "cancel", type: "button",
    onclick: (event) => { event.stopPropagation(); cancelJob(job.job_id); },
  }, "Cancel");
  return el("tr", { class: "job", "data-id": job.job_id, "data-status": job.status,
    onclick: () => { location.hash = "#job/" + job.job_id; } },
    el("td", {}, inputs), el("td", {}, results), el("td", {}, job.kind),
    el("td", {}, statusBadge(job)), el("td", {}, progressBar(job)),
    el("td", { title: new Date(job.created_at * 1000).toISOString() }, ago(job.created_at)),
    el("td", {}, duration(job)), el("td", {}, cancel));
}

function listQuery(cursor) {
  const params = new URLSearchParams({ limit: "50" });
  const status = document.getElementById("filter-status").value;
  const kind = document.getElementById("filter-kind").value;
  if (status) params.set("status", status);
  if (kind) params.set("kind", kind);
  if (cursor) params.set("cursor", cursor);
  return "/api/v1/jobs?" + params;
}

async function loadJobs(append = false) {
  const live = document.getElementById("live-state");
  try {
    const page = await apiJson(listQuery(append ? state.cursor : null));
    const body = document.querySelector("#jobs tbody");
    if (!append) body.replaceChildren();
    for (const job of page.jobs) body.append(jobRow(job));
    if (!page.jobs.length && !append) {
      body.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No jobs yet. Submit one.")));
    }
    state.cursor = page.next_cursor;
    document.getElementById("more").hidden = !page.next_cursor;
    live.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
    notice("");
  } catch (error) {
    live.textContent = "";
    if (error.status !== 401) notice(`Cannot list jobs: ${error.message}`, true);
  }
}

async function cancelJob(jobId) {
  try {
    await apiJson(`/api/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    notice(`Cancel requested for ${jobId}.`);
  } catch (error) {
    notice(`Cancel failed: ${error.message}`, true);
  }
  refresh();
}

// -- one job -------------------------------------------------------------------

function facts(pairs) {
  return el("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function renderJob(job) {
  const box = document.getElementById("job-detail");
  const t = job.timings || {};
  const inputImages = Object.entries(job.input_urls || {}).map(([field, url]) =>
    el("figure", {}, el("img", { src: url, alt: field, class: "input-image" }), el("figcaption", {}, field)));
  const files = (job.files || []).map((file) => isImage(file)
    ? el("figure", {}, el("a", { href: file.url, target: "_blank", rel: "noopener" },
        el("img", { src: file.url, alt: file.name, class: "result-image" })),
      el("figcaption", {}, `${file.name} · ${file.content_type} · ${file.size} bytes`))
    : el("p", {}, el("a", { href: file.url, target: "_blank", rel: "noopener" }, file.name),
      ` (${file.content_type}, ${file.size} bytes)`));
  const deliveries = job.webhook ? (job.webhook.deliveries || []) : [];
  const cancel = TERMINAL.has(job.status) ? "" :
    el("button", { class: "cancel", type: "button", id: "cancel-job", onclick: () => cancelJob(job.job_id) }, "Cancel job");
  box.replaceChildren(
    el("div", { class: "card" },
      el("h2", {}, `${job.kind} `, statusBadge(job), " ", cancel),
      facts([
        ["Job id", job.job_id], ["Progress", progressBar(job)], ["Attempts", job.attempts],
        ["Created", new Date(job.created_at * 1000).toLocaleString()],
        ["Updated", new Date(job.updated_at * 1000).toLocaleString()],
        ["Waited in queue", seconds(t.queued_s)], ["Ran", seconds(t.run_s)], ["Total", seconds(t.total_s)],
        // The signed Content Credentials of the result (verify: shortdrama-worker verify FILE).
        ["Content Credentials", job.manifest_id || "—"],
      ]),
      job.error ? el("p", { class: "error-box" }, `${job.error.code}: ${job.error.message}`) : ""),
    el("div", { class: "card" }, el("h2", {}, "Inputs"),
      el("div", { class: "images" }, inputImages), el("pre", {}, JSON.stringify(job.input, null, 2))),
    el("div", { class: "card" }, el("h2", {}, "Results"),
      files.length ? el("div", { class: "images" }, files) : el("p", { class: "muted" }, "No files yet."),
      job.result ? el("pre", {}, JSON.stringify(job.result, null, 2)) : ""),
    job.webhook ? el("div", { class: "card" }, el("h2", {}, "Webhook deliveries"),
      el("p", {}, job.webhook.url),
      deliveries.length ? el("pre", {}, JSON.stringify(deliveries, null, 2)) : el("p", { class: "muted" }, "None yet.")) : "");
}

// Server-sent events read through fetch(), so the key can travel in a header.
async function followJob(jobId) {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  try {
    const response = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/events`, { signal: controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(body && body.error ? body.error.message : response.statusText);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (event.startsWith("event: job") && data) renderJob(JSON.parse(data));
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") notice(`Live updates stopped: ${error.message}`, true);
  }
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

// -- submit form generated from each kind's JSON schema -------------------------

function resolve(schema, root) {
  if (schema && schema.$ref) return resolve(root.$defs[schema.$ref.split("/").pop()], root);
  if (schema && schema.anyOf) {
    const real = schema.anyOf.filter((s) => s.type !== "null");
    if (real.length === 1) return { ...resolve(real[0], root), description: schema.description, default: schema.default, title: schema.title };
  }
  return schema || {};
}

function isImageField(prop) {
  return prop.format === "uri-reference" && prop.type === "string";
}

function dropZone(name, required) {
  const file = el("input", { type: "file", name, accept: "image/*", class: "file-input" });
  const url = el("input", { type: "text", "data-url-for": name, placeholder: "…or an https:// / s3:// URL", size: 40 });
  const preview = el("div", { class: "preview" });
  const zone = el("div", { class: "drop", "data-field": name },
    "Drop an image here or ", file, el("br"), url, preview);
  const show = () => {
    preview.replaceChildren();
    if (file.files.length) preview.append(el("img", { src: URL.createObjectURL(file.files[0]), alt: "preview" }));
  };
  file.addEventListener("change", show);
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) { file.files = e.dataTransfer.files; show(); }
  });
  zone.dataset.required = required ? "1" : "";
  return zone;
}

function fieldInput(name, prop, required) {
  if (isImageField(prop)) return dropZone(name, required);
  const value = prop.default !== undefined ? prop.default : "";
  if (prop.enum) {
    return el("select", { name, "data-type": "string" },
      required ? "" : el("option", { value: "" }, "(default)"),
      prop.enum.map((v) => el("option", { value: v, selected: v === prop.default }, v)));
  }
  if (prop.type === "boolean") return el("input", { type: "checkbox", name, "data-type": "boolean", checked: prop.default === true });
  if (prop.type === "integer" || prop.type === "number") {
    return el("input", { type: "number", name, "data-type": prop.type, value, step: prop.type === "integer" ? "1" : "any",
      min: prop.minimum, max: prop.maximum, required });
  }
  if (prop.type === "string") return el("input", { type: "text", name, "data-type": "string", value, required, size: 40 });
  return el("textarea", { name, "data-type": "json", rows: 3, cols: 50, placeholder: "JSON" },
    value === "" ? "" : JSON.stringify(value));
}

function renderForm() {
  const kind = document.getElementById("kind").value;
  const handler = state.handlers.find((h) => h.kind === kind);
  const fields = document.getElementById("fields");
  fields.replaceChildren();
  if (!handler) return;
  document.getElementById("kind-description").textContent = handler.description || "";
  const schema = handler.input_schema;
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const prop = resolve(raw, schema);
    fields.append(el("div", { class: "field" },
      el("label", { class: "name" }, prop.title || name, required.has(name) ? " *" : ""),
      fieldInput(name, prop, required.has(name)),
      prop.description ? el("div", { class: "help" }, prop.description) : ""));
  }
}

function formBody() {
  const form = new FormData();
  const json = {};
  for (const zone of document.querySelectorAll("#fields .drop")) {
    const name = zone.dataset.field;
    const file = zone.querySelector("input[type=file]").files[0];
    const url = zone.querySelector("input[type=text]").value.trim();
    if (file) form.append(name, file, file.name);
    else if (url) json[name] = url;
    else if (zone.dataset.required) throw new Error(`${name}: choose an image`);
  }
  for (const input of document.querySelectorAll("#fields [data-type]")) {
    const type = input.dataset.type;
    if (type === "boolean") { json[input.name] = input.checked; continue; }
    const text = input.value.trim();
    if (!text) continue;
    if (type === "integer" || type === "number") json[input.name] = Number(text);
    else if (type === "json") {
      try { json[input.name] = JSON.parse(text); } catch (e) { throw new Error(`${input.name}: not valid JSON`); }
    } else json[input.name] = text;
  }
  form.append("json", new Blob([JSON.stringify(json)], { type: "application/json" }), "");
  return form;
}

async function submitJob(event) {
  event.preventDefault();
  const handler = state.handlers.find((h) => h.kind === document.getElementById("kind").value);
  let body;
  try { body = formBody(); } catch (error) { notice(error.message, true); return; }
  const button = document.getElementById("submit-button");
  button.disabled = true;
  try {
    const job = await apiJson(handler.submit_url, { method: "POST", body });
    notice(`Submitted ${job.kind} job ${job.job_id}.`);
    location.hash = "#job/" + job.job_id;
  } catch (error) {
    notice(`Submit refused: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

async function loadHandlers() {
  try {
    const body = await apiJson("/api/v1/handlers");
    state.handlers = body.handlers;
  } catch (error) {
    if (error.status !== 401) notice(`Cannot list kinds: ${error.message}`, true);
    return;
  }
  const kind = document.getElementById("kind");
  const filter = document.getElementById("filter-kind");
  kind.replaceChildren(...state.handlers.map((h) => el("option", { value: h.kind }, `${h.kind} (${h.resource})`)));
  filter.replaceChildren(el("option", { value: "" }, "any"), ...state.handlers.map((h) => el("option", { value: h.kind }, h.kind)));
  renderForm();
}

// -- routing and live refresh -----------------------------------------------------

function show(view) {
  for (const id of ["jobs-view", "job-view", "submit-view"]) document.getElementById(id).hidden = id !== view;
  document.getElementById("nav-jobs").classList.toggle("active", view === "jobs-view");
  document.getElementById("nav-submit").classList.toggle("active", view === "submit-view");
}

function refresh() {
  if (!document.getElementById("jobs-view").hidden) loadJobs();
}

function route() {
  stopStream();
  const hash = location.hash || "#jobs";
  if (hash.startsWith("#job/")) {
    show("job-view");
    document.getElementById("job-detail").replaceChildren(el("p", { class: "muted" }, "Loading…"));
    followJob(decodeURIComponent(hash.slice(5)));
  } else if (hash === "#submit") {
    show("submit-view");
  } else {
    show("jobs-view");
    loadJobs();
  }
}

function start() {
  document.getElementById("api-key").value = apiKey();
  document.getElementById("remember-key").checked = !!localStorage.getItem(KEY_NAME);
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = document.getElementById("api-key").value.trim();
    const remember = document.getElementById("remember-key").checked;
    sessionStorage.removeItem(KEY_NAME);
    localStorage.removeItem(KEY_NAME);
    if (key) (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
    notice(key ? "Key saved for this browser session." : "");
    loadHandlers();
    route();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    localStorage.removeItem(KEY_NAME);
    document.getElementById("api-key").value = "";
    notice("Key forgotten.");
  });
  document.getElementById("kind").addEventListener("change", renderForm);
  document.getElementById("submit-form").addEventListener("submit", submitJob);
  document.getElementById("filter-status").addEventListener("change", () => loadJobs());
  document.getElementById("filter-kind").addEventListener("change", () => loadJobs());
  document.getElementById("more").addEventListener("click", () => loadJobs(true));
  window.addEventListener("hashchange", route);
  // The list refreshes every 2 s while it is shown and the tab is visible.
  state.pollTimer = setInterval(() => { if (!document.hidden) refresh(); }, 2000);
  loadHandlers();
  route();
}

start();
