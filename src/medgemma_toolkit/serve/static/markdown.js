// A small Markdown renderer that builds DOM nodes and never parses HTML: every piece of model text reaches the
// page through textContent or a text node, so "<script>" or "<img onerror=...>" in an answer shows as text.
// Covers what model answers use: headings, paragraphs, bullet and numbered lists, block quotes, fenced code,
// rules, **bold**, *italic*, `code` and [links](https://...) (http(s) only; anything else stays text).

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*|__[^_\n]+__)|(\*[^*\s][^*\n]*\*|_[^_\s][^_\n]*_)|(\[[^\]\n]+\]\([^)\s]+\))/;

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const c of children) node.append(c);
  return node;
}

export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index) parent.append(document.createTextNode(rest.slice(0, m.index)));
    const token = m[0];
    if (m[1]) {
      parent.append(el("code", token.slice(1, -1)));
    } else if (m[2]) {
      const strong = el("strong");
      renderInline(token.slice(2, -2), strong);
      parent.append(strong);
    } else if (m[3]) {
      const em = el("em");
      renderInline(token.slice(1, -1), em);
      parent.append(em);
    } else {
      const close = token.indexOf("](");
      const label = token.slice(1, close);
      const href = token.slice(close + 2, -1);
      if (/^https?:\/\//i.test(href)) {
        const a = el("a", label);
        a.href = href;
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        parent.append(a);
      } else {
        parent.append(document.createTextNode(token));
      }
    }
    rest = rest.slice(m.index + token.length);
  }
}

const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;

// Markdown text -> a DocumentFragment of safe nodes.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    const fence = /^\s*(```|~~~)(.*)$/.exec(line);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // the closing fence (or the end of a still-streaming answer)
      const code = el("code", body.join("\n"));
      const lang = fence[2].trim();
      if (/^[\w+-]{1,20}$/.test(lang)) code.dataset.lang = lang;
      out.append(el("pre", code));
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      const h = el("h" + Math.min(6, heading[1].length + 2)); // h3..h6: below the page's own headings
      renderInline(heading[2].replace(/\s+#+\s*$/, ""), h);
      out.append(h);
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      out.append(el("hr"));
      i++;
      continue;
    }
    if (/^\s*>/.test(line)) {
      const body = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ""));
      out.append(el("blockquote", renderMarkdown(body.join("\n"))));
      continue;
    }
    const listKind = BULLET.test(line) ? "ul" : NUMBERED.test(line) ? "ol" : null;
    if (listKind) {
      const pattern = listKind === "ul" ? BULLET : NUMBERED;
      const list = el(listKind);
      const first = NUMBERED.exec(line);
      if (listKind === "ol" && first && first[1] !== "1") list.start = parseInt(first[1], 10);
      while (i < lines.length && pattern.test(lines[i])) {
        const m = pattern.exec(lines[i++]);
        let item = m[m.length - 1];
        // continuation lines indented under the item
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !BULLET.test(lines[i]) && !NUMBERED.test(lines[i])) {
          item += " " + lines[i++].trim();
        }
        const li = el("li");
        renderInline(item, li);
        list.append(li);
      }
      out.append(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>)/.test(lines[i]) &&
           !BULLET.test(lines[i]) && !NUMBERED.test(lines[i])) {
      para.push(lines[i++]);
    }
    const p = el("p");
    para.forEach((l, k) => {
      if (k) p.append(el("br"));
      renderInline(l.trim(), p);
    });
    out.append(p);
  }
  return out;
}
