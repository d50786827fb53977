-- 0100_api.sql -- the shared API layer's tables in core's database: idempotency keys and the
-- audit log (lua/lib/nuvion/api/idempotency.lua, audit.lua; docs/api.md).

-- The first response to each Idempotency-Key, per partner and mode, kept for 24 hours.
-- A row with completed_at NULL is a claim: its request is running (until locked_until).
CREATE TABLE api_idempotency_keys (
  partner_id       text COLLATE "C" NOT NULL,
  mode             text NOT NULL CHECK (mode IN ('test', 'live')),
  idempotency_key  text COLLATE "C" NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
  request_method   text NOT NULL,
  request_path     text NOT NULL,
  request_hash     text NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
  request_id       text NOT NULL,
  locked_until     timestamptz,
  response_status  integer CHECK (response_status BETWEEN 100 AND 599),
  response_body    text,
  response_headers jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  completed_at     timestamptz,
  expires_at       timestamptz NOT NULL,
  PRIMARY KEY (partner_id, mode, idempotency_key),
  CHECK ((completed_at IS NULL) = (response_status IS NULL)),
  CHECK (completed_at IS NOT NULL OR locked_until IS NOT NULL)
);
CREATE INDEX api_idempotency_keys_expires_at ON api_idempotency_keys (expires_at);

-- Every mutation: who (partner, mode, key or token), what (action, object), when, which request.
CREATE TABLE api_audit_log (
  id          text COLLATE "C" PRIMARY KEY CHECK (id ~ '^aud_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
  partner_id  text COLLATE "C" NOT NULL,
  mode        text NOT NULL CHECK (mode IN ('test', 'live')),
  actor_kind  text,
  key_id      text COLLATE "C",
  action      text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.]{0,63}$'),
  object_id   text COLLATE "C",
  request_id  text,
  method      text,
  path        text,
  status      integer,
  data        jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_audit_log_partner ON api_audit_log (partner_id, mode, id);
CREATE INDEX api_audit_log_object ON api_audit_log (object_id, id) WHERE object_id IS NOT NULL;

-- The log is append-only, even for the role that owns it.
CREATE FUNCTION api_audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'api_audit_log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER api_audit_log_append_only BEFORE UPDATE OR DELETE ON api_audit_log
  FOR EACH ROW EXECUTE FUNCTION api_audit_log_append_only();
CREATE TRIGGER api_audit_log_no_truncate BEFORE TRUNCATE ON api_audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION api_audit_log_append_only();
