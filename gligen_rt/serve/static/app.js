// gligen-rt page: draw boxes with phrases (or persons' keypoints for a keypoint model), send the
// request, follow its progress, show the result.
// Plain browser JavaScript, no build step. Coordinates are normalised to [0, 1] like the API's.
"use strict";

const PALETTE = ["#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58230", "#911eb4", "#46f0f0", "#f032e6", "#d2f53c", "#fabed4"];
const HANDLE = 10; // px: the bottom-right corner that resizes a box
const MIN_BOX = 4; // px: a smaller drag is a click, not a box
const KP_RADIUS = 6; // px: a keypoint's dot, and how near a press must be to grab it
// A standing person seen from the front, in a unit box, in COCO order (the person's left is on the
// image's right): what a person dragged on the canvas starts with. Names and limbs come from /v1/info.
const POSE = [
  [0.5, 0.08], [0.54, 0.05], [0.46, 0.05], [0.58, 0.07], [0.42, 0.07], [0.68, 0.22], [0.32, 0.22],
  [0.78, 0.4], [0.22, 0.4], [0.84, 0.56], [0.16, 0.56], [0.62, 0.55], [0.38, 0.55], [0.64, 0.76],
  [0.36, 0.76], [0.65, 0.96], [0.35, 0.96],
];

const $ = (id) => document.getElementById(id);
const canvas = $("draw");
const ctx = canvas.getContext("2d");
// persons: [{kps: [[x, y] | null] * 17}]; person / kp: the selected person and keypoint (-1: none).
const state = { info: null, boxes: [], selected: -1, drag: null, background: null, persons: [], person: -1, kp: -1 };
const keypointMode = () => !!state.info && state.info.modality === "keypoint";

// ---- model info ---------------------------------------------------------------------------------

async function loadInfo() {
  const res = await fetch("/v1/info");
  const info = await res.json();
  state.info = info;
  $("model-info").textContent = `${info.model} · ${info.modality}${info.inpaint ? " · inpainting" : ""} · ${info.backend} · ${info.default_size}px`;
  const sampler = $("sampler");
  sampler.innerHTML = "";
  for (const s of info.samplers) sampler.append(new Option(s, s));
  $("guidance").value = info.default_guidance; // the model's own scale (the shipped tiny model's is low)
  const spatial = ["hed", "canny", "depth", "normal", "sem"].includes(info.modality);
  const box = ["text-box", "text-image-box"].includes(info.modality);
  for (const el of document.querySelectorAll(".modality-spatial")) el.hidden = !spatial;
  for (const el of document.querySelectorAll(".modality-inpaint")) el.hidden = !info.inpaint;
  for (const el of document.querySelectorAll(".modality-image")) el.hidden = info.modality !== "text-image-box";
  for (const el of document.querySelectorAll(".modality-box")) el.hidden = !box && !info.inpaint;
  for (const el of document.querySelectorAll(".modality-keypoint")) el.hidden = !keypointMode();
  if (keypointMode() && info.num_keypoints !== POSE.length) {
    showError(`the model takes ${info.num_keypoints} keypoints per person; this page knows ${POSE.length}`);
  }
  renderList();
  renderPersons();
  draw();
}

// ---- drawing ------------------------------------------------------------------------------------

function toNorm(ev) {
  const r = canvas.getBoundingClientRect();
  const x = Math.min(Math.max((ev.clientX - r.left) / r.width, 0), 1);
  const y = Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 1);
  return [x, y];
}

function round4(v) { return Math.round(v * 10000) / 10000; }

function hit(x, y) {
  const w = canvas.getBoundingClientRect().width || canvas.width;
  const h = HANDLE / w;
  for (let i = state.boxes.length - 1; i >= 0; i--) {
    const b = state.boxes[i];
    if ([b.x0, b.y0, b.x1, b.y1].some((v) => typeof v !== "number" || !isFinite(v))) continue;
    if (Math.abs(x - b.x1) <= h && Math.abs(y - b.y1) <= h) return { index: i, mode: "resize" };
    if (x >= b.x0 && x <= b.x1 && y >= b.y0 && y <= b.y1) return { index: i, mode: "move" };
  }
  return null;
}

