//! A small line logger: `<UTC timestamp> <LEVEL> [container=<id> pod=<ns>/<name>] <message>`.
//!
//! The plugin lives for milliseconds and stdout belongs to the CNI protocol, so this writes to
//! the configured log file (appending, rotating by size at open) or, when that cannot be opened,
//! to stderr. Never stdout. No `tracing` subscriber: one open file and `writeln!` are all a
//! short-lived binary needs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::confine;
use crate::netconf::ConfigError;

/// Rotate the log file past this many MiB (upstream's default).
pub const DEFAULT_LOG_FILE_MAX_SIZE_MB: u64 = 100;
/// Delete rotated log files older than this many days (upstream's default).
pub const DEFAULT_LOG_FILE_MAX_AGE_DAYS: u64 = 30;
/// Keep at most this many rotated log files. Upstream's code says 10 and its docs say 7; we follow
/// the documentation (reference 13.8).
pub const DEFAULT_LOG_FILE_MAX_COUNT: u64 = 7;

/// How much to log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including request and response bodies.
    Debug,
    /// One line per invocation and outcome.
    Info,
    /// Things that work but should not happen.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// Upper-case name as written in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }

    /// Parses `DEBUG`, `INFO`, `WARN`/`WARNING` or `ERROR` in any case; errors name `key`.
    pub fn parse(text: &str, key: &str) -> Result<Self, ConfigError> {
        match text.to_ascii_uppercase().as_str() {
            "DEBUG" => Ok(Self::Debug),
            "INFO" => Ok(Self::Info),
            "WARN" | "WARNING" => Ok(Self::Warn),
            "ERROR" => Ok(Self::Error),
            _ => Err(ConfigError::invalid(
                key,
                format!("{text:?} is not one of DEBUG, INFO, WARN, ERROR"),
            )),
        }
    }
}

/// Logging settings of one plugin invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Upstream's code defaults to DEBUG, its docs to INFO: we follow the docs (reference 13.8),
    /// so a quiet node does not fill its disk.
    pub level: LogLevel,
    /// The log file.
    pub file_path: PathBuf,
    /// Rotate past this many MiB.
    pub max_size_mb: u64,
    /// Delete rotations older than this many days.
    pub max_age_days: u64,
    /// Keep at most this many rotations.
    pub max_count: u64,
}

impl LogConfig {
    /// The defaults, logging to `file_path`.
    pub fn in_file(file_path: impl Into<PathBuf>) -> Self {
        Self {
            level: LogLevel::Info,
            file_path: file_path.into(),
            max_size_mb: DEFAULT_LOG_FILE_MAX_SIZE_MB,
            max_age_days: DEFAULT_LOG_FILE_MAX_AGE_DAYS,
            max_count: DEFAULT_LOG_FILE_MAX_COUNT,
        }
    }
}

enum Sink {
    File(File),
    Stderr,
}

/// Where log lines go and which ones are kept.
pub struct Logger {
    level: LogLevel,
    sink: Mutex<Sink>,
    context: Mutex<String>,
}

impl Logger {
    /// Logs to stderr at `level` (used before the configuration is known).
    pub fn stderr(level: LogLevel) -> Self {
        Self {
            level,
            sink: Mutex::new(Sink::Stderr),
            context: Mutex::new(String::new()),
        }
    }

    /// Logs to the configured file, rotating it first when it has grown past `max_size_mb`; falls
    /// back to stderr when the file cannot be opened (and says so there). The file must lie in
    /// `dir` (see [`crate::confine`]); no symlink below `dir` is followed, and no directory is
    /// created outside it.
    pub fn from_config(config: &LogConfig, dir: &Path) -> Self {
        let logger = Self::stderr(config.level);
        match open_log_file(config, dir) {
            Ok(file) => {
                if let Ok(mut sink) = logger.sink.lock() {
                    *sink = Sink::File(file);
                }
            }
            Err(error) => logger.warn(&format!(
                "cannot write the log file {}: {error}; logging to stderr",
                config.file_path.display()
            )),
        }
        logger
    }

