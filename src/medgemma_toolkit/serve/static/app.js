// The MedGemma reading page: plain ES modules talking to this server's own API (no build step, nothing fetched
// from elsewhere). The API key lives in a variable only (never localStorage or cookies), gone when the tab closes.
// Images are rendered by the server (/v1/medgemma/model-input) with the same code and options a chat request uses,
// so what the panes show is what the model receives.

import { renderMarkdown } from "./markdown.js";
import { renderStudy } from "./viewer.js";
import { zipStored } from "./zip.js";

const $ = (id) => document.getElementById(id);
const state = {
  apiKey: "",
  modelId: null,
  studies: { prior: { sources: [] }, current: { sources: [] } },
  messages: [], // the conversation sent so far (OpenAI messages)
  imagesSent: false,
  controller: null,
  windowing: null, // the window change being applied (a promise), so a question waits for the panes to match
  windowGen: 0, // bumped by each window change: an older one's late results are dropped, never shown
  windowAll: false, // a pending change refetches the PNGs too (padding), not only DICOM (window)
};

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.apiKey) h["Authorization"] = "Bearer " + state.apiKey;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || resp.statusText;
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

async function connect() {
  state.apiKey = $("api-key").value.trim();
  $("api-key").value = "";
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    state.modelId = null;
    $("model-name").textContent = "not connected";
    setStatus(resp.status === 401 ? "This server needs an API key: enter it above." : await errorText(resp), true);
    return false;
  }
  const body = await resp.json();
  state.modelId = body.data[0].id;
  $("model-name").textContent = state.modelId;
  setStatus("Connected.", false);
  return true;
}

// ---- files -> sources ------------------------------------------------------------------------------------

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function isDicom(name, bytes) {
  const preamble = bytes.length > 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM";
  return preamble || /\.(dcm|dicom)$/i.test(name);
}

function rasterType(file) {
  if (file.type === "image/png" || file.type === "image/jpeg") return file.type;
  if (/\.png$/i.test(file.name)) return "image/png";
  if (/\.jpe?g$/i.test(file.name)) return "image/jpeg";
  return null;
}

// Several DICOM files become ONE series source (a stored ZIP); each PNG/JPEG is its own image.
async function toSources(files) {
  const dicoms = [];
  const sources = [];
  let skipped = 0;
  for (const file of files) {
    const base = file.name.split("/").pop();
    if (base.startsWith(".") || base.toUpperCase() === "DICOMDIR") continue;
    const bytes = new Uint8Array(await file.arrayBuffer());
    if (isDicom(file.name, bytes)) dicoms.push({ name: file.name, bytes });
    else if (rasterType(file)) {
      sources.push({ name: file.name, kind: "image", dataUri: "data:" + rasterType(file) + ";base64," + toBase64(bytes) });
    } else skipped++;
  }
  if (dicoms.length === 1) {
    sources.unshift({ name: dicoms[0].name, kind: "dicom", dataUri: "data:application/dicom;base64," + toBase64(dicoms[0].bytes) });
  } else if (dicoms.length > 1) {
    dicoms.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
    sources.unshift({
      name: "series of " + dicoms.length + " DICOM files",
      kind: "series",
      files: dicoms.map((d) => d.name),
      dataUri: "data:application/zip;base64," + toBase64(zipStored(dicoms)),
    });
  }
  return { sources, skipped };
}

// Files of a drop, folders walked recursively (DataTransferItem.webkitGetAsEntry).
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files];
  const out = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      out.push(new File([file], prefix + file.name, { type: file.type }));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const e of batch) await walk(e, prefix + entry.name + "/");
      }
    }
  }
  for (const e of entries) await walk(e, "");
  return out;
}

// Comparing (prior and current): images unpadded, as Google's longitudinal notebook sends them; else padded.
function windowOptions() {
  const preset = $("window-preset").value;
  const opts = { ct_windows: $("ct-windows").value, ...($("compare").checked ? { pad: false } : {}) };
  if (preset === "full" || preset === "voi" || preset === "container-windowed") opts.window = preset;
  else if (preset === "custom") opts.window = [parseFloat($("window-center").value), parseFloat($("window-width").value)];
  else if (preset) opts.window = preset.split(",").map(Number);
  return opts;
}

async function modelInputOf(source, options) {
  const resp = await fetch("/v1/medgemma/model-input", {
    method: "POST", headers: headers(), body: JSON.stringify({ image_url: { url: source.dataUri }, ...options }),
  });
  if (!resp.ok) throw new Error(source.name + ": " + (await errorText(resp)));
  return await resp.json();
}