canvas.addEventListener("pointerdown", (ev) => {
  canvas.focus();
  canvas.setPointerCapture(ev.pointerId);
  const [x, y] = toNorm(ev);
  if (keypointMode()) {
    const k = hitKeypoint(x, y);
    if (k) {
      Object.assign(state, { person: k.person, kp: k.kp });
      state.drag = { mode: "kp", person: k.person, kp: k.kp };
    } else {
      state.kp = -1; // the selected person stays selected: a click places its next missing keypoint
      state.drag = { mode: "new", start: [x, y], current: [x, y] };
    }
    renderPersons();
    draw();
    return;
  }
  const h = hit(x, y);
  if (h) {
    const b = state.boxes[h.index];
    state.selected = h.index;
    state.drag = { mode: h.mode, index: h.index, start: [x, y], orig: { ...b } };
  } else {
    state.selected = -1;
    state.drag = { mode: "new", start: [x, y], current: [x, y] };
  }
  renderList();
  draw();
});

canvas.addEventListener("pointermove", (ev) => {
  const d = state.drag;
  if (!d) {
    const over = keypointMode() ? hitKeypoint(...toNorm(ev)) : hit(...toNorm(ev));
    canvas.style.cursor = over ? "move" : "crosshair";
    return;
  }
  const [x, y] = toNorm(ev);
  if (d.mode === "new") {
    d.current = [x, y];
  } else if (d.mode === "kp") {
    state.persons[d.person].kps[d.kp] = [round4(x), round4(y)];
    syncPerson(d.person);
  } else {
    const b = state.boxes[d.index], o = d.orig;
    if (d.mode === "move") {
      const dx = Math.min(Math.max(x - d.start[0], -o.x0), 1 - o.x1);
      const dy = Math.min(Math.max(y - d.start[1], -o.y0), 1 - o.y1);
      Object.assign(b, { x0: round4(o.x0 + dx), y0: round4(o.y0 + dy), x1: round4(o.x1 + dx), y1: round4(o.y1 + dy) });
    } else {
      b.x1 = round4(Math.max(x, o.x0 + 0.01));
      b.y1 = round4(Math.max(y, o.y0 + 0.01));
    }
    syncRow(d.index);
  }
  draw();
});

canvas.addEventListener("pointerup", (ev) => {
  const d = state.drag;
  state.drag = null;
  if (d && d.mode === "new") {
    const [x, y] = toNorm(ev);
    const w = canvas.getBoundingClientRect().width || canvas.width;
    const isBox = Math.abs(x - d.start[0]) * w >= MIN_BOX && Math.abs(y - d.start[1]) * w >= MIN_BOX;
    if (keypointMode()) {
      if (isBox) addPerson(Math.min(x, d.start[0]), Math.min(y, d.start[1]), Math.max(x, d.start[0]), Math.max(y, d.start[1]));
      else placeKeypoint(x, y);
    } else if (isBox) {
      state.boxes.push({
        x0: round4(Math.min(x, d.start[0])), y0: round4(Math.min(y, d.start[1])),
        x1: round4(Math.max(x, d.start[0])), y1: round4(Math.max(y, d.start[1])),
        phrase: "", image: null,
      });
      state.selected = state.boxes.length - 1;
      renderList();
      const inputs = $("box-list").querySelectorAll(".phrase");
      if (inputs.length) inputs[inputs.length - 1].focus();
    }
  }
  draw();
});

canvas.addEventListener("keydown", (ev) => {
  if ((ev.key === "Delete" || ev.key === "Backspace") && keypointMode()) {
    if (state.person >= 0 && state.kp >= 0) {
      state.persons[state.person].kps[state.kp] = null; // missing: the next click on the canvas places it
      state.kp = -1;
      renderPersons();
      draw();
    }
    ev.preventDefault();
  } else if ((ev.key === "Delete" || ev.key === "Backspace") && state.selected >= 0) {
    removeBox(state.selected);
    ev.preventDefault();
  }
});

function removeBox(i) {
  state.boxes.splice(i, 1);
  state.selected = -1;
  renderList();
  draw();
}

