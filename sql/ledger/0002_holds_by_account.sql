-- Holds with a deadline by account, for `balance_at` (lua/lib/nuvion/ledger/query.lua): an
-- expiry writes no row to ledger_account_balances, so the balance at an instant takes off the
-- holds of the account that expired after its last row and by that instant. Only holds with a
-- timeout can expire: the indexes leave the others out.
CREATE INDEX ledger_holds_debit_expiry ON ledger_holds (debit_account_id, expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX ledger_holds_credit_expiry ON ledger_holds (credit_account_id, expires_at)
    WHERE expires_at IS NOT NULL;
