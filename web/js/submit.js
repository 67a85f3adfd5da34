/*
 * submit.js — the job form. Every field of the spec (lib/job.h, "Spec
 * v1") has an input whose data-path is the field's dotted path, exactly as
 * the server names it in a validation error ("optim.lr",
 * "data.zero_shot[1].path"); that is how a 400 lands next to its field.
 * A blank input means "the server's default" (shown as its placeholder).
 *
 * The JSON beside the form is what is sent. Editing the form rewrites it;
 * editing it (valid JSON) fills the form back in. Presets fill both.
 */
import { api, ApiError } from './api.js';
import { h, fill, clear, newId } from './util.js';

const DOMAINS = ['concrete', 'asphalt', 'wall', 'tiles', 'shapes'];
const STRATEGIES = [
  ['fisher', 'fisher — FisherAdapTune: freeze groups whose drift settles'],
  ['full', 'full — every parameter trains'],
  ['decoder', 'decoder — only decode_head'],
  ['norm', 'norm — only LayerNorm/BatchNorm'],
  ['bitfit', 'bitfit — only biases'],
];
const CONFIGS = ['tiny', 'mit-b0', 'mit-b1', 'mit-b2'];

/* ------------------------------------------------------------ presets */

const concrete = (n, seed) => ({ synthetic: { domain: 'concrete', count: n, seed } });

function finetune(strategy, base) {
  const spec = {
    name: `finetune-concrete-${strategy}`,
    base_model: base,
    image_size: 128,
    data: {
      train: concrete(800, 1),
      val: concrete(100, 2),
      zero_shot: ['asphalt', 'wall', 'tiles'].map((domain) => ({ synthetic: { domain, count: 100, seed: 3 } })),
    },
    strategy,
    optim: { lr: 5e-4, weight_decay: 5e-5 },
    batch_size: 8,
    steps: 1000,
    eval_interval: 200,
    seed: 0,
    threads: 2,
  };
  if (strategy === 'fisher') {
    spec.fisher = { estimator: 'reference', ema_interval: 20, freeze_interval: 200, slice_mode: 'row', slice_blocks: 4,
      js_mode: 'log', metric: 'total_variation', lambda: 1.0 };
  }
  return spec;
}

export const PRESETS = [
  { id: 'pretrain', label: 'Pretrain tiny on shapes (random init)', make: () => ({
    name: 'pretrain-shapes',
    base_model: { arch: 'segformer', config: 'tiny' },
    image_size: 128,
    data: { train: { synthetic: { domain: 'shapes', count: 2000, seed: 1 } },
      val: { synthetic: { domain: 'shapes', count: 100, seed: 2 } } },
    strategy: 'full',
    optim: { lr: 1e-3, weight_decay: 5e-5 },
    batch_size: 8,
    steps: 1500,
    eval_interval: 250,
    seed: 0,
    threads: 2,
  }) },
  { id: 'fisher', label: 'FisherAdapTune fine-tune on concrete, zero-shot on asphalt/wall/tiles', make: (b) => finetune('fisher', b) },
  { id: 'full', label: 'Baseline: full fine-tune on concrete', make: (b) => finetune('full', b) },
  { id: 'decoder', label: 'Baseline: decoder only', make: (b) => finetune('decoder', b) },
  { id: 'norm', label: 'Baseline: norm layers only', make: (b) => finetune('norm', b) },
  { id: 'bitfit', label: 'Baseline: BitFit (biases only)', make: (b) => finetune('bitfit', b) },
  { id: 'quick', label: 'Quick look: tiny FisherAdapTune run in seconds (32 px, 200 steps)', make: () => ({
    name: 'quick-fisher',
    base_model: { arch: 'segformer', config: 'tiny' },
    image_size: 32,
    data: { train: concrete(16, 1), val: concrete(4, 2),
      zero_shot: [{ synthetic: { domain: 'asphalt', count: 4, seed: 3 } }] },
    strategy: 'fisher',
    fisher: { ema_interval: 2, freeze_interval: 20 },
    batch_size: 2,
    steps: 200,
    eval_interval: 20,
  }) },
];