function draw() {
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  if (state.background) {
    ctx.drawImage(state.background, 0, 0, W, H);
  } else {
    ctx.fillStyle = "#e8e8ec";
    ctx.fillRect(0, 0, W, H);
    ctx.strokeStyle = "#d0d0d6";
    for (let i = 1; i < 8; i++) {
      ctx.beginPath(); ctx.moveTo((i * W) / 8, 0); ctx.lineTo((i * W) / 8, H); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(0, (i * H) / 8); ctx.lineTo(W, (i * H) / 8); ctx.stroke();
    }
  }
  drawBoxes(ctx, W, H, state.boxes.map((b) => ({ box: [b.x0, b.y0, b.x1, b.y1], label: b.phrase })), state.selected);
  drawPersons(ctx, W, H, state.persons.map((p) => p.kps), state.person, state.kp);
  const d = state.drag;
  if (d && d.mode === "new") {
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#333";
    const [x0, y0] = d.start, [x1, y1] = d.current;
    ctx.strokeRect(Math.min(x0, x1) * W, Math.min(y0, y1) * H, Math.abs(x1 - x0) * W, Math.abs(y1 - y0) * H);
    ctx.setLineDash([]);
  }
}

function drawBoxes(c, W, H, items, selected) {
  const line = Math.max(2, Math.round(W / 170));
  c.font = `${Math.max(12, Math.round(W / 32))}px sans-serif`;
  c.textBaseline = "top";
  items.forEach((it, i) => {
    const [x0, y0, x1, y1] = it.box;
    if ([x0, y0, x1, y1].some((v) => typeof v !== "number" || !isFinite(v))) return;
    const colour = PALETTE[i % PALETTE.length];
    c.lineWidth = i === selected ? line * 2 : line;
    c.strokeStyle = colour;
    c.strokeRect(x0 * W, y0 * H, (x1 - x0) * W, (y1 - y0) * H);
    if (i === selected) { c.fillStyle = colour; c.fillRect(x1 * W - HANDLE, y1 * H - HANDLE, HANDLE, HANDLE); }
    const label = it.label || `#${i + 1}`;
    const tw = c.measureText(label).width + 6, th = parseInt(c.font, 10) + 4;
    const ty = y0 * H - th >= 0 ? y0 * H - th : y0 * H;
    c.fillStyle = colour;
    c.fillRect(x0 * W, ty, tw, th);
    c.fillStyle = "#000";
    c.fillText(label, x0 * W + 3, ty + 2);
  });
}

function drawPersons(c, W, H, persons, selected, selectedKp) {
  const limbs = (state.info && state.info.skeleton) || [];
  const r = KP_RADIUS * (W / (canvas.getBoundingClientRect().width || canvas.width));
  persons.forEach((kps, i) => {
    const colour = PALETTE[i % PALETTE.length];
    c.strokeStyle = colour;
    c.lineWidth = i === selected ? 4 : 2;
    for (const [a, b] of limbs) {
      if (!kps[a] || !kps[b]) continue;
      c.beginPath(); c.moveTo(kps[a][0] * W, kps[a][1] * H); c.lineTo(kps[b][0] * W, kps[b][1] * H); c.stroke();
    }
    kps.forEach((kp, j) => {
      if (!kp) return;
      c.beginPath();
      c.arc(kp[0] * W, kp[1] * H, i === selected && j === selectedKp ? r * 1.6 : r, 0, 2 * Math.PI);
      c.fillStyle = colour; c.fill();
      c.lineWidth = 1; c.strokeStyle = "#000"; c.stroke();
    });
  });
}

// ---- persons (keypoint models) ------------------------------------------------------------------

function hitKeypoint(x, y) {
  const w = canvas.getBoundingClientRect().width || canvas.width;
  const reach = (KP_RADIUS + 2) / w;
  let best = null;
  state.persons.forEach((p, i) => p.kps.forEach((kp, j) => {
    if (!kp) return;
    const d = Math.hypot(kp[0] - x, kp[1] - y);
    if (d <= reach && (!best || d <= best.d)) best = { person: i, kp: j, d };
  }));
  return best;
}

function addPerson(x0, y0, x1, y1) {
  state.persons.push({ kps: POSE.map(([u, v]) => [round4(x0 + u * (x1 - x0)), round4(y0 + v * (y1 - y0))]) });
  Object.assign(state, { person: state.persons.length - 1, kp: -1 });
  renderPersons();
}

