// The page talks to the same API as every other client: /transcribe/async, /status, /result, /jobs.
// Its words come from i18n.js (I18N.say sets a translated text; I18N.t returns one).
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = { key: "qwen-omni-api-key", jobs: "qwen-omni-jobs" };
const KEPT_JOBS = 20;
const state = {
  file: null,          // the File chosen, not yet submitted
  jobId: null,         // the job shown
  filename: null,      // its upload's name
  timer: null,         // the status poll of the job shown
  polling: null,       // the job whose status request is under way
  media: new Map(),    // job id -> object URL of the File this page submitted for it (played, never re-uploaded)
  segments: [],        // the job's timed segments, as shown
  playing: -1,         // the index of the segment highlighted
  jobs: [],            // the recent jobs listed
  jobsFrom: null,      // "server" (GET /jobs) or "browser" (localStorage)
};

// --- The API ---------------------------------------------------------------------------------------------

function apiKey() { return $("apikey").value.trim(); }

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

function api(path, options = {}) {
  return fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
}

// A failed response as {code, message, status}: the server's error code and words, or the page's own.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body.error) return { code: body.code || null, message: body.error, status: response.status };
  } catch (_) { /* not JSON */ }
  return { code: "http", message: `HTTP ${response.status}`, status: response.status };
}

const NETWORK_ERROR = { code: "network", message: "the server could not be reached" };

// --- Choosing and submitting a file ----------------------------------------------------------------------

