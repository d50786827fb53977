// board.js -- Bull Board (@bull-board/api with its Express adapter) over the given queues, served
// on a loopback port; the script asks its HTTP API what the board UI would ask, prints the
// answers and exits.
//   node board.js '{"queues": ["q1", "q2"], "jobs": {"q1": ["1", "7"]}, "timeout_ms": 20000}'
// Prints, per queue, {"ev":"queue","name","counts","hasWorkers","workers" (the board's workers
// page: Redis clients named as BullMQ names its workers'),"jobs":{<status>: [{id,name,attempts,
// failedReason,progress,returnValue,data,delay,timestamp,processedOn,finishedOn}]}}: the
// /api/queues listing with activeQueue=<name> and status=<each of the board's statuses>; per job
// asked for, {"ev":"job","queue","id","http","status","job":{...}} from /api/queues/<q>/<id>;
// {"ev":"listed","names":[...]} from /api/queues without activeQueue; then {"ev":"done"}.
'use strict';

const http = require('http');
const { Queue } = require('bullmq');
const { createBullBoard } = require('@bull-board/api');
const { BullMQAdapter } = require('@bull-board/api/bullMQAdapter');
const { ExpressAdapter } = require('@bull-board/express');
const { args, emit, connection, bound } = require('./lib');

const STATUSES = ['active', 'waiting', 'prioritized', 'completed', 'failed', 'delayed', 'paused'];

function get(port, path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode, body: JSON.parse(body) });
        } catch (e) {
          reject(new Error('GET ' + path + ': ' + res.statusCode + ' ' + body.slice(0, 200)));
        }
      });
    }).on('error', reject);
  });
}

function brief(j) {
  return { id: j.id, name: j.name, attempts: j.attempts, failedReason: j.failedReason, progress: j.progress,
           returnValue: j.returnValue, data: j.data, delay: j.delay, timestamp: j.timestamp,
           processedOn: j.processedOn, finishedOn: j.finishedOn, isFailed: j.isFailed };
}

async function main() {
  const a = args();
  bound(a, 20000);
  const conn = connection(a);
  const queues = (a.queues || []).map((name) => new Queue(name, { connection: conn }));
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath('/');
  createBullBoard({ queues: queues.map((q) => new BullMQAdapter(q)), serverAdapter });
  const server = serverAdapter.getRouter().listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const port = server.address().port;

  const all = await get(port, '/api/queues?page=1');
  emit({ ev: 'listed', http: all.status, names: (all.body.queues || []).map((q) => q.name) });
  for (const name of a.queues || []) {
    const out = { ev: 'queue', name, counts: null, hasWorkers: null, workers: null, jobs: {} };
    for (const status of STATUSES) {
      const path = '/api/queues?activeQueue=' + encodeURIComponent(name) + '&status=' + status
        + '&page=1&jobsPerPage=100';
      const res = await get(port, path);
      if (res.status !== 200) throw new Error('GET ' + path + ': ' + res.status + ' ' + JSON.stringify(res.body));
      const q = res.body.queues.find((x) => x.name === name);
      out.counts = q.counts;
      out.hasWorkers = q.hasWorkers;
      out.jobs[status] = q.jobs.map(brief);
    }
    const workers = await get(port, '/api/queues/' + encodeURIComponent(name) + '/workers');
    out.workers = workers.body;
    emit(out);
    for (const id of (a.jobs && a.jobs[name]) || []) {
      const res = await get(port, '/api/queues/' + encodeURIComponent(name) + '/' + encodeURIComponent(id));
      emit({ ev: 'job', queue: name, id, http: res.status, status: res.body.status,
             job: res.body.job ? brief(res.body.job) : null });
    }
  }
  emit({ ev: 'done' });
  server.close();
  await Promise.all(queues.map((q) => q.close()));
  await conn.quit();
  process.exit(0);
}

main();
