use super::rules::{ChannelRules, RuleBook};
use super::*;

/// press-01's seed rules: warn 150/250, crit 120/280, hysteresis 5, 1 s, 5 Hz.
fn press() -> ChannelRules {
    ChannelRules::new(
        "pressure",
        "bar",
        200,
        [Some(150.0), Some(250.0), Some(120.0), Some(280.0)],
        Some(210.0),
        5.0,
        1000,
    )
}

fn engine() -> AlertEngine {
    let mut book = RuleBook::default();
    book.insert("press-01", 0, press());
    book.insert("press-01", 1, press());
    book.insert("solo-01", 0, press());
    AlertEngine::new(book)
}

fn row(channel: i16, ts_ms: i64, value: f32) -> Row {
    Row {
        device_id: "press-01".into(),
        boot_id: 1,
        seq: ts_ms,
        ts_ms,
        value,
        channel_id: channel,
        quality: 0,
        clock_synced: true,
    }
}

/// Channel 0 sampled every 200 ms from t = 0 with these values.
fn series(values: &[f32]) -> Vec<Row> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| row(0, i as i64 * 200, *v))
        .collect()
}

/// Evaluates and adopts, returning (change, rule, severity) per transition.
fn run(engine: &mut AlertEngine, rows: &[Row]) -> Vec<(Change, Rule, Severity)> {
    let evaluation = engine.evaluate(rows);
    let out = evaluation
        .transitions
        .iter()
        .map(|t| (t.change, t.key.rule, t.severity))
        .collect();
    engine.adopt(evaluation);
    out
}

#[test]
fn a_breach_opens_only_after_the_minimum_duration_then_escalates_and_resolves() {
    let engine = engine();
    // 260 from t=0.2 s: at 1.0 s it has lasted 0.8 s, at 1.2 s 1.0 s -> warning.
    let mut values = vec![210.0, 260.0, 260.0, 260.0, 260.0, 260.0];
    let evaluation = engine.evaluate(&series(&values));
    assert!(evaluation.transitions.is_empty());
    values.push(261.0);
    let mut engine = self::engine();
    let rows = series(&values);
    let transitions = engine.evaluate(&rows).transitions;
    assert_eq!(transitions.len(), 1);
    let t = &transitions[0];
    assert_eq!(
        (t.change, t.key.rule, t.severity),
        (Change::Opened, Rule::High, Severity::Warning)
    );
    assert_eq!(
        (t.value, t.threshold, t.ts_ms),
        (Some(261.0), Some(250.0), 1200)
    );
    assert!(
        t.message
            .contains("pressure 261 bar above warning threshold 250 bar"),
        "{}",
        t.message
    );

    // Critical for a second escalates; 246 is inside 250 but not by the hysteresis.
    values.extend([290.0; 6]);
    values.extend([246.0, 244.0]);
    let got = run(&mut engine, &series(&values));
    assert_eq!(
        got,
        vec![
            (Change::Opened, Rule::High, Severity::Warning),
            (Change::Escalated, Rule::High, Severity::Critical),
            (Change::Resolved, Rule::High, Severity::Critical),
        ]
    );
}

#[test]
fn a_noisy_signal_around_a_threshold_does_not_fire_and_once_open_does_not_flap() {
    let mut engine = engine();
    let noisy: Vec<f32> = (0..100)
        .map(|i| if i % 2 == 0 { 251.0 } else { 249.0 })
        .collect();
    assert!(run(&mut engine, &series(&noisy)).is_empty());

    let mut engine = self::engine();
    let mut values = vec![255.0; 7];
    values.extend((0..100).map(|i| if i % 2 == 0 { 251.0 } else { 247.0 }));
    let got = run(&mut engine, &series(&values));
    assert_eq!(got, vec![(Change::Opened, Rule::High, Severity::Warning)]);
}

