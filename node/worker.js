// worker.js -- a Node BullMQ Worker on one queue; exits once `expect` jobs have finished for good
// (completed, or failed with no attempt left), or after timeout_ms.
//   node worker.js '{"queue": "q", "expect": 2, "concurrency": 1, "fail_attempts": 1,
//                    "progress": 50, "returnvalue": {...}, "timeout_ms": 20000}'
// fail_attempts: the first N attempts of every job throw Error("attempt <n> fails on purpose").
// progress: the handler calls job.updateProgress(progress) before it ends. hold_ms: the handler
// then waits that long. worker_opts: more Worker options (lockDuration, stalledInterval, ...).
// A stalled job the worker's own checker moved back prints {"ev":"stalled","id","prev"}.
// Prints JSON lines: {"ev":"ready"} once the worker is connected; per attempt {"ev":"process",
// "id","name","data","attemptsMade","attemptsStarted","opts","t"}; {"ev":"completed","id",
// "returnvalue"}; {"ev":"failed","id","reason","attemptsMade","final"}; then {"ev":"done"}.
'use strict';

const { Worker } = require('bullmq');
const { args, emit, connection, bound } = require('./lib');

async function main() {
  const a = args();
  bound(a, 20000);
  const expect = a.expect || 1;
  const failAttempts = a.fail_attempts || 0;
  let finished = 0;
  let closing = false;
  const conn = connection(a);

  const worker = new Worker(a.queue, async (job) => {
    emit({ ev: 'process', id: job.id, name: job.name, data: job.data, attemptsMade: job.attemptsMade,
           attemptsStarted: job.attemptsStarted, stalledCounter: job.stalledCounter, opts: job.opts,
           timestamp: job.timestamp });
    if (a.progress !== undefined) await job.updateProgress(a.progress);
    if (a.hold_ms) await new Promise((resolve) => setTimeout(resolve, a.hold_ms));
    if (job.attemptsMade < failAttempts) {
      throw new Error('attempt ' + (job.attemptsMade + 1) + ' fails on purpose');
    }
    return a.returnvalue !== undefined ? a.returnvalue : { ok: true, by: 'node' };
  }, Object.assign({ connection: conn, concurrency: a.concurrency || 1, autorun: false }, a.worker_opts || {}));

  async function finish() {
    finished += 1;
    if (finished >= expect && !closing) {
      closing = true;
      emit({ ev: 'done' });
      await worker.close();
      await conn.quit();
      process.exit(0);
    }
  }
  worker.on('completed', (job, rv) => {
    emit({ ev: 'completed', id: job.id, returnvalue: rv, attemptsMade: job.attemptsMade });
    finish();
  });
  worker.on('failed', (job, err) => {
    const final = job.attemptsMade >= (job.opts.attempts || 1);
    emit({ ev: 'failed', id: job.id, reason: err.message, attemptsMade: job.attemptsMade, final });
    if (final) finish();
  });
  worker.on('stalled', (id, prev) => emit({ ev: 'stalled', id, prev }));
  worker.on('error', (err) => emit({ ev: 'worker_error', message: err.message }));

  worker.run();
  await worker.waitUntilReady();
  emit({ ev: 'ready' });
}

main();