    /// Sets the `[container=.. pod=..]` part of every following line.
    pub fn set_context(&self, container_id: &str, pod: &str) {
        if let Ok(mut context) = self.context.lock() {
            *context = format!("[container={container_id} pod={pod}] ");
        }
    }

    /// Whether lines at `level` are written.
    pub fn enabled(&self, level: LogLevel) -> bool {
        level >= self.level
    }

    /// Writes one line at `level` (dropped below the configured level; write errors are ignored,
    /// logging must never fail the CNI operation).
    pub fn log(&self, level: LogLevel, message: &str) {
        if !self.enabled(level) {
            return;
        }
        let context = self
            .context
            .lock()
            .map(|context| context.clone())
            .unwrap_or_default();
        let line = format!(
            "{} {:<5} {context}{message}\n",
            rfc3339_utc(SystemTime::now()),
            level.as_str()
        );
        if let Ok(mut sink) = self.sink.lock() {
            let _ = match &mut *sink {
                Sink::File(file) => file.write_all(line.as_bytes()),
                Sink::Stderr => io::stderr().write_all(line.as_bytes()),
            };
        }
    }

    /// [`LogLevel::Debug`] line.
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// [`LogLevel::Info`] line.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// [`LogLevel::Warn`] line.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// [`LogLevel::Error`] line.
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }
}

