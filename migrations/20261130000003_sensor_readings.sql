-- Creates `sensor_readings`, the time series: one row per reading, declaratively
-- RANGE-partitioned on `ts` with one partition per UTC day plus a DEFAULT partition, and
-- the functions that create day partitions ahead of time and drop them for retention.
-- Partitions keep every index small and make retention a cheap DROP TABLE instead of a
-- massive DELETE + VACUUM; the DEFAULT partition means no reading is ever refused, even
-- one from a device whose clock is far off (unsynchronised Pis start in 1970).
--
-- Designed for heavy ingest (binary COPY / multi-row INSERT from the ingester):
--   * no foreign key to `devices` (a per-row FK lookup would slow COPY; the ingester
--     validates device and channel before writing);
--   * only cheap CHECKs, which the protocol decoder already guarantees (they are a
--     backstop, they never fire for decoded frames);
--   * three indexes per partition, each justified below;
--   * columns ordered widest-first so rows carry no alignment padding (the order of the
--     columns is physical only; always name columns in INSERT/COPY).

CREATE TABLE sensor_readings (
    -- Random 64-bit value drawn at each agent start (the 8 bytes as i64).
    boot_id      bigint      NOT NULL,
    -- Grows within a boot; < 2^63.
    seq          bigint      NOT NULL,
    -- Reading time from the frame (device clock, ms precision). Fixed by the frame
    -- bytes: a replay of the same reading always carries the same ts.
    ts           timestamptz NOT NULL,
    -- When the ingester stored it (server clock).
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- f32 from the sensor; NaN permitted (sensor fault, quality bit 2).
    value        real        NOT NULL,
    channel_id   smallint    NOT NULL,
    -- Bitset: bit0 simulated anomaly, bit1 out of range, bit2 sensor fault.
    quality      smallint    NOT NULL DEFAULT 0,
    -- Whether the device clock was NTP-synchronised when the frame was built.
    clock_synced boolean     NOT NULL,
    device_id    text        NOT NULL,
    CONSTRAINT sensor_readings_seq_range CHECK (seq >= 0),
    CONSTRAINT sensor_readings_channel_id_range CHECK (channel_id BETWEEN 0 AND 255),
    CONSTRAINT sensor_readings_quality_range CHECK (quality BETWEEN 0 AND 7),
    -- Deduplication key. A reading's identity is (device_id, boot_id, seq); ts is not
    -- part of the identity, but PostgreSQL requires every unique key of a partitioned
    -- table to include the partition key, and uniqueness is only enforced within a
    -- partition. Adding ts is nevertheless exact here: ts is decoded from the same frame
    -- bytes as the identity, so a replayed reading always has the same ts, lands in the
    -- same partition and collides with its first copy. `INSERT ... ON CONFLICT DO
    -- NOTHING` (conflict target `(device_id, boot_id, seq, ts)`, or none) turns a replay
    -- into a no-op. What this key cannot catch is two *different* frames claiming the
    -- same identity with different timestamps; that only happens if an agent reuses a
    -- boot id, which a random 64-bit boot id makes negligible.
    --
    -- Column order (device_id, ts, boot_id, seq) rather than (device_id, boot_id, seq,
    -- ts): the same uniqueness, and an ON CONFLICT target lists the columns in any order,
    -- but this order also serves "latest N readings of a device" and "a device over a
    -- time range", so no separate (device_id, ts) index is needed. Inserts still append
    -- at the right-hand end of each device's key range.
    CONSTRAINT sensor_readings_dedup UNIQUE (device_id, ts, boot_id, seq)
) PARTITION BY RANGE (ts);

COMMENT ON TABLE sensor_readings IS
    'One row per sensor reading; RANGE-partitioned on ts, one partition per UTC day (sensor_readings_pYYYYMMDD) plus sensor_readings_default.';
