-- Creates the device registry: `devices` (one row per machine a gateway watches) and
-- `device_channels` (one row per sensor channel of a device: name, unit, sampling
-- period, physical range and alarm thresholds). The ingester reads these to validate
-- readings and to evaluate alert rules; the agent's metadata topic publishes the same
-- facts. Also creates `set_updated_at()`, the trigger that keeps `updated_at` honest on
-- the low-volume, human-edited tables.
--
-- Naming rule: device ids, sites, lines and channel names become MQTT topic segments,
-- Kafka keys and Redis key parts, so they follow protocol::id::validate_id:
-- 1..24 ASCII letters, digits, '.', '_' or '-' (no '/', '+', '#', '$', spaces).

CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE devices (
    device_id   text        PRIMARY KEY
                CONSTRAINT devices_device_id_format CHECK (device_id ~ '^[A-Za-z0-9._-]{1,24}$'),
    name        text        NOT NULL CONSTRAINT devices_name_not_blank CHECK (btrim(name) <> ''),
    -- Machine type: lower-case word such as furnace, cnc_spindle, hydraulic_press,
    -- paint_booth, compressor. Not an enum, so a new machine type needs no migration.
    kind        text        NOT NULL CONSTRAINT devices_kind_format CHECK (kind ~ '^[a-z][a-z0-9_]{0,31}$'),
    site        text        NOT NULL CONSTRAINT devices_site_format CHECK (site ~ '^[A-Za-z0-9._-]{1,24}$'),
    line        text        NOT NULL CONSTRAINT devices_line_format CHECK (line ~ '^[A-Za-z0-9._-]{1,24}$'),
    description text        NOT NULL DEFAULT '',
    -- Disable rather than delete: deleting a device cascades to its channels and alerts.
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER devices_set_updated_at
    BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE device_channels (
    device_id       text             NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    channel_id      smallint         NOT NULL
                    CONSTRAINT device_channels_channel_id_range CHECK (channel_id BETWEEN 0 AND 255),
    name            text             NOT NULL
                    CONSTRAINT device_channels_name_format CHECK (name ~ '^[A-Za-z0-9._-]{1,24}$'),
    -- Display unit, free text (UTF-8): '°C', 'mm/s', 'bar', '%RH', 'kW', 'A'.
    unit            text             NOT NULL,
    sample_period_ms integer         NOT NULL
                    CONSTRAINT device_channels_sample_period_positive CHECK (sample_period_ms > 0),
    -- Physical range of the sensor; a reading outside it is flagged out-of-range
    -- (quality bit 1).
    range_min       double precision NOT NULL,
    range_max       double precision NOT NULL,
    -- Expected value in normal operation (simulator centre, dashboard reference line).
    nominal         double precision,
    -- Alarm thresholds; NULL means "no such threshold" (e.g. vibration has no low one).
    warn_low        double precision,
    warn_high       double precision,
    crit_low        double precision,
    crit_high       double precision,
    -- How far back inside a threshold a value must come before its alert clears
    -- (same unit as the value), to stop an alert flapping around the threshold.
    hysteresis      double precision NOT NULL DEFAULT 0,
    -- How long a threshold must be exceeded without interruption before an alert fires.
    min_duration_ms integer          NOT NULL DEFAULT 0,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, channel_id),
    CONSTRAINT device_channels_name_unique UNIQUE (device_id, name),
    -- NaN compares greater than everything in PostgreSQL, so refuse it explicitly.
    CONSTRAINT device_channels_no_nan CHECK (
        range_min <> 'NaN' AND range_max <> 'NaN' AND nominal <> 'NaN'
        AND warn_low <> 'NaN' AND warn_high <> 'NaN' AND crit_low <> 'NaN'
        AND crit_high <> 'NaN' AND hysteresis <> 'NaN'
    ),
    CONSTRAINT device_channels_range_order CHECK (range_min < range_max),
    -- crit_low <= warn_low < warn_high <= crit_high, for whichever of them are present.
    -- A NULL operand makes a comparison NULL, which a CHECK accepts, so every pair is
    -- spelled out to keep the order when some thresholds are missing.
    CONSTRAINT device_channels_threshold_order CHECK (
        crit_low <= warn_low
        AND warn_low < warn_high
        AND warn_high <= crit_high
        AND crit_low < warn_high
        AND warn_low < crit_high
        AND crit_low < crit_high
    ),
    CONSTRAINT device_channels_hysteresis_non_negative CHECK (hysteresis >= 0),
    CONSTRAINT device_channels_min_duration_non_negative CHECK (min_duration_ms >= 0)
);

COMMENT ON COLUMN device_channels.hysteresis IS
    'How far back inside the threshold a value must come before an alert clears (value units).';
COMMENT ON COLUMN device_channels.min_duration_ms IS
    'How long a threshold must be exceeded before an alert fires.';

CREATE TRIGGER device_channels_set_updated_at
    BEFORE UPDATE ON device_channels
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
