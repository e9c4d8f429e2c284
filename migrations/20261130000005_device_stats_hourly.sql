-- Creates `device_stats_hourly`: per device, channel and UTC hour, the count, min, max,
-- sum and sum of squares of the readings, from which dashboards derive mean and
-- standard deviation without scanning sensor_readings. The ingester folds each batch
-- into it; a late reading is merged into its hour by an upsert, and because every
-- column combines associatively the merge order does not matter:
--
--   INSERT INTO device_stats_hourly AS s
--          (device_id, channel_id, hour, count, min, max, sum, sum_sq)
--   VALUES (...)
--   ON CONFLICT (device_id, channel_id, hour) DO UPDATE SET
--          count      = s.count + EXCLUDED.count,
--          min        = least(s.min, EXCLUDED.min),
--          max        = greatest(s.max, EXCLUDED.max),
--          sum        = s.sum + EXCLUDED.sum,
--          sum_sq     = s.sum_sq + EXCLUDED.sum_sq,
--          updated_at = now();
--
-- Replays must not be counted twice: fold only the readings that the same transaction
-- actually inserted into sensor_readings (ON CONFLICT DO NOTHING ... RETURNING, or the
-- rows a COPY into a staging table added). NaN readings (sensor faults) are left out of
-- the statistics, and the table refuses NaN: one NaN would poison a sum forever.
--
-- No foreign key to device_channels: a reading for a channel nobody configured must
-- not abort the ingest transaction (sensor_readings has no FK either).

CREATE TABLE device_stats_hourly (
    device_id  text             NOT NULL,
    channel_id smallint         NOT NULL
               CONSTRAINT device_stats_hourly_channel_id_range CHECK (channel_id BETWEEN 0 AND 255),
    -- Start of the UTC hour. extract(epoch ...) counts seconds since 1970-01-01 00:00 UTC
    -- whatever the session TimeZone, so the CHECK means the same for every session
    -- (date_trunc('hour', ...) would truncate in the session's time zone).
    hour       timestamptz      NOT NULL
               CONSTRAINT device_stats_hourly_hour_boundary CHECK (extract(epoch FROM hour) % 3600 = 0),
    count      bigint           NOT NULL CONSTRAINT device_stats_hourly_count_positive CHECK (count > 0),
    min        double precision NOT NULL,
    max        double precision NOT NULL,
    sum        double precision NOT NULL,
    sum_sq     double precision NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, channel_id, hour),
    CONSTRAINT device_stats_hourly_min_max CHECK (min <= max),
    CONSTRAINT device_stats_hourly_sum_sq_non_negative CHECK (sum_sq >= 0),
    CONSTRAINT device_stats_hourly_no_nan CHECK (
        min <> 'NaN' AND max <> 'NaN' AND sum <> 'NaN' AND sum_sq <> 'NaN'
    )
);
