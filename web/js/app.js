/*
 * app.js — the dashboard's entry: a hash router over four views
 * (#/jobs, #/submit, #/job/{id}, #/compare), each a mount function that
 * returns its own cleanup (closing event streams, stopping timers,
 * destroying charts). Hash routes because the daemon serves index.html
 * only at "/". Also: the daemon's health in the header, and a token
 * prompt when the daemon answers 401.
 */
import { api, onAuthNeeded, setToken, token } from './api.js';
import { mountJobs } from './jobs.js';
import { mountSubmit } from './submit.js';
import { mountJob } from './job.js';
import { mountCompare } from './compare.js';
import { parseHash } from './util.js';

const main = document.getElementById('main');
let cleanup = null;

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  delete main.dataset.ready;
  delete main.dataset.final;
  delete main.dataset.compared;
  const { parts, params } = parseHash(location.hash);
  const [view, arg] = parts;
  document.title = 'fisherd';
  for (const a of document.querySelectorAll('header nav a')) {
    const here = a.getAttribute('href') === `#/${view === 'job' ? 'jobs' : view}`;
    if (here) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (view === 'job' && arg) cleanup = mountJob(main, arg);
  else if (view === 'submit') cleanup = mountSubmit(main, params);
  else if (view === 'compare') cleanup = mountCompare(main, params);
  else cleanup = mountJobs(main, params);
  main.dataset.view = view || 'jobs';
  window.scrollTo(0, 0);
}

/* After a route change (not the first load) focus moves to the new page's
 * heading, as a page load would put it at the top for a screen reader. */
window.addEventListener('hashchange', () => {
  route();
  main.querySelector('h1')?.focus({ preventScroll: true });
});
route();

/* the daemon's health, in the header */
const health = document.getElementById('health');
async function ping() {
  try {
    const r = await api('/healthz');
    health.textContent = `fisherd ${r.version} · ${r.status}`;
    health.className = `health ${r.status === 'ok' ? 'ok' : 'warn'}`;
  } catch {
    health.textContent = 'daemon unreachable';
    health.className = 'health bad';
  }
}
ping();
setInterval(ping, 15000);

/* a bearer token, asked for when the daemon wants one */
const auth = document.getElementById('auth');
onAuthNeeded(() => {
  auth.hidden = false;
});
auth.querySelector('input').value = token();
auth.addEventListener('submit', (e) => {
  e.preventDefault();
  setToken(auth.querySelector('input').value.trim());
  auth.hidden = true;
  route();
});
auth.querySelector('button[type="button"]').addEventListener('click', () => {
  auth.hidden = true;
});
