/*
 * dashboard.test.mjs — the dashboard end to end, as a person uses it.
 *
 * Starts build/fisherd on a free 127.0.0.1 port with a temporary data
 * folder and --web-root web, drives Debian's Chromium through
 * playwright-core, and checks what the page shows against what the REST
 * API says: the form's server-side validation errors land next to their
 * fields; a job submitted through the form appears in the list and
 * progresses; its page updates live and stops when it ends; the drift
 * chart, heatmap, freeze timeline and groups table hold exactly the
 * API's series and rows; the jobs list lives on the all-jobs event stream
 * (no polling) and shows each job's results; compare overlays two jobs;
 * cancel and delete work; a daemon with --auth-reads works once the token
 * is given (its streams and downloads carry it as access_token).
 * Screenshots go to build/browser/. The daemons are stopped by their PID
 * at the end, whatever happened.
 *
 *   node --test tests/browser/          (make browser-test does the setup)
 *   FISHERD=path/to/fisherd CHROMIUM=/usr/bin/chromium override the defaults
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, createWriteStream, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const FISHERD = process.env.FISHERD || join(ROOT, 'build/fisherd');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = join(ROOT, 'build/browser');

let daemon;
let dataDir;
let base;
let browser;
let page;
const pageErrors = [];
const requests = []; /* API URLs the page asked for, in order */
let authDaemon;
let authDir;

/* ------------------------------------------------------------ helpers */

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function apiGet(path) {
  const r = await fetch(`${base}/api/v1${path}`);
  assert.equal(r.status, 200, `GET ${path} -> ${r.status}`);
  return r.json();
}

async function apiPost(path, body) {
  const r = await fetch(`${base}/api/v1${path}`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body) });
  const j = await r.json();
  assert.ok(r.status < 300, `POST ${path} -> ${r.status} ${JSON.stringify(j)}`);
  return j;
}

async function waitFor(what, fn, timeoutMs = 30000, everyMs = 200) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function waitJob(id, statuses, timeoutMs = 90000) {
  return waitFor(`${id} to be ${statuses.join('|')}`, async () => {
    const j = await apiGet(`/jobs/${id}`);
    return statuses.includes(j.status) ? j : null;
  }, timeoutMs, 300);
}

const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
const attr = (sel, name) => page.locator(sel).first().getAttribute(name);

const smallJob = (name, strategy, steps) => ({
  name, image_size: 32, batch_size: 2, steps, strategy, eval_interval: 20,
  ...(strategy === 'fisher' ? { fisher: { ema_interval: 2, freeze_interval: 20 } } : {}),
  data: { train: { synthetic: { domain: 'concrete', count: 16, seed: 1 } },
    val: { synthetic: { domain: 'concrete', count: 4, seed: 2 } } },
});

/* ------------------------------------------------------------ set-up */

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'fisherd-browser-'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const log = createWriteStream(join(SHOTS, 'fisherd.log'));
  daemon = spawn(FISHERD, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--web-root', 'web'],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  daemon.stdout.pipe(log);
  daemon.stderr.pipe(log);
  const exited = new Promise((r) => daemon.once('exit', (code) => r(code)));
  await Promise.race([
    waitFor('fisherd to answer /healthz', async () => {
      try {
        return (await fetch(`${base}/healthz`)).ok;
      } catch {
        return false;
      }
    }, 15000, 100),
    exited.then((code) => {
      throw new Error(`fisherd exited (${code}) before answering; see build/browser/fisherd.log`);
    }),
  ]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('request', (r) => {
    if (r.url().includes('/api/v1/')) requests.push(r.url());
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of (400|404|409)/.test(m.text())) pageErrors.push(m.text());
  });
});

async function stopDaemon(d) {
  if (d && d.exitCode === null) {
    const gone = new Promise((r) => d.once('exit', r));
    process.kill(d.pid, 'SIGTERM');
    const t = setTimeout(() => d.exitCode === null && process.kill(d.pid, 'SIGKILL'), 8000);
    await gone;
    clearTimeout(t);
  }
}

after(async () => {
  await browser?.close().catch(() => {});
  await stopDaemon(daemon);
  await stopDaemon(authDaemon);
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  if (authDir) rmSync(authDir, { recursive: true, force: true });
});

/* ------------------------------------------------------------ the tests */

