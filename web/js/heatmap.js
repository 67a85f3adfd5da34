/*
 * heatmap.js — all parameter groups × measurement steps on one canvas,
 * from the server's downsampled form (GET /jobs/{id}/heatmap: each column
 * a bucket of steps, each cell the bucket's largest js_ema). Rows are
 * ordered by depth in the network, with encoder stages and the decoder
 * labelled in a gutter; a cell is greyed once its group is frozen (the
 * bucket starts at or after frozen_at). Hover, or focus the canvas and use
 * the arrow keys, to read key / steps / value.
 *
 * Drawing: one pixel per cell into an ImageData, scaled onto the visible
 * canvas without smoothing: O(rows × columns) per draw, ~1 M cells max.
 */
import { h, fill, stageOf, fmtNum } from './util.js';

const GUTTER = 118; /* css px for stage labels */
const AXIS = 22; /* css px for step ticks */
const MAX_PLOT_H = 620;

/* viridis, 9 stops; interpolated into a 256-entry LUT */
const STOPS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
  [92, 200, 99], [170, 220, 50], [253, 231, 37]];
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (STOPS.length - 1);
    const k = Math.min(STOPS.length - 2, Math.floor(t));
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = STOPS[k][c] + (STOPS[k + 1][c] - STOPS[k][c]) * f;
  }
  return lut;
})();
const FROZEN = [196, 196, 196];
const EMPTY = [247, 247, 247];

