// The MedGemma web page: plain JS talking to this server's own OpenAI-compatible API.
// The API key lives in a variable only (never localStorage or cookies), so it is gone when the tab closes.
"use strict";

let apiKey = "";
let modelId = null;
let imageDataUri = null;
let controller = null;

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey) h["Authorization"] = "Bearer " + apiKey;
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
  apiKey = $("api-key").value.trim();
  $("api-key").value = "";
  const resp = await fetch("/v1/models", { headers: headers() });
  if (!resp.ok) {
    modelId = null;
    $("model-name").textContent = "not connected";
    setStatus(resp.status === 401 ? "This server needs an API key: enter it above." : await errorText(resp), true);
    return false;
  }
  const body = await resp.json();
  modelId = body.data[0].id;
  $("model-name").textContent = modelId;
  setStatus("Connected.", false);
  return true;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function mimeOf(file, bytes) {
  const isDicom = bytes.length > 132 && String.fromCharCode(...bytes.subarray(128, 132)) === "DICM";
  if (isDicom || /\.(dcm|dicom)$/i.test(file.name)) return "application/dicom";
  if (file.type === "image/png" || file.type === "image/jpeg") return file.type;
  return /\.png$/i.test(file.name) ? "image/png" : "image/jpeg";
}

async function onFile() {
  const file = $("file").files[0];
  if (!file) return;
  if (!modelId && !(await connect())) return;
  const buffer = await file.arrayBuffer();
  imageDataUri = "data:" + mimeOf(file, new Uint8Array(buffer)) + ";base64," + toBase64(buffer);
  setStatus("Preparing the image...", false);
  const resp = await fetch("/v1/medgemma/preview", {
    method: "POST", headers: headers(), body: JSON.stringify({ image_url: { url: imageDataUri } }),
  });
  if (!resp.ok) {
    imageDataUri = null;
    $("preview-figure").hidden = true;
    setStatus(await errorText(resp), true);
    return;
  }
  const body = await resp.json();
  $("preview").src = body.image;
  $("preview-size").textContent = body.width + " x " + body.height + " px";
  showManifest(body.images || []);
  $("preview-figure").hidden = false;
  $("clear-image").hidden = false;
  setStatus("Image ready.", false);
}

// The images the model receives, in order: "SLICE n" with its InstanceNumber, or a slide patch's coordinates.
function showManifest(images) {
  const list = $("preview-list");
  list.replaceChildren();
  for (const e of images) {
    const bits = [];
    if (e.label) bits.push(e.label);
    if (e.instance_number !== null && e.instance_number !== undefined) bits.push("instance " + e.instance_number);
    if (e.patch) bits.push("patch x=" + e.patch[0] + " y=" + e.patch[1] + " level " + e.patch[2]);
    const li = document.createElement("li");
    li.textContent = bits.join(", ") || "image";
    list.appendChild(li);
  }
  list.hidden = images.length < 2 && !(images[0] && (images[0].label || images[0].patch));
}

function clearImage() {
  imageDataUri = null;
  $("file").value = "";
  $("preview-figure").hidden = true;
  $("clear-image").hidden = true;
}

function handleEvent(data) {
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  for (const choice of chunk.choices || []) {
    const delta = choice.delta || {};
    if (delta.reasoning_content) {
      $("thought-block").hidden = false;
      $("thought").textContent += delta.reasoning_content;
    }
    if (delta.content) $("answer").textContent += delta.content;
    if (choice.finish_reason) setStatus("Done (" + choice.finish_reason + ").", false);
  }
  if (chunk.usage) {
    setStatus($("status").textContent + " " + chunk.usage.prompt_tokens + " prompt + " +
      chunk.usage.completion_tokens + " generated tokens.", false);
  }
}

async function ask() {
  if (!modelId && !(await connect())) return;
  const question = $("question").value.trim();
  if (!question && !imageDataUri) {
    setStatus("Type a question (or add an image).", true);
    return;
  }
  const content = [];
  if (question) content.push({ type: "text", text: question });
  if (imageDataUri) content.push({ type: "image_url", image_url: { url: imageDataUri } });
  const request = {
    model: modelId, stream: true, stream_options: { include_usage: true },
    messages: [{ role: "user", content: content }],
    max_tokens: parseInt($("max-tokens").value, 10) || 300,
    medgemma: { think: $("think").checked },
  };
  $("answer").textContent = "";
  $("thought").textContent = "";
  $("thought-block").hidden = true;
  $("ask").disabled = true;
  $("stop").hidden = false;
  setStatus("Generating...", false);
  controller = new AbortController();
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(request), signal: controller.signal,
    });
    if (!resp.ok) {
      setStatus(await errorText(resp), true);
      return;
    }
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
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data !== "[DONE]") handleEvent(data);
        }
      }
    }
  } catch (e) {
    setStatus(e.name === "AbortError" ? "Stopped." : "Error: " + e.message, e.name !== "AbortError");
  } finally {
    $("ask").disabled = false;
    $("stop").hidden = true;
    controller = null;
  }
}

$("connect").addEventListener("click", connect);
$("file").addEventListener("change", onFile);
$("clear-image").addEventListener("click", clearImage);
$("ask").addEventListener("click", ask);
$("stop").addEventListener("click", () => controller && controller.abort());
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask();
});