test('the submit form shows the server\'s validation errors next to their fields', async () => {
  await page.goto(`${base}/#/submit`);
  await page.selectOption('#preset', 'quick');
  await page.waitForFunction(() => JSON.parse(document.querySelector('#spec-json').value).name === 'quick-fisher');

  const lr = page.getByLabel('Learning rate', { exact: true });
  await lr.fill('-1');
  const sent = JSON.parse(await page.inputValue('#spec-json'));
  assert.equal(sent.optim.lr, -1, 'the JSON shows what the form says');
  await page.getByRole('button', { name: 'Submit job' }).click();
  const lrField = page.locator('.field', { has: lr });
  await lrField.locator('.field-error').waitFor({ state: 'visible' });
  assert.match(await lrField.locator('.field-error').innerText(), /optim\.lr: must be in \(0, 1\]/);
  assert.equal(await lr.getAttribute('aria-invalid'), 'true');
  assert.ok(await lr.evaluate((el) => el === document.activeElement), 'the offending field has the focus');
  await shot('submit-validation-error');

  /* a nested path: data.zero_shot[0].path -> the folder input of zero-shot set 1 */
  await lr.fill('');
  const zs = page.locator('fieldset[data-ds="data.zero_shot[0]"]');
  await zs.getByLabel('Source').selectOption('path');
  await zs.getByLabel('Folder').fill('no/such/folder');
  await page.getByRole('button', { name: 'Submit job' }).click();
  const folderField = zs.locator('.field', { has: page.getByLabel('Folder') });
  await folderField.locator('.field-error').waitFor({ state: 'visible' });
  assert.match(await folderField.locator('.field-error').innerText(), /data\.zero_shot\[0\]\.path/);
  assert.equal(await page.locator('.field-error:visible').count(), 1, 'one error, at one field');
  const jobs = await apiGet('/jobs');
  assert.equal(jobs.jobs.length, 0, 'nothing was stored for an invalid spec');
});

let liveId;

