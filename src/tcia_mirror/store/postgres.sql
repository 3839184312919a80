-- The PostgreSQL store's schema and every statement it runs, by name (store/postgres.py).
-- One database holds one mirror's plan. Parameters are psycopg's %(name)s placeholders.

-- name: schema
CREATE TABLE IF NOT EXISTS meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id bigserial PRIMARY KEY,
    uid text NOT NULL UNIQUE,
    collection text,
    patient_id text,
    study_uid text,
    expected_count bigint,
    expected_bytes bigint,
    fields text NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'partial', 'complete', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    error text,
    rel_dir text,
    done_count bigint NOT NULL DEFAULT 0,
    done_bytes bigint NOT NULL DEFAULT 0,
    instance_count bigint NOT NULL DEFAULT 0,
    updated timestamptz NOT NULL DEFAULT now(),
    source text NOT NULL DEFAULT 'nbia',
    -- the lease: who works the series, until when, and the fencing token of that lease
    lease_owner text,
    lease_until timestamptz,
    lease_attempt bigint NOT NULL DEFAULT 0,
    heartbeat timestamptz
);
CREATE INDEX IF NOT EXISTS series_claimable ON series (id)
    WHERE status IN ('pending', 'partial', 'failed');
CREATE TABLE IF NOT EXISTS instance (
    series_id bigint NOT NULL REFERENCES series (id),
    sop_uid text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    rel_path text,
    size bigint,
    md5 text,
    expected_size bigint,
    expected_md5 text,
    md5_source text,
    PRIMARY KEY (series_id, sop_uid)
);
-- the archive's connection budget: one row per connection; a worker holds some while it works
CREATE TABLE IF NOT EXISTS slot (
    n integer PRIMARY KEY,
    owner text,
    lease_until timestamptz
);

