/*
 * jobs.js — the jobs list: every job, newest first, filtered by status and
 * name, paginated with the server's next_cursor. The list endpoint gives
 * status, progress and live parameters; strategy and results come from
 * each job's own GET (and best val IoU from its val_iou series), fetched
 * for the rows on screen and cached once the job has ended. The page
 * refreshes itself every 2 s, updating cells in place so focus stays put.
 */
import { api } from './api.js';
import {
  h, fill, fmtPct, fmtNum, fmtDuration, fmtTime, jobDuration, liveFraction, statusBadge, mapLimit, debounce,
  TERMINAL, fmtBase,
} from './util.js';

const PAGE = 20;
const STATUSES = ['queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted'];

/* id -> {status, at, strategy, result, bestVal} */
const details = new Map();

async function loadDetail(job) {
  const have = details.get(job.id);
  const fresh = have && have.status === job.status && (TERMINAL.has(job.status) || Date.now() - have.at < 5000);
  if (fresh) return have;
  const [full, val] = await Promise.all([
    api(`/jobs/${job.id}`),
    api(`/jobs/${job.id}/metrics`, { query: { name: 'val_iou', max_points: 0 } }).catch(() => null),
  ]);
  const series = val?.metrics?.val_iou?.value || [];
  const d = {
    status: full.status,
    at: Date.now(),
    strategy: full.spec?.strategy || '—',
    result: full.result,
    bestVal: series.length ? Math.max(...series) : full.result?.val?.iou ?? null,
  };
  details.set(job.id, d);
  return d;
}

export function mountJobs(main, params) {
  let status = params.get('status') || '';
  let name = params.get('name') || '';
  const flashId = params.get('submitted');
  let cursors = ['']; /* cursor of each page visited; last = current */
  let nextCursor = null;
  let timer = null;
  let gone = false;
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

  function cells(job, d) {
    const frac = liveFraction({ ...job, result: d?.result });
    const steps = job.progress?.steps || 0;
    const step = job.progress?.step || 0;
    const box = h('input', { type: 'checkbox', 'aria-label': `compare ${job.id} ${job.name}`, checked: selected.has(job.id),
      class: 'pick', value: job.id });
    box.addEventListener('change', () => {
      if (box.checked) selected.add(job.id);
      else selected.delete(job.id);
      updateCompare();
    });
    const zs = d?.result?.zero_shot || [];
    const zsMean = zs.length ? zs.reduce((a, z) => a + z.iou, 0) / zs.length : null;
    return [
      box,
      h('span', null, h('a', { href: `#/job/${job.id}`, class: 'job-link' }, job.name), ' ', h('span', { class: 'muted' }, job.id)),
      h('span', { title: job.reason || '' }, statusBadge(job.status), job.wait_for_job && job.status === 'queued'
        ? h('span', { class: 'muted' }, ` waits for ${job.wait_for_job}`) : null),
      h('span', { class: 'progress-cell' },
        h('progress', { max: steps || 1, value: steps ? step : (TERMINAL.has(job.status) ? 1 : 0),
          'aria-label': `progress of ${job.id}` }),
        h('span', { class: 'muted' }, steps ? `${step}/${steps}` : '')),
      d ? d.strategy : '…',
      h('span', { class: 'ellipsis', title: job.base_model || '' }, fmtBase(job.base_model)),
      fmtPct(frac),
      d ? fmtNum(d.bestVal) : '…',
      h('span', { title: zs.map((z) => `${z.dataset}: ${fmtNum(z.iou)}`).join('\n') },
        zsMean === null ? '—' : fmtNum(zsMean), zs.length > 1 ? h('span', { class: 'muted' }, ` mean of ${zs.length}`) : null),
      fmtDuration(jobDuration(job)),
      fmtTime(job.created_at),
    ];
  }

  /* Rows keyed by id; a cell is replaced only when its markup changed. */
  function render(jobs) {
    const ids = jobs.map((j) => j.id);
    const current = [...tbody.rows].map((r) => r.dataset.id);
    if (ids.join() !== current.join()) {
      fill(tbody, ...jobs.map((j) => h('tr', { dataset: { id: j.id, status: j.status } },
        cells(j, details.get(j.id)).map((c) => h('td', null, c)))));
      if (flashId) tbody.querySelector(`tr[data-id="${flashId}"]`)?.classList.add('highlight');
      return;
    }
    jobs.forEach((j, i) => {
      const tr = tbody.rows[i];
      tr.dataset.status = j.status;
      const next = cells(j, details.get(j.id));
      next.forEach((c, k) => {
        if (k === 0) return; /* the checkbox keeps its state and focus */
        const td = h('td', null, c);
        if (td.innerHTML !== tr.cells[k].innerHTML) fill(tr.cells[k], ...td.childNodes);
      });
    });
  }

  let seq = 0;
  async function load() {
    clearTimeout(timer);
    const my = ++seq;
    try {
      const page = await api('/jobs', { query: { status, name, limit: PAGE, cursor: cursors[cursors.length - 1] } });
      if (gone || my !== seq) return;
      nextCursor = page.next_cursor;
      newer.disabled = cursors.length <= 1;
      older.disabled = !nextCursor;
      info.textContent = page.jobs.length ? '' : (status || name ? 'No job matches these filters.'
        : 'No jobs yet: submit one.');
      render(page.jobs);
      await mapLimit(page.jobs, 4, (j) => loadDetail(j).catch(() => null));
      if (gone || my !== seq) return;
      render(page.jobs);
      table.dataset.loaded = String(page.jobs.length);
    } catch (e) {
      if (!gone) info.textContent = `Could not load jobs: ${e.message}`;
    }
    if (!gone && my === seq) timer = setTimeout(load, 2000);
  }

  load();
  return () => {
    gone = true;
    clearTimeout(timer);
  };
}
