// admin.js -- Node BullMQ's Queue methods on one queue, in order, each result printed.
//   node admin.js '{"queue": "q", "ops": [{"op": "pause"}, {"op": "counts"}, {"op": "state", "id": "1"},
//                                         {"op": "job", "id": "1"}, {"op": "resume"}]}'
// Prints {"ev":"op","op":...,"result":...} per op: pause / resume: null; counts: getJobCounts();
// state: getJobState(id); job: the job as Queue.getJob(id).toJSON() gives it (null when none);
// paused: isPaused(); retry: Job.retry(state, default "failed") of job `id`; then {"ev":"done"}.
'use strict';

const { Queue } = require('bullmq');
const { args, emit, connection, bound, fail } = require('./lib');

async function main() {
  const a = args();
  bound(a, 20000);
  const conn = connection(a);
  const queue = new Queue(a.queue, { connection: conn });
  for (const o of a.ops || []) {
    let result = null;
    switch (o.op) {
      case 'pause': await queue.pause(); break;
      case 'resume': await queue.resume(); break;
      case 'paused': result = await queue.isPaused(); break;
      case 'counts': result = await queue.getJobCounts(); break;
      case 'state': result = await queue.getJobState(o.id); break;
      case 'job': {
        const job = await queue.getJob(o.id);
        result = job ? job.toJSON() : null;
        break;
      }
      case 'retry': {
        const job = await queue.getJob(o.id);
        if (!job) fail('no job ' + o.id);
        await job.retry(o.state || 'failed');
        break;
      }
      default: fail('unknown op ' + o.op);
    }
    emit({ ev: 'op', op: o.op, id: o.id, result });
  }
  emit({ ev: 'done' });
  await queue.close();
  await conn.quit();
  process.exit(0);
}

main();