function choose(file) {
  state.file = file;
  $("chosen").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(1)} MB)` : "";
  $("start").disabled = !file;
}

function uploadForm(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("language", $("language").value);
  form.append("segment_duration", $("segment").value);
  if ($("opencc").value) form.append("opencc", $("opencc").value);
  if ($("prompt").value.trim()) form.append("prompt", $("prompt").value.trim());
  if ($("task").value && !$("task-option").hidden) {  // a translation, into the language chosen
    form.append("task", "translate");
    form.append("target_language", $("task").value);
  }
  return form;
}

async function start() {
  const file = state.file;
  if (!file) return;
  showJob(null, file.name);
  setPhase("uploading", "state.uploading");
  $("start").disabled = true;
  let response;
  try {
    response = await api("/transcribe/async", { method: "POST", body: uploadForm(file) });
  } catch (_) {
    showError(NETWORK_ERROR);
    return;
  }
  if (response.status !== 202) { showError(await errorOf(response)); return; }
  const job = await response.json();
  state.media.set(job.job_id, URL.createObjectURL(file));
  rememberJob(job);
  follow(job.job_id, job.filename || file.name);
  loadJobs();
}

// --- Following a job: progress, partial text, then the transcript ----------------------------------------

// Empty the job panel for a job (null while it is being uploaded).
function showJob(jobId, filename) {
  clearInterval(state.timer);
  state.jobId = jobId;
  state.filename = filename;
  $("job").hidden = false;
  $("job-name").textContent = filename ? `· ${filename}` : "";
  $("error").hidden = true;
  $("downloads").hidden = true;
  $("no-speech").hidden = true;
  $("transcript").hidden = false;
  $("transcript").textContent = "";
  $("bar").removeAttribute("value");
  I18N.say($("eta"), "");  // no text
  showPlayer(jobId);
  showSegments([]);
  markCurrentJob();
}

function follow(jobId, filename) {
  showJob(jobId, filename);
  setPhase("loading", "state.loading");
  state.timer = setInterval(poll, 1000);
  poll();
}

// The job panel's phase (data-phase, for styles and tests) and its status line.
function setPhase(phase, key, args = {}) {
  $("job").dataset.phase = phase;
  I18N.say($("state"), key, args);
}

function showError(error) {
  clearInterval(state.timer);
  I18N.say($("error"), "error.shown", { error });
  $("error").hidden = false;
  I18N.say($("eta"), "");  // no text
  if (!$("bar").hasAttribute("value")) $("bar").value = 0;  // not left moving as if still at work
  setPhase("failed", error.code === "cancelled" ? "state.cancelled" : "state.failed");
  $("start").disabled = !state.file;
}

// One status request at a time for a job, however slow the server answers.
async function poll() {
  const jobId = state.jobId;
  if (state.polling === jobId) return;
  state.polling = jobId;
  try {
    await pollOnce(jobId);
  } finally {
    if (state.polling === jobId) state.polling = null;
  }
}

async function pollOnce(jobId) {
  // A restarting server (or its Redis) is a pause, not a failure: the job is safe; keep polling.
  let response;
  try {
    response = await api(`/status/${jobId}`);
  } catch (_) {
    if (jobId === state.jobId) setPhase("waiting", "state.reconnecting");
    return;
  }
  if (jobId !== state.jobId) return;  // another job was opened meanwhile
  if (response.status === 503) {
    setPhase("waiting", "state.waiting", { reason: await errorOf(response) });
    return;
  }
  if (!response.ok) {
    const error = await errorOf(response);
    showError(error);
    if (response.status === 404) { forgetJob(jobId); loadJobs(); }  // expired, or another key's
    return;
  }
  const job = await response.json();
  if (jobId !== state.jobId) return;
  if (job.status === "processing") showProgress(job);
  else finish(job);
}

function showProgress(job) {
  const p = job.progress || {};
  if (p.audio_seconds_total) {
    $("bar").max = p.audio_seconds_total;
    $("bar").value = p.audio_seconds_done || 0;
  }
  if (job.stage === "running") {
    setPhase("running", "state.running",
      { done: (p.audio_seconds_done || 0).toFixed(0), total: (p.audio_seconds_total || 0).toFixed(0) });
  } else {
    setPhase("queued", "state.queued");
  }
  I18N.say($("eta"), p.eta_seconds != null ? "state.eta" : "", { seconds: Math.ceil(p.eta_seconds) });
  $("transcript").textContent = job.partial_transcription || "";
}

async function finish(job) {
  clearInterval(state.timer);
  I18N.say($("eta"), "");  // no text
  updateRememberedJob(job);
  health();
  loadJobs();
  if (job.status !== "completed") {
    showError({ code: job.code || job.status, message: job.error || job.status });
    return;
  }
  const result = await loadResult(job.job_id);
  if (!result || job.job_id !== state.jobId) return;
  const total = (job.progress || {}).audio_seconds_total || result.duration || 1;
  $("bar").max = total;
  $("bar").value = total;
  setPhase("done", "state.done", { duration: (job.duration ?? result.duration).toFixed(1) });
  $("transcript").textContent = result.transcription;
  $("transcript").hidden = result.segments.length > 0;
  $("no-speech").hidden = !!result.transcription.trim();
  showSegments(result.segments);
  $("downloads").hidden = false;
  $("start").disabled = !state.file;
}

async function loadResult(jobId) {
  try {
    const response = await api(`/result/${jobId}?format=json`);
    if (response.ok) return await response.json();
    showError(await errorOf(response));
  } catch (_) {
    showError(NETWORK_ERROR);
  }
  return null;
}

// --- The transcript, segment by segment, and the file's audio --------------------------------------------

// 75.25 -> "1:15.2", 3725 -> "1:02:05.0"
function clock(seconds) {
  const tenths = Math.floor(seconds * 10 + 1e-6);
  const whole = Math.floor(tenths / 10);
  const [h, m] = [Math.floor(whole / 3600), Math.floor(whole / 60) % 60];
  const ss = `${String(whole % 60).padStart(2, "0")}.${tenths % 10}`;
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function segmentItem(segment, index, playable) {
  const item = document.createElement(playable ? "button" : "div");
  item.className = "segment";
  item.dataset.index = index;
  item.dataset.start = segment.start;
  if (playable) {
    item.type = "button";
    I18N.say(item, "segment.play", { time: clock(segment.start) }, "title");  // its name stays its text
    item.addEventListener("click", () => playFrom(index));
  }
  const time = document.createElement("time");
  time.className = "times";
  time.dateTime = `PT${segment.start}S`;
  time.textContent = `${clock(segment.start)}–${clock(segment.end)}`;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = segment.text;
  item.append(time, text);
  const li = document.createElement("li");
  li.append(item);
  return li;
}

function showSegments(segments) {
  state.segments = segments;
  state.playing = -1;
  const playable = !$("player").hidden;
  $("segments").replaceChildren(...segments.map((s, i) => segmentItem(s, i, playable)));
  $("segments").hidden = segments.length === 0;
}

function showPlayer(jobId) {
  const player = $("player");
  const url = jobId && state.media.get(jobId);
  player.pause();
  if (url) {
    if (player.src !== url) player.src = url;
  } else {
    player.removeAttribute("src");
    player.load();
  }
  player.hidden = !url;
}

function playFrom(index) {
  const player = $("player");
  player.currentTime = state.segments[index].start;
  highlight(index);
  player.play().catch(() => { /* no audio output, or the browser refuses: the position is set anyway */ });
}

// The segment at a time: the last one started, if it has not ended (-1 between segments).
function segmentAt(seconds) {
  let found = -1;
  state.segments.forEach((s, i) => { if (s.start <= seconds) found = i; });
  return found >= 0 && seconds < state.segments[found].end ? found : -1;
}

function highlight(index) {
  if (index === state.playing) return;
  state.playing = index;
  $("segments").querySelectorAll(".segment").forEach((element, i) => {
    element.classList.toggle("playing", i === index);
    if (i === index) element.setAttribute("aria-current", "true");
    else element.removeAttribute("aria-current");
  });
  const current = $("segments").querySelector(".playing");
  if (current && !$("player").paused) current.scrollIntoView({ block: "nearest" });
}

function followPlayback() {
  const index = segmentAt($("player").currentTime);
  if (index >= 0 || !$("player").paused) highlight(index);
}

// --- Downloads -------------------------------------------------------------------------------------------

async function download(format) {
  let response;
  try {
    response = await api(`/result/${state.jobId}?format=${format}`);
  } catch (_) {
    showError(NETWORK_ERROR);
    return;
  }
  if (!response.ok) { showError(await errorOf(response)); return; }
  const blob = await response.blob();
  const stem = (state.filename || "").replace(/\.[^.]+$/, "") || "transcript";
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${stem}.${format}`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

