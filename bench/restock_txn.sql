-- pgbench script: the SQL one `POST /api/v1/inventory/restock` (with Idempotency-Key) sends,
-- statement for statement and in the same order, so that pgbench's TPS is the database
-- ceiling for the API's restock. Run by bench/restock.py as
--   pgbench -n -M prepared -f bench/restock_txn.sql -D prefix=SKU_PREFIX -D nskus=N
--           -D keyprefix=API_KEY_PREFIX -D keyid=API_KEY_UUID -D keyhash=SECRET_SHA256_HEX ...
-- Mirrors: api/deps.py (_run_mutation: BEGIN; open; the work, no savepoint for an atomic
-- route; store; COMMIT), shared/idempotency.py (_OPEN_SQL: the key row, its advisory lock and
-- stored response in one statement; store), shared/inventory/service.py (_RESTOCK: level,
-- ledger row and audit job in one statement, the payload shared/audit/events.py builds).
-- Rows it writes carry reference 'pgbench'.
-- Not mirrored: the Redis wake-up after COMMIT (an API-side cost, debounced).
-- Keep it in step with those files when the hot path changes.
\set i random(0, :nskus - 1)
\set qty random(1, 100)
\set r random(1, 9000000000000000000)
BEGIN;
SELECT k.id, k.name, k.secret_hash, k.scopes, CASE WHEN ('pg-' || :r::text) IS NOT NULL AND k.secret_hash = decode(:keyhash, 'hex') THEN pg_try_advisory_xact_lock(:r) END AS locked, s.fingerprint, s.status_code, s.headers, s.body FROM api_keys k LEFT JOIN idempotency_keys s ON s.api_key_id = k.id AND s.key = 'pg-' || :r::text AND s.created_at > now() - interval '24 hours' WHERE k.prefix = :keyprefix AND k.revoked_at IS NULL;
WITH target AS ( SELECT p.id AS product_id, l.id AS location_id FROM products p, locations l WHERE p.sku = :prefix || lpad(:i::text, 7, '0') AND p.archived_at IS NULL AND l.code = 'MAIN' ), level AS ( INSERT INTO stock_levels AS s (product_id, location_id, quantity, updated_at) SELECT product_id, location_id, :qty, now() FROM target ON CONFLICT (product_id, location_id) DO UPDATE SET quantity = s.quantity + excluded.quantity, updated_at = excluded.updated_at RETURNING product_id, location_id, quantity, updated_at ), movement AS ( INSERT INTO movements (product_id, location_id, delta, reason, reference, note, actor_key_id, request_id) SELECT product_id, location_id, :qty, 'restock', 'pgbench', NULL, :keyid, 'pg-' || :r::text FROM level RETURNING id, created_at ), event AS (INSERT INTO jobs (kind, payload, max_attempts, request_id, actor_key_id) SELECT 'audit', jsonb_set(jsonb_build_object('action', 'inventory.restocked', 'subject', 'product:' || :prefix || lpad(:i::text, 7, '0'), 'skus', jsonb_build_array(:prefix || lpad(:i::text, 7, '0')), 'payload', jsonb_build_object('sku', :prefix || lpad(:i::text, 7, '0'), 'quantity', :qty::int, 'location_code', 'MAIN', 'reference', 'pgbench', 'note', NULL, 'movement_id', NULL), 'actor', jsonb_build_object('key_id', :keyid::text, 'name', 'bench')), '{payload,movement_id}', to_jsonb(movement.id)), 5, 'pg-' || :r::text, :keyid FROM movement RETURNING id) SELECT movement.id AS mid, movement.created_at AS mcreated, level.quantity AS lqty, level.updated_at AS lupdated, event.id AS jid FROM level, movement, event
\gset
INSERT INTO idempotency_keys AS k (api_key_id, key, fingerprint, status_code, headers, body) VALUES (:keyid, 'pg-' || :r::text, sha256(convert_to(:r::text, 'UTF8')), 201, '{"content-type": "application/json"}', convert_to(json_build_object('movement', json_build_object('id', :mid::bigint, 'sku', :prefix || lpad(:i::text, 7, '0'), 'location_code', 'MAIN', 'delta', :qty::int, 'reason', 'restock', 'reference', 'pgbench', 'created_at', :mcreated::timestamptz), 'stock', json_build_object('sku', :prefix || lpad(:i::text, 7, '0'), 'location_code', 'MAIN', 'quantity', :lqty::bigint, 'updated_at', :lupdated::timestamptz), 'audit_job', json_build_object('id', :jid::uuid, 'status_url', '/api/v1/jobs/' || :jid::text))::text, 'UTF8')) ON CONFLICT (api_key_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, status_code = excluded.status_code, headers = excluded.headers, body = excluded.body, created_at = now() WHERE k.created_at <= now() - interval '24 hours' RETURNING 1;
COMMIT;
