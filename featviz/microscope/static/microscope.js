/* featviz microscope: keyboard navigation, the jump box and, under `featviz serve`,
   on-demand rendering with progress. Plain ES5-style script, no build step. */
(function () {
  "use strict";
  var body = document.body, page = body.dataset.page, root = body.dataset.root || "";
  var M = window.FV_MODEL || null;
  // Built pages say content="0"; featviz serve flips it to "1" on the pages it serves.
  var serveMarker = document.querySelector('meta[name="featviz-serve"]');
  var served = !!serveMarker && serveMarker.content === "1";
  var msg = document.getElementById("jump-msg");
  var input = document.getElementById("jump-input");

  function say(text) { if (msg) { msg.textContent = text || ""; } }

  // Links carry index.html so that file:// browsing works; a server shows clean URLs.
  if (served) {
    var links = document.querySelectorAll("a[href]");
    for (var i = 0; i < links.length; i++) {
      var h = links[i].getAttribute("href");
      if (/(^|\/)index\.html(#.*)?$/.test(h)) {
        links[i].setAttribute("href", h.replace(/index\.html/, "") || "./");
      }
    }
  }

  function page_(path) { return served ? path : path + "index.html"; }
  function modelBase() { return page === "model" ? "" : page === "layer" ? "../" : page === "unit" || page === "report" || page === "class" ? "../../" : null; }
  function findLayer(name) {
    if (!M) { return null; }
    for (var i = 0; i < M.layers.length; i++) { if (M.layers[i][0] === name) { return M.layers[i]; } }
    var low = name.toLowerCase();
    for (var j = 0; j < M.layers.length; j++) { if (M.layers[j][0].toLowerCase() === low) { return M.layers[j]; } }
    return null;
  }
  function isBuilt(layer, unit) {
    var b = M && M.built[layer];
    if (!b) { return false; }
    if (unit === undefined) { return true; }
    return b.indexOf(unit) >= 0;
  }
  function goUnit(layer, unit) {
    var L = findLayer(layer), base = modelBase();
    if (!L || base === null) { say("unknown layer " + layer); return; }
    if (!L[3]) { say(L[0] + " has no spatial units; see the class visualizations"); return; }
    if (!(unit >= 0 && unit < L[2])) { say(L[0] + " has units 0-" + (L[2] - 1)); return; }
    if (!served && !isBuilt(L[0], unit)) {
      say(L[0] + ":" + unit + " was not built; `featviz serve` renders it on demand"); return;
    }
    location.href = page_(base + L[1] + "/" + unit + "/");
  }
  function goLayer(layer) {
    var L = findLayer(layer), base = modelBase();
    if (!L || base === null) { return false; }
    if (!served && !isBuilt(L[0])) { say(L[0] + " was not built in this site"); return true; }
    location.href = page_(base + L[1] + "/");
    return true;
  }
  function findClass(text) {
    if (!M) { return -1; }
    if (/^\d+$/.test(text)) { var n = parseInt(text, 10); return n < Math.max(M.labels.length, 1e9) ? n : -1; }
    var t = text.toLowerCase(), labels = M.labels, i;
    for (i = 0; i < labels.length; i++) { if (labels[i].toLowerCase() === t) { return i; } }
    for (i = 0; i < labels.length; i++) { if (labels[i].toLowerCase().indexOf(t) === 0) { return i; } }
    for (i = 0; i < labels.length; i++) { if (labels[i].toLowerCase().indexOf(t) >= 0) { return i; } }
    return -1;
  }
  // Every class of a model has a page (classes/<index>/): its visualization, top photos and units.
  function goClass(c) {
    var base = modelBase();
    if (base === null) { return; }
    if (M.labels.length && c >= M.labels.length) { say("classes are 0-" + (M.labels.length - 1)); return; }
    location.href = page_(base + "classes/" + c + "/");
  }

  // A model by its name or its folder: the page's own links, whose folders the build named (one slug rule,
  // in Python), never a folder name guessed here.
  function goModel(text) {
    var links = document.querySelectorAll("ul.models a"), low = text.toLowerCase();
    for (var i = 0; i < links.length; i++) {
      var href = links[i].getAttribute("href"), folder = href.split("/")[0];
      if (links[i].textContent.toLowerCase() === low || folder.toLowerCase() === low) {
        location.href = page_(folder + "/"); return;
      }
    }
    say("no model " + text + " in this site");
  }

  function jump(text) {
    text = text.trim();
    var m;
    say("");
    if (!text) { return; }
    if (page === "root") { goModel(text); return; }
    if ((m = /^(?:class\s*:?\s*(.+)|c(\d+))$/i.exec(text)) && !findLayer(text.split(":")[0])) {
      var want = (m[1] || m[2]).trim(), c = findClass(want);
      if (c < 0) { say("no class matches " + want); return; }
      goClass(c); return;
    }
    if ((m = /^(.+?)\s*[:\/ ]\s*(\d+)$/.exec(text)) && findLayer(m[1])) { goUnit(m[1], parseInt(m[2], 10)); return; }
    if (/^\d+$/.test(text) && body.dataset.layer) { goUnit(body.dataset.layer, parseInt(text, 10)); return; }
    if (goLayer(text)) { return; }
    var k = findClass(text);
    if (k >= 0 && !/^\d+$/.test(text)) { goClass(k); return; }
    say("type a unit (blocks.8:12), a layer, a unit number or class 309 / class bee");
  }

  var form = document.getElementById("jump");
  if (form) { form.addEventListener("submit", function (ev) { ev.preventDefault(); jump(input.value); }); }

  function follow(rel) {
    var a = document.querySelector('a[rel="' + rel + '"]');
    if (a) { location.href = a.getAttribute("href"); }
  }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target, tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") {
      if (ev.key === "Escape") { t.blur(); }
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    if (ev.key === "ArrowLeft" || ev.key === "k") { follow("prev"); ev.preventDefault(); }
    else if (ev.key === "ArrowRight" || ev.key === "j") { follow("next"); ev.preventDefault(); }
    else if (ev.key === "u") { follow("up"); }
    else if (ev.key === "/") { if (input) { input.focus(); input.select(); ev.preventDefault(); } }
  });

  // Static hosting: unbuilt units have no page.
  if (!served) {
    document.addEventListener("click", function (ev) {
      var a = ev.target.closest && ev.target.closest("a[data-unbuilt]");
      if (a) { ev.preventDefault(); say("not built in this site; `featviz serve` renders it on demand"); }
    });
  }

  // The model page's class list: show only the classes whose name contains the filter text.
  var filter = document.getElementById("class-filter");
  if (filter) {
    var items = document.querySelectorAll("ol.allclasses li");
    filter.addEventListener("input", function () {
      var t = filter.value.trim().toLowerCase();
      for (var i = 0; i < items.length; i++) {
        var li = items[i];
        li.hidden = !!t && li.getAttribute("data-label").indexOf(t) < 0 && String(i) !== t;
      }
    });
  }

  // The current unit in a layer grid, from the URL hash (#u12).
  if (page === "layer" && location.hash) {
    var cur = document.getElementById(location.hash.slice(1));
    if (cur) { cur.classList.add("current"); }
  }

  // -- on-demand rendering (featviz serve only) ------------------------------------------------
  if (!served || page !== "unit") { return; }
  var live = document.getElementById("live"), liveForm = document.getElementById("live-form");
  var bar = live.querySelector(".progress"), progress = document.getElementById("live-progress");
  var status = document.getElementById("live-status"), results = document.getElementById("live-results");
  live.hidden = false;
  var pending = document.querySelectorAll("[data-pending]");
  var busy = false;

  function setStatus(text, frac) {
    bar.hidden = false;
    status.textContent = text;
    if (frac !== undefined) { progress.value = frac; }
  }
  function show(job) {
    results.innerHTML = "";
    var files = job.files || {};
    Object.keys(files).forEach(function (kind) {
      files[kind].forEach(function (src, j) {
        var fig = document.createElement("figure");
        fig.className = "panel";
        var img = document.createElement("img");
        img.src = root + src; img.width = 160; img.height = 160; img.alt = kind;
        var cap = document.createElement("figcaption");
        cap.textContent = kind + (files[kind].length > 1 ? " " + (j + 1) : "") + ": " + job.steps + " steps at " + job.size + " px, seed " + job.seed;
        fig.appendChild(img); fig.appendChild(cap); results.appendChild(fig);
      });
    });
    // An unbuilt page: put the images in place of the placeholders too.
    var used = {};
    for (var i = 0; i < pending.length; i++) {
      var el = pending[i], kind = el.getAttribute("data-pending"), list = files[kind];
      used[kind] = used[kind] || 0;
      if (!list || used[kind] >= list.length) { continue; }
      var im = document.createElement("img");
      im.src = root + list[used[kind]++]; im.width = parseInt(el.style.width, 10); im.height = im.width; im.alt = kind;
      el.parentNode.replaceChild(im, el);
    }
    pending = document.querySelectorAll("[data-pending]");
  }
  function poll(url) {
    fetch(url, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (job) {
      if (job.status === "done") { setStatus("done in " + (job.seconds || 0).toFixed(1) + " s", 1); busy = false; show(job); return; }
      if (job.status === "queued") { setStatus("queued (" + job.ahead + " ahead)", 0); }
      else if (job.status === "running") { setStatus("rendering " + Math.round(100 * job.progress) + " %", job.progress); }
      else { setStatus("failed: " + (job.error || job.status)); busy = false; return; }
      setTimeout(function () { poll(url); }, 400);
    }).catch(function (err) { setStatus("lost the server: " + err); busy = false; });
  }
  function submit() {
    if (busy) { return; }
    busy = true;
    var data = new FormData(liveForm);
    var req = { model: body.dataset.model, layer: body.dataset.layer, unit: parseInt(body.dataset.unit, 10),
                steps: parseInt(data.get("steps"), 10), size: parseInt(data.get("size"), 10), seed: parseInt(data.get("seed"), 10) };
    setStatus("sending", 0);
    for (var i = 0; i < pending.length; i++) { pending[i].classList.add("working"); }
    fetch(root + "api/render", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req) })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, code: r.status, job: j }; }); })
      .then(function (res) {
        if (!res.ok) { busy = false; setStatus((res.job && res.job.detail) || ("error " + res.code)); return; }
        poll(root + "api/jobs/" + res.job.id);
      }).catch(function (err) { busy = false; setStatus("could not reach the server: " + err); });
  }
  liveForm.addEventListener("submit", function (ev) { ev.preventDefault(); submit(); });
  if (pending.length) { submit(); }
})();
