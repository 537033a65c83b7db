//! Reading files that someone else may be writing right now.
//!
//! An editor saving in place, `cp`, or a config-management tool writing the config or a rotated
//! certificate can be caught half way. A half-written YAML file usually fails to parse and is
//! rejected, but a truncated one can parse into a valid, smaller config (a list of routes cut
//! after the second), and a certificate read between the cert and the key write does not match
//! its key. So a change is not acted on at the first read that sees it: the files are read again
//! after a short pause until two reads agree, and a file that keeps changing is left for a later
//! poll. Comparing contents rather than modification times also ignores a `touch`, and catches
//! an edit within the same mtime tick.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pause between two reads that must agree.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Reads of a changing file before giving up until the next poll (about five seconds).
pub const SETTLE_READS: usize = 25;

/// Call `read` until two consecutive calls `settle` apart return the same value, and return it;
/// `None` when `max_reads` calls never agreed.
pub async fn read_settled<T: PartialEq>(
    mut read: impl FnMut() -> T,
    settle: Duration,
    max_reads: usize,
) -> Option<T> {
    let mut last = read();
    for _ in 1..max_reads {
        tokio::time::sleep(settle).await;
        let now = read();
        if now == last {
            return Some(now);
        }
        last = now;
    }
    None
}

/// The contents of `paths`, `None` for one that cannot be read.
pub fn contents(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| std::fs::read(p).ok()).collect()
}

/// The contents of one file, `None` if it cannot be read.
pub fn content(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A file whose content follows `schedule`: (time since start, content) pairs.
    fn file(schedule: Vec<(Duration, &'static str)>) -> impl FnMut() -> &'static str {
        let start = Instant::now();
        move || {
            let at = start.elapsed();
            schedule
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .map_or("", |(_, c)| c)
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_written_in_pieces_is_read_once_it_is_complete() {
        let read = file(vec![
            (ms(0), "routes:\n  - a\n"),
            (ms(150), "routes:\n  - a\n  - b\n"),
            (ms(350), "routes:\n  - a\n  - b\n  - c\n"),
        ]);
        let start = Instant::now();
        let got = read_settled(read, SETTLE, SETTLE_READS).await;
        assert_eq!(got, Some("routes:\n  - a\n  - b\n  - c\n"));
        // Not before the last write had stood still for a whole pause.
        assert!(start.elapsed() >= ms(350) + SETTLE, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanging_file_costs_one_pause() {
        let start = Instant::now();
        assert_eq!(
            read_settled(|| "same", SETTLE, SETTLE_READS).await,
            Some("same")
        );
        assert_eq!(start.elapsed(), SETTLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_never_stops_changing_is_not_read() {
        let mut n = 0u32;
        let got = read_settled(
            || {
                n += 1;
                n
            },
            SETTLE,
            SETTLE_READS,
        )
        .await;
        assert_eq!(got, None);
        assert_eq!(n as usize, SETTLE_READS);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_file_settles_as_unreadable() {
        let got: Option<Option<Vec<u8>>> =
            read_settled(|| content(Path::new("/nonexistent/x")), SETTLE, 3).await;
        assert_eq!(got, Some(None));
    }
}