#[test]
fn a_spike_far_beyond_critical_fires_at_once() {
    let mut engine = engine();
    // Critical 280 plus the warning-to-critical distance 30 is 310.
    let got = run(&mut engine, &series(&[210.0, 388.0, 211.0]));
    assert_eq!(
        got,
        vec![
            (Change::Opened, Rule::High, Severity::Critical),
            (Change::Resolved, Rule::High, Severity::Critical),
        ]
    );
    // Just past critical for one sample is not enough.
    let mut engine = self::engine();
    assert!(run(&mut engine, &series(&[210.0, 300.0, 211.0])).is_empty());
}

#[test]
fn the_low_side_mirrors_the_high_side() {
    let mut engine = engine();
    let mut values = vec![100.0; 7];
    values.push(152.0);
    values.push(156.0);
    let got = run(&mut engine, &series(&values));
    assert_eq!(
        got,
        vec![
            (Change::Opened, Rule::Low, Severity::Critical),
            (Change::Resolved, Rule::Low, Severity::Critical),
        ]
    );
}

#[test]
fn a_value_repeated_bit_for_bit_for_the_silence_window_is_stuck() {
    let mut engine = engine();
    // 10 s at 200 ms is 50 periods after the first.
    let mut values = vec![211.25_f32; 51];
    values.push(211.5);
    let rows = series(&values);
    let got = run(&mut engine, &rows);
    assert_eq!(
        got,
        vec![
            (Change::Opened, Rule::Stuck, Severity::Warning),
            (Change::Resolved, Rule::Stuck, Severity::Warning),
        ]
    );
    let mut engine = self::engine();
    assert!(
        run(&mut engine, &rows[..50]).is_empty(),
        "9.8 s is not stuck yet"
    );
}

#[test]
fn a_gap_in_a_channel_is_a_dropout_opened_while_siblings_speak() {
    let engine = engine();
    let mut rows = Vec::new();
    for i in 0..200_i64 {
        let ts = i * 200;
        rows.push(row(0, ts, 210.0 + (i % 7) as f32));
        // Channel 1 is silent from 10 s to 30 s.
        if !(50..150).contains(&i) {
            rows.push(row(1, ts, 210.0 + (i % 5) as f32));
        }
    }
    let evaluation = engine.evaluate(&rows);
    let dropout: Vec<_> = evaluation
        .transitions
        .iter()
        .map(|t| (t.change, t.key.channel_id, t.ts_ms))
        .collect();
    // Last reading at 9.8 s; silent for more than 10 s when channel 0 reports at 20 s.
    assert_eq!(
        dropout,
        vec![(Change::Opened, 1, 9_800), (Change::Resolved, 1, 30_000)]
    );
}

#[test]
fn a_gap_in_a_single_channel_device_is_recorded_when_readings_resume() {
    let mut engine = engine();
    let solo = |ts_ms, value| Row {
        device_id: "solo-01".into(),
        ..row(0, ts_ms, value)
    };
    let rows = vec![solo(0, 210.0), solo(200, 211.0), solo(25_000, 212.0)];
    let got = run(&mut engine, &rows);
    assert_eq!(
        got,
        vec![
            (Change::Opened, Rule::Dropout, Severity::Warning),
            (Change::Resolved, Rule::Dropout, Severity::Warning),
        ]
    );
}

#[test]
fn a_device_silent_altogether_raises_nothing_when_it_comes_back() {
    let mut engine = engine();
    let mut rows = Vec::new();
    for ts in (0..5_000).step_by(200).chain((65_000..70_000).step_by(200)) {
        rows.push(row(0, ts, 210.0 + (ts % 7) as f32));
        rows.push(row(1, ts, 211.0 + (ts % 5) as f32));
    }
    assert!(run(&mut engine, &rows).is_empty());
}

#[test]
fn a_breach_or_a_repeated_value_does_not_last_through_a_silence() {
    let mut engine = engine();
    let solo = |ts_ms, value| Row {
        device_id: "solo-01".into(),
        ..row(0, ts_ms, value)
    };
    // Two readings past warning an hour apart, the same value: neither a breach lasting
    // an hour nor a value stuck for one. (The gap itself is a dropout.)
    let got = run(&mut engine, &[solo(0, 251.0), solo(3_600_000, 251.0)]);
    assert!(
        got.iter().all(|(_, rule, _)| *rule == Rule::Dropout),
        "{got:?}"
    );
}

