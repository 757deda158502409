// The pixelseg page: upload an image, draw its classes over it, toggle them, download the mask or a cut-out.
// Everything runs in this file against the server's own API; no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,      // GET /v1/models entry
  image: null,      // ImageData of the uploaded image
  labels: null,     // Uint8Array of class indices (255: a colour no class has)
  visible: [],      // per class: drawn or not
  maskBlob: null,   // the label PNG as the server sent it
  stem: "image",
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function loadModel() {
  const response = await fetch("/v1/models");
  const model = (await response.json()).models[0];
  state.model = model;
  state.visible = model.classes.map(() => true);
  $("model").textContent = `${model.id} · ${model.architecture} · ${model.task} · ${model.classes.length} classes`;
  const box = $("classes");
  model.classes.forEach((name, index) => {
    const label = document.createElement("label");
    const check = document.createElement("input");
    check.type = "checkbox";
    check.checked = true;
    check.dataset.index = index;
    check.disabled = model.task !== "semantic";
    check.addEventListener("change", () => { state.visible[index] = check.checked; render(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${model.palette[index].join(",")})`;
    const count = document.createElement("span");
    count.className = "count";
    count.id = `count-${index}`;
    label.append(check, swatch, document.createTextNode(name), count);
    box.append(label);
  });
}

async function pixelsOf(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  return context.getImageData(0, 0, bitmap.width, bitmap.height);
}

// The label PNG shows class colours; map each colour back to its class (the first class with that colour).
function labelsOf(mask) {
  const byColour = new Map();
  state.model.palette.forEach(([r, g, b], index) => {
    const key = (r << 16) | (g << 8) | b;
    if (!byColour.has(key)) byColour.set(key, index);
  });
  const labels = new Uint8Array(mask.width * mask.height).fill(255);
  const counts = new Array(state.model.classes.length).fill(0);
  const data = mask.data;
  for (let p = 0; p < labels.length; p++) {
    const index = byColour.get((data[4 * p] << 16) | (data[4 * p + 1] << 8) | data[4 * p + 2]);
    if (index !== undefined) { labels[p] = index; counts[index]++; }
  }
  counts.forEach((count, index) => { $(`count-${index}`).textContent = count.toLocaleString(); });
  return labels;
}

function render() {
  if (!state.image || !state.labels) return;
  const { width, height, data } = state.image;
  const canvas = $("view");
  canvas.width = width;
  canvas.height = height;
  const out = new ImageData(width, height);
  const alpha = Number($("opacity").value) / 100;
  const palette = state.model.palette;
  for (let p = 0; p < width * height; p++) {
    const label = state.labels[p];
    const blend = label !== 255 && state.visible[label] ? alpha : 0;
    for (let c = 0; c < 3; c++) {
      const colour = blend ? palette[label][c] : 0;
      out.data[4 * p + c] = Math.round(data[4 * p + c] * (1 - blend) + colour * blend);
    }
    out.data[4 * p + 3] = 255;
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
}

// The instance models' answer is a drawn overlay, shown as it comes.
async function showOverlay(blob) {
  const overlay = await pixelsOf(blob);
  const canvas = $("view");
  canvas.width = overlay.width;
  canvas.height = overlay.height;
  canvas.getContext("2d").putImageData(overlay, 0, 0);
}

async function segment(file) {
  if (!file || !state.model) return;
  document.body.dataset.state = "busy";
  setStatus(`segmenting ${file.name}…`);
  $("download-mask").disabled = $("download-cutout").disabled = true;
  state.stem = file.name.replace(/\.[^.]*$/, "") || "image";
  const form = new FormData();
  form.append("image", file, file.name);
  const semantic = state.model.task === "semantic";
  const started = performance.now();
  try {
    const response = await fetch(`/v1/segment?format=${semantic ? "label" : "overlay"}`, { method: "POST", body: form });
    if (!response.ok) {
      const reason = await response.json().then((body) => body.detail).catch(() => response.statusText);
      throw new Error(`${response.status}: ${reason}`);
    }
    const blob = await response.blob();
    if (semantic) {
      state.image = await pixelsOf(file);
      state.maskBlob = blob;
      state.labels = labelsOf(await pixelsOf(blob));
      if (state.labels.length !== state.image.width * state.image.height) throw new Error("mask and image sizes differ");
      render();
      $("download-mask").disabled = $("download-cutout").disabled = false;
    } else {
      await showOverlay(blob);
    }
    setStatus(`${file.name}: segmented in ${Math.round(performance.now() - started)} ms`);
    document.body.dataset.state = "ready";
  } catch (error) {
    setStatus(String(error.message || error), true);
    document.body.dataset.state = "error";
  }
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

// The cut-out: the image's pixels where a shown class is, transparent elsewhere.
function cutout() {
  const { width, height, data } = state.image;
  const canvas = new OffscreenCanvas(width, height);
  const out = new ImageData(new Uint8ClampedArray(data), width, height);
  for (let p = 0; p < width * height; p++) {
    const label = state.labels[p];
    out.data[4 * p + 3] = label !== 255 && state.visible[label] ? 255 : 0;
  }
  canvas.getContext("2d").putImageData(out, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}

function wire() {
  $("file").addEventListener("change", (event) => segment(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    segment(event.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", render);
  $("download-mask").addEventListener("click", () => download(state.maskBlob, `${state.stem}_mask.png`));
  $("download-cutout").addEventListener("click", async () => download(await cutout(), `${state.stem}_cutout.png`));
}

wire();
loadModel().catch((error) => setStatus(`cannot reach the server: ${error}`, true));
