/*
 * compare.js — several jobs on the same axes: validation IoU, the live
 * parameter fraction and the training loss, one colour per job; with a
 * summary table of their results. The selection lives in the URL
 * (#/compare?jobs=j_1,j_2), so a comparison can be bookmarked.
 */
import { api } from './api.js';
import { makeChart, align } from './charts.js';
import { h, fill, fmtNum, fmtPct, fmtInt, fmtDuration, jobDuration, statusBadge, mapLimit, colour, paramsTotal } from './util.js';

export function mountCompare(main, params) {
  let gone = false;
  const chosen = new Set((params.get('jobs') || '').split(',').filter(Boolean));
  const picker = h('fieldset', { class: 'picker' }, h('legend', null, 'Jobs to compare'));
  const pickList = h('div', { class: 'pick-list' });
  picker.append(pickList);
  const smooth = h('input', { type: 'checkbox', id: 'cmp-smooth', checked: true });
  const info = h('p', { class: 'muted', 'aria-live': 'polite' });
  const iouBox = h('div', { class: 'chart-box', id: 'cmp-iou' });
  const liveBox = h('div', { class: 'chart-box', id: 'cmp-live' });
  const lossBox = h('div', { class: 'chart-box', id: 'cmp-loss' });
  const table = h('table', { class: 'data', id: 'cmp-table' });
  let charts = [];
  let loaded = []; /* [{job, metrics}] */

  fill(main, 
    h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, 'Compare jobs')),
    h('div', { class: 'compare-layout' },
      h('div', null, picker,
        h('div', { class: 'field-bool' }, smooth, h('label', { for: 'cmp-smooth' }, 'Smooth the loss (EMA)'))),
      h('div', { class: 'compare-main' }, info,
        h('div', { class: 'table-wrap' }, table),
        h('figure', null, h('figcaption', null, 'Validation IoU'), iouBox),
        h('figure', null, h('figcaption', null, 'Live parameters (%)'), liveBox),
        h('figure', null, h('figcaption', null, 'Training loss'), lossBox))),
  );

  function syncUrl() {
    history.replaceState(null, '', `#/compare${chosen.size ? `?jobs=${[...chosen].join(',')}` : ''}`);
  }

  async function loadPicker() {
    try {
      const list = await api('/jobs', { query: { limit: 100 } });
      if (gone) return;
      /* jobs named in the URL but beyond the first page still get a box */
      const ids = new Set(list.jobs.map((j) => j.id));
      const extra = [...chosen].filter((x) => !ids.has(x)).map((x) => ({ id: x, name: x, status: '' }));
      fill(pickList, ...[...list.jobs, ...extra].map((j) => {
        const box = h('input', { type: 'checkbox', id: `cmp-${j.id}`, value: j.id, checked: chosen.has(j.id) });
        box.addEventListener('change', () => {
          if (box.checked) chosen.add(j.id);
          else chosen.delete(j.id);
          syncUrl();
          load();
        });
        return h('div', { class: 'field-bool' }, box, h('label', { for: `cmp-${j.id}` }, `${j.name} `,
          h('span', { class: 'muted' }, j.id), ' ', j.status ? statusBadge(j.status) : null));
      }));
      if (!list.jobs.length) pickList.append(h('p', { class: 'muted' }, 'No jobs yet.'));
    } catch (e) {
      fill(pickList, h('p', { class: 'error' }, `Could not list jobs: ${e.message}`));
    }
  }

  let seq = 0;
  async function load() {
    const my = ++seq;
    const ids = [...chosen];
    if (!ids.length) {
      info.textContent = 'Tick two or more jobs — say the FisherAdapTune run and its baselines.';
      loaded = [];
      draw();
      return;
    }
    info.textContent = 'Loading…';
    const out = await mapLimit(ids, 4, async (jid) => {
      try {
        const [job, m] = await Promise.all([api(`/jobs/${jid}`), api(`/jobs/${jid}/metrics`, { query: { max_points: 1000 } })]);
        return { job, metrics: m.metrics };
      } catch (e) {
        return { job: { id: jid, name: jid, status: 'unknown' }, metrics: {}, error: e.message };
      }
    });
    if (gone || my !== seq) return;
    loaded = out;
    const bad = out.filter((x) => x.error);
    info.textContent = bad.length ? bad.map((x) => `${x.job.id}: ${x.error}`).join('; ') : `${out.length} job${out.length === 1 ? '' : 's'}.`;
    draw();
  }

  function ema(ys, a = 0.9) {
    let m = null;
    return ys.map((y) => {
      if (y === null || y === undefined) return null;
      m = m === null ? y : a * m + (1 - a) * y;
      return m;
    });
  }

  function draw() {
    for (const c of charts) c.destroy();
    charts = [];
    const n = loaded.length;
    const names = loaded.map((x) => `${x.job.name} (${x.job.id}, ${x.job.spec?.strategy || '?'})`);
    const mk = (box, label, yLabel, pick) => {
      const c = makeChart(box, { label, yLabel, height: 240,
        series: loaded.map((x, i) => ({ label: names[i], stroke: colour(i, n), width: 1.5, points: pick === 'iou' })) });
      const list = loaded.map((x) => {
        const m = x.metrics;
        if (pick === 'iou') return { x: m.val_iou?.step || [], y: m.val_iou?.value || [] };
        if (pick === 'live') {
          const total = paramsTotal(x.job);
          const s = m.params_live || { step: [], value: [] };
          return { x: s.step, y: total ? s.value.map((v) => (100 * v) / total) : s.value };
        }
        const s = m.loss || { step: [], value: [] };
        return { x: s.step, y: smooth.checked ? ema(s.value) : s.value };
      });
      c.setData(n ? align(list) : [[]]);
      charts.push(c);
    };
    mk(iouBox, 'Validation IoU of the compared jobs', 'IoU', 'iou');
    mk(liveBox, 'Live parameters in percent of the compared jobs', '%', 'live');
    mk(lossBox, 'Training loss of the compared jobs', 'loss', 'loss');

    fill(table, 
      h('caption', { class: 'sr-only' }, 'Results of the compared jobs'),
      h('thead', null, h('tr', null, ['', 'Job', 'Strategy', 'Status', 'Best val IoU', 'Final val IoU', 'Zero-shot IoU (mean)',
        'Live params at end', 'Mean trainable', 'Wall time'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, loaded.map((x, i) => {
        const j = x.job;
        const r = j.result || {};
        const iou = x.metrics.val_iou?.value || [];
        const zs = r.zero_shot || [];
        const total = paramsTotal(j);
        return h('tr', null,
          h('td', null, h('span', { class: 'swatch', style: `background:${colour(i, n)}`, 'aria-hidden': 'true' })),
          h('th', { scope: 'row' }, h('a', { href: `#/job/${j.id}` }, j.name), ' ', h('span', { class: 'muted' }, j.id)),
          h('td', null, j.spec?.strategy || '—'), h('td', null, statusBadge(j.status)),
          h('td', null, fmtNum(iou.length ? Math.max(...iou) : null)), h('td', null, fmtNum(r.val?.iou)),
          h('td', { title: zs.map((z) => `${z.dataset}: ${fmtNum(z.iou)}`).join('\n') },
            zs.length ? fmtNum(zs.reduce((a, z) => a + z.iou, 0) / zs.length) : '—'),
          h('td', null, total && j.params?.live != null ? fmtPct(j.params.live / total, 2) : '—'),
          h('td', null, r.params_trainable_mean ? `${fmtInt(Math.round(r.params_trainable_mean))}${r.parameters ? ` (${fmtPct(r.params_trainable_mean / r.parameters)})` : ''}` : '—'),
          h('td', null, fmtDuration(r.wall_seconds ?? jobDuration(j))));
      })));
    main.dataset.compared = String(n);
  }

  smooth.addEventListener('change', draw);
  loadPicker();
  load();
  return () => {
    gone = true;
    for (const c of charts) c.destroy();
  };
}