#[test]
fn evaluation_changes_nothing_until_adopted_and_old_readings_are_skipped() {
    let mut engine = engine();
    let rows = series(&[210.0, 388.0]);
    assert_eq!(engine.evaluate(&rows).transitions.len(), 1);
    // Not adopted: the same batch evaluates the same way again (a retried batch).
    assert_eq!(engine.evaluate(&rows).transitions.len(), 1);
    run(&mut engine, &rows);
    // Adopted: a replay of it changes nothing, and a late reading is ignored.
    assert!(engine.evaluate(&rows).transitions.is_empty());
    assert!(engine
        .evaluate(&[row(0, 100, 100.0)])
        .transitions
        .is_empty());
}

#[test]
fn restored_state_resumes_open_alerts_and_watermarks() {
    let mut engine = engine();
    engine.restore(
        [OpenAlert {
            key: AlertKey {
                device_id: "press-01".into(),
                channel_id: 0,
                rule: Rule::High,
            },
            severity: Severity::Warning,
        }],
        [("press-01".to_owned(), 0, 1_000)],
    );
    assert!(engine
        .evaluate(&[row(0, 1_000, 100.0)])
        .transitions
        .is_empty());
    assert_eq!(
        run(&mut engine, &[row(0, 1_200, 240.0)]),
        vec![(Change::Resolved, Rule::High, Severity::Warning)]
    );
}

#[test]
fn sensor_faults_neither_fire_nor_clear_and_unknown_channels_are_ignored() {
    let mut engine = engine();
    let mut values = vec![260.0_f32; 4];
    values.push(f32::NAN);
    values.extend([260.0_f32; 4]);
    assert!(run(&mut engine, &series(&values)).is_empty(), "interrupted");
    let mut engine = self::engine();
    values.extend([260.0_f32; 2]);
    let got = run(&mut engine, &series(&values));
    assert_eq!(got, vec![(Change::Opened, Rule::High, Severity::Warning)]);
    let more = |from: i64, values: &[f32]| -> Vec<Row> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| row(0, (from + i as i64) * 200, *v))
            .collect()
    };
    let n = values.len() as i64;
    assert!(
        run(&mut engine, &more(n, &[f32::NAN, f32::INFINITY])).is_empty(),
        "not cleared"
    );
    assert_eq!(
        run(&mut engine, &more(n + 2, &[200.0])),
        vec![(Change::Resolved, Rule::High, Severity::Warning)]
    );
    assert!(engine
        .evaluate(&[row(9, 50_000, 1e9)])
        .transitions
        .is_empty());
}

#[test]
fn a_stuck_alert_stays_open_across_a_restore_and_a_sensor_fault_until_the_value_moves() {
    let mut engine = engine();
    engine.restore(
        [OpenAlert {
            key: AlertKey {
                device_id: "press-01".into(),
                channel_id: 0,
                rule: Rule::Stuck,
            },
            severity: Severity::Warning,
        }],
        [("press-01".to_owned(), 0, 0)],
    );
    let still: Vec<Row> = [211.25, 211.25, f32::NAN, 211.25, 211.25]
        .iter()
        .enumerate()
        .map(|(i, v)| row(0, 200 * (i as i64 + 1), *v))
        .collect();
    assert!(run(&mut engine, &still).is_empty());
    assert_eq!(
        run(&mut engine, &[row(0, 2_000, 211.5)]),
        vec![(Change::Resolved, Rule::Stuck, Severity::Warning)]
    );
}

#[test]
fn an_open_alert_whose_thresholds_are_removed_resolves() {
    let mut engine = engine();
    run(&mut engine, &series(&[210.0, 388.0]));
    let mut book = RuleBook::default();
    book.insert(
        "press-01",
        0,
        ChannelRules::new("pressure", "bar", 200, [None; 4], Some(210.0), 5.0, 1000),
    );
    engine.set_rules(book);
    assert_eq!(
        run(&mut engine, &[row(0, 400, 390.0)]),
        vec![(Change::Resolved, Rule::High, Severity::Critical)]
    );
}
