-- 0310_customers_erasure.sql -- erased customers (DELETE /v1/customers/:id, docs/customers.md).
-- An erased customer keeps its row (id, partner, mode, kind, dates) and its state history, in the
-- state 'erased', without any PII: every sealed column, both lookup hashes, the ID number's last 4
-- characters and the metadata are gone. Erasure is final: the row never changes again.

ALTER TABLE customers DROP CONSTRAINT customers_state_check;
ALTER TABLE customers ADD CONSTRAINT customers_state_check
    CHECK (state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required', 'erased'));
ALTER TABLE customers ALTER COLUMN name_enc DROP NOT NULL;
ALTER TABLE customers ALTER COLUMN email_enc DROP NOT NULL;
ALTER TABLE customers ALTER COLUMN email_hash DROP NOT NULL;
ALTER TABLE customers ADD COLUMN erased_at timestamptz;
-- A customer is either whole (name, email and its hash) or erased (nothing of it left).
ALTER TABLE customers ADD CONSTRAINT customers_erased CHECK (
    CASE WHEN state = 'erased' THEN
        erased_at IS NOT NULL AND tier = 0 AND name_enc IS NULL AND date_of_birth_enc IS NULL
        AND address_enc IS NULL AND phone_enc IS NULL AND email_enc IS NULL AND id_document_enc IS NULL
        AND registration_number_enc IS NULL AND directors_enc IS NULL AND email_hash IS NULL
        AND phone_hash IS NULL AND id_number_last4 IS NULL AND metadata = '{}'::jsonb
    ELSE
        erased_at IS NULL AND name_enc IS NOT NULL AND email_enc IS NOT NULL AND email_hash IS NOT NULL
    END);

ALTER TABLE customer_state_changes DROP CONSTRAINT customer_state_changes_from_state_check;
ALTER TABLE customer_state_changes ADD CONSTRAINT customer_state_changes_from_state_check
    CHECK (from_state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required', 'erased'));
ALTER TABLE customer_state_changes DROP CONSTRAINT customer_state_changes_to_state_check;
ALTER TABLE customer_state_changes ADD CONSTRAINT customer_state_changes_to_state_check
    CHECK (to_state IN ('pending', 'in_review', 'verified', 'rejected', 'action_required', 'erased'));

-- Erasure is final: an erased row is never updated again (no verification, no PII back).
CREATE FUNCTION customers_erased_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'customer % is erased', OLD.id USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER customers_erased_final BEFORE UPDATE ON customers
    FOR EACH ROW WHEN (OLD.state = 'erased') EXECUTE FUNCTION customers_erased_final();