test('a job submitted through the form appears in the list and progresses', async () => {
  await page.goto(`${base}/#/jobs`);
  await page.getByRole('link', { name: 'New job' }).click();
  await page.waitForFunction(() => JSON.parse(document.querySelector('#spec-json')?.value || '{}').name === 'quick-fisher');
  assert.equal(await page.inputValue('#preset'), 'quick', 'the quick preset is the default');
  await page.getByLabel('Name', { exact: true }).fill('browser-live');
  /* long enough to watch live (15-30 s here): every group trains, and is
   * measured, until the first decision at step 1500 */
  await page.getByLabel('Image size (px)').fill('64');
  await page.getByLabel('Steps', { exact: true }).fill('2500');
  await page.getByLabel('Freeze decision every (steps)').fill('1500');
  await page.getByRole('button', { name: 'Submit job' }).click();
  await page.waitForFunction(() => /^#\/jobs\?submitted=j_\d+$/.test(location.hash));
  liveId = /submitted=(j_\d+)/.exec(page.url())[1];

  const row = page.locator(`#jobs-table tr[data-id="${liveId}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /browser-live/);
  const progressOf = () => row.locator('progress').evaluate((p) => Number(p.value));
  const first = await waitFor('the row to show progress', async () => {
    const v = await progressOf();
    return v > 0 && v < 2500 ? v : 0;
  }, 30000);
  await waitFor('the progress bar to move on by itself', async () => (await progressOf()) > first, 15000);
  assert.equal(await row.getAttribute('data-status'), 'running');
  assert.match(await row.innerText(), /fisher/, 'strategy shown');
  /* it moves on the all-jobs stream's light events, not by reading the list again */
  assert.equal(await attr('#jobs-table', 'data-live'), 'stream');
  const stream = requests.find((u) => u.includes('/api/v1/events'));
  assert.ok(stream && new URL(stream).searchParams.get('kinds') === 'status,progress,eval', stream);
  const lists = () => requests.filter((u) => /\/api\/v1\/jobs(\?|$)/.test(u)).length;
  const before = lists();
  const p0 = await progressOf();
  await waitFor('the progress bar to move again', async () => (await progressOf()) > p0 + 20, 15000);
  await new Promise((r) => setTimeout(r, 2500)); /* the old list polled every 2 s */
  assert.equal(lists(), before, 'no list request while the job only progresses');
  await shot('jobs-list-running');
});

test('the job page updates live, then its charts hold the API\'s data', async () => {
  await page.locator(`#jobs-table tr[data-id="${liveId}"] a.job-link`).click();
  await page.waitForFunction((id) => location.hash === `#/job/${id}`, liveId);
  await page.waitForSelector('main[data-ready]');
  const progressVal = () => page.locator('.progress-line progress').evaluate((p) => Number(p.value));
  assert.equal((await apiGet(`/jobs/${liveId}`)).status, 'running', 'still running when opened');
  assert.match(await page.locator('.live-note').innerText(), /^live/);
  const v0 = await progressVal();
  await waitFor('live progress on the job page', async () => (await progressVal()) > v0, 15000);
  const m0 = Number(await attr('.heatmap', 'data-measurements'));
  await waitFor('the heatmap to refresh while the job runs',
    async () => Number(await attr('.heatmap', 'data-measurements')) > m0, 20000);
  await shot('job-live');
  /* the job's 2500 steps take ~25 s here; a machine busy with other work
   * stretched them past 90 s once, which says nothing about the page */
  await page.waitForSelector('main[data-final]', { timeout: 300000 });
  assert.match(await page.locator('.live-note').innerText(), /updates stopped/);
  const job = await apiGet(`/jobs/${liveId}`);
  assert.equal(job.status, 'succeeded');
  assert.equal(await progressVal(), 2500);

  const { groups } = await apiGet(`/jobs/${liveId}/groups`);
  assert.ok(groups.length > 100, 'a tiny SegFormer has hundreds of groups');

  /* drift: the default selection is the first layer; its series are the API's */
  const which = await page.inputValue('#drift-which');
  const inLayer = groups.filter((g) => g.layer === which);
  const drift = await apiGet(`/jobs/${liveId}/drift?prefix=${encodeURIComponent(`${which}.`)}`);
  await page.waitForFunction((n) => document.querySelector('#drift-chart .chart')?.dataset.series === String(n), inLayer.length);
  assert.equal(drift.series.length, inLayer.length);
  assert.ok(Number(await attr('#drift-chart .chart', 'data-points')) > 10, 'the curves have points');
  /* by stage: an encoder stage is three prefixes, asked for in one request */
  const driftReads = () => requests.filter((u) => u.includes('/drift?'));
  let n0 = driftReads().length;
  await page.selectOption('#drift-mode', 'stage');
  await page.selectOption('#drift-which', 'encoder stage 2');
  const stage2 = groups.filter((g) => /^segformer\.encoder\.(patch_embeddings|block|layer_norm)\.1\./.test(g.key)).length;
  await page.waitForFunction((n) => {
    const c = document.querySelector('#drift-chart .chart');
    return c?.dataset.which === 'encoder stage 2' && c.dataset.series === String(n);
  }, stage2);
  const stageRead = new URL(driftReads().at(-1));
  assert.deepEqual(stageRead.searchParams.getAll('prefix'), ['segformer.encoder.patch_embeddings.1.',
    'segformer.encoder.block.1.', 'segformer.encoder.layer_norm.1.']);
  await page.selectOption('#drift-which', 'decoder');
  const decoder = groups.filter((g) => g.key.startsWith('decode_head.')).length;
  await page.waitForFunction((n) => {
    const c = document.querySelector('#drift-chart .chart');
    return c?.dataset.which === 'decoder' && c.dataset.series === String(n);
  }, decoder);
  /* by class, on a log scale: one request with layer_class */
  n0 = driftReads().length;
  await page.selectOption('#drift-mode', 'class');
  await page.selectOption('#drift-which', 'layernorm');
  await page.getByLabel('log', { exact: true }).check();
  const ln = groups.filter((g) => g.layer_class === 'layernorm').length;
  await page.waitForFunction((n) => {
    const c = document.querySelector('#drift-chart .chart');
    return c?.dataset.which === 'layernorm' && c.dataset.series === String(n);
  }, ln);
  const classReads = driftReads().slice(n0).filter((u) => new URL(u).searchParams.get('layer_class') === 'layernorm');
  assert.equal(classReads.length, 1, `one request for the class: ${driftReads().slice(n0).join(' ')}`);

  /* heatmap: one row per group, the API's measurement count, real pixels */
  const hm = await apiGet(`/jobs/${liveId}/heatmap?max_points=2`);
  assert.equal(await attr('.heatmap', 'data-rows'), String(groups.length));
  assert.equal(await attr('.heatmap', 'data-measurements'), String(hm.measurements));
  const cols = Number(await attr('.heatmap', 'data-cols'));
  assert.ok(cols > 10 && cols <= 1000, `heatmap columns ${cols}`);
  const heatRead = new URL(requests.filter((u) => u.includes('/heatmap?')).at(-1));
  assert.equal(heatRead.searchParams.get('precision'), '4', 'the compact heatmap');
  const pixels = await page.locator('.heatmap-canvas').evaluate((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let grey = 0;
    let colour = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] === 196 && d[i + 1] === 196 && d[i + 2] === 196) grey++;
      else if (Math.abs(d[i] - d[i + 1]) > 40 || Math.abs(d[i + 1] - d[i + 2]) > 40) colour++;
    }
    return { grey, colour };
  });
  assert.ok(pixels.colour > 1000, `drift cells drawn (${pixels.colour} px)`);
  assert.ok(pixels.grey > 1000, `frozen cells greyed (${pixels.grey} px)`);
  /* keyboard: focus the heatmap, move, read a cell */
  await page.locator('.heatmap-canvas').focus();
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('ArrowRight');
  const sorted = [...groups].sort((a, b) => a.depth - b.depth || a.idx - b.idx);
  assert.match(await page.locator('.heatmap-readout').innerText(), new RegExp(sorted[0].key.replace(/\./g, '\\.')));

  /* freeze timeline: one row per decision */
  const { freezes } = await apiGet(`/jobs/${liveId}/freezes`);
  assert.ok(freezes.some((f) => f.step === 1500), 'the decision at step 1500 is there');
  assert.equal(await attr('#freeze-table', 'data-rows'), String(freezes.length));
  assert.equal(await page.locator('#freeze-table tbody tr').count(), freezes.length);
  assert.equal(await attr('#freeze-chart .chart', 'data-points'),
    String(freezes.filter((f) => f.kind !== 'zero_fisher').length));

  /* groups table: every group; the live ones match */
  assert.equal(await attr('#groups-table', 'data-rows'), String(groups.length));
  await page.selectOption('#groups-state', 'live');
  assert.equal(await attr('#groups-table', 'data-rows'), String(groups.filter((g) => g.live).length));
  await page.selectOption('#groups-state', '');

  /* training curves and results */
  assert.equal(await attr('#params-chart .chart', 'data-series'), '1');
  assert.ok(Number(await attr('#loss-chart .chart', 'data-points')) > 100);
  assert.ok(Number(await attr('#val-chart .chart', 'data-points')) > 10);
  assert.match(await page.locator('#results-table').innerText(), /zero-shot/);
  await page.getByLabel('linear', { exact: true }).check();
  await page.selectOption('#drift-mode', 'layer');
  await shot('job-finished');
});

