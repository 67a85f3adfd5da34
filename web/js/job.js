/*
 * job.js — one job, live while it runs. The page opens the job's event
 * stream first and buffers what arrives, then loads the job, its groups,
 * freeze decisions, metric series and heatmap in parallel (the long
 * series downsampled by the server), draws, and replays the buffer: so
 * nothing falls between the snapshot and the stream. From then on:
 *
 *   progress  -> progress bar, loss and live-parameter curves (appended)
 *   eval      -> val IoU/F1 curves (appended); final ones -> results table
 *   drift     -> each group's latest drift; drift chart and heatmap are
 *                re-read from the server every few seconds while it comes
 *   freeze    -> freeze timeline, groups frozen, marks on the charts
 *   status    -> when the job ends: one last full read, and updates stop
 *
 * Everything redraws from a 1 s tick that only touches what changed.
 */
import { api, ApiError, urls } from './api.js';
import { makeChart, align } from './charts.js';
import { makeHeatmap } from './heatmap.js';
import {
  h, fill, fmtInt, fmtNum, fmtPct, fmtDuration, fmtTime, jobDuration, statusBadge, stageOf, stagePrefixes, mapLimit,
  TERMINAL, isLive, newId, debounce, colour, fmtBase, paramsTotal, ranksOf,
} from './util.js';

const CLASS_NAMES = { conv: 'Conv2d', linear: 'Linear', layernorm: 'LayerNorm', batchnorm: 'BatchNorm2d' };

