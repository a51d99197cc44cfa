// The page talks to the same API as every other client: /transcribe/async, /status, /result.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, jobId: null, timer: null };

function apiKey() { return $("apikey").value.trim(); }

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  return response;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

function choose(file) {
  state.file = file;
  $("chosen").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)` : "";
  $("start").disabled = !file;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("state").textContent = "failed";
  $("start").disabled = !state.file;
}

async function start() {
  if (!state.file) return;
  clearInterval(state.timer);
  $("job").hidden = false;
  $("error").hidden = true;
  $("downloads").hidden = true;
  $("transcript").textContent = "";
  $("bar").removeAttribute("value");
  $("state").textContent = "uploading…";
  $("eta").textContent = "";
  $("start").disabled = true;

  const form = new FormData();
  form.append("file", state.file);
  form.append("language", $("language").value);
  form.append("segment_duration", $("segment").value);
  if ($("opencc").value) form.append("opencc", $("opencc").value);
  if ($("prompt").value.trim()) form.append("prompt", $("prompt").value.trim());

  const response = await api("/transcribe/async", { method: "POST", body: form });
  if (response.status !== 202) { showError(await errorOf(response)); return; }
  state.jobId = (await response.json()).job_id;
  $("state").textContent = "queued";
  state.timer = setInterval(poll, 1000);
  poll();
}

async function poll() {
  // A restarting server (or its Redis) is a pause, not a failure: the job is safe; keep polling.
  let response;
  try {
    response = await api(`/status/${state.jobId}`);
  } catch (_) {
    $("state").textContent = "reconnecting to the server…";
    return;
  }
  if (response.status === 503) {
    $("state").textContent = `waiting for the server (${await errorOf(response)})…`;
    return;
  }
  if (!response.ok) { clearInterval(state.timer); showError(await errorOf(response)); return; }
  const job = await response.json();
  const p = job.progress || {};
  if (p.audio_seconds_total) {
    $("bar").max = p.audio_seconds_total;
    $("bar").value = job.status === "completed" ? p.audio_seconds_total : p.audio_seconds_done || 0;
  }
  if (job.status === "processing") {
    $("state").textContent = job.stage === "running"
      ? `transcribing: ${(p.audio_seconds_done || 0).toFixed(0)} of ${(p.audio_seconds_total || 0).toFixed(0)} s`
      : "queued";
    $("eta").textContent = p.eta_seconds != null ? `about ${Math.ceil(p.eta_seconds)} s left` : "";
    $("transcript").textContent = job.partial_transcription || "";
    return;
  }
  clearInterval(state.timer);
  $("eta").textContent = "";
  health();
  if (job.status === "completed") {
    $("state").textContent = `done: ${job.duration.toFixed(1)} s of audio`;
    $("transcript").textContent = job.transcription;
    $("downloads").hidden = false;
    $("start").disabled = false;
  } else {
    showError(job.error || job.status);
  }
}

async function download(format) {
  const response = await api(`/result/${state.jobId}?format=${format}`);
  if (!response.ok) { showError(await errorOf(response)); return; }
  const blob = await response.blob();
  const stem = (state.file ? state.file.name.replace(/\.[^.]+$/, "") : "transcript") || "transcript";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${stem}.${format}`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

async function health() {
  try {
    const body = await (await fetch("/health")).json();
    $("health").textContent = body.model_loaded ? "model loaded" : "model not loaded (loads on first use)";
    $("health").classList.toggle("ok", !!body.model_loaded);
  } catch (_) {
    $("health").textContent = "server unreachable";
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0] || null));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0] || null));
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
$("start").addEventListener("click", start);
document.querySelectorAll("#downloads button").forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
$("apikey").value = localStorage.getItem("qwen-omni-api-key") || "";
$("apikey").addEventListener("change", () => localStorage.setItem("qwen-omni-api-key", apiKey()));
health();
setInterval(health, 15000);
