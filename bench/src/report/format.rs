//! How the report writes its numbers and verdicts, the same in every section (and, for
//! rates, in the bridge bench's table: `bench bridge`).

/// A rate with thousands separators, never negative: `123456.7` → `123,457`.
pub(crate) fn rate(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bar's verdict, in bold.
pub(super) fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// Milliseconds, rounded; `–` for a figure that could not be measured.
pub(super) fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "–".to_owned()
    }
}
