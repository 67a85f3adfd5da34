/*
 * charts.js — every chart on the dashboard is a uPlot line chart made
 * here: sized to its container (and resized with it), optionally on a log
 * y scale, with two marks drawn over the lines: vertical rules (freeze
 * decisions) and per-series points (the step a group froze). Series with
 * different x values are aligned with uPlot.join.
 */
import uPlot from '../vendor/uPlot.esm.js';
import { h } from './util.js';

export { uPlot };

/* Aligns [{x: [...], y: [...]}, ...] on the union of their x values
 * (missing points are null) into uPlot's [xs, ys0, ys1, ...]. */
export function align(list) {
  if (!list.length) return [[]];
  if (list.length === 1) return [list[0].x, list[0].y];
  return uPlot.join(list.map((s) => [s.x, s.y]));
}

/* makeChart(container, {
 *   label,                 accessible name of the chart
 *   series: [{label, stroke, width, dash, points: bool, scale}],
 *   xLabel, yLabel, log, height, legend (default true), yRange: [min, max],
 *   y2Label, y2Range      a right-hand axis for series with scale: 'y2'
 *   marks(): {rules: [{x, stroke}], points: [{si, x, y}]},
 *   onFocus(seriesIndex | null, dataIndex | null)   hover readout for legend-less charts
 * }) -> {u, setData(data), destroy(), setMarks()}
 */
export function makeChart(container, opts) {
  const box = h('div', { class: 'chart', role: 'img', 'aria-label': opts.label || 'chart' });
  container.append(box);
  let zoomed = false;
  const height = opts.height || 220;
  const width = () => Math.max(300, Math.floor(container.clientWidth || 600));

  const series = [{ label: opts.xLabel || 'step' }];
  for (const s of opts.series) {
    series.push({
      label: s.label,
      stroke: s.stroke,
      width: s.width ?? 1.5,
      dash: s.dash,
      scale: s.scale || 'y',
      spanGaps: true,
      points: { show: s.points ?? false, size: 5, fill: s.stroke },
      value: s.value || ((u, v) => (v === null || v === undefined ? '—' : fmt(v))),
    });
  }

  const marksPlugin = {
    hooks: {
      draw: [
        (u) => {
          if (!opts.marks) return;
          const m = opts.marks() || {};
          const ctx = u.ctx;
          const { top, height: bh, left, width: bw } = u.bbox;
          ctx.save();
          ctx.beginPath();
          ctx.rect(left, top, bw, bh);
          ctx.clip();
          for (const r of m.rules || []) {
            const x = Math.round(u.valToPos(r.x, 'x', true)) + 0.5;
            if (!Number.isFinite(x)) continue;
            ctx.strokeStyle = r.stroke || 'rgba(80,80,80,0.55)';
            ctx.lineWidth = r.width || 1;
            ctx.setLineDash(r.dash || [4, 4]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + bh);
            ctx.stroke();
          }
          ctx.setLineDash([]);
          const r = 4 * devicePixelRatio;
          for (const p of m.points || []) {
            const s = u.series[p.si];
            if (!s || !s.show || p.y === null || p.y === undefined) continue;
            const x = u.valToPos(p.x, 'x', true);
            const y = u.valToPos(p.y, s.scale || 'y', true);
            if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
            ctx.fillStyle = opts.series[p.si - 1]?.stroke || '#000';
            ctx.strokeStyle = '#fff';
            ctx.lineWidth = 1;
            ctx.beginPath();
            ctx.moveTo(x, y - r);
            ctx.lineTo(x + r, y);
            ctx.lineTo(x, y + r);
            ctx.lineTo(x - r, y);
            ctx.closePath();
            ctx.fill();
            ctx.stroke();
          }
          ctx.restore();
        },
      ],
      setSelect: [
        (u) => {
          if (u.select.width > 0) zoomed = true;
        },
      ],
    },
  };

  const hooks = {};
  if (opts.onFocus) {
    let focused = null;
    hooks.setSeries = [(u, si) => {
      focused = si ?? null;
      opts.onFocus(focused, u.cursor.idx ?? null);
    }];
    hooks.setCursor = [(u) => opts.onFocus(focused, u.cursor.idx ?? null)];
  }

  const yScale = opts.log ? { distr: 3 } : {};
  if (opts.yRange) yScale.range = opts.yRange;
  const config = {
    width: width(),
    height,
    series,
    legend: { show: opts.legend !== false },
    focus: { alpha: opts.onFocus ? 0.25 : 1 },
    cursor: { focus: { prox: opts.onFocus ? 24 : -1 }, drag: { x: true, y: false } },
    scales: { x: { time: false }, y: yScale },
    axes: [
      { label: opts.xLabel || 'step', labelSize: 18, size: 36 },
      { label: opts.yLabel || '', labelSize: 18, size: 64, values: (u, vals) => vals.map((v) => fmt(v)) },
    ],
    plugins: [marksPlugin],
    hooks,
  };
  if (opts.y2Label) {
    config.scales.y2 = { range: opts.y2Range };
    config.axes.push({ scale: 'y2', side: 1, label: opts.y2Label, labelSize: 18, size: 56, grid: { show: false },
      values: (u, vals) => vals.map((v) => fmt(v)) });
  }
  const empty = [[], ...opts.series.map(() => [])];
  const u = new uPlot(config, empty, box);
  u.over.addEventListener('dblclick', () => {
    zoomed = false;
  });
  const ro = new ResizeObserver(() => {
    const w = width();
    if (w !== u.width) u.setSize({ width: w, height });
  });
  ro.observe(container);

  return {
    u,
    el: box,
    setData(data) {
      u.setData(data, !zoomed);
      box.dataset.series = String(data.length - 1);
      box.dataset.points = String(data[0]?.length || 0);
    },
    redraw() {
      u.redraw(false, true);
    },
    destroy() {
      ro.disconnect();
      u.destroy();
      box.remove();
    },
  };
}

function fmt(v) {
  if (v === null || v === undefined) return '';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return Number(v.toPrecision(4)).toString();
}