// A new source's model input, in the window the controls show once it arrives: a window changed meanwhile (its
// rewindow did not see this source yet) is fetched again rather than left showing the old one.
async function fetchModelInput(source) {
  for (;;) {
    const options = windowOptions();
    source.input = await modelInputOf(source, options);
    if (JSON.stringify(options) === JSON.stringify(windowOptions())) return;
  }
}

function render() {
  for (const slot of ["prior", "current"]) {
    const study = state.studies[slot];
    renderStudy(document.querySelector(`.viewer[data-slot="${slot}"]`), study, (k) => {
      study.sources.splice(k, 1);
      imagesChanged();
    });
  }
  const all = [...state.studies.prior.sources, ...state.studies.current.sources];
  $("window-controls").disabled = !all.some((s) => s.kind !== "image");
  $("window-center").disabled = $("window-width").disabled = $("window-preset").value !== "custom";
}

function imagesChanged() {
  render();
  if (state.messages.length) {
    resetConversation();
    setStatus("The images changed: a new conversation starts.", false);
  }
}

async function addFiles(slot, files) {
  if (!state.modelId && !(await connect())) return;
  setStatus("Preparing the images...", false);
  try {
    const { sources, skipped } = await toSources(files);
    if (!sources.length) throw new Error("no PNG, JPEG or DICOM files among those given");
    for (const s of sources) await fetchModelInput(s);
    state.studies[slot].sources.push(...sources);
    imagesChanged();
    const n = sources.reduce((k, s) => k + s.input.images.length, 0);
    setStatus("Images ready: " + n + " model image" + (n === 1 ? "" : "s") + (skipped ? " (" + skipped + " other files skipped)" : "") + ".", false);
  } catch (e) {
    setStatus(e.message, true);
  }
}

// Each change of the window or padding refetches the panes' model inputs. Changes come faster than the server
// answers (typing a centre, then a width), and answers can arrive out of order: only the newest change's results are
// shown, so the panes never keep an older window than the one a question sends. `#window-controls` carries
// aria-busy while a change is being applied, and `ask` waits for it.
function rewindow(everything = false) {
  const gen = ++state.windowGen;
  state.windowAll = state.windowAll || everything; // a padding change dropped as stale still reaches the PNGs
  $("window-controls").setAttribute("aria-busy", "true");
  const done = applyWindow(gen, state.windowAll).finally(() => {
    if (gen === state.windowGen) {
      $("window-controls").removeAttribute("aria-busy");
      state.windowing = null;
      state.windowAll = false;
    }
  });
  state.windowing = done;
  return done;
}

async function applyWindow(gen, everything) {
  render();
  const all = [...state.studies.prior.sources, ...state.studies.current.sources].filter(
    (s) => everything || s.kind !== "image", // a window changes DICOM only; padding changes every 2D image
  );
  if (!all.length) return;
  setStatus("Applying the window...", false);
  const options = windowOptions();
  try {
    const inputs = [];
    for (const s of all) inputs.push(await modelInputOf(s, options));
    if (gen !== state.windowGen) return; // a newer change is being applied: these are stale
    all.forEach((s, k) => (s.input = inputs[k]));
    render();
    setStatus("Window applied: the panes show the new model input.", false);
    if (state.messages.length) {
      resetConversation();
      setStatus("Window applied; the images changed, so a new conversation starts.", false);
    }
  } catch (e) {
    if (gen === state.windowGen) setStatus(e.message, true);
  }
}

function setupPane(slot) {
  const zone = document.querySelector(`.dropzone[data-slot="${slot}"]`);
  const files = Object.assign(document.createElement("input"), { type: "file", multiple: true, id: "files-" + slot,
    accept: ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom" });
  const folder = Object.assign(document.createElement("input"), { type: "file", id: "folder-" + slot });
  folder.webkitdirectory = true;
  for (const input of [files, folder]) {
    input.hidden = true;
    input.addEventListener("change", () => {
      addFiles(slot, [...input.files].map((f) => (f.webkitRelativePath ? new File([f], f.webkitRelativePath, { type: f.type }) : f)));
      input.value = "";
    });
  }
  const pickFiles = Object.assign(document.createElement("button"), { type: "button", textContent: "Choose files" });
  const pickFolder = Object.assign(document.createElement("button"), { type: "button", textContent: "Choose folder", className: "secondary" });
  pickFiles.addEventListener("click", () => files.click());
  pickFolder.addEventListener("click", () => folder.click());
  zone.append(Object.assign(document.createElement("span"), { textContent: "Drop files or a folder here, or " }), pickFiles, " ", pickFolder, files, folder);
  zone.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    addFiles(slot, await droppedFiles(ev.dataTransfer));
  });
}