COMMENT ON CONSTRAINT sensor_readings_dedup ON sensor_readings IS
    'Identity (device_id, boot_id, seq) plus the partition key ts, which is fixed by the frame bytes, so a replay always conflicts.';

-- "Latest N readings of a device and channel" (dashboards, the ingester's Redis
-- back-fill): WHERE device_id = $1 AND channel_id = $2 ORDER BY ts DESC LIMIT $3.
-- Ascending on purpose: a B-tree is scanned backwards just as well, and ascending keys
-- keep appends at the right-hand end of each (device, channel) range.
CREATE INDEX sensor_readings_device_channel_ts ON sensor_readings (device_id, channel_id, ts);

-- "Everything in a time range" across devices (Grafana panels, exports). Partition
-- pruning narrows a query to the days it touches; within a day, rows arrive in roughly
-- ts order, which is what a BRIN index needs. A BRIN is a few pages per partition and
-- costs almost nothing on insert.
CREATE INDEX sensor_readings_ts_brin ON sensor_readings USING brin (ts);

-- Catches every reading that has no day partition: far-future or far-past timestamps
-- from unsynchronised clocks, or a day nobody created a partition for. Nothing is
-- refused; ensure_sensor_readings_partition() moves a day's rows out of here when that
-- day's partition is created. Watch its size: it should stay small.
CREATE TABLE sensor_readings_default PARTITION OF sensor_readings DEFAULT;

-- Creates the partition of one UTC day, [day 00:00 UTC, day+1 00:00 UTC), named
-- sensor_readings_pYYYYMMDD, in the schema of sensor_readings. Returns true if it created
-- it, false if it already existed (idempotent). Safe when the DEFAULT partition already
-- holds rows of that day: the partition is created as a standalone table, the day's rows
-- are moved into it from the DEFAULT partition, and only then is it attached, all in the
-- caller's transaction. Plain CREATE TABLE ... PARTITION OF would fail in that case, and
-- would also take an ACCESS EXCLUSIVE lock on sensor_readings.
--
-- Locks: SHARE UPDATE EXCLUSIVE on sensor_readings (what ATTACH PARTITION needs; it
-- serialises concurrent callers but does not block INSERT, COPY or SELECT), and ACCESS
-- EXCLUSIVE on the DEFAULT partition until commit (briefly blocks only readings routed
-- there). The day bounds are written with an explicit +00 offset, so they do not depend
-- on the session TimeZone.
CREATE FUNCTION ensure_sensor_readings_partition(day date) RETURNS boolean
LANGUAGE plpgsql AS $fn$
DECLARE
    parent       regclass := 'sensor_readings'::regclass;
    parent_ns    text;
    part_name    text;
    existing     regclass;
    default_part regclass;
    lo           text;
    hi           text;
    moved        bigint := 0;
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'ensure_sensor_readings_partition: day must not be NULL';
    END IF;
    IF day < date '0001-01-01' OR day > date '9999-12-30' THEN
        RAISE EXCEPTION 'ensure_sensor_readings_partition: day % is out of range', day;
    END IF;

    SELECT n.nspname INTO parent_ns
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent;
    part_name := 'sensor_readings_p' || to_char(day, 'YYYYMMDD');
    lo := to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00';
    hi := to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00';

    -- Serialise with other partition maintenance before looking at the catalog.
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', parent);

    existing := to_regclass(format('%I.%I', parent_ns, part_name));
    IF existing IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = existing AND inhparent = parent) THEN
            RETURN false;
        END IF;
        RAISE EXCEPTION 'ensure_sensor_readings_partition: % exists but is not a partition of %',
            existing, parent;
    END IF;

    SELECT NULLIF(partdefid, 0)::regclass INTO default_part
      FROM pg_partitioned_table WHERE partrelid = parent;

    EXECUTE format(
        'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
        parent_ns, part_name, parent);
    -- A CHECK that implies the partition bound lets ATTACH skip its validation scan.
    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK (ts >= %L AND ts < %L)',
        parent_ns, part_name, part_name || '_bound', lo, hi);

    IF default_part IS NOT NULL THEN
        -- Taken now rather than by ATTACH, so no reading of this day can slip into the
        -- DEFAULT partition between the move and the attach.
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', default_part);
        EXECUTE format(
            'WITH moved AS (DELETE FROM %s WHERE ts >= %L AND ts < %L RETURNING *) '
            'INSERT INTO %I.%I SELECT * FROM moved',
            default_part, lo, hi, parent_ns, part_name);
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;

    -- Builds the partition's indexes (after the move, which is the cheap order) and, with
    -- a DEFAULT partition present, scans it to prove it holds nothing of this day.
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
        parent, parent_ns, part_name, lo, hi);
    -- The partition constraint now does the CHECK's job; do not evaluate it twice.
    EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I',
        parent_ns, part_name, part_name || '_bound');

    IF moved > 0 THEN
        RAISE NOTICE 'created %.%, moved % rows into it from %', parent_ns, part_name, moved, default_part;
    END IF;
    RETURN true;