test('compare overlays two jobs', async () => {
  const baseline = await apiPost('/jobs', smallJob('browser-full', 'full', 120));
  await waitJob(baseline.id, ['succeeded']);
  await page.goto(`${base}/#/jobs`);
  /* the list's own results: best val IoU so far, zero-shot IoUs (the quick preset has sets) */
  const listed = (await apiGet('/jobs')).jobs.find((j) => j.id === liveId);
  assert.ok(listed.best_val_iou > 0 && listed.zero_shot.length > 0, JSON.stringify(listed));
  const fmt3 = (x) => Number(x.toPrecision(3)).toString();
  const liveRow = page.locator(`#jobs-table tr[data-id="${liveId}"]`);
  await liveRow.waitFor();
  const cellText = (i) => liveRow.locator(`td:nth-child(${i})`).innerText();
  assert.equal(await cellText(8), fmt3(listed.best_val_iou));
  const zsMean = listed.zero_shot.reduce((a, z) => a + z.iou, 0) / listed.zero_shot.length;
  assert.match(await cellText(9), new RegExp(`^${fmt3(zsMean).replace('.', '\\.')}`));
  const full = (await apiGet('/jobs')).jobs.find((j) => j.id === baseline.id);
  assert.equal(full.strategy, 'full');
  assert.ok(full.params.total > 0, 'a strategy other than fisher knows its parameter count');
  for (const id of [liveId, baseline.id]) await page.locator(`#jobs-table tr[data-id="${id}"] input.pick`).check();
  await page.getByRole('button', { name: 'Compare selected (2)' }).click();
  await page.waitForSelector('main[data-compared="2"]');
  for (const box of ['#cmp-iou', '#cmp-live', '#cmp-loss']) {
    assert.equal(await attr(`${box} .chart`, 'data-series'), '2', `${box} overlays both jobs`);
    assert.ok(Number(await attr(`${box} .chart`, 'data-points')) > 1);
  }
  assert.equal(await page.locator('#cmp-table tbody tr').count(), 2);
  assert.match(await page.locator('#cmp-table').innerText(), /browser-live[\s\S]*browser-full|browser-full[\s\S]*browser-live/);
  await shot('compare');
});

