-- 0400_wallets.sql -- wallets on the ledger (docs/wallets.md): assets, wallets (one ledger
-- account each) and the transfers between wallets. Written by lua/services/core/routes/wallets*.lua.
-- The money itself lives in the ledger's database (sql/ledger/): these rows name its accounts.

-- Assets a wallet can hold. `number` makes the ledger numbers: ledger = number * 2 + mode bit
-- (test 0, live 1), so test and live never share a ledger. `exponent`: minor units (USD 2:
-- amounts are cents; UGX 0; USDC 6).
CREATE TABLE wallet_assets (
    code     text COLLATE "C" PRIMARY KEY CHECK (code ~ '^[A-Z][A-Z0-9]{2,9}$'),
    number   integer NOT NULL UNIQUE CHECK (number BETWEEN 1 AND 1000000),
    exponent integer NOT NULL CHECK (exponent BETWEEN 0 AND 18)
);
INSERT INTO wallet_assets (code, number, exponent) VALUES
    ('USD', 1, 2), ('EUR', 2, 2), ('KES', 3, 2), ('UGX', 4, 0), ('USDC', 5, 6);

-- A wallet: one ledger account (debits_must_not_exceed_credits + history), owned by a customer
-- of the partner (owner_type 'customer', owner_id cus_...) or by the partner itself
-- (owner_type 'partner', owner_id = partner_id). ledger_account_id is derived from the wallet id
-- (docs/wallets.md), so creating the account again is `exists`.
CREATE TABLE wallets (
    id                text COLLATE "C" PRIMARY KEY CHECK (id ~ '^wal_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    partner_id        text COLLATE "C" NOT NULL REFERENCES partners (id),
    mode              text NOT NULL CHECK (mode IN ('test', 'live')),
    owner_type        text NOT NULL CHECK (owner_type IN ('customer', 'partner')),
    owner_id          text COLLATE "C" NOT NULL,
    asset             text COLLATE "C" NOT NULL REFERENCES wallet_assets (code),
    ledger            bigint NOT NULL CHECK (ledger BETWEEN 1 AND 4294967295),
    ledger_account_id numeric(39, 0) NOT NULL UNIQUE CHECK (ledger_account_id > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (owner_type = 'customer' AND owner_id ~ '^cus_[0-7][0-9a-hjkmnp-tv-z]{25}$'
           OR owner_type = 'partner' AND owner_id = partner_id)
);
CREATE INDEX wallets_partner_mode ON wallets (partner_id, mode, id);
CREATE INDEX wallets_owner ON wallets (partner_id, mode, owner_id);

-- A transfer between two wallets of one partner, mode and asset, as the ledger committed it.
-- ledger_transfer_id is derived from the partner, mode and Idempotency-Key (or random without
-- one), unique: a retry after a crash finds the ledger's `exists` and this row, never a second.
CREATE TABLE wallet_transfers (
    id                 text COLLATE "C" PRIMARY KEY CHECK (id ~ '^tr_[0-7][0-9a-hjkmnp-tv-z]{25}$'),
    partner_id         text COLLATE "C" NOT NULL REFERENCES partners (id),
    mode               text NOT NULL CHECK (mode IN ('test', 'live')),
    from_wallet        text COLLATE "C" NOT NULL REFERENCES wallets (id),
    to_wallet          text COLLATE "C" NOT NULL REFERENCES wallets (id),
    asset              text COLLATE "C" NOT NULL REFERENCES wallet_assets (code),
    amount             numeric(39, 0) NOT NULL CHECK (amount > 0),
    description        text CHECK (length(description) <= 500),
    ledger_transfer_id numeric(39, 0) NOT NULL UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (from_wallet <> to_wallet)
);
CREATE INDEX wallet_transfers_partner_mode ON wallet_transfers (partner_id, mode, id);
