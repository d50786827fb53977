-- 0410_wallet_limits.sql -- what customers' wallets moved, for the onboarding tiers' daily limits
-- (lua/lib/nuvion/rules/onboarding.lua, docs/wallets.md "Tier limits"). Written by
-- lua/services/core/wallets/limits.lua only, for wallets owned by a customer (partners' wallets
-- have no limits and no rows here).
--
-- One row per movement and wallet: direction 'in' (a transfer's credit side, a test funding, an
-- internal credit) or 'out' (a transfer's debit side, an internal debit, a hold when placed).
-- The rolling 24 h usage is the sum of a wallet's rows of the last 24 h (created_at is the clock
-- time of the movement). ledger_transfer_id is the ledger transfer's id (for a hold, the hold's):
-- one row per transfer and wallet, so a retry that the ledger answers `exists` never counts twice.
-- A void of a hold sets its row's amount to 0 and a partial capture to what was captured (the
-- rest gives the daily-out allowance back). Rows older than 2 days are pruned by the next
-- movement of their wallet.
CREATE TABLE wallet_limit_usage (
    wallet_id          text COLLATE "C" NOT NULL REFERENCES wallets (id),
    ledger_transfer_id numeric(39, 0) NOT NULL,
    direction          text NOT NULL CHECK (direction IN ('in', 'out')),
    amount             numeric(39, 0) NOT NULL CHECK (amount >= 0),
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (wallet_id, ledger_transfer_id)
);
CREATE INDEX wallet_limit_usage_window ON wallet_limit_usage (wallet_id, created_at) INCLUDE (direction, amount);
