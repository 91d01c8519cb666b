// The report's gallery: draws one page of pairs from the JSON block #report-data.
// Every string from the data is set with textContent, never as markup (it is untrusted).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const models = data.models, pairs = data.pairs, images = data.images;
  const $ = (id) => document.getElementById(id);
  const state = { sort: "id", model: 0, category: "", parse: false, errors: false, missing: false,
                  q: "", page: 0, size: 25 };

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function option(select, value, label) {
    const o = el("option", null, label);
    o.value = value;
    select.appendChild(o);
  }

  models.forEach((name, i) => option($("sort-model"), String(i), name));
  if (models.length < 2) $("sort-model").parentElement.hidden = true;
  const cats = [...new Set(pairs.map((p) => p.cat).filter((c) => c !== null && c !== undefined))].sort();
  cats.forEach((c) => option($("category"), c, c));
  if (!cats.length) $("category").parentElement.hidden = true;

  const entries = (p) => p.m.filter((e) => e);
  const parseFailed = (p) => entries(p).some((e) => (e.x && !e.x.ok) || (e.c && !e.c.ok));
  const hasError = (p) => entries(p).some((e) => e.err);
  const missing = (p) => p.src === -1 || entries(p).some((e) => e.ed === -1);
  const haystack = new Map();
  function searchText(p) {
    if (!haystack.has(p)) {
      const parts = [p.id, p.ins || ""];
      entries(p).forEach((e) => parts.push(e.ins || "", (e.x && e.x.r) || "", (e.c && e.c.r) || "", e.err || ""));
      haystack.set(p, parts.join("\n").toLowerCase());
    }
    return haystack.get(p);
  }

  function sortValue(p) {
    const [key] = state.sort.split("-");
    if (key === "id") return null;
    if (key === "dis") return p.dis;
    const e = p.m[state.model];
    if (!e) return null;
    if (key === "cme") return e.cme;
    const side = key === "x" ? e.x : e.c;
    return side && side.s !== null ? side.s + (side.e !== null ? side.e / 100 : 0) : null;
  }

  function visiblePairs() {
    const q = state.q.trim().toLowerCase();
    let out = pairs.filter((p) =>
      (!state.category || p.cat === state.category) && (!state.parse || parseFailed(p)) &&
      (!state.errors || hasError(p)) && (!state.missing || missing(p)) && (!q || searchText(p).includes(q)));
    if (state.sort !== "id") {
      const desc = state.sort.endsWith("desc") || state.sort === "dis";
      out = out.map((p) => [sortValue(p), p]);
      out.sort((a, b) => {
        if (a[0] === null || a[0] === undefined) return (b[0] === null || b[0] === undefined) ? 0 : 1;
        if (b[0] === null || b[0] === undefined) return -1;
        return desc ? b[0] - a[0] : a[0] - b[0];
      });
      out = out.map((pair) => pair[1]);
    }
    return out;
  }

  function picture(index, caption) {
    const fig = el("figure");
    if (index === null || index === undefined) {
      fig.appendChild(el("div", "placeholder", "no image (give --manifest)"));
    } else if (index === -1) {
      fig.appendChild(el("div", "placeholder missing", "image missing"));
    } else {
      const img = el("img");
      img.src = images[index][0];
      img.alt = caption;
      img.loading = "lazy";
      img.title = "click for full size";
      img.addEventListener("click", () => openLightbox(index, caption));
      fig.appendChild(img);
    }
    fig.appendChild(el("figcaption", null, caption));
    return fig;
  }

  function modeBlock(label, side) {
    const box = el("div", "mode");
    if (!side) {
      box.appendChild(el("div", "mode-head", label + ": -"));
      return box;
    }
    const head = el("div", "mode-head");
    head.appendChild(el("span", "label", label));
    head.appendChild(el("span", "score", side.s === null ? "no score" : side.s));
    if (side.e !== null && side.e !== undefined) head.appendChild(el("span", "expected", "E " + side.e.toFixed(2)));
    if (side.p) {
      const bars = el("span", "bars");
      side.p.forEach((p, k) => {
        const bar = el("span", k + 1 === side.s ? "bar chosen" : "bar");
        bar.style.height = Math.max(1, Math.round(p * 100)) + "%";
        bar.title = "P(" + (k + 1) + ") = " + p.toFixed(3);
        bars.appendChild(bar);
      });
      head.appendChild(bars);
    }
    box.appendChild(head);
    if (!side.ok) {
      box.appendChild(el("span", "badge", "answer not parseable"));
      box.appendChild(el("pre", "raw", side.raw || ""));
    }
    if (side.r) box.appendChild(el("p", "reasoning", side.r));
    return box;
  }

  function card(p) {
    const node = el("article", "card");
    node.dataset.id = p.id;
    const head = el("header");
    head.appendChild(el("span", "pair-id", p.id));
    if (p.cat) head.appendChild(el("span", "chip", p.cat));
    if (p.dis !== null && p.dis !== undefined && models.length > 1) {
      head.appendChild(el("span", "dis", "CME spread " + p.dis.toFixed(2)));
    }
    node.appendChild(head);
    node.appendChild(el("p", "instruction", p.ins === null ? "(instruction not known: give --manifest)" : p.ins));
    const row = el("div", "row");
    row.appendChild(picture(p.src, "source"));
    p.m.forEach((e, i) => {
      const col = el("div", "model-col");
      if (!e) {
        col.appendChild(el("div", "placeholder", models[i] + ": not in this file"));
        row.appendChild(col);
        return;
      }
      col.appendChild(picture(e.ed, models[i]));
      const scores = el("div", "scores");
      if (e.ins) scores.appendChild(el("p", "instruction", "instruction here: " + e.ins));
      if (e.err) scores.appendChild(el("p", "error", "error: " + e.err));
      scores.appendChild(modeBlock("execution", e.x));
      scores.appendChild(modeBlock("consistency", e.c));
      const cme = el("div", "cme");
      cme.appendChild(el("span", "label", "CME"));
      cme.appendChild(el("span", "score", e.cme === null ? "-" : e.cme.toFixed(3)));
      if (e.cmee !== null) cme.appendChild(el("span", "expected", "from expected " + e.cmee.toFixed(3)));
      scores.appendChild(cme);
      col.appendChild(scores);
      row.appendChild(col);
    });
    node.appendChild(row);
    return node;
  }

  function render() {
    const shown = visiblePairs();
    const pages = Math.max(1, Math.ceil(shown.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * state.size;
    const slice = shown.slice(start, start + state.size);
    const gallery = $("gallery");
    gallery.replaceChildren(...slice.map(card));
    if (!slice.length) gallery.appendChild(el("p", "note", "No pair matches these filters."));
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("shown-count").textContent = (slice.length ? (start + 1) + "-" + (start + slice.length) : "0") + " of " +
      shown.length + " matching pairs (" + pairs.length + " in all)";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function openLightbox(index, caption) {
    $("lightbox-img").src = images[index][1] || images[index][0];
    $("lightbox-caption").textContent = caption + (images[index][1] ? "" : " (shown at its embedded size)");
    $("lightbox").hidden = false;
  }
  $("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("lightbox").hidden = true; });

  function bind(id, event, update) {
    $(id).addEventListener(event, (ev) => { update(ev.target); state.page = 0; render(); });
  }
  bind("sort", "change", (t) => { state.sort = t.value; });
  bind("sort-model", "change", (t) => { state.model = Number(t.value); });
  bind("category", "change", (t) => { state.category = t.value; });
  bind("only-parse", "change", (t) => { state.parse = t.checked; });
  bind("only-errors", "change", (t) => { state.errors = t.checked; });
  bind("only-missing", "change", (t) => { state.missing = t.checked; });
  bind("search", "input", (t) => { state.q = t.value; });
  bind("page-size", "change", (t) => { state.size = Number(t.value); });
  $("prev").addEventListener("click", () => { state.page -= 1; render(); });
  $("next").addEventListener("click", () => { state.page += 1; render(); });
  render();
})();
