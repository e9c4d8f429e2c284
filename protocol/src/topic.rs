//! The MQTT topic tree, in the Unified Namespace style: one place that builds and parses
//! every topic the pipeline uses, so no service formats a topic by hand.
//!
//! `{prefix}/{site}/{line}/{device}/{kind}`, for example
//! `plant/plant1/line-a/furnace-01/telemetry`. Browsing the broker in MQTT Explorer then
//! shows the plant as a tree: site, line, device, and under each device its binary
//! `telemetry`, its retained JSON `status`, `meta`, `latest` and `completeness`, `cmd`
//! for commands and the binary `confirm` the cloud sends back.
//! Every segment follows the naming rule of [`crate::id`], so topics never contain
//! wildcards, separators or the broker-reserved `$`.

use core::fmt::{self, Write};

use crate::id::{validate_id, IdError, MAX_ID_LEN};

/// Longest topic or subscription filter this module produces.
pub const MAX_TOPIC_LEN: usize = "$share/".len() + 5 * (MAX_ID_LEN + 1) + MAX_KIND_LEN;

/// Longest [`TopicKind`] name, so [`MAX_TOPIC_LEN`] grows with a new kind by itself.
const MAX_KIND_LEN: usize = {
    let mut longest = 0;
    let mut i = 0;
    while i < TopicKind::ALL.len() {
        let len = TopicKind::ALL[i].as_str().len();
        if len > longest {
            longest = len;
        }
        i += 1;
    }
    longest
};

/// A topic or filter held inline, for callers without an allocator.
pub type TopicString = heapless::String<MAX_TOPIC_LEN>;

/// What a device publishes (or receives) on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Binary [`crate::Frame`]s, QoS 1.
    Telemetry,
    /// Retained JSON: birth (`online`) and last will (`offline`).
    Status,
    /// Retained JSON: channels, units and thresholds.
    Meta,
    /// Retained JSON: the latest decoded values, throttled, for people browsing the broker.
    Latest,
    /// Commands to the device.
    Cmd,
    /// Binary [`crate::Confirmation`]s to the device: what PostgreSQL holds of its
    /// readings, so the agent can delete them from its disk queue.
    Confirm,
    /// Retained JSON, from the bridge: what PostgreSQL holds of the device's newest boot
    /// (stored, missing and refused sequence numbers), throttled, for people browsing
    /// the broker. Derived from the `confirm` messages; no service acts on it.
    Completeness,
}

impl TopicKind {
    pub const ALL: [TopicKind; 7] = [
        TopicKind::Telemetry,
        TopicKind::Status,
        TopicKind::Meta,
        TopicKind::Latest,
        TopicKind::Cmd,
        TopicKind::Confirm,
        TopicKind::Completeness,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TopicKind::Telemetry => "telemetry",
            TopicKind::Status => "status",
            TopicKind::Meta => "meta",
            TopicKind::Latest => "latest",
            TopicKind::Cmd => "cmd",
            TopicKind::Confirm => "confirm",
            TopicKind::Completeness => "completeness",
        }
    }

    fn parse(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == segment)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a topic or filter was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Prefix,
    Site,
    Line,
    Device,
    /// The group of a shared subscription.
    Group,
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Segment::Prefix => "prefix",
            Segment::Site => "site",
            Segment::Line => "line",
            Segment::Device => "device",
            Segment::Group => "shared-subscription group",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic has {found} levels, expected 5: prefix/site/line/device/kind")]
    WrongDepth { found: usize },
    #[error("topic {segment} {error}")]
    Segment { segment: Segment, error: IdError },
    #[error(
        "last topic level is not one of telemetry, status, meta, latest, cmd, confirm, completeness"
    )]
    UnknownKind,
}

/// A device topic, borrowing its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topic<'a> {
    pub prefix: &'a str,
    pub site: &'a str,
    pub line: &'a str,
    pub device: &'a str,
    pub kind: TopicKind,
}

fn check(segment: Segment, value: &str) -> Result<(), TopicError> {
    validate_id(value).map_err(|error| TopicError::Segment { segment, error })
}

impl<'a> Topic<'a> {
    /// Builds a topic, refusing any segment that breaks the naming rule.
    pub fn new(
        prefix: &'a str,
        site: &'a str,
        line: &'a str,
        device: &'a str,
        kind: TopicKind,
    ) -> Result<Self, TopicError> {
        check(Segment::Prefix, prefix)?;
        check(Segment::Site, site)?;
        check(Segment::Line, line)?;
        check(Segment::Device, device)?;
        Ok(Self {
            prefix,
            site,
            line,
            device,
            kind,
        })
    }