fn open_log_file(config: &LogConfig, dir: &Path) -> io::Result<File> {
    let path = &config.file_path;
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    if path == Path::new(confine::DISCARD) {
        return options.open(path);
    }
    if !confine::is_inside(path, dir) {
        return Err(io::Error::other(format!("not inside {}", dir.display())));
    }
    let parent = path.parent().unwrap_or(dir);
    make_dirs_below(dir, parent)?;
    if fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
        return Err(io::Error::other("it is a symlink"));
    }
    rotate_if_needed(config);
    // O_NOFOLLOW: a symlink put there after the check above still fails the open.
    options.custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Creates `parent` and the directories between `dir` and it, refusing any symlink on the way (a
/// symlinked subdirectory would lead the writes outside `dir`).
fn make_dirs_below(dir: &Path, parent: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let below = parent.strip_prefix(dir).map_err(io::Error::other)?;
    let mut current = dir.to_path_buf();
    for part in below.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(io::Error::other(format!("{} is a symlink", current.display())));
            }
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    current.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => fs::create_dir(&current)?,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Renames the log file to `<name>.<unix millis>` once it exceeds `max_size_mb` (0: upstream's
/// 100), then prunes rotated files beyond `max_count` or older than `max_age_days` (0: keep).
///
/// Several plugin processes may race here; the loser's rename fails with "not found" and is
/// ignored, so at worst a file is rotated slightly late. Errors never stop the plugin.
fn rotate_if_needed(config: &LogConfig) {
    let max_size_mb = if config.max_size_mb == 0 {
        DEFAULT_LOG_FILE_MAX_SIZE_MB
    } else {
        config.max_size_mb
    };
    let max_bytes = max_size_mb.saturating_mul(1 << 20);
    let Ok(metadata) = fs::symlink_metadata(&config.file_path) else {
        return;
    };
    if metadata.len() < max_bytes {
        return;
    }
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut rotated = config.file_path.clone().into_os_string();
    rotated.push(format!(".{millis}"));
    let _ = fs::rename(&config.file_path, PathBuf::from(rotated));
    prune_rotated(&config.file_path, config.max_count, config.max_age_days);
}

fn prune_rotated(path: &Path, max_count: u64, max_age_days: u64) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|name| name.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u128, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let stamp = file_name.to_str()?.strip_prefix(&prefix)?.parse::<u128>().ok()?;
            Some((stamp, entry.path()))
        })
        .collect();
    rotated.sort_unstable_by_key(|(stamp, _)| std::cmp::Reverse(*stamp));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let max_age_millis = u128::from(max_age_days) * 86_400_000;
    let keep = usize::try_from(max_count).unwrap_or(usize::MAX);
    for (index, (stamp, file)) in rotated.iter().enumerate() {
        let too_old = max_age_days > 0 && now.saturating_sub(*stamp) > max_age_millis;
        if index >= keep || too_old {
            let _ = fs::remove_file(file);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` without a date crate (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339_utc(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_epoch.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or_default();
    let second_of_day = seconds % 86_400;
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap_day = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339_utc(leap_day), "2024-02-29T12:34:56.789Z");
        let end_of_year = UNIX_EPOCH + Duration::from_secs(1_798_761_599);
        assert_eq!(rfc3339_utc(end_of_year), "2026-12-31T23:59:59.000Z");
    }

    fn config(dir: &Path) -> LogConfig {
        LogConfig::in_file(dir.join("sub/spiderpool.log"))
    }

    #[test]
    fn lines_go_to_the_file_with_context_and_respect_the_level() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            level: LogLevel::Warn,
            ..config(dir.path())
        };
        let logger = Logger::from_config(&config, dir.path());
        logger.set_context("c1", "ns/p");
        logger.info("not written");
        logger.warn("written");
        drop(logger);
        let text = fs::read_to_string(&config.file_path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" WARN  [container=c1 pod=ns/p] written"), "{text}");
    }

    #[test]
    fn big_files_are_rotated_and_old_rotations_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            max_size_mb: 1,
            max_count: 2,
            ..config(dir.path())
        };
        fs::create_dir_all(config.file_path.parent().unwrap()).unwrap();
        for stamp in ["1", "2", "3"] {
            fs::write(dir.path().join(format!("sub/spiderpool.log.{stamp}")), "old").unwrap();
        }
        fs::write(&config.file_path, vec![b'x'; 1 << 20]).unwrap();
        Logger::from_config(&config, dir.path()).info("fresh");
        assert!(fs::metadata(&config.file_path).unwrap().len() < 1000);
        let mut names: Vec<String> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // The fresh rotation and the newest old one survive; max_age 30 days removes stamps 1..3
        // anyway (they are from 1970), so only the fresh rotation is left besides the log itself.
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"spiderpool.log".to_owned()));
    }

    #[test]
    fn rotation_keeps_at_most_max_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        for offset in 0..5 {
            fs::write(dir.path().join(format!("p.log.{}", now - offset)), "old").unwrap();
        }
        fs::write(dir.path().join("p.log.notanumber"), "kept").unwrap();
        prune_rotated(&path, 2, 30);
        let count = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count, 3, "two newest rotations plus the unrelated file");
        assert!(dir.path().join(format!("p.log.{now}")).exists());
    }

    #[test]
    fn an_unwritable_path_falls_back_to_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let config = LogConfig::in_file(blocker.join("cannot/be/a/dir.log"));
        let logger = Logger::from_config(&config, dir.path());
        assert!(matches!(*logger.sink.lock().unwrap(), Sink::Stderr));
    }

    #[test]
    fn nothing_is_written_or_created_outside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("t.log"), dir.path().join("l.log")).unwrap();
        for path in [
            outside.path().join("x.log"),
            dir.path().join("sub/deeper/x.log"),
            dir.path().join("l.log"),
            dir.path().join("../x.log"),
        ] {
            let logger = Logger::from_config(&LogConfig::in_file(&path), dir.path());
            assert!(
                matches!(*logger.sink.lock().unwrap(), Sink::Stderr),
                "{}",
                path.display()
            );
        }
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        let discard = Logger::from_config(&LogConfig::in_file("/dev/null"), dir.path());
        assert!(matches!(*discard.sink.lock().unwrap(), Sink::File(_)));
    }
}