// A click on the canvas: the selected person's first missing keypoint goes there; when it has none
// missing (or none is selected), a new person starts with its nose there.
function placeKeypoint(x, y) {
  let p = state.persons[state.person];
  if (!p || !p.kps.includes(null)) {
    p = { kps: POSE.map(() => null) };
    state.persons.push(p);
    state.person = state.persons.length - 1;
  }
  const j = p.kps.indexOf(null);
  p.kps[j] = [round4(x), round4(y)];
  state.kp = j;
  renderPersons();
}

function personText(p, i) {
  const have = p.kps.filter((kp) => kp).length;
  const names = (state.info && state.info.keypoint_names) || [];
  const next = p.kps.indexOf(null);
  const hint = next >= 0 ? `; a click places the ${names[next] || `keypoint ${next + 1}`}` : "";
  return `person ${i + 1}: ${have}/${p.kps.length} keypoints${hint}`;
}

function renderPersons() {
  const list = $("person-list");
  list.innerHTML = "";
  state.persons.forEach((p, i) => {
    const li = document.createElement("li");
    li.className = i === state.person ? "selected" : "";
    li.dataset.index = i;
    li.dataset.keypoints = JSON.stringify(p.kps);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = PALETTE[i % PALETTE.length];
    const text = document.createElement("span");
    text.className = "person-text";
    text.textContent = personText(p, i);
    text.addEventListener("click", () => { Object.assign(state, { person: i, kp: -1 }); renderPersons(); draw(); });
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "×";
    del.title = "delete this person";
    del.addEventListener("click", () => {
      state.persons.splice(i, 1);
      Object.assign(state, { person: -1, kp: -1 });
      renderPersons();
      draw();
    });
    li.append(sw, text, del);
    list.append(li);
  });
}

function syncPerson(i) {
  const li = $("person-list").children[i];
  if (!li) return;
  li.dataset.keypoints = JSON.stringify(state.persons[i].kps);
  li.querySelector(".person-text").textContent = personText(state.persons[i], i);
}

// ---- the box list -------------------------------------------------------------------------------

function renderList() {
  const list = $("box-list");
  list.innerHTML = "";
  const withImage = state.info && state.info.modality === "text-image-box";
  state.boxes.forEach((b, i) => {
    const li = document.createElement("li");
    li.className = i === state.selected ? "selected" : "";
    li.dataset.index = i;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = PALETTE[i % PALETTE.length];
    const phrase = document.createElement("input");
    phrase.className = "phrase";
    phrase.placeholder = "phrase for this box";
    phrase.value = b.phrase;
    phrase.addEventListener("input", () => { b.phrase = phrase.value; draw(); });
    phrase.addEventListener("focus", () => { state.selected = i; draw(); });
    li.append(sw, phrase);
    for (const key of ["x0", "y0", "x1", "y1"]) {
      const inp = document.createElement("input");
      inp.className = `coord coord-${key}`;
      inp.type = "number";
      inp.step = "0.01";
      inp.title = key;
      inp.value = b[key];
      inp.addEventListener("input", () => { b[key] = inp.value === "" ? null : Number(inp.value); draw(); });
      li.append(inp);
    }
    if (withImage) {
      const file = document.createElement("input");
      file.type = "file";
      file.accept = "image/*";
      file.className = "box-image";
      file.title = "reference image for this box";
      file.addEventListener("change", async () => { b.image = file.files[0] ? await dataUrl(file.files[0]) : null; });
      li.append(file);
    }
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "×";
    del.title = "delete this box";
    del.addEventListener("click", () => removeBox(i));
    li.append(del);
    list.append(li);
  });
}

function syncRow(i) {
  const li = $("box-list").children[i];
  if (!li) return;
  for (const key of ["x0", "y0", "x1", "y1"]) li.querySelector(`.coord-${key}`).value = state.boxes[i][key];
}

// ---- uploads ------------------------------------------------------------------------------------

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

