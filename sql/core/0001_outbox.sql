-- The transactional outbox (docs/outbox.md). Service-neutral: every service that publishes
-- events adds this same file to its own sql/<service>/ (spec/01-unit/07-outbox_sql_spec.lua
-- checks that the copies stay identical to this one).
--
-- outbox: one row per event, written by outbox.publish() in the transaction of the business
-- change; the relay moves committed rows to the queue in seq order, marks them relayed, and
-- deletes relayed rows after a retention period.
CREATE TABLE outbox (
  seq            bigserial PRIMARY KEY,           -- relay order (per aggregate = commit order)
  id             text NOT NULL UNIQUE,            -- the event id, evt_<sortable>: the queue's job id
  aggregate_type text NOT NULL CHECK (aggregate_type ~ '^[a-z][a-z0-9_]{0,63}$'),
  aggregate_id   text NOT NULL CHECK (length(aggregate_id) BETWEEN 1 AND 255),
  type           text NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$' AND length(type) <= 128),
  data           jsonb NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  relayed_at     timestamptz,
  relay_attempts integer NOT NULL DEFAULT 0
);

-- What the relay scans: the rows not relayed yet, in order.
CREATE INDEX outbox_pending ON outbox (seq) WHERE relayed_at IS NULL;
CREATE INDEX outbox_relayed ON outbox (relayed_at) WHERE relayed_at IS NOT NULL;

-- Consumers' idempotency: outbox.consume_once() inserts (consumer, event id) in the transaction
-- of the consumer's own effects; a second delivery of the event finds the row and does nothing.
CREATE TABLE processed_events (
  consumer     text NOT NULL CHECK (length(consumer) BETWEEN 1 AND 128),
  event_id     text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 255),
  processed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_age ON processed_events (processed_at);
