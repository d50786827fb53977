-- The response of an Idempotency-Key, stored in the transaction of the change it answers
-- (nuvion.api.idempotency.complete): one call, sent with the transaction's COMMIT. A claim that
-- is no longer this request's (its lock expired and the same request claimed the key again)
-- raises, so the transaction rolls back: the request that holds the key now answers it.
CREATE FUNCTION api_idempotency_complete(p_partner_id text, p_mode text, p_key text, p_request_id text,
                                         p_status integer, p_body text, p_headers jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE api_idempotency_keys SET response_status = p_status, response_body = p_body,
    response_headers = p_headers, completed_at = now(), locked_until = NULL
  WHERE partner_id = p_partner_id AND mode = p_mode AND idempotency_key = p_key
    AND request_id = p_request_id AND completed_at IS NULL;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'idempotency claim lost: key % is no longer held by request %', p_key, p_request_id
      USING ERRCODE = 'NVI01';
  END IF;
END $$;
