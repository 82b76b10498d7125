//! Fixed-window event counters per key, for rate limits and alert rules.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys whose windows are checked for expiry once the map grows past this.
const PRUNE_ABOVE: usize = 100_000;

/// Counts events per key in windows of a fixed length. A key's window
/// starts at its first event and restarts at the first event after it ends.
pub struct WindowCounter<K> {
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Eq + Hash> Default for WindowCounter<K> {
    fn default() -> Self {
        WindowCounter { windows: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash> WindowCounter<K> {
    /// Counts one event for `key` at `now` and returns the number of
    /// events in its current window, this one included, and the window's start.
    pub fn hit(&self, key: K, window: Duration, now: Instant) -> (u32, Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        (entry.1, entry.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_per_key_and_restart() {
        let counter = WindowCounter::default();
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        assert_eq!(counter.hit("a", minute, start).0, 1);
        assert_eq!(counter.hit("a", minute, start + Duration::from_secs(30)).0, 2);
        assert_eq!(counter.hit("b", minute, start).0, 1, "keys count apart");
        let (count, window_start) = counter.hit("a", minute, start + minute);
        assert_eq!(count, 1, "a new window starts from one");
        assert_eq!(window_start, start + minute);
    }
}