test('a distributed job says how many ranks it has, and a local one says nothing new', async () => {
  const dp = await apiPost('/jobs', { ...smallJob('browser-2-ranks', 'fisher', 20), distributed: { ranks: 2 } });
  await waitJob(dp.id, ['succeeded']);
  await page.goto(`${base}/#/job/${dp.id}`);
  await page.waitForSelector('main[data-ready]');
  assert.equal(await page.locator('#job-ranks dd').innerText(), '2 ranks');
  await page.goto(`${base}/#/jobs`);
  const row = page.locator(`#jobs-table tr[data-id="${dp.id}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /fisher · 2 ranks/);
  await page.goto(`${base}/#/job/${liveId}`);
  await page.waitForSelector('main[data-ready]');
  assert.equal(await page.locator('#job-ranks').count(), 0, 'a local job has no rank count');
});

test('a running job can be cancelled, then deleted', async () => {
  const long = await apiPost('/jobs', smallJob('browser-cancel', 'fisher', 100000));
  await waitJob(long.id, ['running'], 30000);
  await page.goto(`${base}/#/job/${long.id}`);
  await page.waitForSelector('main[data-ready]');
  await page.getByRole('button', { name: 'Cancel job' }).click();
  await page.waitForSelector('main[data-final]', { timeout: 30000 });
  assert.equal((await apiGet(`/jobs/${long.id}`)).status, 'cancelled');
  await page.getByRole('button', { name: 'Delete…' }).click();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await page.waitForFunction(() => location.hash === '#/jobs');
  const r = await fetch(`${base}/api/v1/jobs/${long.id}`);
  assert.equal(r.status, 404, 'the job is gone');
});

test('with --auth-reads the dashboard works once it has the token', async () => {
  authDir = mkdtempSync(join(tmpdir(), 'fisherd-browser-auth-'));
  const token = 'browser-test-token-0123456789';
  writeFileSync(join(authDir, 'token'), `${token}\n`);
  const port = await freePort();
  const authBase = `http://127.0.0.1:${port}`;
  const log = createWriteStream(join(SHOTS, 'fisherd-auth.log'));
  authDaemon = spawn(FISHERD, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', join(authDir, 'var'),
    '--web-root', 'web', '--token-file', join(authDir, 'token'), '--auth-reads'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  authDaemon.stdout.pipe(log);
  authDaemon.stderr.pipe(log);
  await waitFor('the --auth-reads daemon to answer', async () => {
    try {
      return (await fetch(`${authBase}/healthz`)).ok;
    } catch {
      return false;
    }
  }, 15000, 100);
  const headers = { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' };
  assert.equal((await fetch(`${authBase}/api/v1/jobs`)).status, 401);
  const job = await (await fetch(`${authBase}/api/v1/jobs`, { method: 'POST', headers,
    body: JSON.stringify(smallJob('auth-fisher', 'fisher', 3000)) })).json();
  assert.match(job.id, /^j_\d+$/);

  /* a page of its own: the 401s before the token are expected here */
  const p = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  p.on('pageerror', (e) => errors.push(e.message));
  try {
    await p.goto(`${authBase}/#/jobs`);
    await p.locator('#auth').waitFor({ state: 'visible' });
    await p.waitForSelector('#jobs-table[data-live="poll"]'); /* refused: the list falls back to reading itself */
    await p.fill('#auth-token', token);
    await p.getByRole('button', { name: 'Use token' }).click();
    const row = p.locator(`#jobs-table tr[data-id="${job.id}"]`);
    await row.waitFor();
    await p.waitForSelector('#jobs-table[data-live="stream"]'); /* the EventSource got in with access_token */
    const stepOf = () => row.locator('progress').evaluate((x) => Number(x.value));
    const s0 = await waitFor('the row to progress', async () => (await stepOf()) || 0, 30000);
    await waitFor('the row to progress on the stream', async () => (await stepOf()) > s0, 15000);
    await row.locator('a.job-link').click();
    await p.waitForSelector('main[data-ready]');
    assert.match(await p.locator('.live-note').innerText(), /^live/, 'the job\'s stream is open');
    const csv = await p.locator('a', { hasText: 'Drift CSV' }).getAttribute('href');
    assert.equal(new URL(csv, authBase).searchParams.get('access_token'), token);
    assert.equal((await fetch(new URL(csv, authBase))).status, 200, 'the download link works as it is');
    await p.getByRole('button', { name: 'Cancel job' }).click();
    await p.waitForSelector('main[data-final]', { timeout: 30000 });
    await p.screenshot({ path: join(SHOTS, 'auth-reads.png'), fullPage: true });
  } finally {
    await p.close();
  }
  assert.deepEqual(errors, []);
});

test('no script errors on any page', () => {
  assert.deepEqual(pageErrors, []);
});