// ---- conversation ----------------------------------------------------------------------------------------

function resetConversation() {
  state.messages = [];
  state.imagesSent = false;
  $("turns").replaceChildren();
}

function imageParts() {
  // Prior first, then current: the order of Google's longitudinal notebook.
  const sources = [...state.studies.prior.sources, ...state.studies.current.sources];
  return sources.map((s) => ({ type: "image_url", image_url: { url: s.dataUri } }));
}

function userTurn(text, nImages) {
  const li = document.createElement("li");
  li.className = "turn user";
  const who = Object.assign(document.createElement("p"), { className: "who", textContent: "You" + (nImages ? " (with " + nImages + " image source" + (nImages > 1 ? "s" : "") + ")" : "") });
  const body = Object.assign(document.createElement("p"), { className: "text", textContent: text });
  li.append(who, body);
  $("turns").append(li);
}

function assistantTurn() {
  const li = document.createElement("li");
  li.className = "turn assistant";
  const who = Object.assign(document.createElement("p"), { className: "who", textContent: "MedGemma" });
  const thought = document.createElement("details");
  thought.className = "thought";
  thought.hidden = true;
  const thoughtText = document.createElement("pre");
  thought.append(Object.assign(document.createElement("summary"), { textContent: "Thought" }), thoughtText);
  const answer = Object.assign(document.createElement("div"), { className: "answer markdown" });
  const meta = Object.assign(document.createElement("p"), { className: "meta muted" });
  const copy = Object.assign(document.createElement("button"), { type: "button", className: "secondary small copy", textContent: "Copy answer" });
  li.append(who, thought, answer, meta, copy);
  $("turns").append(li);
  const turn = { li, thought, thoughtText, answer, meta, copy, text: "" };
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(turn.text);
      copy.textContent = "Copied";
    } catch (e) {
      copy.textContent = "Copy failed";
    }
    setTimeout(() => (copy.textContent = "Copy answer"), 1500);
  });
  return turn;
}

function statsLine(t) {
  const secs = (ms) => (ms / 1000).toFixed(2) + " s";
  const bits = [];
  if (t.usage) bits.push(t.usage.prompt_tokens + " prompt + " + t.usage.completion_tokens + " generated tokens");
  if (t.firstAt) bits.push("first token " + secs(t.firstAt - t.sentAt));
  bits.push(secs(t.doneAt - t.sentAt) + " total");
  if (t.usage && t.firstAt && t.doneAt > t.firstAt && t.usage.completion_tokens > 1) {
    bits.push(((t.usage.completion_tokens - 1) / ((t.doneAt - t.firstAt) / 1000)).toFixed(1) + " tokens/s");
  }
  if (t.finish) bits.push("finish: " + t.finish);
  return bits.join(" · ");
}

function onChunk(turn, data) {
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) {
      turn.thought.hidden = false;
      turn.thoughtText.textContent += delta.reasoning_content;
      turn.firstAt = turn.firstAt || performance.now();
    }
    if (delta.content) {
      turn.firstAt = turn.firstAt || performance.now();
      turn.text += delta.content;
      turn.answer.replaceChildren(renderMarkdown(turn.text));
    }
    if (choice.finish_reason) turn.finish = choice.finish_reason;
  }
  if (chunk.usage) turn.usage = chunk.usage;
}

// One prior and one current 2D image, first turn: Google's longitudinal prompt (server preset cxr-longitudinal).
function longitudinalPair() {
  const p = state.studies.prior.sources;
  const c = state.studies.current.sources;
  return $("compare").checked && !state.imagesSent && p.length === 1 && c.length === 1 &&
    p[0].kind !== "series" && c[0].kind !== "series";
}

