-- Creates `ingest_partitions` and `ingest_members`: the ingester's own record of which
-- Kafka partitions it has stored up to where, and which instance may store each one.
--
-- Why here and not in Kafka's consumer group: a group coordinator can forget a group's
-- offsets or wedge its rebalance for good (Tansu does after a member dies; an Apache
-- Kafka cluster can lose __consumer_offsets). PostgreSQL is the place that holds the
-- readings, so it holds the progress too, in the same transaction:
--
--   * `next_offset` is advanced in the transaction that inserts the readings read up to
--     it, so a crash anywhere replays exactly what was not committed (and the dedup key
--     makes the replay a no-op). NULL: nothing stored yet, start at the log's beginning.
--   * `owner` and `lease_epoch` fence the writers: an instance claims a partition whose
--     lease is free or expired by raising the epoch, and every batch's offset update is
--     guarded by (owner, lease_epoch). An instance that lost its lease while it was
--     stalled can therefore never move the offset of a partition someone else now owns;
--     its transaction rolls back and its rows are replayed by the new owner.
--   * `lease_until` uses PostgreSQL's clock only, so no two machines' clocks are compared.
--
-- `ingest_members` is each instance's heartbeat; the live members share the partitions
-- evenly (at most ceil(partitions / members) each).

CREATE TABLE ingest_partitions (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL
                   CONSTRAINT ingest_partitions_partition_range CHECK (partition >= 0),
    next_offset    bigint
                   CONSTRAINT ingest_partitions_offset_range CHECK (next_offset >= 0),
    owner          text,
    lease_epoch    bigint      NOT NULL DEFAULT 0,
    lease_until    timestamptz,
    committed_at   timestamptz,
    PRIMARY KEY (consumer_group, topic, partition),
    CONSTRAINT ingest_partitions_lease_complete CHECK ((owner IS NULL) = (lease_until IS NULL))
);

CREATE TABLE ingest_members (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    member         text        NOT NULL,
    seen_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, member)
);
