-- A customer has one wallet per asset (issue 6: "a wallet per customer per asset"), so the
-- onboarding tiers' limits, which follow the customer's wallet of an asset, are the customer's.
-- Partners keep as many wallets of an asset as they make (treasury, fees, ...).
-- A database from before this rule may hold a customer with two wallets of one asset: say so,
-- rather than fail on the index (keep one wallet each: move the money, then delete the rows of
-- the others, and migrate again).
DO $$
DECLARE
  dup record;
BEGIN
  SELECT partner_id, mode, owner_id, asset, count(*) AS n INTO dup FROM wallets
  WHERE owner_type = 'customer' GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'customer % (partner %, %) has % % wallets: a customer has one wallet per asset; keep one and migrate again',
      dup.owner_id, dup.partner_id, dup.mode, dup.n, dup.asset;
  END IF;
END $$;
CREATE UNIQUE INDEX wallets_customer_asset ON wallets (partner_id, mode, owner_id, asset)
    WHERE owner_type = 'customer';
