/*
 * util.js — the small things every view uses: a DOM builder, number and
 * time formatting, the stage of a parameter group, a colour palette, and
 * a throttle. No state, no fetches.
 */

/* h('div', {class: 'x', onclick: f}, child, 'text', [more]) -> Element.
 * Attributes starting with "on" become listeners; `null`/`false` children
 * and attributes are skipped; arrays are flattened. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k in el && typeof v !== 'string') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/* Replaces el's children, with h()'s rules: null/false skipped, arrays flattened. */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

let uid = 0;
/* A fresh id for label/aria wiring. */
export function newId(prefix = 'id') {
  return `${prefix}-${++uid}`;
}

const nf = new Intl.NumberFormat('en-US');
export const fmtInt = (n) => (n === null || n === undefined ? '—' : nf.format(n));

export function fmtNum(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return '—';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(digits)).toString();
}

export function fmtPct(frac, digits = 1) {
  if (frac === null || frac === undefined || Number.isNaN(frac)) return '—';
  const p = frac * 100;
  if (p > 0 && p < 0.1) return '<0.1 %';
  return `${p.toFixed(digits)} %`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtTime(epochSeconds) {
  if (!epochSeconds) return '—';
  const d = new Date(epochSeconds * 1000);
  return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false });
}

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
export const isLive = (status) => status === 'queued' || status === 'running';

/* A job's wall time: start to finish, or start to now while it runs. */
export function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at || (job.status === 'running' ? Date.now() / 1000 : null);
  return end ? end - job.started_at : null;
}

/* A job's MPI ranks: the summary's, else its spec's; 1 for a job on one process. */
export const ranksOf = (job) => job?.ranks ?? job?.spec?.distributed?.ranks ?? 1;

/* The job's base_model as the server words it: "m_3", {"job":"j_2"}, or an architecture. */
export function fmtBase(text) {
  if (!text) return '—';
  try {
    const b = JSON.parse(text);
    if (b.job) return `the model of ${b.job}`;
    if (b.arch) return `${b.arch} ${b.config || 'tiny'} (random init)`;
  } catch {
    /* plain text */
  }
  return text;
}

/* Live parameters / all parameters. params.total comes with the first
 * progress report, whatever the strategy; the result's parameter count
 * fills in for jobs stored before the daemon recorded it. */
export function paramsTotal(job) {
  return job.params?.total || job.result?.parameters || null;
}

export function liveFraction(job) {
  const total = paramsTotal(job);
  const live = job.params?.live;
  return total && live !== null && live !== undefined ? live / total : null;
}

/* The network stage of a group key, by SegFormer's (HF) tensor names:
 * encoder stage k owns patch_embeddings.k, block.k.* and layer_norm.k. */
export function stageOf(key) {
  let m = /^segformer\.encoder\.(?:patch_embeddings|block|layer_norm)\.(\d+)\./.exec(key);
  if (m) return `encoder stage ${Number(m[1]) + 1}`;
  if (key.startsWith('decode_head.')) return 'decoder';
  m = /^([^.]+)\./.exec(key);
  return m ? m[1] : 'other';
}

/* Key prefixes covering one stage (for /drift?prefix=). */
export function stagePrefixes(stage) {
  const m = /^encoder stage (\d+)$/.exec(stage);
  if (m) {
    const k = Number(m[1]) - 1;
    return [`segformer.encoder.patch_embeddings.${k}.`, `segformer.encoder.block.${k}.`,
      `segformer.encoder.layer_norm.${k}.`];
  }
  if (stage === 'decoder') return ['decode_head.'];
  return null;
}

/* Distinct, colour-blind-friendlier hues; wraps around with lightness shifts. */
const BASE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2',
  '#7f7f7f', '#bcbd22'];
export function colour(i, n) {
  if (n && n > BASE.length) {
    const hue = (i * 360) / n;
    return `hsl(${hue.toFixed(0)} 65% ${i % 2 ? 38 : 50}%)`;
  }
  return BASE[i % BASE.length];
}

/* Calls fn at most once per `ms`, trailing call kept. */
export function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  return function throttled() {
    if (timer) {
      pending = true;
      return;
    }
    fn();
    timer = setTimeout(function tick() {
      timer = null;
      if (pending) {
        pending = false;
        throttled();
      }
    }, ms);
  };
}

export function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

/* Runs async task(item) over items, at most `limit` at once. */
export async function mapLimit(items, limit, task) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await task(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/* "#/job/j_3?x=1" pieces. */
export function parseHash(hash) {
  const raw = (hash || '').replace(/^#/, '') || '/jobs';
  const [path, query = ''] = raw.split('?');
  return { parts: path.split('/').filter(Boolean), params: new URLSearchParams(query) };
}

export function statusBadge(status) {
  return h('span', { class: `badge status-${status}` }, status);
}
