// The image panes: each source shows the exact images the model receives (PNGs from /v1/medgemma/model-input),
// a series scrolls slice by slice with its "SLICE n" label and the list of sampled slices, and localisation boxes
// are drawn over a 2D image in its original pixel frame (the server's `xyxy`).

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k in node && k !== "list") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function sliceText(source, k) {
  const e = source.input.images[k];
  const bits = [e.label || "image " + (k + 1)];
  if (e.instance_number !== null && e.instance_number !== undefined) bits.push("instance " + e.instance_number);
  const file = fileOf(source, e);
  if (file) bits.push(file);
  return bits.join(" · ");
}

// The server names archive members by position ("image 1 file 3"): map that back to the user's own file name,
// which never left the page.
function fileOf(source, entry) {
  const m = /file (\d+)$/.exec(entry.source || "");
  return m && source.files ? source.files[parseInt(m[1], 10) - 1] : null;
}

// The SVG's viewBox puts the original image's pixel frame where it lies in the padded square the model sees:
// padding of (side - w) // 2 on the left and (side - h) // 2 on top, as imaging/square.py pads.
export function boxOverlay(entry, boxes) {
  const [w, h] = entry.original_size;
  const side = Math.max(w, h);
  const left = Math.floor((side - w) / 2);
  const top = Math.floor((side - h) / 2);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "boxes");
  svg.setAttribute("viewBox", `${-left} ${-top} ${side} ${side}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", boxes.map((b) => b.label).join(", ") || "no boxes");
  boxes.forEach((b, k) => {
    const [x0, y0, x1, y1] = b.xyxy;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", x0);
    rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(0, x1 - x0));
    rect.setAttribute("height", Math.max(0, y1 - y0));
    rect.setAttribute("class", "box c" + (k % 4));
    rect.dataset.label = b.label;
    svg.append(rect);
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x0 + side * 0.01);
    text.setAttribute("y", y0 + side * 0.06);
    text.setAttribute("font-size", side * 0.05);
    text.setAttribute("class", "box-label c" + (k % 4));
    text.textContent = b.label;
    svg.append(text);
  });
  return svg;
}

function setIndex(source, k, parts) {
  const n = source.input.images.length;
  source.index = Math.max(0, Math.min(n - 1, k));
  const e = source.input.images[source.index];
  parts.img.src = e.image;
  parts.img.alt = "Model input: " + sliceText(source, source.index);
  if (parts.range) {
    parts.range.value = String(source.index + 1);
    parts.range.setAttribute("aria-valuetext", sliceText(source, source.index));
    parts.label.textContent = sliceText(source, source.index) + "  (" + (source.index + 1) + " of " + n + ")";
    for (const [j, li] of parts.items.entries()) li.classList.toggle("current", j === source.index);
  }
}

function sourceView(source, onRemove) {
  const images = source.input.images;
  const img = el("img", { class: "model-input" });
  const frame = el("div", { class: "frame", tabIndex: 0 }, img);
  const entry = images[0];
  if (source.boxes && source.boxes.length && entry.original_size) frame.append(boxOverlay(entry, source.boxes));
  const remove = el("button", { type: "button", class: "secondary small", textContent: "Remove" });
  remove.setAttribute("aria-label", "Remove " + source.name);
  remove.addEventListener("click", onRemove);
  const caption = el("figcaption", {},
    el("span", { class: "source-name", textContent: source.name }), " ",
    el("span", { class: "muted", textContent: source.input.width + " x " + source.input.height + " px" }), " ", remove);
  const figure = el("figure", { class: "source" }, frame, caption);
  const parts = { img };
  if (images.length > 1) {
    const range = el("input", { type: "range", min: "1", max: String(images.length), step: "1", class: "slice-range" });
    range.setAttribute("aria-label", "Slice of " + source.name);
    const label = el("p", { class: "slice-label" });
    const list = el("ol", { class: "slices" });
    list.setAttribute("aria-label", "Sampled slices");
    parts.items = images.map((e, k) => {
      const b = el("button", { type: "button", class: "link", textContent: sliceText(source, k) });
      b.addEventListener("click", () => setIndex(source, k, parts));
      const li = el("li", {}, b);
      list.append(li);
      return li;
    });
    Object.assign(parts, { range, label });
    range.addEventListener("input", () => setIndex(source, parseInt(range.value, 10) - 1, parts));
    frame.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      setIndex(source, source.index + (ev.deltaY > 0 ? 1 : -1), parts);
    }, { passive: false });
    frame.addEventListener("keydown", (ev) => {
      const step = { ArrowDown: 1, ArrowRight: 1, PageDown: 5, ArrowUp: -1, ArrowLeft: -1, PageUp: -5 }[ev.key];
      if (step) setIndex(source, source.index + step, parts);
      else if (ev.key === "Home") setIndex(source, 0, parts);
      else if (ev.key === "End") setIndex(source, images.length - 1, parts);
      else return;
      ev.preventDefault();
    });
    const details = el("details", { class: "slice-list" }, el("summary", { textContent: "Sampled slices (" + images.length + ")" }), list);
    figure.append(range, label, details);
  }
  if (source.boxes && source.boxes.length) {
    const legend = el("ul", { class: "box-legend" });
    for (const [k, b] of source.boxes.entries()) {
      legend.append(el("li", { class: "c" + (k % 4), textContent: b.label + ": x " + b.xyxy[0] + "–" + b.xyxy[2] + ", y " + b.xyxy[1] + "–" + b.xyxy[3] + " px" }));
    }
    figure.append(legend);
  }
  setIndex(source, source.index || 0, parts);
  return figure;
}

export function renderStudy(container, study, onRemove) {
  container.replaceChildren(...study.sources.map((s, k) => sourceView(s, () => onRemove(k))));
}
