// bench.js -- the Node BullMQ row of bench/queue: jobs/s end to end for a no-op job, and the
// pick-up latency of a waiting job, in one process (one clock for add and handler start).
//   node bench.js '{"queue": "q", "jobs": 10000, "concurrency": 50, "producers": 50,
//                   "latency_jobs": 500, "timeout_ms": 60000}'
// Throughput: a Worker (concurrency 50) is up and idle; `producers` loops then Queue.add the
// jobs one at a time each (jobs / producers per loop, 50 adds in flight); the clock runs from the
// first add to the worker's `completed` event of the last job. Latency: the worker idle (blocked
// on the marker), one job is added at a time: the time from just before Queue.add to the start
// of its handler, the next job added 1 ms after the previous one completed.
// Prints {"ev":"result","jobs","seconds","jobs_per_s","cpu_s" (this process's user+system CPU
// seconds over the throughput phase),"lat_n","lat_p50_ms","lat_p99_ms",
// "lat_max_ms","lat_ms":[every sample, sorted]} and exits; the queue's keys are left for the
// caller to delete.
'use strict';

const { performance } = require('perf_hooks');
const { Queue, Worker } = require('bullmq');
const { args, emit, connection, bound } = require('./lib');

function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const a = args();
  bound(a, 60000);
  const n = a.jobs || 10000;
  const producers = a.producers || 50;
  const latencyJobs = a.latency_jobs || 0;
  const qconn = connection(a);
  const wconn = connection(a);
  const queue = new Queue(a.queue, { connection: qconn });

  let mode = 'throughput';
  let completed = 0;
  let onAllDone = null;
  let addedAt = 0;
  let startedAt = 0;
  let onCompleted = null;
  const worker = new Worker(a.queue, async () => {
    if (mode === 'latency') startedAt = performance.now();
    return null;
  }, { connection: wconn, concurrency: a.concurrency || 50, autorun: false });
  worker.on('completed', () => {
    completed += 1;
    if (mode === 'throughput' && completed === n && onAllDone) onAllDone();
    if (mode === 'latency' && onCompleted) onCompleted();
  });
  worker.on('error', (err) => emit({ ev: 'worker_error', message: err.message }));
  worker.run();
  await worker.waitUntilReady();
  await queue.waitUntilReady();
  await sleep(200); // the worker is blocked on the marker

  const allDone = new Promise((resolve) => { onAllDone = resolve; });
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const per = Math.floor(n / producers);
  const loops = [];
  for (let p = 0; p < producers; p++) {
    const count = p < producers - 1 ? per : n - per * (producers - 1);
    loops.push((async () => {
      for (let i = 0; i < count; i++) await queue.add('noop', { i });
    })());
  }
  await Promise.all(loops);
  await allDone;
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);

  mode = 'latency';
  const lat = [];
  await sleep(100);
  for (let i = 0; i < latencyJobs; i++) {
    const done = new Promise((resolve) => { onCompleted = resolve; });
    addedAt = performance.now();
    await queue.add('noop', { i });
    await done;
    lat.push(startedAt - addedAt);
    await sleep(1);
  }
  lat.sort((x, y) => x - y);
  emit({ ev: 'result', jobs: n, seconds, jobs_per_s: n / seconds, cpu_s: (cpu.user + cpu.system) / 1e6,
         lat_n: lat.length,
         lat_p50_ms: pct(lat, 0.5), lat_p99_ms: pct(lat, 0.99), lat_max_ms: lat.length ? lat[lat.length - 1] : null,
         lat_ms: lat.map((x) => Math.round(x * 1000) / 1000) });
  await worker.close();
  await queue.close();
  await qconn.quit();
  await wconn.quit();
  process.exit(0);
}

main();
