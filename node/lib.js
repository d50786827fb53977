// lib.js -- what the peer scripts share: their one JSON argument, the Redis connection, JSON-line
// output and the time bound every script exits by.
'use strict';

const IORedis = require('ioredis');

// The one argument of every script: a JSON object (see each script's header).
function args() {
  const raw = process.argv[2];
  if (!raw) {
    fail('usage: node ' + process.argv[1] + ' \'{"queue": "...", ...}\'');
  }
  try {
    return JSON.parse(raw);
  } catch (e) {
    fail('the argument is not JSON: ' + e.message);
  }
  return null;
}

// One JSON object a line on stdout, with the wall-clock time in ms (t) unless given.
function emit(obj) {
  if (obj.t === undefined) obj.t = Date.now();
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  process.stdout.write(JSON.stringify({ ev: 'error', message: String(message), t: Date.now() }) + '\n');
  process.exit(2);
}

// A connection for BullMQ: the URL from the argument or NUVION_TEST_REDIS_URL. Workers and
// QueueEvents block, so no per-request retry limit (BullMQ requires that).
function connection(a) {
  const url = a.redis || process.env.NUVION_TEST_REDIS_URL;
  if (!url) fail('no Redis URL: set NUVION_TEST_REDIS_URL or pass "redis"');
  return new IORedis(url, { maxRetriesPerRequest: null, enableOfflineQueue: true });
}

// Every script ends by itself: after timeout_ms (default 20 s) it prints {"ev":"timeout"} and
// exits with status 3, whatever it was waiting for.
function bound(a, defaultMs) {
  const ms = a.timeout_ms || defaultMs || 20000;
  const timer = setTimeout(() => {
    emit({ ev: 'timeout', after_ms: ms });
    process.exit(3);
  }, ms);
  return timer;
}

process.on('unhandledRejection', (e) => fail(e && e.stack ? e.stack : e));
process.on('uncaughtException', (e) => fail(e && e.stack ? e.stack : e));

module.exports = { args, emit, fail, connection, bound };