/* The base model a fine-tune preset starts from: the newest pretrain job
 * that has not failed ({"job": id}, waited for), else the newest
 * registered model, else a random tiny. */
async function pretrainBase() {
  try {
    const jobs = await api('/jobs', { query: { name: 'pretrain', limit: 20 } });
    const j = jobs.jobs.find((x) => !['failed', 'cancelled'].includes(x.status));
    if (j) return { base: { job: j.id }, note: `Starts from ${j.id} (${j.name}, ${j.status}).` };
    const models = await api('/models', { query: { limit: 1 } });
    if (models.models.length) {
      const m = models.models[0];
      return { base: m.id, note: `Starts from model ${m.id} (${m.name}).` };
    }
  } catch {
    /* fall through */
  }
  return { base: { arch: 'segformer', config: 'tiny' },
    note: 'No pretrain job or model yet: this starts from random weights. Submit the pretrain preset first for the paper\'s setting.' };
}

/* ------------------------------------------------------------ paths */

function splitPath(path) {
  const out = [];
  for (const part of path.split('.')) {
    const re = /([^[\]]+)|\[(\d+)\]/g;
    let m;
    while ((m = re.exec(part))) out.push(m[1] !== undefined ? m[1] : Number(m[2]));
  }
  return out;
}

function setPath(obj, path, value) {
  const keys = splitPath(path);
  let o = obj;
  keys.forEach((k, i) => {
    if (i === keys.length - 1) {
      o[k] = value;
      return;
    }
    if (o[k] === undefined || o[k] === null || typeof o[k] !== 'object') o[k] = typeof keys[i + 1] === 'number' ? [] : {};
    o = o[k];
  });
}

function getPath(obj, path) {
  let o = obj;
  for (const k of splitPath(path)) {
    if (o === null || o === undefined || typeof o !== 'object') return undefined;
    o = o[k];
  }
  return o;
}

/* Parent of a path: "a.b[1].c" -> "a.b[1]" -> "a.b" -> "a" -> "". */
function parentPath(path) {
  const m = /^(.*)(\.[^.[\]]+|\[\d+\])$/.exec(path);
  return m ? m[1] : '';
}

/* ------------------------------------------------------------ fields */

/* One labelled input. type: int | num | text | select | bool (a select: default/on/off). */
function field(path, label, opt = {}) {
  const id = newId('f');
  const errId = `${id}-err`;
  const type = opt.type || 'num';
  let input;
  if (type === 'select') {
    input = h('select', { id },
      opt.blank ? h('option', { value: '' }, opt.blank) : null,
      opt.options.map((o) => (Array.isArray(o) ? h('option', { value: o[0] }, o[1]) : h('option', { value: o }, o))));
  } else if (type === 'bool') {
    input = h('select', { id }, h('option', { value: '' }, opt.blank || 'default'), h('option', { value: 'true' }, 'on'),
      h('option', { value: 'false' }, 'off'));
  } else {
    input = h('input', {
      id, type: 'text', autocomplete: 'off', spellcheck: 'false',
      inputmode: type === 'int' ? 'numeric' : type === 'num' ? 'decimal' : null,
      placeholder: opt.placeholder ?? '', list: opt.list || null,
    });
  }
  if (path) input.dataset.path = path;
  input.dataset.type = type;
  if (opt.role) input.dataset.role = opt.role;
  const help = opt.help ? h('small', { class: 'help', id: `${id}-help` }, opt.help) : null;
  input.setAttribute('aria-describedby', [help ? `${id}-help` : null, errId].filter(Boolean).join(' '));
  const err = h('p', { class: 'field-error', id: errId, hidden: true, role: 'alert' });
  const wrap = h('div', { class: `field ${opt.cls || ''}` }, h('label', { for: id }, label), input, help, err);
  return { wrap, input };
}

function readValue(inp) {
  const t = inp.dataset.type;
  const s = inp.value.trim();
  if (t === 'bool') return s === '' ? undefined : s === 'true';
  if (s === '') return undefined;
  if (t === 'int' || t === 'num') {
    /* a number if it reads as one; otherwise sent as typed, for the server to name */
    return /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s) ? Number(s) : s;
  }
  return s;
}