    /// Parses a topic received from the broker.
    pub fn parse(topic: &'a str) -> Result<Self, TopicError> {
        let mut levels = topic.split('/');
        let mut next = || levels.next().unwrap_or_default();
        let (prefix, site, line, device, kind) = (next(), next(), next(), next(), next());
        let found = topic.split('/').count();
        if found != 5 {
            return Err(TopicError::WrongDepth { found });
        }
        let kind = TopicKind::parse(kind).ok_or(TopicError::UnknownKind)?;
        Self::new(prefix, site, line, device, kind)
    }

    /// The same device's topic of another kind.
    pub fn with_kind(self, kind: TopicKind) -> Self {
        Self { kind, ..self }
    }

    /// The topic as an inline string (for `no_std` callers; others can use `to_string`).
    pub fn render(&self) -> TopicString {
        let mut out = TopicString::new();
        // Cannot fail: five validated segments always fit MAX_TOPIC_LEN.
        let _ = write!(out, "{self}");
        out
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}",
            self.prefix, self.site, self.line, self.device, self.kind
        )
    }
}

/// Filter matching `kind` for every device under `prefix`: `{prefix}/+/+/+/{kind}`.
pub fn filter(prefix: &str, kind: TopicKind) -> Result<TopicString, TopicError> {
    check(Segment::Prefix, prefix)?;
    let mut out = TopicString::new();
    let _ = write!(out, "{prefix}/+/+/+/{kind}");
    Ok(out)
}

/// The same filter as a shared subscription, so several bridges split the load:
/// `$share/{group}/{prefix}/+/+/+/{kind}`.
pub fn shared_filter(
    group: &str,
    prefix: &str,
    kind: TopicKind,
) -> Result<TopicString, TopicError> {
    check(Segment::Group, group)?;
    let plain = filter(prefix, kind)?;
    let mut out = TopicString::new();
    let _ = write!(out, "$share/{group}/{plain}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_kind() {
        for kind in TopicKind::ALL {
            let topic = Topic::new("plant", "plant1", "line-a", "furnace-01", kind).unwrap();
            let text = topic.to_string();
            assert_eq!(text, format!("plant/plant1/line-a/furnace-01/{kind}"));
            assert_eq!(topic.render().as_str(), text);
            assert_eq!(Topic::parse(&text), Ok(topic));
        }
    }

    #[test]
    fn rejects_bad_segments_naming_the_segment() {
        let cases = [
            ("pl+ant/s/l/d/telemetry", Segment::Prefix),
            ("p/#/l/d/telemetry", Segment::Site),
            ("p/s/l\0/d/status", Segment::Line),
            ("p/s/l/dev ice/meta", Segment::Device),
            ("p/s//d/meta", Segment::Line),
            ("$SYS/s/l/d/meta", Segment::Prefix),
        ];
        for (text, expected) in cases {
            match Topic::parse(text) {
                Err(TopicError::Segment { segment, .. }) => assert_eq!(segment, expected, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let long = "d".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            Topic::new("p", "s", "l", &long, TopicKind::Telemetry),
            Err(TopicError::Segment {
                segment: Segment::Device,
                error: IdError::TooLong { .. }
            })
        ));
        assert!(Topic::new("p", "a/b", "l", "d", TopicKind::Telemetry).is_err());
    }

    #[test]
    fn rejects_wrong_depth_and_unknown_kind() {
        assert_eq!(
            Topic::parse("p/s/l/d"),
            Err(TopicError::WrongDepth { found: 4 })
        );
        assert_eq!(
            Topic::parse("p/s/l/d/telemetry/x"),
            Err(TopicError::WrongDepth { found: 6 })
        );
        assert_eq!(
            Topic::parse("p/s/l/d/Telemetry"),
            Err(TopicError::UnknownKind)
        );
    }

    #[test]
    fn filters() {
        assert_eq!(
            filter("plant", TopicKind::Telemetry).unwrap().as_str(),
            "plant/+/+/+/telemetry"
        );
        assert_eq!(
            shared_filter("bridges", "plant", TopicKind::Telemetry)
                .unwrap()
                .as_str(),
            "$share/bridges/plant/+/+/+/telemetry"
        );
        assert!(filter("pl/ant", TopicKind::Status).is_err());
        assert!(shared_filter("$b", "plant", TopicKind::Status).is_err());
    }

    #[test]
    fn longest_topic_and_filter_fit() {
        let max = "x".repeat(MAX_ID_LEN);
        for kind in TopicKind::ALL {
            let topic = Topic::new(&max, &max, &max, &max, kind).unwrap();
            assert_eq!(topic.render().as_str(), topic.to_string(), "{kind}");
            let shared = shared_filter(&max, &max, kind).unwrap();
            assert_eq!(shared.as_str(), format!("$share/{max}/{max}/+/+/+/{kind}"));
        }
    }
}
