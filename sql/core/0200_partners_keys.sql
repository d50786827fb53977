-- 0200_partners_keys.sql -- partners, their secret API keys and core's token signing keys
-- (docs/auth.md). Written by lua/lib/nuvion/auth/*.lua only.

-- A business that calls our API.
CREATE TABLE partners (
    id         text COLLATE "C" PRIMARY KEY CHECK (id ~ '^ptn_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Secret keys (ids of nuvion.api.ids, sorted as bytes by the cursor lists): never the key itself, only HMAC-SHA256(pepper, key) (the pepper is
-- NUVION_API_KEY_PEPPER, outside the database), plus a few characters for display.
CREATE TABLE api_keys (
    id           text COLLATE "C" PRIMARY KEY CHECK (id ~ '^key_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    partner_id   text COLLATE "C" NOT NULL REFERENCES partners (id),
    mode         text NOT NULL CHECK (mode IN ('test', 'live')),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_hash     bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix       text NOT NULL CHECK (length(prefix) <= 16),   -- "sk_test_Ab12"
    last4        text NOT NULL CHECK (length(last4) = 4),
    scopes       text[] NOT NULL DEFAULT '{}',
    rolled_from  text COLLATE "C" REFERENCES api_keys (id),                -- the key this one replaced
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    expires_at   timestamptz,   -- set by a roll: the old key works until then (the grace)
    revoked_at   timestamptz    -- set by a revoke: refused from then on
);
CREATE INDEX api_keys_partner_mode ON api_keys (partner_id, mode, id);

-- Core's Ed25519 keys for access tokens. The seed is an envelope token of nuvion.crypto
-- (NUVION_MASTER_KEYS) or, without a keyring, of the development key (docs/auth.md).
-- A key signs from activated_at until retired_at, and stays published in the JWKS until
-- expires_at (retired_at + the longest token lifetime), so its tokens verify to their end.
CREATE TABLE auth_signing_keys (
    kid          text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    public_key   bytea NOT NULL CHECK (length(public_key) = 32),
    seed_sealed  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz,
    expires_at   timestamptz
);
-- at most one signing key at a time
CREATE UNIQUE INDEX auth_signing_keys_one_current ON auth_signing_keys ((true)) WHERE retired_at IS NULL;
