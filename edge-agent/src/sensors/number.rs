//! Finds the first decimal number in a sensor's text output.
//!
//! Real sources speak many dialects: sysfs gives `48312\n`, `vcgencmd measure_temp` gives
//! `temp=48.3'C`, hwmon tools print labels and units. Rather than one parser per tool, the
//! file and command sources take the first number in the text; `scale` and `offset` in the
//! configuration do the rest.

/// The first decimal number in `text`: digits with an optional sign, fraction and exponent
/// (`48`, `-48.3`, `.5`, `1.5e3`) that do not continue a word: in `temp1_input: 45000`
/// and `in0: 1.25 V` the digits of the names are skipped, and in `cpu-1` the `-` is a
/// hyphen, giving 1. `nan`, `inf` and hex are not numbers here.
pub fn parse_first_number(text: &[u8]) -> Option<f64> {
    let digit_at = |i: usize| text.get(i).is_some_and(u8::is_ascii_digit);
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        // Digits glued to a word are part of a name (`in0`, `temp1_input`), not a value.
        let after_word = i > 0 && (text[i - 1].is_ascii_alphanumeric() || text[i - 1] == b'_');
        let fraction_start = c == b'.' && digit_at(i + 1);
        let signed = (c == b'-' || c == b'+')
            && (digit_at(i + 1) || (text.get(i + 1) == Some(&b'.') && digit_at(i + 2)));
        if !after_word && (c.is_ascii_digit() || fraction_start || signed) {
            let end = scan_number(text, i);
            // The slice is ASCII by construction, so both conversions succeed; `ok()`
            // keeps this total anyway.
            return std::str::from_utf8(&text[i..end]).ok()?.parse().ok();
        }
        i += 1;
    }
    None
}

/// The end of the number that starts at `start` (which is a sign, a digit, or a `.`
/// followed by a digit).
fn scan_number(text: &[u8], start: usize) -> usize {
    let digit_at = |i: usize| text.get(i).is_some_and(u8::is_ascii_digit);
    let mut j = start;
    if matches!(text.get(j), Some(b'-' | b'+')) {
        j += 1;
    }
    while digit_at(j) {
        j += 1;
    }
    if text.get(j) == Some(&b'.') && digit_at(j + 1) {
        j += 1;
        while digit_at(j) {
            j += 1;
        }
    }
    if matches!(text.get(j), Some(b'e' | b'E')) {
        let mut k = j + 1;
        if matches!(text.get(k), Some(b'-' | b'+')) {
            k += 1;
        }
        if digit_at(k) {
            j = k;
            while digit_at(j) {
                j += 1;
            }
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::parse_first_number as p;

    #[test]
    fn dialects() {
        assert_eq!(p(b"48312\n"), Some(48312.0));
        assert_eq!(p(b"temp=48.3'C\n"), Some(48.3));
        assert_eq!(p(b"temp=-5.25'C"), Some(-5.25));
        assert_eq!(p(b"+3"), Some(3.0));
        assert_eq!(p(b"value: .5 V"), Some(0.5));
        assert_eq!(p(b"1.5e3"), Some(1500.0));
        assert_eq!(p(b"2E-2x"), Some(0.02));
        assert_eq!(p(b"12e"), Some(12.0));
        assert_eq!(p(b"48."), Some(48.0));
        assert_eq!(p(b"cpu-1 45"), Some(1.0));
        assert_eq!(p(b"temp1_input: 45000"), Some(45000.0));
        assert_eq!(p(b"in0: 1.25 V"), Some(1.25));
        assert_eq!(p(b"thermal_zone0 -4.5e1"), Some(-45.0));
        assert_eq!(p(b"  \t-0.0"), Some(-0.0));
        assert_eq!(p(b"\xff\xfe 7 \xff"), Some(7.0));
    }

    #[test]
    fn no_number() {
        assert_eq!(p(b""), None);
        assert_eq!(p(b"nan inf"), None);
        assert_eq!(p(b"sensor_a1 x2"), None);
        assert_eq!(p(b"- . -. +"), None);
        assert_eq!(p(b"error: VCHI initialization failed"), None);
    }

    #[test]
    fn huge_numbers_do_not_panic() {
        let long = "9".repeat(400);
        assert_eq!(p(long.as_bytes()), Some(f64::INFINITY));
        assert_eq!(p(b"1e999999999999999999999"), Some(f64::INFINITY));
    }
}
