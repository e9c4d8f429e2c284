//! A source that reads a number from a file, for the sensors Linux exposes as files: the
//! CPU thermal zone every Pi has (`/sys/class/thermal/thermal_zone0/temp`, millidegrees),
//! hwmon chips (`/sys/class/hwmon/hwmon*/temp1_input`, `in0_input`, …), or a file another
//! program keeps up to date.
//!
//! The file is opened and read afresh on every sample (sysfs computes the value on read).
//! Only regular files are read (sysfs and procfs files are), because opening a FIFO or
//! reading a device could block or never end, and at most [`MAX_READ`] bytes are read.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{FileSourceConfig, Sample, Source, SourceError};

/// How much of the file is read; the number must start within it.
pub const MAX_READ: usize = 4096;

/// Reads `first number in the file × scale + offset` on every sample.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    scale: f64,
    offset: f64,
    /// Reused between samples, so sampling does not allocate.
    buf: Vec<u8>,
}

impl FileSource {
    /// The configuration should have been validated ([`super::SourceConfig::validate`]);
    /// an invalid scale or offset shows up as [`SourceError::NotFinite`] when sampling.
    pub fn new(config: &FileSourceConfig) -> Self {
        Self {
            path: config.path.clone(),
            scale: config.scale,
            offset: config.offset,
            buf: Vec::with_capacity(MAX_READ),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file once.
    pub fn read_value(&mut self) -> Result<f32, SourceError> {
        let read_error = |cause| SourceError::ReadFile {
            path: self.path.clone(),
            cause,
        };
        let metadata = std::fs::metadata(&self.path).map_err(read_error)?;
        if !metadata.is_file() {
            return Err(SourceError::NotARegularFile {
                path: self.path.clone(),
            });
        }
        let file = File::open(&self.path).map_err(read_error)?;
        self.buf.clear();
        file.take(MAX_READ as u64)
            .read_to_end(&mut self.buf)
            .map_err(|cause| SourceError::ReadFile {
                path: self.path.clone(),
                cause,
            })?;
        let Some(raw) = super::parse_first_number(&self.buf) else {
            return Err(SourceError::FileHasNoNumber {
                path: self.path.clone(),
                excerpt: excerpt(&self.buf),
            });
        };
        scaled(raw, self.scale, self.offset, &self.path)
    }
}

impl Source for FileSource {
    fn sample(&mut self, _elapsed: Duration) -> Result<Option<Sample>, SourceError> {
        self.read_value().map(|v| Some(Sample::new(v)))
    }
}

/// `raw × scale + offset` as an `f32`, or an error naming `origin` when that is not
/// finite.
pub(super) fn scaled(raw: f64, scale: f64, offset: f64, origin: &Path) -> Result<f32, SourceError> {
    let value = raw * scale + offset;
    let narrowed = value as f32;
    if narrowed.is_finite() {
        Ok(narrowed)
    } else {
        Err(SourceError::NotFinite {
            origin: origin.to_path_buf(),
            raw,
            value,
        })
    }
}

/// The start of some text, for an error message.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    const MAX: usize = 80;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    let mut text = text.trim().to_owned();
    if bytes.len() > MAX {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &Path, scale: f64, offset: f64) -> FileSource {
        FileSource::new(&FileSourceConfig {
            path: path.to_path_buf(),
            scale,
            offset,
        })
    }

    #[test]
    fn reads_the_value_afresh_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("temp");
        std::fs::write(&path, "48312\n").unwrap();
        let mut s = source(&path, 0.001, 0.0);
        assert!((s.read_value().unwrap() - 48.312).abs() < 1e-4);
        std::fs::write(&path, "50000\n").unwrap();
        assert!((s.read_value().unwrap() - 50.0).abs() < 1e-4);
    }

    #[test]
    fn a_directory_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = source(dir.path(), 1.0, 0.0).read_value().unwrap_err();
        assert!(matches!(err, SourceError::NotARegularFile { .. }), "{err}");
    }

    #[test]
    fn a_value_beyond_f32_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, "1e300").unwrap();
        let err = source(&path, 1.0, 0.0).read_value().unwrap_err();
        assert!(matches!(err, SourceError::NotFinite { .. }), "{err}");
        assert!(err.to_string().contains("big"), "{err}");
    }

    #[test]
    fn excerpt_is_short() {
        assert_eq!(excerpt(b"  abc \n"), "abc");
        let long = excerpt(&[b'x'; 200]);
        assert_eq!(long.chars().count(), 81);
    }
}
