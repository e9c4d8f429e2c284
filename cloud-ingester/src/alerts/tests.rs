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
    let evaluation = engine.evaluate(rows, &FirstSeen::new());
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
    let evaluation = engine.evaluate(&series(&values), &FirstSeen::new());
    assert!(evaluation.transitions.is_empty());
    values.push(261.0);
    let mut engine = self::engine();
    let rows = series(&values);
    let transitions = engine.evaluate(&rows, &FirstSeen::new()).transitions;
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
    let evaluation = engine.evaluate(&rows, &FirstSeen::new());
    let dropout: Vec<_> = evaluation
        .transitions
        .iter()
        .map(|t| (t.change, t.key.channel_id, t.ts_ms))
        .collect();
    // Last reading at 9.8 s; silent for more than 10 s when channel 0 reports at 20 s.
    assert_eq!(
        dropout,
        vec![
            (Change::Opened, Some(1), 9_800),
            (Change::Resolved, Some(1), 30_000)
        ]
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
    assert_eq!(
        engine.evaluate(&rows, &FirstSeen::new()).transitions.len(),
        1
    );
    // Not adopted: the same batch evaluates the same way again (a retried batch).
    assert_eq!(
        engine.evaluate(&rows, &FirstSeen::new()).transitions.len(),
        1
    );
    run(&mut engine, &rows);
    // Adopted: a replay of it changes nothing, and a late reading is ignored.
    assert!(engine
        .evaluate(&rows, &FirstSeen::new())
        .transitions
        .is_empty());
    assert!(engine
        .evaluate(&[row(0, 100, 100.0)], &FirstSeen::new())
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
                channel_id: Some(0),
                rule: Rule::High,
            },
            severity: Severity::Warning,
        }],
        [ResumeAt {
            device_id: "press-01".into(),
            boot_id: 1,
            first_seen_us: 1,
            seq: 1_000,
        }],
        [("press-01".to_owned(), 0, 1_000)],
    );
    assert!(engine
        .evaluate(&[row(0, 1_000, 100.0)], &FirstSeen::new())
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
        .evaluate(&[row(9, 50_000, 1e9)], &FirstSeen::new())
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
                channel_id: Some(0),
                rule: Rule::Stuck,
            },
            severity: Severity::Warning,
        }],
        [],
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

mod data_loss {
    use super::super::data_loss::{holes, DataLossRule, MAX_LOSSY_BOOTS};
    use super::*;
    use crate::coverage::Held;

    const RULE: DataLossRule = DataLossRule {
        readings: 1,
        window_ms: 2_000,
    };

    fn held(device: &str, boot_id: i64, ranges: &[(u64, u64)]) -> Held {
        Held {
            device_id: device.into(),
            boot_id,
            ranges: ranges.to_vec(),
            first_seen_us: 0,
        }
    }

    fn loss_engine() -> AlertEngine {
        engine().with_data_loss(RULE)
    }

    /// Evaluates `data_loss` at `now_ms` and adopts; (change, value, message) each.
    fn judge(engine: &mut AlertEngine, now_ms: i64) -> Vec<(Change, Option<f64>, String)> {
        let evaluation = engine.evaluate_data_loss(now_ms);
        let out = evaluation
            .transitions
            .iter()
            .map(|t| {
                assert_eq!((t.key.rule, t.key.channel_id), (Rule::DataLoss, None));
                (t.change, t.value, t.message.clone())
            })
            .collect();
        engine.adopt(evaluation);
        out
    }

    #[test]
    fn holes_are_what_lies_below_and_between_the_ranges() {
        for ranges in [
            vec![],
            vec![(0, 100)],
            vec![(0, 100), (150, 200), (210, 300)],
            vec![(5, 10)],
        ] {
            let total: u64 = holes(&ranges).iter().map(|(s, e)| e - s).sum();
            assert_eq!(total, crate::confirmations::missing(&ranges), "{ranges:?}");
        }
        assert_eq!(
            holes(&[(0, 100), (150, 200), (210, 300)]),
            [(100, 150), (200, 210)]
        );
        assert_eq!(holes(&[(5, 10)]), [(0, 5)]);
    }

