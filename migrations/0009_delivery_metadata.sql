-- Deliveries that fail verification are kept as metadata only (issue 12): the
-- size and SHA-256 of the whole body, and only its first few KB. Anyone on the
-- internet can send them, so storing them whole let a stranger fill the disk.
ALTER TABLE deliveries ADD COLUMN body_size INTEGER;
ALTER TABLE deliveries ADD COLUMN body_sha256 TEXT;
UPDATE deliveries SET body_size = length(body) WHERE body IS NOT NULL;
UPDATE deliveries SET body = substr(body, 1, 4096)
WHERE signature != 'valid' AND length(body) > 4096;

-- The cap on unverified rows deletes the oldest ones on each insert; this index
-- finds them without reading the verified rows.
CREATE INDEX deliveries_unverified ON deliveries (id) WHERE signature != 'valid';

-- A stored signature let anyone who can read deliveries resend the body under a
-- new delivery id. Signature headers are no longer kept; drop those already kept.
UPDATE deliveries
SET headers = (
    SELECT json_group_object(key, value) FROM json_each(deliveries.headers)
    WHERE lower(key) NOT LIKE '%signature%'
)
WHERE json_valid(headers) AND EXISTS (
    SELECT 1 FROM json_each(deliveries.headers) WHERE lower(key) LIKE '%signature%'
);
