// events.js -- a Node BullMQ QueueEvents listener; prints every event it sees, exits once the
// counts in `until` are reached (say {"completed": 1, "failed": 1}) or after timeout_ms.
//   node events.js '{"queue": "q", "last_id": "0", "until": {"completed": 1}, "timeout_ms": 20000}'
// last_id: the stream id to read after ("0": the whole stream, so nothing written before the
// listener was up is missed; default "$", only new events). Prints {"ev":"ready"}, then per
// event {"ev":"event","event":<name>,"args":{...as QueueEvents parsed them},"id":<stream id>},
// then {"ev":"done"}. QueueEvents itself parses progress data and completed returnvalue as JSON:
// an event it cannot parse ends the script with {"ev":"error"}.
'use strict';

const { QueueEvents } = require('bullmq');
const { args, emit, connection, bound } = require('./lib');

async function main() {
  const a = args();
  bound(a, 20000);
  const until = a.until || {};
  const seen = {};
  const conn = connection(a);
  const qe = new QueueEvents(a.queue, { connection: conn, lastEventId: a.last_id || '$', autorun: false });
  let done = false;

  function reached() {
    for (const k of Object.keys(until)) {
      if ((seen[k] || 0) < until[k]) return false;
    }
    return Object.keys(until).length > 0;
  }

  const origEmit = qe.emit.bind(qe);
  qe.emit = (event, ...rest) => {
    if (typeof event === 'string' && !event.includes(':') && event !== 'error' && event !== 'ioredis:close') {
      const [payload, id] = event === 'drained' ? [{}, rest[0]] : rest;
      seen[event] = (seen[event] || 0) + 1;
      emit({ ev: 'event', event, args: payload, id });
      if (!done && reached()) {
        done = true;
        emit({ ev: 'done', seen });
        qe.close().then(() => conn.quit()).then(() => process.exit(0));
      }
    }
    return origEmit(event, ...rest);
  };
  qe.on('error', (err) => emit({ ev: 'events_error', message: err.message }));
  qe.run().catch((e) => emit({ ev: 'error', message: e.message }));
  await qe.waitUntilReady();
  emit({ ev: 'ready' });
}

main();