END
$fn$;

-- Creates the partitions of `days` consecutive UTC days starting at from_day; returns
-- how many it created (the others existed already). Run it at least daily, ahead of
-- time (the ingester does so at start-up and periodically), so readings land in day
-- partitions rather than in the DEFAULT one.
CREATE FUNCTION ensure_sensor_readings_partitions(from_day date, days integer) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    created integer := 0;
BEGIN
    IF from_day IS NULL OR days IS NULL OR days < 0 THEN
        RAISE EXCEPTION 'ensure_sensor_readings_partitions: need a day and a non-negative count';
    END IF;
    FOR i IN 0 .. days - 1 LOOP
        IF ensure_sensor_readings_partition(from_day + i) THEN
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$fn$;

-- Retention: detaches and drops every partition whose range ends at or before
-- cutoff 00:00 UTC (that is, lies entirely before the cutoff day), and returns how many
-- it dropped. Never touches the DEFAULT partition. DETACH/DROP take an ACCESS EXCLUSIVE
-- lock on sensor_readings for the rest of the transaction: run it at a quiet time, in
-- its own short transaction, ideally with `SET lock_timeout` and a retry, so ingest does
-- not queue behind it.
--
-- Bounds are read back from the catalog (pg_get_expr), whose text depends on DateStyle
-- and TimeZone; the function pins both while it runs so the text parses back exactly.
CREATE FUNCTION drop_sensor_readings_partitions_before(cutoff date) RETURNS integer
LANGUAGE plpgsql
SET datestyle = 'ISO, YMD'
SET timezone = 'UTC'
AS $fn$
DECLARE
    parent    regclass := 'sensor_readings'::regclass;
    cutoff_ts timestamptz;
    part      record;
    upper_ts  timestamptz;
    dropped   integer := 0;
BEGIN
    IF cutoff IS NULL THEN
        RAISE EXCEPTION 'drop_sensor_readings_partitions_before: cutoff must not be NULL';
    END IF;
    cutoff_ts := cutoff::timestamp AT TIME ZONE 'UTC';

    FOR part IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent
         ORDER BY c.relname
    LOOP
        CONTINUE WHEN part.bound = 'DEFAULT';
        -- "FOR VALUES FROM ('…') TO ('…')"; an unbounded MAXVALUE end yields NULL.
        upper_ts := substring(part.bound FROM $re$ TO \('([^']+)'\)$re$)::timestamptz;
        CONTINUE WHEN upper_ts IS NULL OR upper_ts > cutoff_ts;
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part.rel);
        EXECUTE format('DROP TABLE %s', part.rel);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$fn$;

-- Partitions for yesterday (late readings) through a week ahead, by the UTC calendar.
SELECT ensure_sensor_readings_partitions((now() AT TIME ZONE 'UTC')::date - 1, 9);
