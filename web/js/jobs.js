/*
 * jobs.js — the jobs list: every job, newest first, filtered by status and
 * name, paginated with the server's next_cursor. Each row comes whole from
 * the list endpoint: status, progress, live parameters, strategy, best val
 * IoU so far, zero-shot IoUs. The page keeps itself current through the
 * all-jobs event stream with only its light events (kinds=status,progress,
 * eval; no drift): progress and validation update their row in place, and
 * a status change — a job submitted, started, finished — reads the page
 * again (debounced). If the stream fails, the page reads itself every 10 s
 * and opens the stream again later. Cells are updated in place so focus
 * stays put.
 */
import { api, urls } from './api.js';
import {
  h, fill, fmtPct, fmtNum, fmtDuration, fmtTime, jobDuration, liveFraction, statusBadge, debounce,
  TERMINAL, fmtBase, ranksOf,
} from './util.js';

const PAGE = 20;
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted'];
const KINDS = ['status', 'progress', 'eval'];
const POLL_MS = 10000; /* the fallback while the stream is down */
const RETRY_MS = 15000; /* a stream the browser gave up on is opened again after this */

export function mountJobs(main, params) {
  let status = params.get('status') || '';
  let name = params.get('name') || '';
  const flashId = params.get('submitted');
  let cursors = ['']; /* cursor of each page visited; last = current */
  let nextCursor = null;
  let gone = false;
  let jobs = []; /* the page on screen, as the list endpoint gave it plus what the stream added */
  let dirty = false; /* rows changed since the last render */
  let lastRender = 0;
  let es = null;
  let pollTimer = null;
  let retryTimer = null;
  const selected = new Set();

  const statusSel = h('select', { id: 'filter-status', name: 'status' },
    h('option', { value: '' }, 'any'), STATUSES.map((s) => h('option', { value: s, selected: s === status }, s)));
  const nameIn = h('input', { id: 'filter-name', name: 'name', type: 'search', value: name, placeholder: 'part of a name',
    autocomplete: 'off' });
  const info = h('p', { class: 'muted', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const newer = h('button', { type: 'button', onclick: () => go(-1) }, '← Newer');
  const older = h('button', { type: 'button', onclick: () => go(1) }, 'Older →');
  const compareBtn = h('button', { type: 'button', class: 'primary', disabled: true, onclick: compare }, 'Compare selected');

  const table = h('table', { class: 'jobs', id: 'jobs-table' },
    h('caption', { class: 'sr-only' }, 'Jobs, newest first'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Compare')),
      ['Job', 'Status', 'Progress', 'Strategy', 'Base model', 'Live params', 'Best val IoU', 'Zero-shot IoU',
        'Duration', 'Created'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody);

  fill(main, 
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Jobs'),
      h('a', { class: 'button primary', href: '#/submit' }, 'New job')),
    flashId ? h('p', { class: 'flash', role: 'status' }, 'Submitted ', h('a', { href: `#/job/${flashId}` }, flashId),
      '. It appears below; open it to watch it live.') : null,
    h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault() },
      h('label', { for: 'filter-status' }, 'Status'), statusSel,
      h('label', { for: 'filter-name' }, 'Name contains'), nameIn,
      compareBtn),
    info,
    h('div', { class: 'table-wrap' }, table),
    h('nav', { class: 'pager', 'aria-label': 'Pages' }, newer, older),
  );

  statusSel.addEventListener('change', () => {
    status = statusSel.value;
    restart();
  });
  nameIn.addEventListener('input', debounce(() => {
    name = nameIn.value.trim();
    restart();
  }, 250));

  function syncUrl() {
    const q = new URLSearchParams();
    if (status) q.set('status', status);
    if (name) q.set('name', name);
    history.replaceState(null, '', `#/jobs${q.toString() ? `?${q}` : ''}`);
  }

  function restart() {
    cursors = [''];
    syncUrl();
    load();
  }

  function go(dir) {
    if (dir > 0 && nextCursor) cursors.push(nextCursor);
    if (dir < 0 && cursors.length > 1) cursors.pop();
    load();
  }

  function compare() {
    location.hash = `#/compare?jobs=${[...selected].join(',')}`;
  }

  function updateCompare() {
    compareBtn.disabled = selected.size < 1;
    compareBtn.textContent = `Compare selected (${selected.size})`;
  }
  updateCompare();

  function cells(job) {
    const frac = liveFraction(job);
    const steps = job.progress?.steps || 0;
    const step = job.progress?.step || 0;
    const box = h('input', { type: 'checkbox', 'aria-label': `compare ${job.id} ${job.name}`, checked: selected.has(job.id),
      class: 'pick', value: job.id });
    box.addEventListener('change', () => {
      if (box.checked) selected.add(job.id);
      else selected.delete(job.id);
      updateCompare();
    });
    const zs = job.zero_shot || []; /* null until the final evaluation */
    const ious = zs.map((z) => z.iou).filter((v) => v !== null && v !== undefined);
    const zsMean = ious.length ? ious.reduce((a, v) => a + v, 0) / ious.length : null;
    return [
      box,
      h('span', null, h('a', { href: `#/job/${job.id}`, class: 'job-link' }, job.name), ' ', h('span', { class: 'muted' }, job.id)),
      h('span', { title: job.reason || '' }, statusBadge(job.status), job.wait_for_job && job.status === 'queued'
        ? h('span', { class: 'muted' }, ` waits for ${job.wait_for_job}`) : null),
      h('span', { class: 'progress-cell' },
        h('progress', { max: steps || 1, value: steps ? step : (TERMINAL.has(job.status) ? 1 : 0),
          'aria-label': `progress of ${job.id}` }),
        h('span', { class: 'muted' }, steps ? `${step}/${steps}` : '')),
      ranksOf(job) > 1 ? h('span', null, job.strategy || '—', h('span', { class: 'muted' }, ` · ${ranksOf(job)} ranks`))
        : job.strategy || '—',
      h('span', { class: 'ellipsis', title: job.base_model || '' }, fmtBase(job.base_model)),
      fmtPct(frac),
      fmtNum(job.best_val_iou),
      h('span', { title: zs.map((z) => `${z.dataset}: ${fmtNum(z.iou)}`).join('\n') },
        zsMean === null ? '—' : fmtNum(zsMean), zs.length > 1 ? h('span', { class: 'muted' }, ` mean of ${zs.length}`) : null),
      fmtDuration(jobDuration(job)),
      fmtTime(job.created_at),
    ];
  }

  /* Rows keyed by id; a cell is replaced only when its markup changed. */
  function render() {
    dirty = false;
    lastRender = Date.now();
    const ids = jobs.map((j) => j.id);
    const current = [...tbody.rows].map((r) => r.dataset.id);
    if (ids.join() !== current.join()) {
      fill(tbody, ...jobs.map((j) => h('tr', { dataset: { id: j.id, status: j.status } },
        cells(j).map((c) => h('td', null, c)))));
      if (flashId) tbody.querySelector(`tr[data-id="${flashId}"]`)?.classList.add('highlight');
      return;
    }
    jobs.forEach((j, i) => {
      const tr = tbody.rows[i];
      tr.dataset.status = j.status;
      const next = cells(j);
      next.forEach((c, k) => {
        if (k === 0) return; /* the checkbox keeps its state and focus */
        const td = h('td', null, c);
        if (td.innerHTML !== tr.cells[k].innerHTML) fill(tr.cells[k], ...td.childNodes);
      });
    });
  }

  let seq = 0;
  async function load() {
    const my = ++seq;
    try {
      const page = await api('/jobs', { query: { status, name, limit: PAGE, cursor: cursors[cursors.length - 1] } });
      if (gone || my !== seq) return;
      nextCursor = page.next_cursor;
      newer.disabled = cursors.length <= 1;
      older.disabled = !nextCursor;
      info.textContent = page.jobs.length ? '' : (status || name ? 'No job matches these filters.'
        : 'No jobs yet: submit one.');
      /* a stream event may have been newer than this read: keep its progress */
      const before = new Map(jobs.map((j) => [j.id, j]));
      jobs = page.jobs.map((j) => {
        const was = before.get(j.id);
        return was && was.status === j.status && (was.progress?.step ?? 0) > (j.progress?.step ?? 0)
          ? { ...j, progress: was.progress, params: was.params, chunks: was.chunks } : j;
      });
      render();
      table.dataset.loaded = String(page.jobs.length);
    } catch (e) {
      if (!gone && my === seq) info.textContent = `Could not load jobs: ${e.message}`;
    }
  }
  const reload = debounce(() => !gone && load(), 300);

  /* ---------------------------------------------------------- live */

  const byId = (id) => jobs.find((j) => j.id === id);

  function onEvent(type, data) {
    if (type === 'jobs') {
      /* (re)subscribed: whatever happened before is in a fresh read */
      reload();
      return;
    }
    const job = byId(data.job);
    if (type === 'status') {
      if (job) {
        job.status = data.status;
        job.reason = data.reason ?? null;
        dirty = true;
      }
      /* timings and results change with the status; a new job may belong on the first page */
      if (job || cursors.length === 1) reload();
      return;
    }
    if (!job) return;
    if (type === 'progress') {
      job.progress = { step: data.step, steps: data.steps, loss: data.loss };
      job.params = { ...job.params, live: data.params_live, ...(data.params_total ? { total: data.params_total } : {}) };
      job.chunks = { ...job.chunks, live: data.chunks_live };
      if (job.status === 'queued') job.status = 'running';
      dirty = true;
    } else if (type === 'eval' && data.dataset === 'val' && data.iou !== null && data.iou !== undefined) {
      job.best_val_iou = job.best_val_iou === null || job.best_val_iou === undefined
        ? data.iou : Math.max(job.best_val_iou, data.iou);
      dirty = true;
    }
  }

  function stopPoll() {
    clearInterval(pollTimer);
    pollTimer = null;
  }

  function connect() {
    retryTimer = null;
    const src = new EventSource(urls.allEvents(KINDS));
    es = src;
    table.dataset.live = 'connecting';
    for (const type of ['jobs', ...KINDS]) {
      src.addEventListener(type, (ev) => {
        try {
          onEvent(type, JSON.parse(ev.data));
        } catch {
          /* a malformed event is skipped */
        }
      });
    }
    src.onopen = () => {
      stopPoll();
      table.dataset.live = 'stream';
    };
    src.onerror = () => {
      if (gone || src !== es) return;
      /* while the browser reconnects by itself (CONNECTING), and once it
       * gives up (CLOSED: the daemon answered with an error), the page
       * reads itself slowly */
      table.dataset.live = 'poll';
      if (!pollTimer) {
        reload();
        pollTimer = setInterval(() => !gone && load(), POLL_MS);
      }
      if (src.readyState === EventSource.CLOSED) {
        es = null;
        retryTimer = setTimeout(() => !gone && connect(), RETRY_MS);
      }
    };
  }

  /* rows the stream changed, at most 4 times a second; running jobs'
   * durations once a second */
  const ticker = setInterval(() => {
    if (dirty || (Date.now() - lastRender >= 1000 && jobs.some((j) => j.status === 'running'))) render();
  }, 250);

  connect();
  load();
  return () => {
    gone = true;
    es?.close();
    stopPoll();
    clearTimeout(retryTimer);
    clearInterval(ticker);
  };
}
