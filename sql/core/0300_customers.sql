-- 0300_customers.sql -- a partner's customers and their onboarding (docs/customers.md).
-- Written by lua/services/core/onboarding.lua only.
--
-- PII is never stored in plain text: every *_enc column is a nuvion.crypto envelope token
-- (NUVION_MASTER_KEYS), sealed with the aad "customers.<column>:<customer id>" so that a token
-- copied to another row or column does not open. Lookups by email and phone go through keyed
-- hashes: hex(HMAC-SHA256(NUVION_PII_HASH_KEY, normalised value)).

CREATE TABLE customers (
    id                      text COLLATE "C" PRIMARY KEY CHECK (id ~ '^cus_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    partner_id              text COLLATE "C" NOT NULL REFERENCES partners (id),
    mode                    text NOT NULL CHECK (mode IN ('test', 'live')),
    kind                    text NOT NULL CHECK (kind IN ('individual', 'business')),
    state                   text NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required')),
    tier                    integer NOT NULL DEFAULT 0 CHECK (tier BETWEEN 0 AND 9),
    name_enc                text NOT NULL,        -- {first_name, last_name} or {business_name}
    date_of_birth_enc       text,
    address_enc             text,
    phone_enc               text,
    email_enc               text NOT NULL,
    id_document_enc         text,                 -- {type, number, country}
    registration_number_enc text,
    directors_enc           text,
    email_hash              text NOT NULL CHECK (email_hash ~ '^[0-9a-f]{64}$'),
    phone_hash              text CHECK (phone_hash ~ '^[0-9a-f]{64}$'),
    id_number_last4         text CHECK (length(id_number_last4) <= 4),
    metadata                jsonb NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_partner_mode ON customers (partner_id, mode, id);
CREATE INDEX customers_email ON customers (partner_id, mode, email_hash, id);
CREATE INDEX customers_phone ON customers (partner_id, mode, phone_hash, id) WHERE phone_hash IS NOT NULL;

-- Every change of a customer's state, the creation included (from_state NULL). Append-only.
CREATE TABLE customer_state_changes (
    id          bigserial PRIMARY KEY,
    customer_id text COLLATE "C" NOT NULL REFERENCES customers (id),
    from_state  text CHECK (from_state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required')),
    to_state    text NOT NULL CHECK (to_state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required')),
    reason      text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    request_id  text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX customer_state_changes_customer ON customer_state_changes (customer_id, id);

CREATE FUNCTION customer_state_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'customer_state_changes is append-only';
END $$;
CREATE TRIGGER customer_state_changes_append_only BEFORE UPDATE OR DELETE ON customer_state_changes
    FOR EACH ROW EXECUTE FUNCTION customer_state_changes_append_only();

-- One row per check asked of the KYC provider. status:
--   submitting   made, not yet accepted by the provider (a failed or timed-out submission is
--                retried by the poller with the same reference: the provider is idempotent on it)
--   submitted    accepted (provider_ref set), the result not known yet: polled
--   verified | rejected | action_required   the provider's result, applied to the customer
CREATE TABLE customer_verifications (
    id            text COLLATE "C" PRIMARY KEY CHECK (id ~ '^kyc_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    customer_id   text COLLATE "C" NOT NULL REFERENCES customers (id),
    provider      text NOT NULL,
    provider_ref  text,
    reason        text NOT NULL CHECK (reason IN ('verify', 'document')),
    status        text NOT NULL DEFAULT 'submitting'
                  CHECK (status IN ('submitting', 'submitted', 'verified', 'rejected', 'action_required')),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    result_codes  text[] NOT NULL DEFAULT '{}',
    next_poll_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);
CREATE INDEX customer_verifications_customer ON customer_verifications (customer_id, id);
CREATE INDEX customer_verifications_due ON customer_verifications (next_poll_at)
    WHERE status IN ('submitting', 'submitted');