const uploads = {};
for (const [id, key] of [["condition", "condition"], ["inpaint-image", "inpaint_image"], ["style-image", "style_image"]]) {
  $(id).addEventListener("change", async (ev) => {
    const f = ev.target.files[0];
    uploads[key] = f ? await dataUrl(f) : undefined;
    if (key === "inpaint_image" || key === "condition") {
      if (!f) { state.background = null; draw(); return; }
      const img = new Image();
      img.onload = () => { state.background = img; draw(); };
      img.src = uploads[key];
    }
  });
}

// ---- generate -----------------------------------------------------------------------------------

function buildRequest() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const req = {
    prompt: $("prompt").value,
    negative_prompt: $("negative-prompt").value,
    seed: num("seed"),
    steps: num("steps"),
    guidance: num("guidance"),
    sampler: $("sampler").value,
  };
  if (state.boxes.length) {
    req.objects = state.boxes.map((b) => {
      const o = { box: [b.x0, b.y0, b.x1, b.y1], phrase: b.phrase };
      if (b.image) o.image = b.image;
      return o;
    });
  }
  if (keypointMode() && state.persons.length) req.persons = state.persons.map((p) => ({ keypoints: p.kps }));
  for (const [k, v] of Object.entries(uploads)) if (v) req[k] = v;
  const extra = $("extra-json").value.trim();
  if (extra) Object.assign(req, JSON.parse(extra));
  return req;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function generate() {
  $("error").hidden = true;
  $("status").textContent = "";
  $("progress").value = 0;
  let req;
  try {
    req = buildRequest();
  } catch (e) {
    showError(`the extra JSON cannot be read: ${e.message}`);
    return;
  }
  $("generate").disabled = true;
  try {
    const res = await fetch("/v1/generate/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(req),
    });
    if (!res.ok) {
      let msg = `HTTP ${res.status}`;
      try { msg = (await res.json()).error || msg; } catch (e) { /* not JSON */ }
      showError(msg);
      return;
    }
    await readEvents(res.body, onEvent);
  } catch (e) {
    showError(`the request failed: ${e.message}`);
  } finally {
    $("generate").disabled = false;
  }
}

function onEvent(name, data) {
  if (name === "queued") {
    $("status").textContent = data.waiting > 0 ? `queued (${data.waiting} waiting)` : "running…";
  } else if (name === "progress") {
    $("progress").max = data.steps;
    $("progress").value = data.step;
    $("status").textContent = `step ${data.step} / ${data.steps}`;
  } else if (name === "result") {
    $("status").textContent = "done";
    $("progress").value = $("progress").max;
    showResult(data);
  } else if (name === "error") {
    $("status").textContent = "";
    showError(data.error);
  }
}

async function readEvents(stream, handle) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      handle(name, data ? JSON.parse(data) : {});
    }
  }
}

function showResult(data) {
  const src = `data:image/png;base64,${data.images[0]}`;
  const img = $("result-image");
  const overlay = $("result-overlay");
  img.onload = () => {
    overlay.width = 512;
    overlay.height = Math.round((512 * data.height) / data.width);
    const c = overlay.getContext("2d");
    c.clearRect(0, 0, overlay.width, overlay.height);
    const items = (data.request.objects || []).map((o) => ({ box: o.box, label: o.phrase }));
    drawBoxes(c, overlay.width, overlay.height, items, -1);
    const persons = (data.request.persons || []).map((p) => p.keypoints);
    drawPersons(c, overlay.width, overlay.height, persons, -1, -1);
    overlay.dataset.boxes = String(items.length);
    overlay.dataset.persons = String(persons.length);
    $("result").hidden = false;
    $("result").dataset.id = data.id;
  };
  img.src = src;
  $("download").href = src;
  $("download").download = `gligen-seed${data.seed}.png`;
  const t = data.timings;
  $("timings").textContent = `${data.width}x${data.height}, seed ${data.seed}: ${(t.request * 1000).toFixed(0)} ms (queue ${(t.queue * 1000).toFixed(0)} ms, denoise ${((t.denoise || 0) * 1000).toFixed(0)} ms)`;
}

$("show-overlay").addEventListener("change", (ev) => { $("result-overlay").hidden = !ev.target.checked; });
$("generate").addEventListener("click", generate);
loadInfo().catch((e) => showError(`cannot read /v1/info: ${e.message}`));
draw();