function writeValue(inp, v) {
  if (inp.dataset.type === 'bool') {
    inp.value = v === undefined || v === null ? '' : v ? 'true' : 'false';
    return;
  }
  const s = v === undefined || v === null ? '' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  if (inp.tagName === 'SELECT' && s && ![...inp.options].some((o) => o.value === s)) inp.append(h('option', { value: s }, s));
  inp.value = s;
}

/* ------------------------------------------------------------ the view */

export function mountSubmit(main, params) {
  let gone = false;
  const form = h('form', { class: 'spec-form', novalidate: true, 'aria-labelledby': 'submit-title' });
  const json = h('textarea', { id: 'spec-json', class: 'spec-json', spellcheck: 'false', rows: 30,
    'aria-describedby': 'spec-json-help spec-json-err' });
  const jsonErr = h('p', { class: 'field-error', id: 'spec-json-err', hidden: true, role: 'alert' });
  const summary = h('div', { class: 'form-summary', role: 'alert', hidden: true });
  const presetNote = h('p', { class: 'muted', 'aria-live': 'polite' });
  const submitBtn = h('button', { type: 'submit', class: 'primary', form: 'spec-form' }, 'Submit job');
  form.id = 'spec-form';

  /* datalists: registered models, jobs, dataset folders */
  const modelsList = h('datalist', { id: 'dl-models' });
  const jobsList = h('datalist', { id: 'dl-jobs' });
  const foldersList = h('datalist', { id: 'dl-folders' });

  /* -- general */
  const general = h('fieldset', { 'data-field': '' }, h('legend', null, 'Job'),
    h('div', { class: 'grid' },
      field('name', 'Name', { type: 'text', placeholder: 'job' }).wrap,
      field('image_size', 'Image size (px)', { type: 'int', placeholder: '128', help: '32–2048' }).wrap,
      field('batch_size', 'Batch size', { type: 'int', placeholder: '4' }).wrap));

  /* length: steps or epochs */
  const lenName = newId('len');
  const stepsRadio = h('input', { type: 'radio', name: lenName, id: `${lenName}-s`, value: 'steps', checked: true });
  const epochsRadio = h('input', { type: 'radio', name: lenName, id: `${lenName}-e`, value: 'epochs' });
  const stepsF = field('steps', 'Steps', { type: 'int', placeholder: '—' });
  const epochsF = field('epochs', 'Epochs', { type: 'int', placeholder: '5' });
  const length = h('fieldset', { 'data-field': 'steps' }, h('legend', null, 'Length'),
    h('div', { class: 'radios' }, stepsRadio, h('label', { for: `${lenName}-s` }, 'by steps'),
      epochsRadio, h('label', { for: `${lenName}-e` }, 'by epochs')),
    h('div', { class: 'grid' }, stepsF.wrap, epochsF.wrap,
      field('eval_interval', 'Eval every (steps)', { type: 'int', placeholder: '0 = each epoch' }).wrap,
      field('early_stopping.patience', 'Early-stopping patience', { type: 'int', placeholder: '0 = off' }).wrap,
      field('checkpoint_interval', 'Checkpoint every (steps)', { type: 'int', placeholder: '0 = at the end' }).wrap,
      field('seed', 'Seed', { type: 'int', placeholder: '0' }).wrap,
      field('threads', 'Threads', { type: 'int', placeholder: '2' }).wrap));

  /* -- base model */
  const baseKind = field(null, 'Start from', { type: 'select', role: 'base-kind', options: [
    ['arch', 'random weights (architecture)'], ['job', 'the model of a job (waits for it)'],
    ['model', 'a registered model'], ['default', 'server default (random tiny)']] });
  const archF = field('base_model.arch', 'Architecture', { type: 'select', options: ['segformer'] });
  const configF = field('base_model.config', 'Config', { type: 'select', options: CONFIGS });
  const labelsF = field('base_model.num_labels', 'Classes', { type: 'int', placeholder: '1' });
  const jobF = field('base_model.job', 'Job id', { type: 'text', placeholder: 'j_1', list: 'dl-jobs',
    help: 'e.g. the pretrain job; its output model is used once it succeeds' });
  const modelF = field('base_model', 'Model id', { type: 'text', placeholder: 'm_1', list: 'dl-models' });
  const base = h('fieldset', { 'data-field': 'base_model' }, h('legend', null, 'Base model'),
    h('div', { class: 'grid' }, baseKind.wrap, archF.wrap, configF.wrap, labelsF.wrap, jobF.wrap, modelF.wrap));

  /* -- data */
  function datasetEditor(path, title, removable) {
    const kind = field(null, 'Source', { type: 'select', role: 'ds-kind',
      options: [['synthetic', 'synthetic (generated)'], ['path', 'folder under a data root']] });
    const fs = h('fieldset', { class: 'dataset', 'data-field': path, 'data-ds': path },
      h('legend', null, title),
      h('div', { class: 'grid' }, kind.wrap,
        field(`${path}.synthetic.domain`, 'Domain', { type: 'select', options: DOMAINS }).wrap,
        field(`${path}.synthetic.count`, 'Count', { type: 'int', placeholder: 'images' }).wrap,
        field(`${path}.synthetic.seed`, 'Seed', { type: 'int', placeholder: '0' }).wrap,
        field(`${path}.path`, 'Folder', { type: 'text', list: 'dl-folders', placeholder: 'cracks/asphalt-test',
          help: 'with images/ and masks/' }).wrap,
        removable ? h('div', { class: 'field' }, h('button', { type: 'button', class: 'link remove-ds',
          onclick: () => removeZeroShot(path) }, `Remove ${title.toLowerCase()}`)) : null));
    return fs;
  }
  const zsBox = h('div', { class: 'zs-list' });
  const addZs = h('button', { type: 'button', onclick: () => addZeroShot() }, 'Add zero-shot dataset');
  const data = h('fieldset', { 'data-field': 'data' }, h('legend', null, 'Data'),
    datasetEditor('data.train', 'Training set'), datasetEditor('data.val', 'Validation set'),
    h('fieldset', { 'data-field': 'data.zero_shot' }, h('legend', null, 'Zero-shot test sets (evaluated at the end)'),
      zsBox, addZs));

  function zsCount() {
    return zsBox.children.length;
  }
  function setZeroShot(n) {
    clear(zsBox);
    for (let i = 0; i < n; i++) zsBox.append(datasetEditor(`data.zero_shot[${i}]`, `Zero-shot set ${i + 1}`, true));
    addZs.disabled = n >= 8;
  }
  function addZeroShot() {
    const spec = readForm();
    const zs = spec.data?.zero_shot || [];
    zs.push({ synthetic: { domain: 'asphalt', count: 100, seed: 3 } });
    setPath(spec, 'data.zero_shot', zs);
    writeForm(spec);
    formChanged();
    zsBox.lastElementChild?.querySelector('select')?.focus();
  }
  function removeZeroShot(path) {
    const spec = readForm();
    const i = Number(/\[(\d+)\]/.exec(path)[1]);
    const zs = spec.data?.zero_shot || [];
    zs.splice(i, 1);
    if (zs.length) spec.data.zero_shot = zs;
    else if (spec.data) delete spec.data.zero_shot;
    writeForm(spec);
    formChanged();
    addZs.focus();
  }

  /* -- strategy and the method's knobs */
  const strategyF = field('strategy', 'Strategy', { type: 'select', options: STRATEGIES, blank: 'server default (full)' });
  const fisher = h('fieldset', { 'data-field': 'fisher', class: 'fisher' }, h('legend', null, 'FisherAdapTune'),
    h('div', { class: 'grid' },
      field('fisher.estimator', 'Estimator', { type: 'select', options: ['reference', 'ema', 'empirical'], blank: 'default (reference)' }).wrap,
      field('fisher.ema_interval', 'Measure drift every (steps)', { type: 'int', placeholder: '1' }).wrap,
      field('fisher.freeze_interval', 'Freeze decision every (steps)', { type: 'int', placeholder: '300' }).wrap,
      field('fisher.slice_mode', 'Slice mode', { type: 'select', options: ['row', 'column'], blank: 'default (row)' }).wrap,
      field('fisher.slice_blocks', 'Blocks per tensor', { type: 'int', placeholder: '4' }).wrap,
      field('fisher.js_mode', 'JS histogram of', { type: 'select', options: [['log', 'log10 Fisher'], ['raw', 'raw Fisher']], blank: 'default (log)' }).wrap,
      field('fisher.metric', 'Score', { type: 'select', options: ['total_variation', 'mean_js'], blank: 'default (total_variation)' }).wrap,
      field('fisher.lambda', 'λ (threshold = mean + λ·std)', { placeholder: '1.0' }).wrap,
      field('fisher.fisher_ema_decay', 'Fisher EMA decay', { placeholder: '0.9' }).wrap,
      field('fisher.js_ema_decay', 'JS EMA decay', { placeholder: '0.9' }).wrap,
      field('fisher.gammas[0]', 'γ0', { placeholder: '0.8' }).wrap,
      field('fisher.gammas[1]', 'γ1', { placeholder: '0.8' }).wrap));
  const strategy = h('fieldset', { 'data-field': 'strategy' }, h('legend', null, 'What trains'), strategyF.wrap, fisher);

  /* -- optimiser, loss */
  const optim = h('fieldset', { 'data-field': 'optim' }, h('legend', null, 'Optimiser (AdamW) and loss'),
    h('div', { class: 'grid' },
      field('optim.lr', 'Learning rate', { placeholder: '1e-4' }).wrap,
      field('optim.weight_decay', 'Weight decay', { placeholder: '5e-5' }).wrap,
      field('optim.betas[0]', 'β1', { placeholder: '0.9' }).wrap,
      field('optim.betas[1]', 'β2', { placeholder: '0.999' }).wrap,
      field('optim.eps', 'ε', { placeholder: '1e-8' }).wrap,
      field('loss.dice_weight', 'Dice weight', { placeholder: '0.65' }).wrap));

  /* -- advanced: normalisation and augmentation */
  const hflip = field('augment.hflip', 'Horizontal flips', { type: 'bool', blank: 'default (on)' });
  const vflip = field('augment.vflip', 'Vertical flips', { type: 'bool', blank: 'default (on)' });
  const advanced = h('details', { class: 'advanced' }, h('summary', null, 'Normalisation and augmentation'),
    h('fieldset', { 'data-field': 'normalization' }, h('legend', null, 'Normalisation (per RGB channel)'),
      h('div', { class: 'grid' },
        ['0.485', '0.456', '0.406'].map((p, i) => field(`normalization.mean[${i}]`, `Mean ${'RGB'[i]}`, { placeholder: p }).wrap),
        ['0.229', '0.224', '0.225'].map((p, i) => field(`normalization.std[${i}]`, `Std ${'RGB'[i]}`, { placeholder: p }).wrap))),
    h('fieldset', { 'data-field': 'augment' }, h('legend', null, 'Augmentation'),
      h('div', { class: 'grid' }, hflip.wrap, vflip.wrap,
        field('augment.scale[0]', 'Scale low', { placeholder: '1' }).wrap,
        field('augment.scale[1]', 'Scale high', { placeholder: '1' }).wrap)));

  form.append(general, base, length, data, strategy, optim, advanced);

  const presetSel = h('select', { id: 'preset' }, h('option', { value: '' }, 'choose a preset…'),
    PRESETS.map((p) => h('option', { value: p.id }, p.label)));

  fill(main, 
    h('div', { class: 'page-head' }, h('h1', { id: 'submit-title', tabindex: '-1' }, 'Submit a job')),
    h('div', { class: 'preset-bar' }, h('label', { for: 'preset' }, 'Preset'), presetSel, presetNote),
    modelsList, jobsList, foldersList,
    h('div', { class: 'submit-layout' },
      form,
      h('aside', { class: 'json-panel', 'aria-label': 'The spec as JSON' },
        h('label', { for: 'spec-json' }, 'Spec (JSON) — this is what is sent'),
        h('p', { id: 'spec-json-help', class: 'help' }, 'Editing the form rewrites it; editing it fills the form. Blank fields take the server\'s defaults.'),
        json, jsonErr, summary, h('div', { class: 'actions' }, submitBtn))));

  /* ---------------------------------------------------------- form <-> spec */

  function inputs() {
    return [...form.querySelectorAll('[data-path]')];
  }

  function readForm() {
    const spec = {};
    for (const inp of inputs()) {
      if (inp.matches(':disabled')) continue;
      const v = readValue(inp);
      if (v !== undefined) setPath(spec, inp.dataset.path, v);
    }
    return spec;
  }

  /* Shows the inputs that apply (dataset source, base kind, length,
   * strategy) and disables the others, so readForm skips them. */
  function updateEnabled() {
    const toggle = (wrap, on) => {
      wrap.hidden = !on;
      for (const el of wrap.querySelectorAll('input, select')) el.disabled = !on;
    };
    for (const ds of form.querySelectorAll('fieldset[data-ds]')) {
      const path = ds.dataset.ds;
      const k = ds.querySelector('[data-role="ds-kind"]').value;
      for (const inp of ds.querySelectorAll('[data-path]')) {
        toggle(inp.closest('.field'), k === 'path' ? inp.dataset.path === `${path}.path` : inp.dataset.path !== `${path}.path`);
      }
    }
    const bk = baseKind.input.value;
    toggle(archF.wrap, bk === 'arch');
    toggle(configF.wrap, bk === 'arch');
    toggle(labelsF.wrap, bk === 'arch');
    toggle(jobF.wrap, bk === 'job');
    toggle(modelF.wrap, bk === 'model');
    stepsF.input.disabled = !stepsRadio.checked;
    epochsF.input.disabled = !epochsRadio.checked;
    stepsF.wrap.classList.toggle('inactive', !stepsRadio.checked);
    epochsF.wrap.classList.toggle('inactive', !epochsRadio.checked);
    const isFisher = strategyF.input.value === 'fisher';
    fisher.disabled = !isFisher;
    fisher.hidden = !isFisher;
  }

  function writeForm(spec) {
    spec = spec && typeof spec === 'object' ? spec : {};
    const zs = getPath(spec, 'data.zero_shot');
    if ((Array.isArray(zs) ? zs.length : 0) !== zsCount()) setZeroShot(Array.isArray(zs) ? Math.min(zs.length, 8) : 0);
    for (const ds of form.querySelectorAll('fieldset[data-ds]')) {
      const d = getPath(spec, ds.dataset.ds);
      ds.querySelector('[data-role="ds-kind"]').value = d && typeof d === 'object' && 'path' in d ? 'path' : 'synthetic';
    }
    const bm = spec.base_model;
    baseKind.input.value = bm === undefined ? 'default' : typeof bm === 'string' ? 'model'
      : bm && typeof bm === 'object' && 'job' in bm ? 'job' : 'arch';
    const bySteps = spec.steps !== undefined || spec.epochs === undefined;
    stepsRadio.checked = bySteps;
    epochsRadio.checked = !bySteps;
    for (const inp of inputs()) {
      const p = inp.dataset.path;
      if (p === 'base_model') writeValue(inp, typeof bm === 'string' ? bm : undefined);
      else writeValue(inp, getPath(spec, p));
    }
    if (baseKind.input.value === 'arch' && !getPath(spec, 'base_model.config')) configF.input.value = 'tiny';
    updateEnabled();
  }

  function showJson(spec) {
    json.value = JSON.stringify(spec, null, 2);
  }

  function formChanged() {
    updateEnabled();
    clearErrors();
    showJson(readForm());
  }

  form.addEventListener('input', formChanged);
  form.addEventListener('change', formChanged);
  json.addEventListener('input', () => {
    clearErrors();
    try {
      const spec = JSON.parse(json.value);
      if (!spec || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('a job spec is a JSON object');
      writeForm(spec);
    } catch (e) {
      showError(json, jsonErr, `Not valid JSON yet: ${e.message}`, false);
    }
  });

  /* ---------------------------------------------------------- errors */

  function clearErrors() {
    summary.hidden = true;
    for (const el of main.querySelectorAll('.field-error')) {
      el.hidden = true;
      el.textContent = '';
    }
    for (const el of main.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    for (const el of main.querySelectorAll('.has-error')) el.classList.remove('has-error');
  }

  function showError(control, errEl, message, focus = true) {
    errEl.textContent = message;
    errEl.hidden = false;
    control.setAttribute('aria-invalid', 'true');
    control.closest('.field, fieldset')?.classList.add('has-error');
    if (focus) {
      control.closest('details')?.setAttribute('open', '');
      control.focus({ preventScroll: true });
      control.scrollIntoView({ block: 'center' });
    }
  }

  const visible = (el) => el && !el.closest('[hidden]') && !el.matches(':disabled');

  /* The server's field path -> the input (or fieldset) it names: the exact
   * input, else the fieldset of that path, else the same for its parent. */
  function placeError(fieldPath, message) {
    for (let p = fieldPath || ''; ; p = parentPath(p)) {
      if (p) {
        const inp = inputs().find((i) => i.dataset.path === p && visible(i));
        if (inp) {
          showError(inp, inp.closest('.field').querySelector('.field-error'), message);
          return inp;
        }
        const fs = [...form.querySelectorAll('fieldset[data-field]')].find((f) => f.dataset.field === p && !f.closest('[hidden]'));
        if (fs) {
          let err = fs.querySelector(':scope > .field-error');
          if (!err) {
            err = h('p', { class: 'field-error', id: newId('fs-err'), role: 'alert' });
            fs.querySelector('legend').after(err);
          }
          const first = fs.querySelector('input:not(:disabled), select:not(:disabled)') || json;
          fs.setAttribute('aria-describedby', err.id);
          showError(first, err, message);
          return fs;
        }
      }
      if (!p) break;
    }
    showError(json, jsonErr, message);
    return json;
  }

  /* ---------------------------------------------------------- submit */

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors();
    let body;
    try {
      body = JSON.parse(json.value);
    } catch (e) {
      showError(json, jsonErr, `The JSON does not parse: ${e.message}`);
      return;
    }
    submitBtn.disabled = true;
    submitBtn.textContent = 'Submitting…';
    try {
      const job = await api('/jobs', { method: 'POST', body });
      if (!gone) location.hash = `#/jobs?submitted=${encodeURIComponent(job.id)}`;
    } catch (e) {
      if (gone) return;
      const where = e instanceof ApiError && e.status === 400 ? placeError(e.field, e.message) : null;
      fill(summary, h('strong', null, `Not submitted (${e.status || 'network'}): `), e.message,
        where && where !== json && e.field ? h('span', null, ' — see the field ', h('code', null, e.field), '.') : null);
      summary.hidden = false;
    } finally {
      submitBtn.disabled = false;
      submitBtn.textContent = 'Submit job';
    }
  });

  /* ---------------------------------------------------------- presets */

  async function applyPreset(id) {
    const p = PRESETS.find((x) => x.id === id);
    if (!p) return;
    let base = null;
    let note = '';
    if (['fisher', 'full', 'decoder', 'norm', 'bitfit'].includes(id)) ({ base, note } = await pretrainBase());
    if (gone) return;
    const spec = p.make(base);
    writeForm(spec);
    clearErrors();
    showJson(readForm());
    presetNote.textContent = note;
    history.replaceState(null, '', `#/submit?preset=${id}`);
  }
  presetSel.addEventListener('change', () => applyPreset(presetSel.value));

  /* suggestions for the id fields */
  (async () => {
    try {
      const [models, jobs, datasets] = await Promise.all([api('/models', { query: { limit: 100 } }),
        api('/jobs', { query: { limit: 100 } }), api('/datasets')]);
      if (gone) return;
      fill(modelsList, ...models.models.map((m) => h('option', { value: m.id }, `${m.name} (${m.config || '?'}, job ${m.job || '—'})`)));
      fill(jobsList, ...jobs.jobs.filter((j) => !['failed', 'cancelled'].includes(j.status))
        .map((j) => h('option', { value: j.id }, `${j.name} (${j.status})`)));
      fill(foldersList, ...datasets.folders.map((f) => h('option', { value: f.path }, f.root)));
    } catch {
      /* suggestions only */
    }
  })();

  const first = params.get('preset') || 'quick';
  presetSel.value = first;
  writeForm({});
  showJson(readForm());
  applyPreset(first);

  return () => {
    gone = true;
  };
}
