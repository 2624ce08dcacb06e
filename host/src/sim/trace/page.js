// The trace page's renderer: a space-time diagram of one simulated run,
// drawn on a canvas from the columnar data in <script id="data">.
// Times are microseconds of virtual time. No network, no libraries.
"use strict";
(function () {
  const errors = [];
  const check = { errors: errors };
  function writeSelfcheck() {
    const pre = document.getElementById("selfcheck");
    if (pre) pre.textContent = JSON.stringify(check);
  }
  window.addEventListener("error", function (e) {
    errors.push(String(e.message || e.error || e));
    writeSelfcheck();
  });

  const D = JSON.parse(document.getElementById("data").textContent);
  const S = D.strings;
  const END = D.end;

  // Codes shared with the Rust side (model.rs).
  const FATES = ["in flight at the end", "delivered", "lost", "cut by a partition at send",
    "cut by a partition on arrival", "receiver down", "reached a paused receiver (handled when it resumes)"];
  const OUTCOMES = ["no answer by the end", "ok", "answered, no effect", "unknown (may have happened)",
    "rejected (did not happen)", "refused (node down)"];
  const OUTCOME_COLORS = ["#ffe082", "#43a047", "#a5d6a7", "#fb8c00", "#bdbdbd", "#757575"];
  const ROLE_COLORS = { leader: "#2e7d32", candidate: "#f9a825", follower: "#90caf9",
    learner: "#cfd8dc", replica: "#64b5f6", sealed: "#9575cd" };
  const KIND_PALETTE = ["#1e88e5", "#8e24aa", "#00897b", "#6d4c41", "#3949ab", "#c0ca33",
    "#d81b60", "#5e35b1", "#00acc1", "#7cb342", "#546e7a", "#f4511e"];
  // Lost, cut, or sent to a down node (not in flight, delivered, parked).
  function isFault(f) { return f >= 2 && f <= 5; }
  const ARROWS_MAX = 1500;   // more messages in view: aggregate them
  const LOG_TEXT_MAX = 60;   // more log lines in view on a lane: ticks only
  const OP_TEXT_MAX = 500;   // more operations in view: no labels

  // ---- decode the columns ----
  const M = D.msg;
  const nMsg = M.from.length;
  const send = new Float64Array(nMsg);
  const arrive = new Float64Array(nMsg);
  let acc = 0, maxLat = 0;
  const lats = [];
  for (let i = 0; i < nMsg; i++) {
    acc += M.t[i];
    send[i] = acc;
    arrive[i] = M.lat[i] < 0 ? NaN : acc + M.lat[i];
    if (M.lat[i] > maxLat) maxLat = M.lat[i];
    if (M.lat[i] >= 0 && i % 7 === 0) lats.push(M.lat[i]);
  }
  lats.sort(function (a, b) { return a - b; });
  // Where a lost message is drawn to end: a typical latency.
  const typicalLat = lats.length ? Math.max(lats[lats.length >> 1], 1) : 1000;
  const baseKinds = [];
  const kindBase = {};   // string index of a kind label → its base kinds
  for (let i = 0; i < nMsg; i++) {
    const k = M.kind[i];
    if (kindBase[k]) continue;
    kindBase[k] = S[k].split("+");
    for (const b of kindBase[k]) if (baseKinds.indexOf(b) < 0) baseKinds.push(b);
  }
  baseKinds.sort();
  function kindColor(k) {
    const b = kindBase[k] ? kindBase[k][0] : "";
    const at = baseKinds.indexOf(b);
    return KIND_PALETTE[(at < 0 ? 0 : at) % KIND_PALETTE.length];
  }

  const nodes = D.nodes.slice();
  const nClients = D.clients;
  const O = D.ops;
  const nOps = O.a.length;
  let maxOp = 0;
  for (let i = 0; i < nOps; i++) {
    const b = O.b[i] < 0 ? END : O.b[i];
    if (b - O.a[i] > maxOp) maxOp = b - O.a[i];
  }
  const keys = [];
  for (let i = 0; i < nOps; i++) if (keys.indexOf(O.key[i]) < 0) keys.push(O.key[i]);
  keys.sort(function (a, b) { return S[a].localeCompare(S[b], undefined, { numeric: true }); });

  // Role segments per node, cut where the node goes down.
  const R = D.roles;
  const SP = D.spans;
  const downStarts = {};
  for (let i = 0; i < SP.a.length; i++) {
    if (SP.kind[i] !== 0) continue;
    (downStarts[SP.node[i]] = downStarts[SP.node[i]] || []).push(SP.a[i]);
  }
  for (const n in downStarts) downStarts[n].sort(function (a, b) { return a - b; });
  const roleSegs = {};
  for (const n of nodes) roleSegs[n] = [];
  for (let i = 0; i < R.t.length; i++) {
    const n = R.node[i];
    let b = END;
    for (let j = i + 1; j < R.t.length; j++) if (R.node[j] === n) { b = R.t[j]; break; }
    for (const d of downStarts[n] || []) if (d >= R.t[i] && d < b) { b = d; break; }
    (roleSegs[n] = roleSegs[n] || []).push({ a: R.t[i], b: b, role: S[R.role[i]], term: R.term[i], epoch: R.epoch[i] });
  }

  const MK = D.marks;
  const violations = [];
  for (let i = 0; i < MK.t.length; i++) if (MK.kind[i] === 0) violations.push(i);

  // ---- filters ----
  const shown = {};        // node → shown
  for (const n of nodes) shown[n] = true;
  let kindFilter = "";      // "" = all kinds, "-" = no messages, else a base kind
  let faultsOnly = false;
  let keyFilter = -1;       // string index of a key, or -1
  let msgOk = new Uint8Array(nMsg);
  function applyFilters() {
    for (let i = 0; i < nMsg; i++) {
      let ok = shown[M.from[i]] && shown[M.to[i]];
      if (ok && kindFilter === "-") ok = false;
      else if (ok && kindFilter) ok = kindBase[M.kind[i]].indexOf(kindFilter) >= 0;
      if (ok && faultsOnly) ok = isFault(M.fate[i]) || M.dup[i] === 1;
      msgOk[i] = ok ? 1 : 0;
    }
    layout();
    redraw();
  }

  // ---- layout ----
  const LEFT = 92, RIGHT = 14, AXIS = 26, WORLD_H = 30, NODE_H = 86, CLIENT_H = 17, CLIENT_HEAD = 18;
  let laneY = {};           // node → y of its centre line
  let clientY = [];         // client → top of its lane
  let height = 0, width = 0;
  function layout() {
    laneY = {};
    let y = AXIS + WORLD_H + 44;
    for (const n of nodes) {
      if (!shown[n]) continue;
      laneY[n] = y;
      y += NODE_H;
    }
    y += CLIENT_HEAD - 30;
    clientY = [];
    for (let c = 0; c < nClients; c++) {
      clientY[c] = y;
      y += CLIENT_H;
    }
    height = y + 10;
  }

  // ---- view ----
  let t0 = 0, t1 = END;
  function x(t) { return LEFT + (t - t0) / (t1 - t0) * (width - LEFT - RIGHT); }
  function tAt(px) { return t0 + (px - LEFT) / (width - LEFT - RIGHT) * (t1 - t0); }
  function setView(a, b) {
    const minSpan = 20;
    if (b - a < minSpan) { const c = (a + b) / 2; a = c - minSpan / 2; b = c + minSpan / 2; }
    const maxSpan = END * 1.2 + 1000;
    if (b - a > maxSpan) { a = -END * 0.1; b = a + maxSpan; }
    t0 = a; t1 = b;
  }
  function centreOn(t, span) {
    const a = Math.max(0, Math.min(t - span / 2, END - span));
    setView(a, a + span);
    redraw();
  }
  function fmt(t) {
    return (t / 1e6).toFixed(6) + " s";
  }
  function lowerBound(arr, v, n) {
    let lo = 0, hi = n === undefined ? arr.length : n;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] < v) lo = mid + 1; else hi = mid; }
    return lo;
  }

  // ---- drawing ----
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  let hits = [];
  function hatch(x0, y0, w, h, color) {
    ctx.save();
    ctx.beginPath();
    ctx.rect(x0, y0, w, h);
    ctx.clip();
    ctx.strokeStyle = color;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let s = x0 - h; s < x0 + w; s += 6) { ctx.moveTo(s, y0 + h); ctx.lineTo(s + h, y0); }
    ctx.stroke();
    ctx.restore();
  }
  function clampX(px) { return Math.max(LEFT - 2, Math.min(width - RIGHT + 2, px)); }
  function text(s, px, py, color, font, align) {
    ctx.fillStyle = color;
    ctx.font = font || "11px system-ui, sans-serif";
    ctx.textAlign = align || "left";
    ctx.fillText(s, px, py);
  }

  function draw() {
    const started = performance.now();
    width = Math.max(600, canvas.parentElement.clientWidth || 1200);
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    hits = [];
    const drawn = { arrows: 0, aggregated: 0, ops: 0, logs: 0, violationMarkers: 0, epochMarkers: 0,
      kinds: {}, keys: {} };
    const laneNodes = nodes.filter(function (n) { return shown[n]; });
    const innerTop = AXIS;

    // Time axis and grid.
    const span = t1 - t0;
    const target = span / Math.max(1, (width - LEFT - RIGHT) / 110);
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    const step = [1, 2, 5, 10].map(function (m) { return m * pow; }).find(function (s) { return s >= target; });
    const decimals = Math.max(0, Math.ceil(-Math.log10(step / 1e6)));
    ctx.strokeStyle = "#eee";
    ctx.lineWidth = 1;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const px = x(t);
      if (px < LEFT) continue;
      ctx.beginPath(); ctx.moveTo(px, innerTop); ctx.lineTo(px, height); ctx.stroke();
      text((t / 1e6).toFixed(decimals) + " s", px + 2, 16, "#666");
    }
    ctx.strokeStyle = "#ccc";
    ctx.beginPath(); ctx.moveTo(LEFT, AXIS); ctx.lineTo(width - RIGHT, AXIS); ctx.stroke();
    // Outside the run.
    ctx.fillStyle = "#f0f0f0";
    if (x(0) > LEFT) ctx.fillRect(LEFT, innerTop, x(0) - LEFT, height - innerTop);
    if (x(END) < width - RIGHT) ctx.fillRect(x(END), innerTop, width - RIGHT - x(END), height - innerTop);

    // Everything in time is clipped to the plot area.
    ctx.save();
    ctx.beginPath();
    ctx.rect(LEFT - 3, AXIS - 14, width - LEFT - RIGHT + 6, height);
    ctx.clip();
    // World lane: partitions.
    const worldY = AXIS + 4;
    text("world", 8, worldY + 16, "#333", "bold 12px system-ui, sans-serif");
    const P = D.parts;
    for (let i = 0; i < P.a.length; i++) {
      const b = P.b[i] < 0 ? END : P.b[i];
      if (b < t0 || P.a[i] > t1) continue;
      const xa = clampX(x(P.a[i])), xb = clampX(x(b));
      const sideVisible = P.side[i].filter(function (n) { return shown[n]; });
      const label = "partition " + JSON.stringify(P.side[i]) + " | " + JSON.stringify(P.rest[i]) + (P.oneway[i] ? " (one-way: their messages out are lost)" : "");
      ctx.fillStyle = "rgba(229,57,53,0.18)";
      ctx.fillRect(xa, worldY, Math.max(1, xb - xa), WORLD_H - 8);
      if (xb - xa > 60) text(label, xa + 3, worldY + 15, "#b71c1c", "11px system-ui, sans-serif");
      hits.push({ box: [xa, worldY, xb, worldY + WORLD_H - 8], prio: 3, tip: label + "\n" + fmt(P.a[i]) + " → " + (P.b[i] < 0 ? "end" : fmt(P.b[i])) });
      // Shade the lanes of the side that is cut off.
      for (const n of sideVisible) {
        const y = laneY[n];
        ctx.fillStyle = "rgba(229,57,53,0.07)";
        ctx.fillRect(xa, y - NODE_H / 2 + 4, Math.max(1, xb - xa), NODE_H - 8);
        hatch(xa, y - 9, Math.max(1, xb - xa), 18, "rgba(229,57,53,0.35)");
      }
    }

    // Node lanes: labels, role bars, down and paused spans.
    for (const n of laneNodes) {
      const y = laneY[n];
      ctx.strokeStyle = "#e0e0e0";
      ctx.beginPath(); ctx.moveTo(LEFT, y + NODE_H / 2 - 2); ctx.lineTo(width - RIGHT, y + NODE_H / 2 - 2); ctx.stroke();
      text("n" + n, 8, y + 4, "#111", "bold 14px system-ui, sans-serif");
      ctx.fillStyle = "#eceff1";
      ctx.fillRect(LEFT, y - 6, width - LEFT - RIGHT, 12);
      let lastLabel = -1e9;
      for (const s of roleSegs[n] || []) {
        if (s.b < t0 || s.a > t1) continue;
        const xa = clampX(x(s.a)), xb = clampX(x(s.b));
        ctx.fillStyle = ROLE_COLORS[s.role] || "#b0bec5";
        ctx.fillRect(xa, y - 6, Math.max(1, xb - xa), 12);
        const label = s.role + " · term " + s.term + (s.epoch > 1 ? " · epoch " + s.epoch : "");
        const tip = "n" + n + " " + label + "\n" + fmt(s.a) + " → " + fmt(s.b);
        hits.push({ box: [xa, y - 6, xb, y + 6], prio: 1, tip: tip });
        // Term labels at changes, when there is room.
        if (xa - lastLabel > 70 && x(s.a) >= LEFT - 1) {
          ctx.strokeStyle = "#37474f";
          ctx.beginPath(); ctx.moveTo(xa, y - 14); ctx.lineTo(xa, y + 6); ctx.stroke();
          text((s.role === "leader" ? "★ " : "") + "T" + s.term + (s.epoch > 1 ? " e" + s.epoch : ""),
            xa + 2, y - 9, s.role === "leader" ? "#1b5e20" : "#37474f",
            (s.role === "leader" ? "bold " : "") + "10px system-ui, sans-serif");
          lastLabel = xa;
        }
      }
    }
    for (let i = 0; i < SP.a.length; i++) {
      const n = SP.node[i];
      if (!shown[n]) continue;
      const b = SP.b[i] < 0 ? END : SP.b[i];
      if (b < t0 || SP.a[i] > t1) continue;
      const y = laneY[n];
      const xa = clampX(x(SP.a[i])), xb = clampX(x(b));
      const w = Math.max(2, xb - xa);
      if (SP.kind[i] === 0) {
        ctx.fillStyle = "rgba(66,66,66,0.85)";
        ctx.fillRect(xa, y - 8, w, 16);
        hatch(xa, y - 8, w, 16, "rgba(255,255,255,0.25)");
        ctx.fillStyle = "#c62828";
        ctx.fillRect(xa - 1, y - 16, 3, 32);
        if (w > 40) text(S[SP.label[i]], xa + 4, y + 4, "#fff", "10px system-ui, sans-serif");
      } else {
        ctx.fillStyle = "rgba(255,193,7,0.55)";
        ctx.fillRect(xa, y - 8, w, 16);
        hatch(xa, y - 8, w, 16, "rgba(120,80,0,0.45)");
        if (w > 40) text("paused", xa + 4, y + 4, "#5d4037", "10px system-ui, sans-serif");
      }
      hits.push({ box: [xa, y - 8, xa + w, y + 8], prio: 2,
        tip: "n" + n + " " + S[SP.label[i]] + "\n" + fmt(SP.a[i]) + " → " + (SP.b[i] < 0 ? "end" : fmt(SP.b[i])) });
    }

    // Messages: arrows when few enough are in view, else per-lane counts.
    const from = lowerBound(send, t0 - Math.max(maxLat, typicalLat) - 1);
    const to = lowerBound(send, t1 + 1);
    let inView = 0;
    for (let i = from; i < to; i++) if (msgOk[i]) inView++;
    check.messagesInView = inView;
    if (inView <= ARROWS_MAX) {
      check.mode = "arrows";
      for (let i = from; i < to; i++) {
        if (!msgOk[i]) continue;
        const f = M.fate[i];
        const ya = laneY[M.from[i]], yb = laneY[M.to[i]];
        const xa = x(send[i]);
        let end = arrive[i], yEnd = yb, cross = false;
        if (f === 2 || f === 3 || isNaN(end)) {
          // Never arrived: drawn part of the way, ending in a cross.
          const part = f === 3 ? 0.25 : 0.55;
          end = send[i] + typicalLat * part;
          yEnd = ya + (yb - ya) * part;
          cross = f !== 0;
        } else if (f === 4 || f === 5) {
          cross = true;
        }
        const xb = x(end);
        if (Math.max(xa, xb) < LEFT || Math.min(xa, xb) > width - RIGHT) continue;
        const faulty = isFault(f);
        ctx.strokeStyle = faulty ? "#e53935" : (M.dup[i] ? "#fb8c00" : kindColor(M.kind[i]));
        ctx.lineWidth = faulty ? 1.4 : 1;
        ctx.setLineDash(f === 0 || f === 3 || f === 4 ? [4, 3] : (M.dup[i] ? [2, 2] : []));
        ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yEnd); ctx.stroke();
        ctx.setLineDash([]);
        // Arrow head or cross.
        const ang = Math.atan2(yEnd - ya, xb - xa);
        if (cross) {
          ctx.strokeStyle = "#c62828";
          ctx.lineWidth = 2;
          ctx.beginPath();
          ctx.moveTo(xb - 4, yEnd - 4); ctx.lineTo(xb + 4, yEnd + 4);
          ctx.moveTo(xb - 4, yEnd + 4); ctx.lineTo(xb + 4, yEnd - 4);
          ctx.stroke();
        } else if (f === 1 || f === 6) {
          ctx.fillStyle = ctx.strokeStyle;
          ctx.beginPath();
          ctx.moveTo(xb, yEnd);
          ctx.lineTo(xb - 7 * Math.cos(ang - 0.4), yEnd - 7 * Math.sin(ang - 0.4));
          ctx.lineTo(xb - 7 * Math.cos(ang + 0.4), yEnd - 7 * Math.sin(ang + 0.4));
          ctx.fill();
        }
        if (M.dup[i] && Math.abs(xb - xa) > 12) text("dup", (xa + xb) / 2 + 2, (ya + yEnd) / 2, "#e65100", "9px system-ui, sans-serif");
        ctx.lineWidth = 1;
        drawn.arrows++;
        drawn.kinds[S[M.kind[i]]] = 1;
        hits.push({ seg: [xa, ya, xb, yEnd], prio: 4, tip: S[M.kind[i]] + "  n" + M.from[i] + " → n" + M.to[i] + ", " + M.bytes[i] + " B" +
          (M.dup[i] ? "  (duplicate)" : "") + "\nsent " + fmt(send[i]) +
          (isNaN(arrive[i]) ? "" : "\narrived " + fmt(arrive[i]) + " (" + ((arrive[i] - send[i]) / 1000).toFixed(3) + " ms)") +
          "\n" + FATES[f] });
      }
    } else {
      check.mode = "aggregate";
      const bin = 4;
      const bins = Math.ceil((width - LEFT - RIGHT) / bin) + 1;
      for (const n of laneNodes) {
        const all = new Uint16Array(bins), bad = new Uint16Array(bins);
        for (let i = from; i < to; i++) {
          if (!msgOk[i] || M.from[i] !== n) continue;
          const b = Math.floor((x(send[i]) - LEFT) / bin);
          if (b < 0 || b >= bins) continue;
          all[b]++;
          if (isFault(M.fate[i]) || M.dup[i]) bad[b]++;
        }
        let peak = 1;
        for (let b = 0; b < bins; b++) if (all[b] > peak) peak = all[b];
        const y = laneY[n];
        const h = 22;
        for (let b = 0; b < bins; b++) {
          if (!all[b]) continue;
          const px = LEFT + b * bin;
          const hh = Math.max(1, h * Math.log(1 + all[b]) / Math.log(1 + peak));
          ctx.fillStyle = "#90a4ae";
          ctx.fillRect(px, y - 16 - hh, bin - 1, hh);
          if (bad[b]) {
            const hb = Math.max(2, h * Math.log(1 + bad[b]) / Math.log(1 + peak));
            ctx.fillStyle = "#e53935";
            ctx.fillRect(px, y - 16 - hb, bin - 1, hb);
          }
          hits.push({ box: [px, y - 16 - h, px + bin, y - 16], prio: 3,
            tip: "n" + n + " sent " + all[b] + " message batches here (" + bad[b] + " lost, cut or duplicated)\n" +
              fmt(tAt(px)) + " … " + fmt(tAt(px + bin)) + "\nzoom in to see arrows" });
          drawn.aggregated += all[b];
        }
      }
      text(inView + " message batches in view: zoom in to see them as arrows", width - RIGHT - 4, AXIS + 16, "#555", "11px system-ui, sans-serif", "right");
    }

    // Plugin log lines under their node's role bar.
    const L = D.logs;
    const lf = lowerBound(L.t, t0), lt = lowerBound(L.t, t1 + 1);
    const perLane = {};
    for (let i = lf; i < lt; i++) if (shown[L.node[i]]) perLane[L.node[i]] = (perLane[L.node[i]] || 0) + 1;
    const rowEnd = {};
    for (let i = lf; i < lt; i++) {
      const n = L.node[i];
      if (!shown[n]) continue;
      const y = laneY[n], px = x(L.t[i]);
      const line = S[L.text[i]];
      const warn = /^(warn|error)/.test(line);
      ctx.fillStyle = warn ? "#d84315" : "#5c6bc0";
      ctx.fillRect(px - 0.5, y + 8, 1.5, 8);
      drawn.logs++;
      hits.push({ box: [px - 3, y + 7, px + 3, y + 17], prio: 5, tip: "n" + n + " plugin " + line + "\n" + fmt(L.t[i]) });
      if ((perLane[n] || 0) <= LOG_TEXT_MAX) {
        ctx.font = "10px ui-monospace, monospace";
        const w = ctx.measureText(line).width;
        const ends = rowEnd[n] = rowEnd[n] || [-1e9, -1e9];
        for (let r = 0; r < 2; r++) {
          if (px > ends[r] + 6) {
            const shortened = line.length > 70 ? line.slice(0, 69) + "…" : line;
            text(shortened, px + 2, y + 26 + r * 11, warn ? "#bf360c" : "#3949ab", "10px ui-monospace, monospace");
            ends[r] = px + Math.min(w, ctx.measureText(shortened).width) + 2;
            break;
          }
        }
      }
    }

    // Client lanes: one bar per operation from call to return.
    if (nClients > 0) {
      text("clients", 8, clientY[0] - 6, "#333", "bold 12px system-ui, sans-serif");
    }
    for (let c = 0; c < nClients; c++) {
      text("c" + c, 30, clientY[c] + 11, "#444", "11px system-ui, sans-serif");
      ctx.strokeStyle = "#f0f0f0";
      ctx.beginPath(); ctx.moveTo(LEFT, clientY[c] + CLIENT_H - 1); ctx.lineTo(width - RIGHT, clientY[c] + CLIENT_H - 1); ctx.stroke();
    }
    const of = lowerBound(O.a, t0 - maxOp - 1), ot = lowerBound(O.a, t1 + 1);
    let opsInView = 0;
    for (let i = of; i < ot; i++) if ((keyFilter < 0 || O.key[i] === keyFilter) && shown[O.node[i]]) opsInView++;
    for (let i = of; i < ot; i++) {
      if (keyFilter >= 0 && O.key[i] !== keyFilter) continue;
      if (!shown[O.node[i]]) continue;
      const b = O.b[i] < 0 ? END : O.b[i];
      if (b < t0) continue;
      const xa = clampX(x(O.a[i])), xb = clampX(x(b));
      const y = clientY[O.client[i]];
      if (y === undefined) continue;
      const w = Math.max(1.5, xb - xa);
      ctx.fillStyle = OUTCOME_COLORS[O.outcome[i]];
      ctx.fillRect(xa, y + 2, w, CLIENT_H - 5);
      if (O.outcome[i] === 0 || O.outcome[i] === 3) {
        ctx.strokeStyle = "#e65100";
        ctx.strokeRect(xa + 0.5, y + 2.5, w - 1, CLIENT_H - 6);
      }
      drawn.ops++;
      drawn.keys[S[O.key[i]]] = 1;
      const label = S[O.what[i]] + " @n" + O.node[i] + "  " + S[O.result[i]];
      if (opsInView <= OP_TEXT_MAX && w > 40) {
        ctx.save();
        ctx.beginPath(); ctx.rect(xa, y, w, CLIENT_H); ctx.clip();
        text(label, xa + 3, y + 11, O.outcome[i] === 1 ? "#fff" : "#222", "10px ui-monospace, monospace");
        ctx.restore();
      }
      hits.push({ box: [xa, y + 1, xa + w, y + CLIENT_H - 2], prio: 2,
        tip: "c" + O.client[i] + " " + S[O.what[i]] + "  (sent to n" + O.node[i] + ")\n" + fmt(O.a[i]) + " → " +
          (O.b[i] < 0 ? "end" : fmt(O.b[i]) + " (" + ((O.b[i] - O.a[i]) / 1000).toFixed(3) + " ms)") +
          "\n" + OUTCOMES[O.outcome[i]] + (S[O.result[i]] ? ": " + S[O.result[i]] : "") });
    }

    // Marks: swap steps, the quiet phase, violations (last, on top).
    const order = [];
    for (let i = 0; i < MK.t.length; i++) if (MK.kind[i] !== 0) order.push(i);
    for (const i of violations) order.push(i);
    // Many violations in view: thin lines, and only the first labelled.
    let violationsInView = 0;
    for (const i of violations) if (MK.t[i] >= t0 && MK.t[i] <= t1) violationsInView++;
    const crowded = violationsInView > 8;
    let labelled = false;
    for (const i of order) {
      const t = MK.t[i];
      if (t < t0 || t > t1) continue;
      const px = x(t), kind = MK.kind[i], n = MK.node[i];
      const tip = S[MK.text[i]] + "\n" + fmt(t) + (n ? " on n" + n : "");
      if (kind === 0 && crowded && labelled) {
        ctx.strokeStyle = "rgba(198,40,40,0.35)";
        ctx.beginPath(); ctx.moveTo(px, AXIS); ctx.lineTo(px, height); ctx.stroke();
        drawn.violationMarkers++;
        hits.push({ box: [px - 2, AXIS, px + 2, height], prio: 8, tip: tip });
      } else if (kind === 0) {
        labelled = true;
        ctx.strokeStyle = "#c62828";
        ctx.lineWidth = 2.5;
        ctx.beginPath(); ctx.moveTo(px, AXIS); ctx.lineTo(px, height); ctx.stroke();
        ctx.lineWidth = 1;
        ctx.fillStyle = "#c62828";
        ctx.beginPath(); ctx.moveTo(px - 8, AXIS); ctx.lineTo(px + 8, AXIS); ctx.lineTo(px, AXIS + 12); ctx.fill();
        const label = "VIOLATION: " + S[MK.text[i]] + (crowded ? "  (+" + (violationsInView - 1) + " more in view)" : "");
        ctx.font = "bold 11px system-ui, sans-serif";
        const w = Math.min(ctx.measureText(label).width, 760);
        const lx = px + 10 + w > width - RIGHT ? px - 10 - w : px + 10;
        ctx.fillStyle = "rgba(255,255,255,0.9)";
        ctx.fillRect(lx - 2, AXIS + 14, w + 4, 14);
        ctx.save(); ctx.beginPath(); ctx.rect(lx - 2, AXIS + 14, w + 4, 14); ctx.clip();
        text(label, lx, AXIS + 25, "#b71c1c", "bold 11px system-ui, sans-serif");
        ctx.restore();
        drawn.violationMarkers++;
        hits.push({ box: [px - 8, AXIS, px + 8, height], prio: 9, tip: tip });
      } else if (kind === 2 || kind === 1 || kind === 4) {
        // World-wide: through every lane.
        ctx.strokeStyle = kind === 4 ? "#78909c" : "#6a1b9a";
        ctx.lineWidth = kind === 2 ? 2 : 1;
        ctx.setLineDash(kind === 2 ? [8, 4] : [3, 3]);
        ctx.beginPath(); ctx.moveTo(px, AXIS); ctx.lineTo(px, height); ctx.stroke();
        ctx.setLineDash([]);
        ctx.lineWidth = 1;
        const label = kind === 2 ? "epoch 2 recorded" : kind === 1 ? "swap starts" : "quiet phase";
        // One label row per kind, so marks at the same moment stay legible.
        const row = kind === 1 ? 0 : kind === 2 ? 1 : 2;
        text(label, px + 3, AXIS + WORLD_H + 2 + row * 11, ctx.strokeStyle, "bold 10px system-ui, sans-serif");
        if (kind === 2) {
          for (const m of laneNodes) text("epoch boundary", px + 3, laneY[m] - 22, "#6a1b9a", "9px system-ui, sans-serif");
          drawn.epochMarkers++;
        }
        hits.push({ box: [px - 4, AXIS, px + 4, height], prio: 6, tip: tip });
      } else if (kind === 3 && shown[n]) {
        // One node's switch into the new epoch.
        const y = laneY[n];
        ctx.fillStyle = "#6a1b9a";
        ctx.fillRect(px - 1.5, y - 20, 3, 40);
        text("→ epoch 2", px + 3, y + 20, "#6a1b9a", "bold 10px system-ui, sans-serif");
        drawn.epochMarkers++;
        hits.push({ box: [px - 5, y - 20, px + 5, y + 20], prio: 7, tip: tip });
      }
    }
    ctx.restore();
    text("world", 8, worldY + 16, "#333", "bold 12px system-ui, sans-serif");
    for (const n of laneNodes) text("n" + n, 8, laneY[n] + 4, "#111", "bold 14px system-ui, sans-serif");
    if (nClients > 0) text("clients", 8, clientY[0] - 6, "#333", "bold 12px system-ui, sans-serif");
    for (let c = 0; c < nClients; c++) text("c" + c, 30, clientY[c] + 11, "#444", "11px system-ui, sans-serif");

    check.nodeLanes = laneNodes.length;
    check.clientLanes = nClients;
    check.worldLane = 1;
    check.lanes = laneNodes.length + nClients + 1;
    check.violations = violations.length;
    check.violationMarkers = drawn.violationMarkers;
    check.violationMarker = drawn.violationMarkers > 0;
    check.epochMarkers = drawn.epochMarkers;
    check.arrows = drawn.arrows;
    check.aggregated = drawn.aggregated;
    check.ops = drawn.ops;
    check.arrowKinds = Object.keys(drawn.kinds).sort();
    check.opKeys = Object.keys(drawn.keys).sort();
    check.logs = drawn.logs;
    check.view = [Math.round(t0), Math.round(t1)];
    check.drawMs = Math.round((performance.now() - started) * 10) / 10;
    writeSelfcheck();
  }
  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }

  // ---- interaction ----
  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const px = Math.max(LEFT, e.clientX - rect.left);
    const tc = tAt(px);
    const f = Math.exp(e.deltaY * 0.0015);
    setView(tc - (tc - t0) * f, tc + (t1 - tc) * f);
    hideTip();
    redraw();
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", function (e) {
    drag = { x: e.clientX, t0: t0, t1: t1 };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mouseup", function () { drag = null; canvas.classList.remove("dragging"); });
  window.addEventListener("mousemove", function (e) {
    if (!drag) return;
    const dt = (e.clientX - drag.x) / (width - LEFT - RIGHT) * (drag.t1 - drag.t0);
    t0 = drag.t0 - dt; t1 = drag.t1 - dt;
    hideTip();
    redraw();
  });
  canvas.addEventListener("dblclick", function (e) {
    const rect = canvas.getBoundingClientRect();
    const tc = tAt(e.clientX - rect.left);
    setView(tc - (tc - t0) / 3, tc + (t1 - tc) / 3);
    redraw();
  });
  const tipEl = document.getElementById("tip");
  function hideTip() { tipEl.style.display = "none"; }
  function segDist(p, s) {
    const dx = s[2] - s[0], dy = s[3] - s[1];
    const len = dx * dx + dy * dy;
    let u = len ? ((p[0] - s[0]) * dx + (p[1] - s[1]) * dy) / len : 0;
    u = Math.max(0, Math.min(1, u));
    return Math.hypot(p[0] - s[0] - u * dx, p[1] - s[1] - u * dy);
  }
  canvas.addEventListener("mousemove", function (e) {
    if (drag) return;
    const rect = canvas.getBoundingClientRect();
    const p = [e.clientX - rect.left, e.clientY - rect.top];
    let best = null, bestScore = Infinity;
    for (const h of hits) {
      let d;
      if (h.box) {
        if (p[0] < h.box[0] - 1 || p[0] > h.box[2] + 1 || p[1] < h.box[1] - 1 || p[1] > h.box[3] + 1) continue;
        d = 0;
      } else {
        d = segDist(p, h.seg);
        if (d > 4) continue;
      }
      const score = d - h.prio * 10;
      if (score < bestScore) { bestScore = score; best = h; }
    }
    if (!best) { hideTip(); return; }
    tipEl.textContent = best.tip;
    tipEl.style.display = "block";
    const left = Math.min(p[0] + 14, width - 360);
    tipEl.style.left = Math.max(0, left) + "px";
    tipEl.style.top = (p[1] + 16) + "px";
  });
  canvas.addEventListener("mouseleave", hideTip);
  window.addEventListener("resize", redraw);

  // ---- header: summary, violations, controls, legend ----
  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k];
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }
  let lost = 0, cut = 0, dups = 0, down = 0;
  for (let i = 0; i < nMsg; i++) {
    if (M.fate[i] === 2) lost++;
    if (M.fate[i] === 3 || M.fate[i] === 4) cut++;
    if (M.fate[i] === 5) down++;
    if (M.dup[i]) dups++;
  }
  let crashes = 0, pauses = 0;
  for (let i = 0; i < SP.kind.length; i++) { if (SP.kind[i] === 0) crashes++; else pauses++; }
  document.getElementById("summary").textContent =
    D.events + " events over " + (END / 1e6).toFixed(3) + " s of virtual time · " + nodes.length + " nodes · " +
    nMsg + " message batches (" + lost + " lost, " + cut + " cut by partitions, " + down + " to a down node, " +
    dups + " duplicates) · " + nOps + " client operations · " + crashes + " crashes · " + pauses + " pauses · " +
    D.parts.a.length + " partitions";
  // The first few violations in full; the rest folded (a broken protocol
  // can violate thousands of times), at most 200 listed.
  const vtop = document.getElementById("violations");
  let vbox = vtop;
  const VIOLATIONS_OPEN = 3, VIOLATIONS_LISTED = 200;
  for (const [at, i] of violations.slice(0, VIOLATIONS_LISTED).entries()) {
    if (at === VIOLATIONS_OPEN) {
      const more = el("details", {}, [el("summary", { text: (violations.length - VIOLATIONS_OPEN) + " more violations" })]);
      vtop.appendChild(more);
      vbox = more;
    }
    const t = MK.t[i], what = S[MK.text[i]];
    const row = el("div", { text: fmt(t) + "  VIOLATION: " + what });
    row.appendChild(el("a", { text: "show", onclick: function () { centreOn(t, Math.min(END, 1e6)); } }));
    const key = /on key (\S+?)[:,]?(\s|$)/.exec(what);
    if (key && keys.some(function (k) { return S[k] === key[1]; })) {
      row.appendChild(el("a", { text: "only key " + key[1], onclick: function () {
        keySelect.value = key[1]; keyFilter = S.indexOf(key[1]); redraw();
      } }));
    }
    vbox.appendChild(row);
  }
  if (violations.length > VIOLATIONS_LISTED) {
    vbox.appendChild(el("div", { text: "… and " + (violations.length - VIOLATIONS_LISTED) + " more in the text trace" }));
  }
  const controls = document.getElementById("controls");
  const nodeBoxes = el("span", { text: "nodes: " });
  for (const n of nodes) {
    const box = el("input", { type: "checkbox", id: "node-" + n });
    box.checked = true;
    box.addEventListener("change", function () { shown[n] = box.checked; applyFilters(); });
    nodeBoxes.appendChild(el("label", {}, [box, document.createTextNode("n" + n + " ")]));
  }
  controls.appendChild(nodeBoxes);
  const kindSelect = el("select", { id: "kind" });
  kindSelect.appendChild(el("option", { value: "", text: "all kinds" }));
  for (const k of baseKinds) kindSelect.appendChild(el("option", { value: k, text: k }));
  kindSelect.appendChild(el("option", { value: "-", text: "no messages" }));
  kindSelect.addEventListener("change", function () { kindFilter = kindSelect.value; applyFilters(); });
  controls.appendChild(el("label", { text: "messages: " }, [kindSelect]));
  const faultBox = el("input", { type: "checkbox", id: "faults-only" });
  faultBox.addEventListener("change", function () { faultsOnly = faultBox.checked; applyFilters(); });
  controls.appendChild(el("label", {}, [faultBox, document.createTextNode(" only lost, cut or duplicated")]));
  const keySelect = el("select", { id: "key" });
  keySelect.appendChild(el("option", { value: "", text: "all keys" }));
  for (const k of keys) keySelect.appendChild(el("option", { value: S[k], text: S[k] }));
  keySelect.addEventListener("change", function () { keyFilter = keySelect.value ? S.indexOf(keySelect.value) : -1; redraw(); });
  controls.appendChild(el("label", { text: "client key: " }, [keySelect]));
  controls.appendChild(el("button", { text: "whole run", onclick: function () { setView(0, END); redraw(); } }));
  if (violations.length) {
    controls.appendChild(el("button", { text: "first violation", onclick: function () { centreOn(MK.t[violations[0]], Math.min(END, 1e6)); } }));
  }
  const legend = document.getElementById("legend");
  function swatch(color, label) {
    const s = el("span", {});
    const sw = el("span", { class: "sw" });
    sw.style.background = color;
    s.appendChild(sw);
    s.appendChild(document.createTextNode(label));
    legend.appendChild(s);
  }
  for (const r of ["leader", "candidate", "follower", "learner", "replica", "sealed"]) swatch(ROLE_COLORS[r], r);
  swatch("rgba(66,66,66,0.85)", "down");
  swatch("rgba(255,193,7,0.55)", "paused");
  swatch("rgba(229,57,53,0.25)", "partitioned");
  swatch("#e53935", "lost / cut message (×)");
  swatch("#fb8c00", "duplicate");
  for (let i = 1; i < OUTCOMES.length; i++) swatch(OUTCOME_COLORS[i], "client: " + OUTCOMES[i]);
  swatch("#5c6bc0", "plugin log line");
  swatch("#6a1b9a", "epoch boundary");
  swatch("#c62828", "violation");

  // ---- first view: centred on the first violation ----
  layout();
  // `#view=A,B` (seconds) opens on that window instead.
  const asked = /(?:^#|&)view=([0-9.eE+-]+),([0-9.eE+-]+)/.exec(location.hash);
  if (asked && +asked[2] > +asked[1]) {
    setView(+asked[1] * 1e6, +asked[2] * 1e6);
  } else if (violations.length) {
    // Centred on the first violation, unless that shows time outside the
    // run: then against the run's edge.
    const t = MK.t[violations[0]];
    const span = Math.min(END, 1e6);
    const a = Math.max(0, Math.min(t - span / 2, END - span));
    setView(a, a + span);
  } else {
    setView(0, END);
  }
  // Filters from the fragment too: `#nodes=1,3&kind=Append&key=k2&faults`.
  const param = function (name) {
    const m = new RegExp("(?:^#|&)" + name + "(?:=([^&]*))?(?:&|$)").exec(location.hash);
    return m ? decodeURIComponent(m[1] || "") : null;
  };
  const onlyNodes = param("nodes");
  if (onlyNodes !== null) {
    const wanted = onlyNodes.split(",").map(Number);
    for (const n of nodes) {
      shown[n] = wanted.indexOf(n) >= 0;
      document.getElementById("node-" + n).checked = shown[n];
    }
  }
  const kind = param("kind");
  if (kind !== null && (kind === "-" || baseKinds.indexOf(kind) >= 0)) {
    kindFilter = kind;
    kindSelect.value = kind;
  }
  const key = param("key");
  if (key !== null && keys.some(function (k) { return S[k] === key; })) {
    keyFilter = S.indexOf(key);
    keySelect.value = key;
  }
  if (param("faults") !== null) {
    faultsOnly = true;
    faultBox.checked = true;
  }
  applyFilters();
  draw();

  // `#selftest`: drive the wheel and a drag as a user would and report
  // whether the view zoomed and panned (for the browser test).
  if (param("selftest") !== null) {
    const rect = canvas.getBoundingClientRect();
    const cx = rect.left + (LEFT + width) / 2, cy = rect.top + 60;
    const before = [t0, t1];
    canvas.dispatchEvent(new WheelEvent("wheel", { deltaY: -400, clientX: cx, clientY: cy, bubbles: true, cancelable: true }));
    const zoomed = [t0, t1];
    canvas.dispatchEvent(new MouseEvent("mousedown", { clientX: cx, clientY: cy, bubbles: true }));
    window.dispatchEvent(new MouseEvent("mousemove", { clientX: cx + 200, clientY: cy, bubbles: true }));
    window.dispatchEvent(new MouseEvent("mouseup", { clientX: cx + 200, clientY: cy, bubbles: true }));
    const panned = [t0, t1];
    draw();
    check.interaction = {
      zoomedIn: zoomed[1] - zoomed[0] < (before[1] - before[0]) * 0.9,
      pannedBack: panned[0] < zoomed[0] && Math.abs((panned[1] - panned[0]) - (zoomed[1] - zoomed[0])) < 1,
    };
    writeSelfcheck();
  }
})();