async function ask() {
  if (state.controller) return;
  if (!state.modelId && !(await connect())) return;
  while (state.windowing) await state.windowing; // the panes first show the window this question sends
  const question = $("question").value.trim();
  const longitudinal = longitudinalPair();
  if (!question && !longitudinal) {
    setStatus("Type a question.", true);
    return;
  }
  const content = [];
  const images = state.imagesSent ? [] : imageParts();
  content.push(...images);
  if (question) content.push({ type: "text", text: question }); // empty + longitudinal: the notebook's instruction
  const messages = [...state.messages, { role: "user", content }];
  const request = {
    model: state.modelId, stream: true, stream_options: { include_usage: true }, messages,
    medgemma: { think: $("think").checked, ...windowOptions(), ...(longitudinal ? { longitudinal: true } : {}) },
  };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) request.max_tokens = maxTokens; // empty: the model's prompt preset decides
  userTurn(question || "(the longitudinal notebook's comparison instruction)", images.length);
  const turn = assistantTurn();
  $("question").value = "";
  $("ask").disabled = true;
  $("stop").hidden = false;
  setStatus("Generating...", false);
  state.controller = new AbortController();
  turn.sentAt = performance.now();
  let outcome = "error";
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(request), signal: state.controller.signal });
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let sep;
      while ((sep = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, sep);
        buffer = buffer.slice(sep + 2);
        for (const line of event.split("\n")) {
          if (line.startsWith("data: ") && line.slice(6) !== "[DONE]") onChunk(turn, line.slice(6));
        }
      }
    }
    outcome = "done";
  } catch (e) {
    outcome = e.name === "AbortError" ? "stopped" : "error";
    if (outcome === "error") turn.answer.append(Object.assign(document.createElement("p"), { className: "error", textContent: "Error: " + e.message }));
  } finally {
    turn.doneAt = performance.now();
    if (outcome === "stopped") turn.finish = "stopped by you";
    turn.meta.textContent = statsLine(turn);
    if (outcome !== "error" && turn.text) {
      // The conversation goes on from what was shown (a stopped answer too, as shown).
      state.messages = [...messages, { role: "assistant", content: turn.text }];
      state.imagesSent = true;
    } else {
      $("question").value = question;
    }
    setStatus(outcome === "done" ? "Done." : outcome === "stopped" ? "Stopped." : "The request failed.", outcome === "error");
    $("ask").disabled = false;
    $("stop").hidden = true;
    state.controller = null;
  }
}

// ---- localisation ----------------------------------------------------------------------------------------

async function localize() {
  if (!state.modelId && !(await connect())) return;
  const source = state.studies.current.sources.find((s) => s.kind !== "series");
  const objects = $("objects").value.split(/[,;\n]/).map((s) => s.trim()).filter(Boolean);
  if (!source || !objects.length) {
    setStatus("Add a 2D image to the current pane and name what to locate.", true);
    return;
  }
  setStatus("Locating...", false);
  const win = windowOptions().window; // a DICOM image is located in the window the pane shows
  const request = { model: state.modelId, image: source.dataUri, objects, ...(win ? { window: win } : {}) };
  const resp = await fetch("/v1/medgemma/localize", { method: "POST", headers: headers(), body: JSON.stringify(request) });
  if (!resp.ok) {
    setStatus(await errorText(resp), true);
    return;
  }
  const body = await resp.json();
  source.boxes = body.boxes || [];
  // xyxy is in the original image's pixels (the server says its size); the pane maps that frame onto the square.
  if (body.width && body.height) source.input.images[0].original_size = [body.width, body.height];
  render();
  const missing = (body.unparsed || []).length;
  setStatus(source.boxes.length + " box" + (source.boxes.length === 1 ? "" : "es") + " drawn" + (missing ? "; " + missing + " part(s) of the answer could not be read" : "") + ".", false);
}

// ---- wiring ----------------------------------------------------------------------------------------------

setupPane("prior");
setupPane("current");
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  connect();
});
$("ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  ask();
});
$("localize-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localize();
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-conversation").addEventListener("click", () => {
  resetConversation();
  setStatus("New conversation.", false);
});
$("question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    ask();
  }
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && state.controller) state.controller.abort();
});
$("compare").addEventListener("change", () => {
  $("study-prior").hidden = !$("compare").checked;
  $("current-title").textContent = $("compare").checked ? "Current (sent after the prior)" : "Current";
  if (!$("compare").checked && state.studies.prior.sources.length) {
    state.studies.prior.sources = [];
    imagesChanged();
  }
  rewindow(true); // padded or not: the panes show the new model input
});
for (const id of ["window-preset", "ct-windows"]) $(id).addEventListener("change", () => rewindow());
for (const id of ["window-center", "window-width"]) $(id).addEventListener("change", () => rewindow());
render();