    #[test]
    fn a_hole_opens_data_loss_only_after_the_window_and_resolves_when_filled() {
        let mut engine = loss_engine();
        engine.note_coverage(&[held("press-01", 9, &[(0, 100), (200, 300)])], 10_000);
        assert!(judge(&mut engine, 11_999).is_empty(), "inside the window");
        let opened = judge(&mut engine, 12_000);
        assert_eq!(
            opened,
            [(
                Change::Opened,
                Some(100.0),
                "100 readings missing in boot 0000000000000009: 100-199".to_owned()
            )]
        );
        assert!(judge(&mut engine, 20_000).is_empty(), "opened once");
        // Part of the hole filled: still missing, still open.
        engine.note_coverage(&[held("press-01", 9, &[(0, 150), (200, 300)])], 21_000);
        assert!(judge(&mut engine, 21_000).is_empty());
        engine.note_coverage(&[held("press-01", 9, &[(0, 300)])], 22_000);
        let resolved = judge(&mut engine, 22_000);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].0, Change::Resolved);
        assert_eq!(resolved[0].1, Some(0.0));
        assert!(judge(&mut engine, 40_000).is_empty());
    }

    #[test]
    fn a_hole_filled_within_the_window_raises_nothing() {
        let mut engine = loss_engine();
        engine.note_coverage(&[held("press-01", 9, &[(0, 50), (100, 150)])], 0);
        assert!(judge(&mut engine, 1_500).is_empty());
        engine.note_coverage(&[held("press-01", 9, &[(0, 150)])], 1_600);
        assert!(judge(&mut engine, 60_000).is_empty());
        // A new hole starts its own window.
        engine.note_coverage(&[held("press-01", 9, &[(0, 150), (160, 170)])], 70_000);
        assert!(judge(&mut engine, 71_000).is_empty());
        assert_eq!(judge(&mut engine, 72_000).len(), 1);
    }

    #[test]
    fn the_threshold_counts_missing_readings_over_the_devices_boots() {
        let mut engine = engine().with_data_loss(DataLossRule {
            readings: 10,
            window_ms: 1_000,
        });
        // 6 missing in boot 1, then 5 in boot 2: 11, over the threshold together.
        engine.note_coverage(&[held("press-01", 1, &[(0, 10), (16, 20)])], 0);
        assert!(judge(&mut engine, 5_000).is_empty(), "6 < 10");
        engine.note_coverage(&[held("press-01", 2, &[(5, 40)])], 5_000);
        assert!(judge(&mut engine, 5_999).is_empty());
        let opened = judge(&mut engine, 6_000);
        assert_eq!(
            opened[0].2,
            "11 readings missing in 2 boots: boot 0000000000000002: 0-4; \
             boot 0000000000000001: 10-15"
        );
        // The old boot's hole fills (its frames resent after the reboot): 5 < 10.
        engine.note_coverage(&[held("press-01", 1, &[(0, 20)])], 7_000);
        let resolved = judge(&mut engine, 7_000);
        assert_eq!(
            (resolved[0].0, resolved[0].1),
            (Change::Resolved, Some(5.0))
        );
    }

    #[test]
    fn the_message_names_the_first_holes_only() {
        let mut engine = loss_engine();
        let ranges: Vec<(u64, u64)> = (0..7).map(|i| (i * 10, i * 10 + 5)).collect();
        engine.note_coverage(&[held("press-01", 3, &ranges)], 0);
        let opened = judge(&mut engine, 2_000);
        assert_eq!(
            opened[0].2,
            "30 readings missing in boot 0000000000000003: 5-9, 15-19, 25-29, 35-39 \
             (+2 more ranges)"
        );
    }

    #[test]
    fn an_operators_resolution_accepts_the_loss_until_more_goes_missing() {
        let mut engine = loss_engine();
        // At start: boot 4 has 100 missing, which an operator resolved by hand.
        engine.restore([], [], []);
        engine.restore_coverage(
            [held("press-01", 4, &[(0, 100), (200, 300)])],
            [("press-01".to_owned(), 100)],
            0,
        );
        engine.note_coverage(&[held("press-01", 4, &[(0, 100), (200, 400)])], 1_000);
        assert!(judge(&mut engine, 60_000).is_empty(), "the same holes");
        // 3 more go missing: a new alert, after the window.
        engine.note_coverage(
            &[held("press-01", 4, &[(0, 100), (200, 400), (403, 450)])],
            61_000,
        );
        assert!(judge(&mut engine, 62_999).is_empty());
        let opened = judge(&mut engine, 63_000);
        assert_eq!(opened[0].1, Some(103.0));
        assert!(
            opened[0]
                .2
                .ends_with("; 100 of them were accepted earlier (resolved by hand)"),
            "{opened:?}"
        );
    }

    #[test]
    fn only_devices_this_instance_commits_with_rules_are_judged() {
        let mut engine = loss_engine();
        engine.restore(
            [OpenAlert {
                key: AlertKey {
                    device_id: "press-01".into(),
                    channel_id: None,
                    rule: Rule::DataLoss,
                },
                severity: Severity::Warning,
            }],
            [],
            [],
        );
        // From the table only: another instance may be committing these devices.
        engine.restore_coverage(
            [
                held("press-01", 1, &[(0, 10), (20, 30)]),
                held("solo-01", 1, &[(5, 10)]),
            ],
            [],
            0,
        );
        assert!(judge(&mut engine, 60_000).is_empty());
        // Its own commit: press-01's boot 2 is whole, boot 1's hole still counts.
        engine.note_coverage(&[held("press-01", 2, &[(0, 10)])], 61_000);
        assert!(
            judge(&mut engine, 120_000).is_empty(),
            "still open, no change"
        );
        engine.note_coverage(&[held("press-01", 1, &[(0, 30)])], 121_000);
        assert_eq!(judge(&mut engine, 121_000)[0].0, Change::Resolved);
        // A device without rules (disabled) is not followed.
        engine.note_coverage(&[held("ghost-01", 1, &[(5, 10)])], 0);
        assert!(judge(&mut engine, 60_000).is_empty());
    }

    #[test]
    fn boots_beyond_the_cap_stop_counting() {
        let mut engine = engine().with_data_loss(DataLossRule {
            readings: MAX_LOSSY_BOOTS as u64 + 1,
            window_ms: 0,
        });
        // One reading missing in each of one boot more than the cap: the first is dropped.
        let boots: Vec<Held> = (0..=MAX_LOSSY_BOOTS as i64)
            .map(|boot| held("press-01", boot, &[(1, 2)]))
            .collect();
        engine.note_coverage(&boots, 0);
        assert!(judge(&mut engine, 0).is_empty(), "only the cap counts");
    }
}
