"""The viewer page that ``ichseg serve`` hands out at ``/``: plain HTML and JavaScript, nothing
fetched from elsewhere. It asks for the API token (kept in the tab's sessionStorage only),
lists the jobs, uploads a study, and for a finished job shows a slice scroller of the CT
with the predicted blood drawn over it (toggle and opacity), the per-slice probability
plot, the lesion table and the downloads. Every call carries the bearer token, so the page
itself needs none."""

from __future__ import annotations

VIEWER_HTML = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ichseg viewer</title>
<style>
body { font-family: DejaVu Sans, sans-serif; margin: 0; color: #1a1a1a; background: #f4f5f7; }
header { background: #263238; color: #fff; padding: 10px 16px; display: flex; gap: 16px; align-items: center; }
header h1 { font-size: 18px; margin: 0; flex: 1; }
main { display: grid; grid-template-columns: 300px 1fr; gap: 16px; padding: 16px; }
section { background: #fff; border-radius: 6px; padding: 12px; box-shadow: 0 1px 2px rgba(0,0,0,.15); }
#jobs li { cursor: pointer; padding: 4px; border-radius: 4px; list-style: none; }
#jobs li:hover, #jobs li.sel { background: #e3f2fd; }
#jobs ul { padding: 0; margin: 0; }
.state-done { color: #2e7d32; } .state-failed { color: #c62828; } .state-running, .state-queued { color: #ef6c00; }
#stage { position: relative; width: 512px; height: 512px; background: #000; }
#stage canvas { position: absolute; left: 0; top: 0; width: 512px; height: 512px; }
.row { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin: 8px 0; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; }
.verdict { font-size: 20px; font-weight: bold; } .pos { color: #c62828; } .neg { color: #2e7d32; }
.note { color: #555; font-size: 12px; }
#plot { width: 100%; max-width: 760px; height: 140px; }
</style></head>
<body>
<header><h1>ichseg — intracranial hemorrhage viewer</h1>
<label>API token <input id="token" type="password" size="24" autocomplete="off"></label>
<button id="save">Use token</button></header>
<main>
<section>
<h2>Upload a study</h2>
<form id="upload"><input id="file" type="file" accept=".zip,.nii,.gz"><button>Upload</button></form>
<p class="note">A zip of a DICOM series or of slice images, or a NIfTI volume.</p>
<p id="msg" class="note"></p>
<h2>Jobs</h2><div id="jobs"><ul></ul></div>
</section>
<section id="job">
<p class="note">Research software — not a medical device. Not for diagnostic use.</p>
<div id="detail"><p>Choose a job.</p></div>
<div id="viewer" hidden>
<div class="row"><span class="verdict" id="verdict"></span><span id="volume"></span></div>
<div id="stage"><canvas id="ct" width="512" height="512"></canvas><canvas id="mask" width="512" height="512"></canvas></div>
<div class="row">
<label>Slice <input id="slice" type="range" min="0" max="0" value="0"></label><span id="slicename"></span>
<label><input id="outline" type="checkbox" checked> outline</label>
<label>opacity <input id="opacity" type="range" min="0" max="100" value="45"></label>
</div>
<svg id="plot" viewBox="0 0 760 140" role="img" aria-label="hemorrhage probability per slice"></svg>
<h3>Lesions</h3><div id="lesions"></div>
<h3>Downloads</h3><div id="files"></div>
</div>
</section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("ichseg-token") || "";
let current = null, slices = [], ctImgs = {}, maskImgs = {};
$("token").value = token;
$("save").onclick = () => { token = $("token").value; sessionStorage.setItem("ichseg-token", token); refresh(); };
function api(path, opts = {}) {
  opts.headers = Object.assign({}, opts.headers || {}, token ? {Authorization: "Bearer " + token} : {});
  return fetch(path, opts);
}
async function json(path) { const r = await api(path); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }
async function image(path) {
  const r = await api(path); if (!r.ok) throw new Error(path + ": " + r.status);
  const img = new Image(); img.src = URL.createObjectURL(await r.blob()); await img.decode(); return img;
}
function text(el, s) { el.textContent = s; return el; }
async function refresh() {
  let jobs;
  try { jobs = await json("/v1/jobs"); } catch (e) { text($("msg"), "cannot list jobs (" + e.message + "): is the token right?"); return; }
  if ($("msg").textContent.startsWith("cannot list jobs")) text($("msg"), "");
  const ul = $("jobs").querySelector("ul"); ul.replaceChildren();
  for (const j of jobs) {
    const li = document.createElement("li"); li.dataset.id = j.id;
    li.append(text(document.createElement("b"), j.id), " ", text(document.createElement("span"), j.state));
    li.lastChild.className = "state-" + j.state;
    if (current === j.id) li.className = "sel";
    li.onclick = () => show(j.id); ul.append(li);
  }
}
$("upload").onsubmit = async (ev) => {
  ev.preventDefault();
  const f = $("file").files[0]; if (!f) return;
  const body = new FormData(); body.append("file", f);
  const r = await api("/v1/studies", {method: "POST", body});
  const out = await r.json().catch(() => ({}));
  text($("msg"), r.ok ? "job " + out.job_id + " queued" : "refused (" + r.status + "): " + (out.detail || ""));
  refresh();
};
async function show(id) {
  current = id; refresh();
  const j = await json("/v1/jobs/" + id);
  const d = $("detail"); d.replaceChildren(text(document.createElement("p"), "Job " + id + ": " + j.state +
    (j.state === "running" && j.progress ? " (" + j.progress.stage + ")" : "") + (j.error ? " — " + j.error : "")));
  if (j.state !== "done") { $("viewer").hidden = true; if (j.state === "queued" || j.state === "running") setTimeout(() => current === id && show(id), 2000); return; }
  const s = j.summary || {};
  text($("verdict"), s.hemorrhage ? "Hemorrhage detected" : "No hemorrhage detected").className = "verdict " + (s.hemorrhage ? "pos" : "neg");
  text($("volume"), "total " + (s.total_volume_ml ?? 0).toFixed(1) + " mL, scan probability " + (s.scan_probability ?? 0).toFixed(2));
  const sl = await json("/v1/jobs/" + id + "/slices");
  slices = sl.slices; ctImgs = {}; maskImgs = {};
  $("slice").max = Math.max(0, slices.length - 1);
  const first = (s.positive_slices && s.positive_slices.length) ? slices.findIndex((n) => parseInt(n, 10) === s.positive_slices[0]) : 0;
  $("slice").value = Math.max(0, first);
  plot(sl.probability, sl.threshold);
  lesions(s.lesions || []);
  const files = $("files"); files.replaceChildren();
  for (const name of j.files) {
    const b = document.createElement("button"); b.textContent = name;
    b.onclick = async () => { const r = await api("/v1/jobs/" + id + "/files/" + name); const a = document.createElement("a");
      a.href = URL.createObjectURL(await r.blob()); a.download = name; a.click(); };
    files.append(b, " ");
  }
  $("viewer").hidden = false; draw();
}
async function draw() {
  if (!slices.length) return;
  const k = parseInt($("slice").value, 10), name = slices[k];
  text($("slicename"), name + " (" + (k + 1) + "/" + slices.length + ")");
  ctImgs[name] = ctImgs[name] || await image("/v1/jobs/" + current + "/slices/" + name + "/ct.png");
  maskImgs[name] = maskImgs[name] || await image("/v1/jobs/" + current + "/slices/" + name + "/mask.png");
  const ct = $("ct").getContext("2d"); ct.drawImage(ctImgs[name], 0, 0, 512, 512);
  const m = $("mask"), mc = m.getContext("2d"); mc.clearRect(0, 0, 512, 512);
  if ($("outline").checked) {
    mc.drawImage(maskImgs[name], 0, 0, 512, 512);
    const px = mc.getImageData(0, 0, 512, 512), a = parseInt($("opacity").value, 10) / 100 * 255;
    for (let i = 0; i < px.data.length; i += 4) { const on = px.data[i] > 127;
      px.data[i] = 255; px.data[i + 1] = 0; px.data[i + 2] = 0; px.data[i + 3] = on ? a : 0; }
    mc.putImageData(px, 0, 0);
  }
  for (const r of $("plot").querySelectorAll("rect.bar")) r.setAttribute("stroke", parseInt(r.dataset.k, 10) === k ? "#000" : "none");
}
function plot(p, thr) {
  const svg = $("plot"), ns = "http://www.w3.org/2000/svg"; svg.replaceChildren();
  const n = p.length, w = 740 / Math.max(n, 1);
  p.forEach((v, k) => { const r = document.createElementNS(ns, "rect"); const h = 120 * Math.max(0, Math.min(1, v));
    r.setAttribute("x", 10 + k * w); r.setAttribute("y", 130 - h); r.setAttribute("width", Math.max(1, w * 0.8)); r.setAttribute("height", h);
    r.setAttribute("fill", thr !== null && v >= thr ? "#c62828" : "#78909c"); r.setAttribute("class", "bar"); r.dataset.k = k;
    r.onclick = () => { $("slice").value = k; draw(); }; svg.append(r); });
  if (thr !== null) { const l = document.createElementNS(ns, "line"); const y = 130 - 120 * thr;
    l.setAttribute("x1", 10); l.setAttribute("x2", 750); l.setAttribute("y1", y); l.setAttribute("y2", y);
    l.setAttribute("stroke", "#111"); l.setAttribute("stroke-dasharray", "6 4"); svg.append(l); }
}
function lesions(list) {
  const t = document.createElement("table");
  const head = t.insertRow(); for (const h of ["#", "volume mL", "ABC/2 mL", "slices", "subtype"]) head.append(text(document.createElement("th"), h));
  for (const l of list) { const r = t.insertRow();
    for (const v of [l.label, l.volume_ml.toFixed(2), l.abc2_ml.toFixed(2), l.slices.join(", "), l.subtype || "—"]) text(r.insertCell(), String(v)); }
  $("lesions").replaceChildren(list.length ? t : text(document.createElement("p"), "No outlined lesion."));
}
$("slice").oninput = draw; $("outline").onchange = draw; $("opacity").oninput = draw;
refresh(); setInterval(refresh, 5000);
</script>
</body></html>
"""
