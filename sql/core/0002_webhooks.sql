-- Webhooks to customers (docs/webhooks.md): endpoints, their signing secrets (encrypted with the
-- master keyring, never returned after creation), deliveries and every attempt.
CREATE TABLE webhook_endpoints (
  id               text PRIMARY KEY,                       -- we_<sortable>
  owner_id         text NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 255), -- customer or partner
  url              text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
  description      text CHECK (length(description) <= 500),
  event_types      text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 100),
  enabled          boolean NOT NULL DEFAULT true,
  disabled_reason  text,
  disabled_at      timestamptz,
  failure_streak   integer NOT NULL DEFAULT 0,             -- failed attempts in a row
  failing_since    timestamptz,                            -- first failure of the streak
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  deleted_at       timestamptz
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (owner_id, id) WHERE deleted_at IS NULL;

-- Several secrets during a rotation: every one not expired signs (one v1 each).
CREATE TABLE webhook_endpoint_secrets (
  id           text PRIMARY KEY,                           -- whs_<sortable>
  endpoint_id  text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
  secret_enc   text NOT NULL,                              -- nuvion.crypto envelope, aad = endpoint id
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz                                 -- NULL: current
);
CREATE INDEX webhook_endpoint_secrets_endpoint ON webhook_endpoint_secrets (endpoint_id, created_at);

CREATE TABLE webhook_deliveries (
  id               text PRIMARY KEY,                       -- whd_<sortable>
  endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
  owner_id         text NOT NULL,
  event_id         text NOT NULL,
  event_type       text NOT NULL,
  body             text NOT NULL,                          -- the JSON sent, the same bytes every attempt
  status           text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'retrying', 'succeeded', 'failed')),
  attempts         integer NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz,                            -- NULL once final
  last_status_code integer,
  last_error       text,
  replay_of        text REFERENCES webhook_deliveries (id),
  created_at       timestamptz NOT NULL DEFAULT now(),
  completed_at     timestamptz
);
-- One delivery of an event per endpoint (a relay's duplicate is absorbed); replays are extra rows.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, event_id) WHERE replay_of IS NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
  WHERE status IN ('pending', 'retrying');
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

CREATE TABLE webhook_attempts (
  id               bigserial PRIMARY KEY,
  delivery_id      text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
  attempt          integer NOT NULL,
  started_at       timestamptz NOT NULL,
  latency_ms       integer NOT NULL,
  status_code      integer,                                -- NULL: no HTTP answer
  ok               boolean NOT NULL,
  error            text,                                   -- transport failure, SSRF refusal, ...
  response_excerpt text,                                   -- first 512 bytes of the answer
  UNIQUE (delivery_id, attempt)
);
