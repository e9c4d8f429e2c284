-- Seeds the five machines of the seed system (all on site plant1) with their sensor
-- channels, units, sampling periods, physical ranges and alarm thresholds, so a fresh
-- stack has something to simulate, ingest and alarm on. The edge agent's simulator and
-- the health checks expect exactly these device ids and channel numbers.
--
-- Hysteresis is a few percent of the warn band; min_duration_ms is a handful of
-- sampling periods, longer for slow thermal processes and for spiky vibration.

INSERT INTO devices (device_id, name, kind, site, line, description) VALUES
    ('furnace-01',     'Heat-treatment furnace 1', 'furnace',         'plant1', 'line-a',
     'Furnace chamber temperature (type K thermocouple).'),
    ('cnc-spindle-01', 'CNC machining centre 1 spindle', 'cnc_spindle', 'plant1', 'line-a',
     'Spindle vibration velocity (ISO 10816 zones) and front bearing temperature.'),
    ('press-01',       'Hydraulic press 1',        'hydraulic_press', 'plant1', 'line-b',
     'Main cylinder hydraulic pressure.'),
    ('paint-booth-01', 'Paint booth 1',            'paint_booth',     'plant1', 'line-b',
     'Booth air relative humidity and temperature (combined RH/T sensor).'),
    ('compressor-01',  'Screw air compressor 1',   'compressor',      'plant1', 'line-a',
     'Three-phase power meter on the compressor feed: active power and line current.');

INSERT INTO device_channels (
    device_id, channel_id, name, unit, sample_period_ms,
    range_min, range_max, nominal,
    warn_low, warn_high, crit_low, crit_high,
    hysteresis, min_duration_ms
) VALUES
    -- Furnace: slow thermal process, 1 Hz.
    ('furnace-01',     0, 'temperature',   '°C',   1000,    0, 1400,  850,  780,  900,  750,  950,  5.0, 10000),
    -- Spindle vibration velocity RMS, 10 Hz: ISO 10816-3 zone C from 7.1 mm/s, zone D
    -- from 11.2 mm/s; no low thresholds (a stopped spindle is not an alarm).
    ('cnc-spindle-01', 0, 'vibration_rms', 'mm/s',  100,    0,   50,  2.8, NULL,  7.1, NULL, 11.2,  0.5,  2000),
    ('cnc-spindle-01', 1, 'bearing_temp',  '°C',   1000,  -20,  150,   45, NULL,   70, NULL,   85,  2.0, 10000),
    -- Press: 5 Hz.
    ('press-01',       0, 'pressure',      'bar',   200,    0,  400,  210,  150,  250,  120,  280,  5.0,  1000),
    -- Paint booth: 0.5 Hz, slow air conditioning loop.
    ('paint-booth-01', 0, 'humidity',      '%RH',  2000,    0,  100,   55,   40,   70,   35,   75,  2.0, 10000),
    ('paint-booth-01', 1, 'temperature',   '°C',   2000,  -20,   60,   22,   18,   26,   16,   28,  0.5, 10000),
    -- Compressor power meter, 1 Hz: high thresholds only (an unloaded or stopped
    -- compressor draws little). 55 kW at 400 V, cos phi 0.85 is about 93 A.
    ('compressor-01',  0, 'active_power',  'kW',   1000,    0,  150,   55, NULL,   75, NULL,   90,  3.0,  5000),
    ('compressor-01',  1, 'line_current',  'A',    1000,    0,  300,   93, NULL,  160, NULL,  190,  5.0,  5000);
