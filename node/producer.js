// producer.js -- adds jobs with Node BullMQ's Queue.add, one after the other, then exits.
//   node producer.js '{"queue": "q", "jobs": [{"name": "n", "data": {...}, "opts": {...}}]}'
// Prints {"ev":"added","id":...,"name":...,"t":<ms before the add>} per job, then {"ev":"done"}.
'use strict';

const { Queue } = require('bullmq');
const { args, emit, connection, bound } = require('./lib');

async function main() {
  const a = args();
  bound(a, 20000);
  const conn = connection(a);
  const queue = new Queue(a.queue, { connection: conn });
  for (const job of a.jobs || []) {
    const t = Date.now();
    const added = await queue.add(job.name || 'job', job.data || {}, job.opts || {});
    emit({ ev: 'added', id: added.id, name: added.name, t });
  }
  emit({ ev: 'done' });
  await queue.close();
  await conn.quit();
  process.exit(0);
}

main();