// --- Recent jobs: the key's (GET /jobs), else those this browser submitted (localStorage) ----------------

function rememberedJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(STORE.jobs) || "[]");
    return Array.isArray(jobs) ? jobs.filter((j) => j && typeof j.job_id === "string") : [];
  } catch (_) {
    return [];
  }
}

function keepJobs(jobs) { localStorage.setItem(STORE.jobs, JSON.stringify(jobs.slice(0, KEPT_JOBS))); }

function rememberJob(job) {
  const entry = { job_id: job.job_id, filename: job.filename, created_at: job.created_at, status: job.status };
  keepJobs([entry, ...rememberedJobs().filter((j) => j.job_id !== job.job_id)]);
}

function updateRememberedJob(job) {
  keepJobs(rememberedJobs().map((j) => (j.job_id === job.job_id ? { ...j, status: job.status } : j)));
}

function forgetJob(jobId) { keepJobs(rememberedJobs().filter((j) => j.job_id !== jobId)); }

async function loadJobs() {
  let response = null;
  try {
    response = await api("/jobs?limit=20");
  } catch (_) { /* offline: this browser's list */ }
  if (response && response.ok) {
    state.jobs = (await response.json()).jobs;
    state.jobsFrom = "server";
  } else {
    state.jobs = rememberedJobs();
    state.jobsFrom = "browser";
  }
  showJobs();
}

function when(iso) {
  const moment = iso ? new Date(iso) : null;
  if (!moment || Number.isNaN(moment.getTime())) return "";
  return moment.toLocaleString(I18N.lang, { dateStyle: "short", timeStyle: "short" });
}

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.job = job.job_id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = job.filename || job.job_id;
  I18N.say(open, "recent.open", { name: job.filename || job.job_id }, "aria-label");
  open.addEventListener("click", () => follow(job.job_id, job.filename));
  const status = document.createElement("span");
  status.className = `job-status ${job.status || ""}`;
  if (job.status) I18N.say(status, `status.${job.status}`);
  const time = document.createElement("time");
  time.dateTime = job.created_at || "";
  time.textContent = when(job.created_at);
  li.append(open, status, time);
  return li;
}

function showJobs() {
  $("jobs").replaceChildren(...state.jobs.map(jobItem));
  $("no-jobs").hidden = state.jobs.length > 0;
  I18N.say($("recent-source"), state.jobsFrom === "server" ? "recent.from_server" : "recent.from_browser");
  markCurrentJob();
}

function markCurrentJob() {
  $("jobs").querySelectorAll("li").forEach((li) => {
    if (li.dataset.job === state.jobId) li.setAttribute("aria-current", "true");
    else li.removeAttribute("aria-current");
  });
}

// --- The server's state, the page's language -------------------------------------------------------------

async function health() {
  try {
    const body = await (await fetch("/health")).json();
    I18N.say($("health"), body.model_loaded ? "health.loaded" : "health.not_loaded");
    $("health").classList.toggle("ok", !!body.model_loaded);
    // Translation where the model can (Qwen3-ASR transcribes only); unknown until the checkpoint says.
    $("task-option").hidden = !!body.engine && !body.engine.translates;
  } catch (_) {
    I18N.say($("health"), "health.unreachable");
  }
}

function switchLanguage(lang) {
  I18N.use(lang, true);
  showJobs();  // its dates are written in the page's language
}

// --- Wiring ----------------------------------------------------------------------------------------------

function wireDropZone() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0] || null));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", (e) => choose(e.target.files[0] || null));
}

function init() {
  I18N.use(I18N.initial());
  $("ui-language").value = I18N.lang;
  $("ui-language").addEventListener("change", (e) => switchLanguage(e.target.value));
  wireDropZone();
  $("start").addEventListener("click", start);
  document.querySelectorAll("#downloads button").forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
  $("player").addEventListener("timeupdate", followPlayback);
  $("player").addEventListener("seeked", followPlayback);
  $("refresh").addEventListener("click", loadJobs);
  $("apikey").value = localStorage.getItem(STORE.key) || "";
  $("apikey").addEventListener("input", () => localStorage.setItem(STORE.key, apiKey()));
  $("apikey").addEventListener("change", loadJobs);
  health();
  setInterval(health, 15000);
  loadJobs();
}

init();