export function mountJob(main, id) {
  let gone = false;
  let job = null;
  let groups = []; /* by idx */
  let freezes = [];
  const series = {}; /* metric name -> {x: [], y: []} */
  let es = null;
  let buffer = []; /* events that arrived before the first load finished */
  let loaded = false;
  let finished = false;
  const dirty = new Set();
  const timers = [];
  const charts = [];

  /* ---------------------------------------------------------- skeleton */

  const title = h('h1', { tabindex: '-1' }, id);
  const liveNote = h('span', { class: 'live-note', role: 'status' });
  const statusEl = h('span');
  const progress = h('progress', { max: 1, value: 0, 'aria-label': 'progress' });
  const progressText = h('span', { class: 'muted' });
  const facts = h('dl', { class: 'facts' });
  const actions = h('div', { class: 'actions' });
  const actionMsg = h('p', { class: 'action-msg', role: 'status' });

  const section = (sid, heading, ...body) => h('section', { id: `sec-${sid}`, class: 'panel', 'aria-labelledby': `h-${sid}` },
    h('h2', { id: `h-${sid}`, tabindex: '-1' }, heading), ...body);

  /* drift controls */
  const modeSel = h('select', { id: 'drift-mode' }, [['layer', 'layer'], ['class', 'layer class'], ['stage', 'stage'],
    ['group', 'one group']].map(([v, t]) => h('option', { value: v }, t)));
  const whichSel = h('select', { id: 'drift-which' });
  const groupIn = h('input', { id: 'drift-group', type: 'text', list: 'dl-group-keys', autocomplete: 'off',
    spellcheck: 'false', placeholder: 'a group key', hidden: true });
  const keysList = h('datalist', { id: 'dl-group-keys' });
  const scaleName = newId('scale');
  const linRadio = h('input', { type: 'radio', name: scaleName, id: `${scaleName}-lin`, value: 'linear', checked: true });
  const logRadio = h('input', { type: 'radio', name: scaleName, id: `${scaleName}-log`, value: 'log' });
  const driftInfo = h('p', { class: 'muted', 'aria-live': 'polite' });
  const driftReadout = h('p', { class: 'readout', 'aria-live': 'off' }, '\u00a0');
  const driftBox = h('div', { class: 'chart-box', id: 'drift-chart' });
  const heatBox = h('div', { class: 'chart-box', id: 'heatmap' });
  const heatInfo = h('p', { class: 'muted' });
  const freezeChartBox = h('div', { class: 'chart-box', id: 'freeze-chart' });
  const freezeTable = h('table', { class: 'data', id: 'freeze-table' });
  const paramsBox = h('div', { class: 'chart-box', id: 'params-chart' });
  const lossBox = h('div', { class: 'chart-box', id: 'loss-chart' });
  const valBox = h('div', { class: 'chart-box', id: 'val-chart' });
  const resultsBox = h('div', { id: 'results' });
  const groupFilter = h('input', { id: 'groups-filter', type: 'search', placeholder: 'part of a key', autocomplete: 'off' });
  const groupState = h('select', { id: 'groups-state' }, h('option', { value: '' }, 'all'), h('option', { value: 'live' }, 'live'),
    h('option', { value: 'frozen' }, 'frozen'));
  const groupsInfo = h('p', { class: 'muted', 'aria-live': 'polite' });
  const groupsTable = h('table', { class: 'data groups', id: 'groups-table' });

  const jump = (sid, text) => h('button', { type: 'button', class: 'link', onclick: () => {
    const sec = main.querySelector(`#sec-${sid}`);
    sec.scrollIntoView({ block: 'start' });
    sec.querySelector('h2').focus({ preventScroll: true });
  } }, text);

  const sections = [['drift', 'Drift'], ['heatmap', 'Heatmap'], ['freezes', 'Freezes'], ['training', 'Training'],
    ['results', 'Results'], ['groups', 'Groups']];

  fill(main, 
    h('div', { class: 'job-head' },
      h('div', { class: 'page-head' }, title, statusEl, liveNote),
      h('div', { class: 'progress-line' }, progress, progressText),
      facts, actions, actionMsg,
      h('nav', { class: 'in-page', 'aria-label': 'Sections' }, sections.map(([sid, t]) => jump(sid, t)))),
    keysList,
    section('drift', 'Drift per group (JS EMA)',
      h('div', { class: 'controls' },
        h('label', { for: 'drift-mode' }, 'Show by'), modeSel,
        h('label', { for: 'drift-which' }, 'Which'), whichSel,
        h('label', { for: 'drift-group', class: 'sr-only' }, 'Group key'), groupIn,
        h('span', { class: 'radios', role: 'radiogroup', 'aria-label': 'y scale' },
          linRadio, h('label', { for: `${scaleName}-lin` }, 'linear'),
          logRadio, h('label', { for: `${scaleName}-log` }, 'log'))),
      driftInfo, driftBox, driftReadout,
      h('p', { class: 'help' }, 'Dashed rules: freeze decisions. Diamonds: the step each group froze. Drag to zoom, double-click to reset; hover a curve to read it.')),
    section('heatmap', 'Drift heatmap: groups × steps', heatInfo, heatBox),
    section('freezes', 'Freeze timeline', freezeChartBox, h('div', { class: 'table-wrap tall' }, freezeTable)),
    section('training', 'Training',
      h('div', { class: 'chart-grid' },
        h('figure', null, h('figcaption', null, 'Live parameters (%)'), paramsBox),
        h('figure', null, h('figcaption', null, 'Loss'), lossBox),
        h('figure', null, h('figcaption', null, 'Validation IoU and F1'), valBox))),
    section('results', 'Results: validation and zero-shot', resultsBox),
    section('groups', 'Parameter groups',
      h('div', { class: 'controls' }, h('label', { for: 'groups-filter' }, 'Key contains'), groupFilter,
        h('label', { for: 'groups-state' }, 'State'), groupState),
      groupsInfo, h('div', { class: 'table-wrap tall' }, groupsTable)),
  );

  /* ---------------------------------------------------------- header */

  function renderHead() {
    if (!job) return;
    title.textContent = `${job.name} `;
    title.append(h('span', { class: 'muted' }, job.id));
    document.title = `${job.name} (${job.id}) — fisherd`;
    fill(statusEl, statusBadge(job.status), job.reason ? h('span', { class: 'muted' }, ` ${job.reason}`) : null);
    const p = job.progress || {};
    progress.max = p.steps || 1;
    progress.value = p.steps ? p.step : TERMINAL.has(job.status) ? 1 : 0;
    progressText.textContent = p.steps ? `step ${fmtInt(p.step)} of ${fmtInt(p.steps)}${p.loss != null ? ` · loss ${fmtNum(p.loss)}` : ''}` : job.status === 'queued' ? (job.wait_for_job ? `waiting for ${job.wait_for_job}` : 'queued') : '';
    const params = { ...job.params, total: paramsTotal(job) };
    const chunks = job.chunks || {};
    const r = job.result || {};
    /* the server's best so far, and what the stream added since */
    const seen = series.val_iou?.y.filter((v) => v !== null) || [];
    const best = [job.best_val_iou, ...seen].filter((v) => v !== null && v !== undefined);
    const valIou = best.length ? Math.max(...best) : r.val?.iou;
    const row = (k, v) => h('div', null, h('dt', null, k), h('dd', null, v));
    fill(facts, 
      row('Strategy', job.strategy || job.spec?.strategy || '—'),
      /* a distributed job (MPI) says how many ranks; a local one shows nothing new */
      ranksOf(job) > 1 ? h('div', { id: 'job-ranks' }, h('dt', null, 'Ranks'), h('dd', null, `${ranksOf(job)} ranks`)) : null,
      row('Base model', fmtBase(job.base_model)),
      row('Live parameters', params.total ? `${fmtPct((params.live ?? params.total) / params.total, 2)} (${fmtInt(params.live ?? params.total)} of ${fmtInt(params.total)})` : '—'),
      row('Live groups', chunks.total ? `${fmtInt(chunks.live ?? chunks.total)} of ${fmtInt(chunks.total)}` : '—'),
      row('Best val IoU', fmtNum(valIou)),
      row('Created', fmtTime(job.created_at)),
      row('Duration', fmtDuration(jobDuration(job))),
    );
    renderActions();
  }

  let confirming = false;
  function renderActions() {
    const a = [];
    if (isLive(job.status) || job.status === 'interrupted') a.push(h('button', { type: 'button', id: 'btn-cancel', onclick: cancel }, 'Cancel job'));
    if (!isLive(job.status)) {
      if (confirming) {
        a.push(h('span', { class: 'confirm' }, `Delete ${job.id} and its history? `,
          h('button', { type: 'button', class: 'danger', id: 'btn-delete-yes', onclick: del }, 'Delete'),
          h('button', { type: 'button', id: 'btn-delete-no', onclick: () => {
            confirming = false;
            renderActions();
            actions.querySelector('#btn-delete')?.focus();
          } }, 'Keep')));
      } else {
        a.push(h('button', { type: 'button', class: 'danger', id: 'btn-delete', onclick: () => {
          confirming = true;
          renderActions();
          actions.querySelector('#btn-delete-no')?.focus();
        } }, 'Delete…'));
      }
    }
    if (job.status === 'succeeded') a.push(h('a', { class: 'button', href: urls.model(id), download: `${id}.safetensors` }, 'Download model'));
    a.push(h('a', { class: 'button', href: urls.driftCsv(id), download: `${id}-drift.csv` }, 'Drift CSV'));
    a.push(h('a', { class: 'button', href: urls.metricsCsv(id), download: `${id}-metrics.csv` }, 'Metrics CSV'));
    a.push(h('a', { class: 'button', href: `#/compare?jobs=${id}` }, 'Compare…'));
    const focusedId = document.activeElement?.id;
    fill(actions, ...a);
    if (focusedId && actions.querySelector(`#${focusedId}`)) actions.querySelector(`#${focusedId}`).focus();
  }

  async function cancel() {
    actionMsg.textContent = 'Cancelling…';
    try {
      job = { ...job, ...(await api(`/jobs/${id}/cancel`, { method: 'POST' })) };
      actionMsg.textContent = `Cancel requested: ${job.status}.`;
      renderHead();
    } catch (e) {
      actionMsg.textContent = `Could not cancel: ${e.message}`;
    }
  }

  async function del() {
    try {
      await api(`/jobs/${id}`, { method: 'DELETE' });
      location.hash = '#/jobs';
    } catch (e) {
      confirming = false;
      renderActions();
      actionMsg.textContent = `Could not delete: ${e.message}`;
    }
  }

  /* ---------------------------------------------------------- drift chart */

  let driftChart = null;
  let driftData = []; /* [{idx, key, step[], js_ema[]}] */
  let driftSel = null; /* {mode, which} of driftData */
  let driftBusy = false;

  const layerList = () => {
    const m = new Map();
    for (const g of groups) {
      if (!m.has(g.layer)) m.set(g.layer, { layer: g.layer, cls: g.layer_class, depth: g.depth, n: 0 });
      m.get(g.layer).n++;
    }
    return [...m.values()].sort((a, b) => a.depth - b.depth);
  };

  function fillWhich() {
    const mode = modeSel.value;
    groupIn.hidden = mode !== 'group';
    whichSel.hidden = mode === 'group';
    main.querySelector('label[for="drift-which"]').hidden = mode === 'group';
    let opts = [];
    if (mode === 'layer') opts = layerList().map((l) => [l.layer, `${l.layer} (${CLASS_NAMES[l.cls] || l.cls}, ${l.n})`]);
    if (mode === 'class') {
      const c = new Map();
      for (const g of groups) c.set(g.layer_class, (c.get(g.layer_class) || 0) + 1);
      opts = [...c].map(([k, n]) => [k, `${CLASS_NAMES[k] || k} (${n} groups)`]);
    }
    if (mode === 'stage') {
      const c = new Map();
      for (const g of [...groups].sort((a, b) => a.depth - b.depth)) c.set(stageOf(g.key), (c.get(stageOf(g.key)) || 0) + 1);
      opts = [...c].map(([k, n]) => [k, `${k} (${n} groups)`]);
    }
    const keep = whichSel.value;
    fill(whichSel, ...opts.map(([v, t]) => h('option', { value: v }, t)));
    if (opts.some(([v]) => v === keep)) whichSel.value = keep;
  }

  function selection() {
    const mode = modeSel.value;
    return { mode, which: mode === 'group' ? groupIn.value.trim() : whichSel.value };
  }

  /* The /drift query covering a selection: one request whatever the mode
   * (a stage is several prefixes, which the server ORs). */
  function driftQueries(sel) {
    if (sel.mode === 'group') return groups.some((g) => g.key === sel.which) ? [{ group: sel.which }] : [];
    if (sel.mode === 'layer') return [{ prefix: `${sel.which}.` }];
    if (sel.mode === 'stage') {
      const prefixes = stagePrefixes(sel.which);
      return prefixes ? [{ prefix: prefixes }] : [];
    }
    if (sel.mode === 'class') return [{ layer_class: sel.which }];
    return [];
  }

  function expectedCount(sel) {
    if (sel.mode === 'group') return groups.some((g) => g.key === sel.which) ? 1 : 0;
    if (sel.mode === 'layer') return groups.filter((g) => g.layer === sel.which).length;
    if (sel.mode === 'class') return groups.filter((g) => g.layer_class === sel.which).length;
    return groups.filter((g) => stageOf(g.key) === sel.which).length;
  }

  /* rebuild: the selection changed (new series). fromTick: a live refresh,
   * skipped while a read is in flight; otherwise the newest call wins. */
  let driftSeq = 0;
  async function loadDrift(rebuild, fromTick = false) {
    const sel = selection();
    if (!sel.which || (fromTick && driftBusy)) return;
    const my = ++driftSeq;
    driftBusy = true;
    try {
      const qs = driftQueries(sel);
      const n = Math.max(1, expectedCount(sel));
      /* ≤ 1000 points a curve (the chart is ~1000 px wide), ≤ ~100k in all */
      const maxPoints = Math.max(100, Math.min(1000, Math.floor(100000 / n)));
      const parts = await mapLimit(qs, 6, (q) => api(`/jobs/${id}/drift`, { query: { ...q, max_points: maxPoints } }));
      if (gone || my !== driftSeq) return;
      const seen = new Set();
      const list = [];
      for (const p of parts) for (const s of p.series) if (!seen.has(s.idx)) {
        seen.add(s.idx);
        list.push(s);
      }
      const depth = (idx) => groups[idx]?.depth ?? 0;
      list.sort((a, b) => depth(a.idx) - depth(b.idx) || a.idx - b.idx);
      const same = driftSel && driftSel.mode === sel.mode && driftSel.which === sel.which
        && driftData.length === list.length && !rebuild;
      driftData = list;
      driftSel = sel;
      driftInfo.textContent = qs.length ? `${list.length} group${list.length === 1 ? '' : 's'}` +
        `${list.length ? `, up to ${fmtInt(Math.max(...list.map((s) => s.points)))} measurements each` : ' measured so far'}` +
        `${list.some((s) => s.points > s.step.length) ? ` (drawn downsampled to ≤ ${maxPoints} points)` : ''}.`
        : sel.mode === 'group' ? 'No group with that key.' : '';
      drawDrift(!same);
    } catch (e) {
      if (!gone && my === driftSeq) driftInfo.textContent = `Could not load drift: ${e.message}`;
    } finally {
      if (my === driftSeq) driftBusy = false;
    }
  }

  function drawDrift(rebuild) {
    const log = logRadio.checked;
    const n = driftData.length;
    if (rebuild || !driftChart) {
      if (driftChart) {
        driftChart.destroy();
        charts.splice(charts.indexOf(driftChart), 1);
      }
      driftChart = makeChart(driftBox, {
        label: `Drift (JS EMA) over steps for ${n} groups`,
        series: driftData.map((s, i) => ({ label: s.key, stroke: colour(i, n), width: n > 40 ? 1 : 1.5 })),
        yLabel: 'JS EMA', log, legend: false, height: 300,
        marks: driftMarks,
        onFocus: (si, di) => {
          if (si === null || di === null || !driftChart) return;
          const s = driftData[si - 1];
          if (!s) return;
          const d = driftChart.u.data;
          const g = groups[s.idx];
          driftReadout.textContent = `${s.key} — step ${d[0][di]}: JS EMA ${fmtNum(d[si][di], 4)} — ${g && !g.live ? `frozen at step ${g.frozen_at}` : 'live'}`;
        },
      });
      charts.push(driftChart);
    }
    /* log: drop values under 1e-6 (zero drift, in effect); uPlot's log axis
     * cannot tick magnitudes below 1e-16, and they would squash the rest */
    const data = align(driftData.map((s) => ({ x: s.step, y: log ? s.js_ema.map((v) => (v >= 1e-6 ? v : null)) : s.js_ema })));
    driftChart.setData(data);
    driftChart.el.dataset.mode = driftSel.mode;
    driftChart.el.dataset.which = driftSel.which;
  }

  function freezeRules() {
    return freezes.filter((f) => f.kind !== 'zero_fisher' || f.n_frozen).map((f) => ({ x: f.step }));
  }

  function driftMarks() {
    const points = [];
    driftData.forEach((s, i) => {
      const g = groups[s.idx];
      if (!g || g.live || g.frozen_at === null || g.frozen_at === undefined) return;
      let k = s.step.length - 1;
      while (k > 0 && s.step[k] > g.frozen_at) k--;
      if (k < 0) return;
      const y = s.js_ema[k];
      points.push({ si: i + 1, x: g.frozen_at, y: logRadio.checked && !(y >= 1e-6) ? null : y });
    });
    return { rules: freezeRules(), points };
  }

  modeSel.addEventListener('change', () => {
    fillWhich();
    if (modeSel.value === 'group' && !groupIn.value) groupIn.value = groups[0]?.key || '';
    loadDrift(true);
  });
  whichSel.addEventListener('change', () => loadDrift(true));
  groupIn.addEventListener('change', () => loadDrift(true));
  linRadio.addEventListener('change', () => drawDrift(true));
  logRadio.addEventListener('change', () => drawDrift(true));

  function plotGroup(key) {
    modeSel.value = 'group';
    fillWhich();
    groupIn.value = key;
    loadDrift(true);
    main.querySelector('#sec-drift').scrollIntoView({ block: 'start' });
    groupIn.focus({ preventScroll: true });
  }

  /* ---------------------------------------------------------- heatmap */

  const heat = makeHeatmap(heatBox, { onPick: plotGroup });
  let heatBusy = false;
  let heatSeq = 0;
  async function loadHeat(fromTick = false) {
    if (fromTick && heatBusy) return;
    const my = ++heatSeq;
    heatBusy = true;
    try {
      /* 4 significant digits: a colour scale needs no more, and the reply is
       * ~2.6x smaller than at full precision */
      const hm = await api(`/jobs/${id}/heatmap`, { query: { max_points: heat.columns(), precision: 4 } });
      if (gone || my !== heatSeq) return;
      heat.setData(hm);
      heatInfo.textContent = hm.groups.length
        ? `${fmtInt(hm.groups.length)} groups (rows, by depth) × ${fmtInt(hm.measurements)} measurements, in ${hm.step_from.length} columns (each the largest JS EMA of its steps). Click a row to plot it.`
        : 'No groups yet: they are registered when training starts.';
    } catch (e) {
      if (!gone && my === heatSeq) heatInfo.textContent = `Could not load the heatmap: ${e.message}`;
    } finally {
      if (my === heatSeq) heatBusy = false;
    }
  }

  /* ---------------------------------------------------------- freezes */

  let freezeChart = null;
  function renderFreezes() {
    const total = job ? paramsTotal(job) : null;
    const chunksTotal = job?.chunks?.total || groups.length;
    const rows = freezes.map((f) => {
      const keys = f.frozen_keys || (f.frozen || []).map((i) => groups[i]?.key || `#${i}`);
      return h('tr', null,
        h('td', null, fmtInt(f.step)),
        h('td', null, f.kind === 'zero_fisher' ? 'zero Fisher' : f.metric || f.kind),
        h('td', null, fmtNum(f.mean, 4)), h('td', null, fmtNum(f.std, 4)), h('td', null, fmtNum(f.lambda)),
        h('td', null, fmtNum(f.threshold, 4)),
        h('td', null, keys.length ? h('details', null, h('summary', null, `${fmtInt(f.n_frozen ?? keys.length)} froze`),
          h('ul', { class: 'keys' }, keys.map((k) => h('li', null, k)))) : '0'),
        h('td', null, `${fmtInt(f.chunks_live)} of ${fmtInt(chunksTotal)} groups`),
        h('td', null, `${fmtInt(f.params_live)}${total ? ` (${fmtPct(f.params_live / total, 2)})` : ''}`));
    });
    const live = groups.filter((g) => g.live);
    fill(freezeTable, 
      h('caption', null, freezes.length ? `${freezes.length} freeze decision${freezes.length === 1 ? '' : 's'}; ${live.length} group${live.length === 1 ? '' : 's'} live now`
        + (live.length && live.length <= 40 ? `: ${live.map((g) => g.key).join(', ')}` : '.')
        : job?.spec?.strategy === 'fisher' ? 'No freeze decision yet.' : `No freeze decisions: strategy ${job?.spec?.strategy || '—'} does not freeze.`),
      h('thead', null, h('tr', null, ['Step', 'Score', 'Mean', 'Std', 'λ', 'Threshold', 'Froze', 'Stays live', 'Live params']
        .map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows));
    freezeTable.dataset.rows = String(freezes.length);
    if (!freezeChart) {
      freezeChart = makeChart(freezeChartBox, {
        label: 'Freeze decisions: score mean and threshold, and groups live, per decision',
        series: [
          { label: 'mean score', stroke: '#1f77b4', points: true },
          { label: 'threshold', stroke: '#d62728', points: true, dash: [5, 3] },
          { label: 'groups live', stroke: '#2ca02c', points: true, scale: 'y2' },
        ],
        yLabel: 'score', y2Label: 'groups live', height: 200,
      });
      charts.push(freezeChart);
    }
    const fz = freezes.filter((f) => f.kind !== 'zero_fisher');
    freezeChartBox.hidden = !fz.length;
    freezeChart.setData([fz.map((f) => f.step), fz.map((f) => f.mean), fz.map((f) => f.threshold), fz.map((f) => f.chunks_live)]);
  }

  /* ---------------------------------------------------------- training curves */

  let paramsChart = null;
  let lossChart = null;
  let valChart = null;

  function put(name, step, value) {
    if (value === null || value === undefined) return;
    const s = series[name] || (series[name] = { x: [], y: [] });
    const n = s.x.length;
    if (n && step <= s.x[n - 1]) {
      if (step === s.x[n - 1]) s.y[n - 1] = value;
      return;
    }
    s.x.push(step);
    s.y.push(value);
  }

  function renderTraining() {
    const total = job ? paramsTotal(job) : null;
    if (!paramsChart) {
      paramsChart = makeChart(paramsBox, { label: 'Live parameters in percent over steps',
        series: [{ label: 'live params %', stroke: '#2ca02c' }], yLabel: '%', height: 200, yRange: [0, 100],
        marks: () => ({ rules: freezeRules() }) });
      lossChart = makeChart(lossBox, { label: 'Training and validation loss over steps',
        series: [{ label: 'train loss', stroke: '#1f77b4', width: 1 }, { label: 'val loss', stroke: '#ff7f0e', points: true }],
        yLabel: 'loss', height: 200 });
      valChart = makeChart(valBox, { label: 'Validation IoU and F1 over steps',
        series: [{ label: 'val IoU', stroke: '#d62728', points: true }, { label: 'val F1', stroke: '#9467bd', points: true }],
        yLabel: 'score', height: 200 });
      charts.push(paramsChart, lossChart, valChart);
    }
    const pl = series.params_live || { x: [], y: [] };
    paramsChart.setData([pl.x, total ? pl.y.map((v) => (100 * v) / total) : pl.y]);
    const empty = { x: [], y: [] };
    lossChart.setData(align([series.loss || empty, series.val_loss || empty]));
    valChart.setData(align([series.val_iou || empty, series.val_f1 || empty]));
  }

  /* ---------------------------------------------------------- results */

  function renderResults() {
    const evals = (job?.evals || []).slice().sort((a, b) => (a.dataset === 'val' ? -1 : b.dataset === 'val' ? 1 : 0));
    const zsSpec = job?.spec?.data?.zero_shot || [];
    const describe = (d) => (d.synthetic ? `synthetic ${d.synthetic.domain}` : d.path);
    if (!evals.length) {
      fill(resultsBox, h('p', { class: 'muted' }, zsSpec.length
        ? `Zero-shot sets (${zsSpec.map(describe).join(', ')}) are evaluated when the job ends.`
        : 'Final results appear when the job ends. This job has no zero-shot sets.'));
      return;
    }
    const r = job.result || {};
    fill(resultsBox, 
      h('table', { class: 'data', id: 'results-table' },
        h('caption', null, `Final evaluation at step ${fmtInt(evals[0].step)}${r.best_step ? `; best step ${fmtInt(r.best_step)}` : ''}`),
        h('thead', null, h('tr', null, ['Dataset', 'Kind', 'IoU', 'F1', 'Accuracy', 'Precision', 'Recall', 'Loss']
          .map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, evals.map((e) => h('tr', null,
          h('th', { scope: 'row' }, e.dataset), h('td', null, e.dataset === 'val' ? 'in-domain' : 'zero-shot'),
          h('td', null, fmtNum(e.iou)), h('td', null, fmtNum(e.f1)), h('td', null, fmtNum(e.accuracy)),
          h('td', null, fmtNum(e.precision)), h('td', null, fmtNum(e.recall)), h('td', null, fmtNum(e.loss)))))),
      r.wall_seconds ? h('p', { class: 'muted' }, `Wall time ${fmtDuration(r.wall_seconds)}; mean trainable parameters over the run ${fmtInt(Math.round(r.params_trainable_mean || 0))} of ${fmtInt(r.parameters)}.`) : null,
    );
  }

  /* ---------------------------------------------------------- groups table */

  const cols = [
    { key: 'key', label: 'Key', get: (g) => g.key },
    { key: 'layer_class', label: 'Class', get: (g) => g.layer_class },
    { key: 'depth', label: 'Depth', get: (g) => g.depth, num: true },
    { key: 'size', label: 'Size', get: (g) => g.size, num: true },
    { key: 'live', label: 'State', get: (g) => (g.live ? 1 : 0), num: true },
    { key: 'frozen_at', label: 'Frozen at', get: (g) => g.frozen_at ?? Infinity, num: true },
    { key: 'js_ema', label: 'Latest drift', get: (g) => g.js_ema ?? -1, num: true },
  ];
  let sortKey = 'depth';
  let sortDir = 1;

  function renderGroups() {
    const q = groupFilter.value.trim().toLowerCase();
    const st = groupState.value;
    const col = cols.find((c) => c.key === sortKey);
    const list = groups.filter((g) => (!q || g.key.toLowerCase().includes(q)) && (!st || (st === 'live') === g.live));
    list.sort((a, b) => {
      const x = col.get(a);
      const y = col.get(b);
      const c = col.num ? x - y : String(x).localeCompare(String(y));
      return (c || a.idx - b.idx) * sortDir;
    });
    const focused = document.activeElement?.dataset?.sort;
    const head = h('tr', null, cols.map((c) => h('th', { scope: 'col', 'aria-sort': c.key === sortKey ? (sortDir > 0 ? 'ascending' : 'descending') : 'none' },
      h('button', { type: 'button', class: 'sort', dataset: { sort: c.key }, onclick: () => {
        if (sortKey === c.key) sortDir = -sortDir;
        else {
          sortKey = c.key;
          sortDir = 1;
        }
        renderGroups();
      } }, c.label, h('span', { 'aria-hidden': 'true' }, c.key === sortKey ? (sortDir > 0 ? ' ▲' : ' ▼') : '')))));
    const body = document.createElement('tbody');
    for (const g of list) {
      body.append(h('tr', { class: g.live ? '' : 'frozen' },
        h('td', null, h('button', { type: 'button', class: 'link key', title: 'plot its drift', onclick: () => plotGroup(g.key) }, g.key)),
        h('td', null, CLASS_NAMES[g.layer_class] || g.layer_class),
        h('td', { class: 'num' }, g.depth), h('td', { class: 'num' }, fmtInt(g.size)),
        h('td', null, g.live ? 'live' : 'frozen'),
        h('td', { class: 'num' }, g.frozen_at ?? '—'),
        h('td', { class: 'num' }, g.js_ema === null || g.js_ema === undefined ? '—' : fmtNum(g.js_ema, 4))));
    }
    fill(groupsTable, h('caption', { class: 'sr-only' }, 'Parameter groups; column buttons sort'), h('thead', null, head), body);
    groupsTable.dataset.rows = String(list.length);
    const live = groups.filter((g) => g.live).length;
    groupsInfo.textContent = `${fmtInt(list.length)} of ${fmtInt(groups.length)} groups shown; ${fmtInt(live)} live, ${fmtInt(groups.length - live)} frozen.`;
    if (focused) groupsTable.querySelector(`button[data-sort="${focused}"]`)?.focus();
  }
  groupFilter.addEventListener('input', debounce(renderGroups, 150));
  groupState.addEventListener('change', renderGroups);

  /* ---------------------------------------------------------- loading */

  async function loadGroups() {
    const g = await api(`/jobs/${id}/groups`);
    groups = [];
    for (const x of g.groups) groups[x.idx] = x;
    groups = groups.filter(Boolean);
    fill(keysList, ...groups.map((x) => h('option', { value: x.key })));
  }

  async function loadFreezes() {
    const f = await api(`/jobs/${id}/freezes`);
    freezes = f.freezes;
  }

  async function loadMetrics() {
    const m = await api(`/jobs/${id}/metrics`, { query: { max_points: 1000 } });
    for (const k of Object.keys(series)) delete series[k];
    for (const [name, s] of Object.entries(m.metrics)) series[name] = { x: s.step.slice(), y: s.value.slice() };
  }

  /* Everything, from the server (first load, and once more at the end).
   * The drift read starts as soon as the groups are known; the groups
   * table, below the fold, is drawn last. */
  async function loadAll(known) {
    if (known) {
      job = known;
      renderHead();
    }
    const groupsThenDrift = loadGroups().then(() => {
      if (gone) return null;
      if (!whichSel.options.length) {
        fillWhich();
        /* start on the first layer (by depth); the user picks from there */
        const first = layerList()[0];
        if (first) whichSel.value = first.layer;
      }
      return loadDrift(false);
    });
    const [j] = await Promise.all([known || api(`/jobs/${id}`), groupsThenDrift, loadFreezes(), loadMetrics(), loadHeat()]);
    if (gone) return;
    job = j;
    renderHead();
    renderFreezes();
    renderTraining();
    renderResults();
    driftChart?.redraw();
    renderGroups();
  }

  /* ---------------------------------------------------------- live */

  function onEvent(type, data) {
    if (!loaded) {
      buffer.push([type, data]);
      return;
    }
    switch (type) {
      case 'job': {
        /* a snapshot taken before the first load may be older than it */
        if ((data.progress?.step ?? 0) >= (job?.progress?.step ?? 0)) job = { ...data, spec: job?.spec };
        else job.status = data.status;
        dirty.add('head');
        if (TERMINAL.has(data.status) || data.status === 'interrupted') finish();
        break;
      }
      case 'progress':
        job.progress = { step: data.step, steps: data.steps, loss: data.loss };
        job.params = { ...job.params, live: data.params_live, ...(data.params_total ? { total: data.params_total } : {}) };
        job.chunks = { ...job.chunks, live: data.chunks_live };
        if (job.status === 'queued') job.status = 'running';
        put('loss', data.step, data.loss);
        put('params_live', data.step, data.params_live);
        dirty.add('head').add('training');
        break;
      case 'eval':
        if (data.dataset === 'val') {
          put('val_iou', data.step, data.iou);
          put('val_f1', data.step, data.f1);
          put('val_loss', data.step, data.loss);
          dirty.add('training').add('head');
        }
        break;
      case 'drift':
        for (let i = 0; i < data.idx.length; i++) {
          const g = groups[data.idx[i]];
          if (g) {
            g.js_ema = data.js_ema[i];
            g.js_step = data.step;
          }
        }
        dirty.add('drift').add('heat').add('groups');
        break;
      case 'freeze': {
        for (const i of data.frozen) {
          const g = groups[i];
          if (g) {
            g.live = false;
            g.frozen_at = data.step;
          }
        }
        if (!freezes.some((f) => f.step === data.step && f.kind === data.kind)) {
          freezes.push({ ...data, n_frozen: data.frozen.length });
        }
        job.chunks = { ...job.chunks, live: data.chunks_live };
        job.params = { ...job.params, live: data.params_live };
        dirty.add('freezes').add('groups').add('drift').add('heat').add('head');
        break;
      }
      case 'groups':
        dirty.add('regroup');
        break;
      case 'status':
        job.status = data.status;
        job.reason = data.reason;
        dirty.add('head');
        if (TERMINAL.has(data.status) || data.status === 'interrupted') finish();
        break;
      default:
    }
  }

  function connect() {
    es = new EventSource(urls.events(id));
    liveNote.textContent = 'live';
    liveNote.className = 'live-note on';
    for (const t of ['job', 'progress', 'drift', 'freeze', 'eval', 'checkpoint', 'groups', 'status']) {
      es.addEventListener(t, (ev) => {
        try {
          onEvent(t, JSON.parse(ev.data));
        } catch {
          /* a malformed event is skipped */
        }
      });
    }
    es.onerror = async () => {
      /* the server closes the stream when the job ends; EventSource would reconnect */
      es?.close();
      es = null;
      if (gone || finished) return;
      try {
        const j = await api(`/jobs/${id}`);
        if (gone) return;
        if (isLive(j.status)) {
          liveNote.textContent = 'reconnecting…';
          timers.push(setTimeout(() => !gone && !finished && connect(), 1500));
        } else {
          if (job) job.status = j.status;
          finish();
        }
      } catch {
        liveNote.textContent = 'connection lost';
      }
    };
  }

  async function finish() {
    if (finished) return;
    finished = true;
    es?.close();
    es = null;
    liveNote.textContent = `${job?.status || 'ended'} — updates stopped`;
    liveNote.className = 'live-note off';
    for (const t of timers) clearInterval(t);
    await settle();
    try {
      await loadAll();
    } catch {
      /* keep what we have */
    }
    main.dataset.final = '1';
  }

  /* resolves when no drift or heatmap read is in flight */
  async function settle() {
    for (let i = 0; i < 50 && (driftBusy || heatBusy); i++) await new Promise((r) => setTimeout(r, 50));
  }

  let ticks = 0;
  async function tick() {
    if (gone || !loaded) return;
    ticks++;
    if (dirty.delete('regroup')) {
      await loadGroups();
      fillWhich();
      if (!whichSel.value && layerList()[0]) whichSel.value = layerList()[0].layer;
      dirty.add('drift').add('heat').add('groups');
    }
    if (dirty.delete('head')) renderHead();
    if (dirty.delete('training')) renderTraining();
    if (dirty.delete('freezes')) {
      renderFreezes();
      driftChart?.redraw();
      paramsChart?.redraw();
    }
    if (ticks % 2 === 0 && dirty.delete('groups')) renderGroups();
    if (ticks % 3 === 0 && dirty.delete('drift')) loadDrift(false, true);
    if (ticks % 4 === 0 && dirty.delete('heat')) loadHeat(true);
  }

  (async () => {
    const t0 = performance.now();
    try {
      const first = await api(`/jobs/${id}`);
      if (gone) return;
      if (isLive(first.status) || first.status === 'interrupted') connect();
      else {
        finished = true;
        liveNote.textContent = 'finished';
        liveNote.className = 'live-note off';
      }
      await loadAll(first);
      if (gone) return;
      loaded = true;
      const pending = buffer;
      buffer = [];
      for (const [t, d] of pending) onEvent(t, d);
      if (!finished) timers.push(setInterval(tick, 1000));
      main.dataset.ready = String(Math.round(performance.now() - t0));
      if (finished) main.dataset.final = '1';
    } catch (e) {
      if (gone) return;
      fill(main, h('h1', null, id), h('p', { class: 'error' },
        e instanceof ApiError && e.status === 404 ? `There is no job ${id}. ` : `Could not load ${id}: ${e.message} `,
        h('a', { href: '#/jobs' }, 'Back to the jobs')));
    }
  })();

  return () => {
    gone = true;
    es?.close();
    for (const t of timers) {
      clearInterval(t);
      clearTimeout(t);
    }
    for (const c of charts) c?.destroy();
    heat.destroy();
  };
}