export function makeHeatmap(container, opts = {}) {
  const canvas = h('canvas', {
    class: 'heatmap-canvas', tabindex: '0', role: 'img',
    'aria-label': 'Drift heatmap: groups by depth (rows) over steps (columns). Arrow keys move a cursor cell.',
  });
  const tip = h('div', { class: 'heatmap-tip', hidden: true });
  const readout = h('p', { class: 'heatmap-readout', 'aria-live': 'polite' }, 'Hover or focus the heatmap to read a cell.');
  const legend = h('div', { class: 'heatmap-legend' });
  const wrap = h('div', { class: 'heatmap' }, h('div', { class: 'heatmap-stage' }, canvas, tip), legend, readout);
  container.append(wrap);

  let hm = null;
  let rows = []; /* [{idx, key, depth, frozen_at, stage, values}] by depth */
  let vmax = 1;
  let cursor = null; /* {r, c} for the keyboard */
  let geo = null;

  function setData(data) {
    hm = data;
    rows = data.groups.map((g, i) => ({ ...g, stage: stageOf(g.key), values: data.values[i] }));
    rows.sort((a, b) => a.depth - b.depth || a.idx - b.idx);
    vmax = 0;
    for (const r of rows) for (const v of r.values) if (v !== null && v > vmax) vmax = v;
    if (!(vmax > 0)) vmax = 1;
    wrap.dataset.rows = String(rows.length);
    wrap.dataset.cols = String(data.step_from.length);
    wrap.dataset.measurements = String(data.measurements ?? '');
    if (cursor && (cursor.r >= rows.length || cursor.c >= data.step_from.length)) cursor = null;
    drawLegend();
    draw();
  }

  function drawLegend() {
    fill(legend, 
      h('span', null, '0'),
      h('span', { class: 'heatmap-ramp', 'aria-hidden': 'true' }),
      h('span', null, `${fmtNum(vmax)} (largest JS EMA in view)`),
      h('span', { class: 'swatch frozen', 'aria-hidden': 'true' }), h('span', null, 'frozen'),
      h('span', { class: 'swatch empty', 'aria-hidden': 'true' }), h('span', null, 'no measurement'),
    );
  }

  function draw() {
    if (!hm) return;
    const nr = rows.length;
    const nc = hm.step_from.length;
    const cssW = Math.max(320, container.clientWidth || 800);
    const rowH = nr ? Math.max(1, Math.min(14, Math.floor(MAX_PLOT_H / nr))) : 14;
    const plotW = cssW - GUTTER - 8;
    const plotH = Math.max(nr * rowH, 20);
    const cssH = plotH + AXIS;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${cssW}px`;
    canvas.style.height = `${cssH}px`;
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    geo = { cssW, plotW, plotH, rowH, nr, nc, colW: nc ? plotW / nc : plotW };
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, cssW, cssH);
    if (!nr || !nc) {
      ctx.fillStyle = '#555';
      ctx.font = '13px system-ui, sans-serif';
      ctx.fillText('No drift measurements yet.', GUTTER, 16);
      return;
    }
    const img = new ImageData(nc, nr);
    const px = img.data;
    const from = hm.step_from;
    for (let r = 0; r < nr; r++) {
      const row = rows[r];
      const fz = row.frozen_at;
      for (let c = 0; c < nc; c++) {
        const o = (r * nc + c) * 4;
        const v = row.values[c];
        let rgb;
        if (fz !== null && fz !== undefined && from[c] >= fz) rgb = FROZEN;
        else if (v === null || v === undefined) rgb = EMPTY;
        else {
          const k = Math.max(0, Math.min(255, Math.round((v / vmax) * 255))) * 3;
          px[o] = LUT[k];
          px[o + 1] = LUT[k + 1];
          px[o + 2] = LUT[k + 2];
          px[o + 3] = 255;
          continue;
        }
        px[o] = rgb[0];
        px[o + 1] = rgb[1];
        px[o + 2] = rgb[2];
        px[o + 3] = 255;
      }
    }
    const off = document.createElement('canvas');
    off.width = nc;
    off.height = nr;
    off.getContext('2d').putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, nc, nr, GUTTER, 0, plotW, nr * rowH);

    /* stage bands: a rule between stages, a label where there is room */
    ctx.font = '12px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    let start = 0;
    for (let r = 1; r <= nr; r++) {
      if (r < nr && rows[r].stage === rows[start].stage) continue;
      const y0 = start * rowH;
      const y1 = r * rowH;
      if (r < nr) {
        ctx.fillStyle = '#fff';
        ctx.fillRect(GUTTER, y1 - 0.5, plotW, 1);
      }
      ctx.fillStyle = '#333';
      if (y1 - y0 >= 11) ctx.fillText(rows[start].stage, 4, (y0 + y1) / 2, GUTTER - 8);
      ctx.fillStyle = '#bbb';
      ctx.fillRect(GUTTER - 4, y0 + 1, 2, Math.max(1, y1 - y0 - 2));
      start = r;
    }

    /* step ticks */
    ctx.fillStyle = '#333';
    ctx.textBaseline = 'top';
    const ticks = Math.min(nc, Math.max(2, Math.floor(plotW / 110)));
    for (let t = 0; t < ticks; t++) {
      const c = Math.round((t * (nc - 1)) / Math.max(1, ticks - 1));
      const x = GUTTER + (c + 0.5) * geo.colW;
      ctx.fillRect(x, plotH, 1, 4);
      const label = String(hm.step_from[c]);
      const w = ctx.measureText(label).width;
      ctx.fillText(label, Math.min(cssW - w - 2, Math.max(GUTTER, x - w / 2)), plotH + 6);
    }

    if (cursor) {
      ctx.strokeStyle = '#e4002b';
      ctx.lineWidth = 2;
      ctx.strokeRect(GUTTER + cursor.c * geo.colW - 1, cursor.r * rowH - 1, Math.max(3, geo.colW) + 2, rowH + 2);
    }
  }

  function cellText(r, c) {
    const row = rows[r];
    const a = hm.step_from[c];
    const b = hm.step_to[c];
    const steps = a === b ? `step ${a}` : `steps ${a}–${b}`;
    const v = row.values[c];
    const frozen = row.frozen_at !== null && row.frozen_at !== undefined && a >= row.frozen_at;
    const what = frozen ? `frozen since step ${row.frozen_at}` : v === null || v === undefined ? 'no measurement'
      : `JS EMA ${fmtNum(v, 4)}`;
    return { key: row.key, steps, what };
  }

  function cellAt(ev) {
    if (!geo || !geo.nr || !geo.nc) return null;
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left - GUTTER;
    const y = ev.clientY - rect.top;
    if (x < 0 || y < 0 || x >= geo.plotW || y >= geo.nr * geo.rowH) return null;
    return { r: Math.floor(y / geo.rowH), c: Math.min(geo.nc - 1, Math.floor(x / geo.colW)), x: ev.clientX - rect.left, y };
  }

  function show(cell, fromKeyboard) {
    if (!cell) {
      tip.hidden = true;
      return;
    }
    const t = cellText(cell.r, cell.c);
    fill(tip, h('strong', null, t.key), h('br'), `${t.steps} · ${t.what}`);
    tip.hidden = false;
    const x = fromKeyboard ? GUTTER + (cell.c + 0.5) * geo.colW : cell.x;
    const y = fromKeyboard ? (cell.r + 0.5) * geo.rowH : cell.y;
    tip.style.left = `${Math.min(geo.cssW - 260, x + 12)}px`;
    tip.style.top = `${y + 12}px`;
    readout.textContent = `${t.key} — ${t.steps} — ${t.what}`;
    if (opts.onPick && fromKeyboard === 'enter') opts.onPick(rows[cell.r].key);
  }

  canvas.addEventListener('mousemove', (ev) => show(cellAt(ev), false));
  canvas.addEventListener('mouseleave', () => {
    tip.hidden = true;
  });
  canvas.addEventListener('click', (ev) => {
    const cell = cellAt(ev);
    if (cell && opts.onPick) opts.onPick(rows[cell.r].key);
  });
  canvas.addEventListener('keydown', (ev) => {
    if (!geo || !geo.nr || !geo.nc) return;
    const c0 = cursor || { r: 0, c: 0 };
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], PageUp: [-10, 0],
      PageDown: [10, 0], Home: [0, -1e9], End: [0, 1e9] }[ev.key];
    if (ev.key === 'Enter' && cursor) {
      show(cursor, 'enter');
      ev.preventDefault();
      return;
    }
    if (!step) return;
    ev.preventDefault();
    cursor = {
      r: Math.max(0, Math.min(geo.nr - 1, c0.r + (cursor ? step[0] : 0))),
      c: Math.max(0, Math.min(geo.nc - 1, c0.c + (cursor ? step[1] : 0))),
    };
    draw();
    show(cursor, true);
  });
  canvas.addEventListener('blur', () => {
    tip.hidden = true;
  });

  let lastW = 0;
  const ro = new ResizeObserver(() => {
    const w = container.clientWidth;
    if (w !== lastW) {
      lastW = w;
      draw();
    }
  });
  ro.observe(container);

  return {
    el: wrap,
    setData,
    /* columns worth asking the server for at the current width: one per
     * css px of the plot, at most 1000 (a 1280 px window: 1000). 716
     * groups x 1000 columns at 4 significant digits (job.js) is 4.8 MB:
     * fetched, parsed and drawn in ~0.6 s on a 2-core machine, in the
     * middle of the job page's other first reads */
    columns: () => Math.max(60, Math.min(1000, Math.floor((container.clientWidth || 800) - GUTTER - 8))),
    destroy() {
      ro.disconnect();
      wrap.remove();
    },
  };
}
