-- Creates `alerts`, the alert lifecycle: an alert opens when a channel breaks a rule
-- (above/below a threshold, stuck value, data dropout), may be acknowledged by an
-- operator, and is resolved when the value comes back (with hysteresis). CHECK
-- constraints keep each row's lifecycle consistent, and a partial unique index allows
-- at most one unresolved alert per (device, channel, rule), so a replayed or
-- concurrently processed reading can never open a duplicate.
--
-- Lifecycle timestamps (opened_at, acknowledged_at, resolved_at, updated_at) are server
-- time (default now()). The device time of the reading that fired the alert goes in
-- value_ts: device clocks may be off, and mixing the two would let an acknowledgement
-- appear to precede the alert it acknowledges.

CREATE TYPE alert_severity AS ENUM ('warning', 'critical');
CREATE TYPE alert_state AS ENUM ('open', 'acknowledged', 'resolved');

CREATE TABLE alerts (
    alert_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id       text             NOT NULL,
    channel_id      smallint         NOT NULL,
    rule            text             NOT NULL
                    CONSTRAINT alerts_rule_known CHECK (rule IN ('high', 'low', 'stuck', 'dropout')),
    -- An open alert escalates from warning to critical by updating this column in place
    -- (there is one unresolved alert per device/channel/rule, whatever its severity).
    severity        alert_severity   NOT NULL,
    state           alert_state      NOT NULL DEFAULT 'open',
    -- The reading that fired the alert, and the threshold it broke (NULL for a dropout,
    -- which has no reading).
    value           double precision,
    threshold       double precision,
    value_ts        timestamptz,
    opened_at       timestamptz      NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    acknowledged_by text,
    resolved_at     timestamptz,
    -- The reading that cleared the alert (NULL if resolved for another reason).
    resolved_value  double precision,
    message         text             NOT NULL DEFAULT '',
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT alerts_channel_fk FOREIGN KEY (device_id, channel_id)
        REFERENCES device_channels (device_id, channel_id) ON DELETE CASCADE,
    -- A threshold rule always has the value that broke the threshold.
    CONSTRAINT alerts_threshold_rule_has_value CHECK (
        rule NOT IN ('high', 'low') OR (value IS NOT NULL AND threshold IS NOT NULL)
    ),
    -- acknowledged_at is set iff the alert has been acknowledged: always in state
    -- 'acknowledged', never in 'open', either way in 'resolved' (resolved with or
    -- without an acknowledgement). Who acknowledged goes with when.
    CONSTRAINT alerts_acknowledged_consistent CHECK (
        (state <> 'acknowledged' OR acknowledged_at IS NOT NULL)
        AND (state <> 'open' OR acknowledged_at IS NULL)
        AND ((acknowledged_at IS NULL) = (acknowledged_by IS NULL))
    ),
    CONSTRAINT alerts_acknowledged_by_not_blank CHECK (btrim(acknowledged_by) <> ''),
    -- resolved_at is set iff the alert is resolved; a resolved_value only then.
    CONSTRAINT alerts_resolved_consistent CHECK (
        ((state = 'resolved') = (resolved_at IS NOT NULL))
        AND (resolved_value IS NULL OR state = 'resolved')
    ),
    -- Nothing happens to an alert before it opens. Take all three from the database's
    -- now() (the column defaults), not from a client clock that may be skewed.
    CONSTRAINT alerts_timestamps_order CHECK (
        acknowledged_at >= opened_at
        AND resolved_at >= opened_at
    )
);

CREATE TRIGGER alerts_set_updated_at
    BEFORE UPDATE ON alerts
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- At most one unresolved (open or acknowledged) alert per device, channel and rule.
-- Upserts must repeat the predicate to use it as an arbiter:
--   INSERT ... ON CONFLICT (device_id, channel_id, rule) WHERE state <> 'resolved' DO ...
-- It also serves "open alerts of a device".
CREATE UNIQUE INDEX alerts_one_unresolved
    ON alerts (device_id, channel_id, rule) WHERE state <> 'resolved';

-- "All open alerts, newest first" (operator view); small because resolved rows are out.
CREATE INDEX alerts_unresolved_by_opened_at
    ON alerts (opened_at DESC) WHERE state <> 'resolved';

-- "Recent alerts of a device" (history view); its device_id prefix also serves the
-- cascade from device_channels.
CREATE INDEX alerts_device_opened_at ON alerts (device_id, opened_at DESC);
