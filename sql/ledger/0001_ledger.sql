-- 0001_ledger.sql -- the ledger: TigerBeetle's accounts and transfers on Postgres (docs/ledger.md).
-- Written by the C posting layer (host/ledger_post.c) only, in batches; read by anyone.
-- Ids, amounts and counters are unsigned 128-bit integers: TigerBeetle's u128 needs 39 digits
-- (2^128-1 = 340282366920938463463374607431768211455), one more than numeric(38,0) holds.

CREATE DOMAIN ledger_u128 AS numeric(39,0)
    CHECK (VALUE >= 0 AND VALUE <= 340282366920938463463374607431768211455);

CREATE TABLE ledger_accounts (
    id              ledger_u128 PRIMARY KEY CHECK (id <> 0),
    debits_pending  ledger_u128 NOT NULL,
    debits_posted   ledger_u128 NOT NULL,
    credits_pending ledger_u128 NOT NULL,
    credits_posted  ledger_u128 NOT NULL,
    user_data_128   ledger_u128 NOT NULL,
    user_data_64    numeric(20,0) NOT NULL CHECK (user_data_64 BETWEEN 0 AND 18446744073709551615),
    user_data_32    bigint NOT NULL CHECK (user_data_32 BETWEEN 0 AND 4294967295),
    ledger          bigint NOT NULL CHECK (ledger BETWEEN 1 AND 4294967295),
    code            integer NOT NULL CHECK (code BETWEEN 1 AND 65535),
    flags           integer NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    timestamp       bigint NOT NULL CHECK (timestamp > 0),
    -- the flags' limits, once more in the database: a bug in the engine cannot overdraw
    CONSTRAINT ledger_debits_must_not_exceed_credits
        CHECK (flags & 2 = 0 OR debits_pending + debits_posted <= credits_posted),
    CONSTRAINT ledger_credits_must_not_exceed_debits
        CHECK (flags & 4 = 0 OR credits_pending + credits_posted <= debits_posted)
) WITH (fillfactor = 50); -- room on each page for the next version of a row: updates stay HOT

CREATE TABLE ledger_transfers (
    id                ledger_u128 PRIMARY KEY CHECK (id <> 0),
    debit_account_id  ledger_u128 NOT NULL,
    credit_account_id ledger_u128 NOT NULL,
    amount            ledger_u128 NOT NULL,
    pending_id        ledger_u128 NOT NULL,
    user_data_128     ledger_u128 NOT NULL,
    user_data_64      numeric(20,0) NOT NULL CHECK (user_data_64 BETWEEN 0 AND 18446744073709551615),
    user_data_32      bigint NOT NULL CHECK (user_data_32 BETWEEN 0 AND 4294967295),
    timeout           bigint NOT NULL CHECK (timeout BETWEEN 0 AND 4294967295),
    ledger            bigint NOT NULL CHECK (ledger BETWEEN 1 AND 4294967295),
    code              integer NOT NULL CHECK (code BETWEEN 1 AND 65535),
    flags             integer NOT NULL CHECK (flags BETWEEN 0 AND 65535),
    timestamp         bigint NOT NULL CHECK (timestamp > 0)
);

-- The state of every hold (a transfer with the pending flag): 1 pending, 2 posted, 3 voided,
-- 4 expired. The transfer row never changes; this row does. expires_at: ns, NULL = never.
CREATE TABLE ledger_holds (
    id                ledger_u128 PRIMARY KEY,
    debit_account_id  ledger_u128 NOT NULL,
    credit_account_id ledger_u128 NOT NULL,
    status            smallint NOT NULL CHECK (status BETWEEN 1 AND 4),
    expires_at        bigint
) WITH (fillfactor = 70);
CREATE INDEX ledger_holds_due ON ledger_holds (expires_at) WHERE status = 1 AND expires_at IS NOT NULL;

-- Ids whose transfer failed for a reason that may pass later (TigerBeetle's transient
-- failures): a retry under the same id gets id_already_failed, never a late success.
CREATE TABLE ledger_failed_transfers (
    id        ledger_u128 PRIMARY KEY,
    result    text NOT NULL,
    timestamp bigint NOT NULL
);

-- For accounts with the history flag: the four counters after each transfer that moved them
-- (statements, point-in-time balances). Expiries are not transfers and leave no row.
CREATE TABLE ledger_account_balances (
    account_id      ledger_u128 NOT NULL,
    timestamp       bigint NOT NULL,
    transfer_id     ledger_u128 NOT NULL,
    debits_pending  ledger_u128 NOT NULL,
    debits_posted   ledger_u128 NOT NULL,
    credits_pending ledger_u128 NOT NULL,
    credits_posted  ledger_u128 NOT NULL,
    PRIMARY KEY (account_id, timestamp)
);

-- Transfers and balance rows are immutable: the database refuses to change or remove them.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger: % on % is refused: ledger rows are immutable', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;

CREATE TRIGGER ledger_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_account_balances_immutable BEFORE UPDATE OR DELETE ON ledger_account_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_account_balances_no_truncate BEFORE TRUNCATE ON ledger_account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