-- name: stage
CREATE TEMP TABLE IF NOT EXISTS stage_series (
    ord bigint, uid text, collection text, patient_id text, study_uid text,
    expected_count bigint, expected_bytes bigint, fields text, source text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_instance (
    uid text, sop_uid text, expected_size bigint, expected_md5 text, md5_source text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_old (
    id bigint, expected_count bigint, expected_bytes bigint, status text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_added (series_id bigint, n bigint) ON COMMIT DELETE ROWS;

-- name: copy_series
COPY stage_series (ord, uid, collection, patient_id, study_uid, expected_count, expected_bytes,
                   fields, source) FROM STDIN

-- name: copy_instances
COPY stage_instance (uid, sop_uid, expected_size, expected_md5, md5_source) FROM STDIN

-- name: plan_old
INSERT INTO stage_old
SELECT s.id, s.expected_count, s.expected_bytes, s.status
FROM series AS s JOIN stage_series AS st ON st.uid = s.uid

-- name: plan_upsert
INSERT INTO series (uid, collection, patient_id, study_uid, expected_count, expected_bytes,
                    fields, source)
SELECT uid, collection, patient_id, study_uid, expected_count, expected_bytes, fields, source
FROM (SELECT DISTINCT ON (uid) * FROM stage_series ORDER BY uid, ord DESC) AS last
ORDER BY ord
ON CONFLICT (uid) DO UPDATE SET
    collection = coalesce(excluded.collection, series.collection),
    patient_id = coalesce(excluded.patient_id, series.patient_id),
    study_uid = coalesce(excluded.study_uid, series.study_uid),
    expected_count = coalesce(excluded.expected_count, series.expected_count),
    expected_bytes = coalesce(excluded.expected_bytes, series.expected_bytes),
    fields = CASE WHEN excluded.fields = '{}' THEN series.fields ELSE excluded.fields END,
    updated = now()

-- name: plan_instances
-- New instances are inserted with what the source stated of them; known ones get the stated
-- size and MD5 only where the source stated one and it differs (one pass over the rows: a
-- separate UPDATE rewrote every row again). xmax = 0 marks a row this statement inserted.
WITH ins AS (
    INSERT INTO instance AS i (series_id, sop_uid, expected_size, expected_md5, md5_source)
    SELECT DISTINCT ON (s.id, si.sop_uid)
           s.id, si.sop_uid, si.expected_size, si.expected_md5, si.md5_source
    FROM stage_instance AS si JOIN series AS s ON s.uid = si.uid
    ORDER BY s.id, si.sop_uid
    ON CONFLICT (series_id, sop_uid) DO UPDATE SET expected_size = excluded.expected_size,
        expected_md5 = excluded.expected_md5, md5_source = excluded.md5_source
    WHERE (excluded.expected_size IS NOT NULL OR excluded.expected_md5 IS NOT NULL)
      AND (i.expected_size, i.expected_md5, i.md5_source)
          IS DISTINCT FROM (excluded.expected_size, excluded.expected_md5, excluded.md5_source)
    RETURNING series_id, (xmax = 0) AS inserted
)
INSERT INTO stage_added SELECT series_id, count(*) FROM ins WHERE inserted GROUP BY series_id

-- name: plan_recount
UPDATE series AS s SET instance_count = a.n, done_count = a.d, done_bytes = a.b
FROM (SELECT i.series_id, count(*) AS n, count(*) FILTER (WHERE i.done) AS d,
             coalesce(sum(i.size) FILTER (WHERE i.done), 0) AS b
      FROM instance AS i
      WHERE i.series_id IN (SELECT series_id FROM stage_added)
      GROUP BY i.series_id) AS a
WHERE s.id = a.series_id

-- name: plan_changes
UPDATE series AS s SET status = 'pending',
    error = 'archive changed since the last plan: ' || c.note
FROM (SELECT o.id, concat_ws(', ',
          CASE WHEN o.expected_count IS NOT NULL AND st.expected_count IS NOT NULL
                    AND o.expected_count <> st.expected_count
               THEN format('expected_count %s -> %s', o.expected_count, st.expected_count) END,
          CASE WHEN o.expected_bytes IS NOT NULL AND st.expected_bytes IS NOT NULL
                    AND o.expected_bytes <> st.expected_bytes
               THEN format('expected_bytes %s -> %s', o.expected_bytes, st.expected_bytes) END,
          CASE WHEN o.status = 'complete' AND a.n > 0
               THEN format('%s new instances', a.n) END) AS note
      FROM stage_old AS o
      JOIN series AS cur ON cur.id = o.id
      JOIN stage_series AS st ON st.uid = cur.uid
      LEFT JOIN stage_added AS a ON a.series_id = o.id) AS c
WHERE s.id = c.id AND c.note <> ''

-- name: series_id
SELECT id FROM series WHERE uid = %(uid)s

-- name: fence
SELECT id FROM series WHERE uid = %(uid)s AND lease_attempt = %(attempt)s FOR UPDATE

-- name: before_commit
SELECT sop_uid, done, size FROM instance WHERE series_id = %(id)s AND sop_uid = ANY(%(sops)s)

-- name: commit_instance
INSERT INTO instance (series_id, sop_uid, done, rel_path, size, md5)
VALUES (%(id)s, %(sop)s, true, %(rel)s, %(size)s, %(md5)s)
ON CONFLICT (series_id, sop_uid) DO UPDATE SET
    done = true, rel_path = excluded.rel_path, size = excluded.size, md5 = excluded.md5

-- name: bump_counters
UPDATE series SET instance_count = instance_count + %(added)s,
    done_count = done_count + %(newly)s, done_bytes = done_bytes + %(dbytes)s
WHERE id = %(id)s

-- name: recount_one
UPDATE series AS s SET instance_count = a.n, done_count = a.d, done_bytes = a.b
FROM (SELECT count(*) AS n, count(*) FILTER (WHERE done) AS d,
             coalesce(sum(size) FILTER (WHERE done), 0) AS b
      FROM instance WHERE series_id = %(id)s) AS a
WHERE s.id = %(id)s

-- name: restatus_one
UPDATE series SET status = CASE
    WHEN status = 'pending' AND done_count > 0 THEN 'partial'
    WHEN status = 'complete' AND done_count < instance_count
         THEN CASE WHEN done_count > 0 THEN 'partial' ELSE 'pending' END
    WHEN status = 'partial' AND done_count = 0 THEN 'pending'
    ELSE status END
WHERE id = %(id)s

-- name: uncommit_instance
UPDATE instance SET done = false, md5 = coalesce(%(md5)s, md5),
    size = CASE WHEN %(md5)s::text IS NULL THEN size END
WHERE series_id = %(id)s AND sop_uid = %(sop)s

-- name: insert_instance
INSERT INTO instance (series_id, sop_uid) VALUES (%(id)s, %(sop)s)
ON CONFLICT (series_id, sop_uid) DO NOTHING

-- name: set_expected_md5
UPDATE instance SET expected_md5 = %(md5)s, md5_source = %(source)s
WHERE series_id = %(id)s AND sop_uid = %(sop)s

-- name: set_status
UPDATE series SET status = %(status)s, error = %(error)s, attempts = attempts + %(attempt)s,
    rel_dir = coalesce(%(rel_dir)s, rel_dir), updated = now()
WHERE uid = %(uid)s

-- name: count_attempt
UPDATE series SET attempts = attempts + 1, updated = now() WHERE uid = %(uid)s

-- name: get_meta
SELECT value FROM meta WHERE key = %(key)s

-- name: set_meta
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: series_all
SELECT uid, collection, patient_id, study_uid, expected_count, expected_bytes, fields, status,
       attempts, error, rel_dir, done_count, done_bytes, instance_count, source
FROM series ORDER BY id

-- name: series_one
SELECT uid, collection, patient_id, study_uid, expected_count, expected_bytes, fields, status,
       attempts, error, rel_dir, done_count, done_bytes, instance_count, source
FROM series WHERE uid = %(uid)s

-- name: instances
SELECT i.sop_uid, i.done, i.rel_path, i.size, i.md5, i.expected_size, i.expected_md5,
       i.md5_source
FROM instance AS i JOIN series AS s ON s.id = i.series_id WHERE s.uid = %(uid)s
ORDER BY i.sop_uid

-- name: summary
SELECT count(*),
       count(*) FILTER (WHERE status = 'complete'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status IN ('pending', 'partial')),
       coalesce(sum(greatest(coalesce(expected_count, 0), instance_count)), 0),
       coalesce(sum(done_count), 0),
       coalesce(sum(greatest(coalesce(expected_bytes, 0), done_bytes)), 0),
       coalesce(sum(done_bytes), 0),
       count(*) FILTER (WHERE lease_owner IS NOT NULL AND lease_until >= now()),
       (SELECT count(*) FROM instance WHERE done AND expected_md5 IS NOT NULL)
FROM series

-- name: claim
-- One statement takes fresh rows and rows whose lease went stale, skipping rows another
-- claimer is taking at this moment, and marks them leased (pgqueuer's dequeue). A series
-- failed before this worker began is tried again; one failed since is left alone. Rows leased
-- to this owner that it does not hold (%(held)s) are taken again: a claim that committed but
-- whose answer a dropped connection lost.
UPDATE series SET lease_owner = %(owner)s, lease_attempt = lease_attempt + 1,
    lease_until = now() + make_interval(secs => %(lease)s), heartbeat = now()
WHERE id IN (
    SELECT id FROM series
    WHERE (status IN ('pending', 'partial') OR (status = 'failed' AND updated < %(since)s))
      AND (lease_owner IS NULL OR lease_until < now()
           OR (lease_owner = %(owner)s AND uid <> ALL(%(held)s::text[])))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING uid, collection, patient_id, study_uid, expected_count, expected_bytes, fields, status,
          attempts, error, rel_dir, done_count, done_bytes, instance_count, source, lease_attempt

-- name: heartbeat
UPDATE series SET lease_until = now() + make_interval(secs => %(lease)s), heartbeat = now()
WHERE lease_owner = %(owner)s AND lease_until >= now()
RETURNING uid, lease_attempt

-- name: heartbeat_slots
UPDATE slot SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE owner = %(owner)s

-- name: release
UPDATE series SET lease_owner = NULL, lease_until = NULL
WHERE uid = %(uid)s AND lease_attempt = %(attempt)s

-- name: live_leases
SELECT count(*) FROM series
WHERE lease_owner IS NOT NULL AND lease_owner <> %(owner)s AND lease_until >= now()

-- name: now
SELECT now()

-- name: set_slots
INSERT INTO slot (n) SELECT generate_series(1, %(n)s) ON CONFLICT (n) DO NOTHING

-- name: trim_slots
DELETE FROM slot WHERE n > %(n)s

-- name: acquire_slots
UPDATE slot SET owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s)
WHERE n IN (
    SELECT n FROM slot
    WHERE owner IS NULL OR owner = %(owner)s OR lease_until < now()
    ORDER BY (owner = %(owner)s) DESC NULLS LAST, n
    LIMIT %(want)s
    FOR UPDATE SKIP LOCKED)
RETURNING n

-- name: release_slots
UPDATE slot SET owner = NULL, lease_until = NULL WHERE owner = %(owner)s
