//! The log of clients the store turned away, limited so that a flood of bad clients cannot
//! flood the driver's log: one line per peer address per minute, the others counted and
//! reported in one line when their minute is up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long one peer's log line stands for all its rejections.
const WINDOW: Duration = Duration::from_secs(60);

/// Peers tracked at most; a flood from more addresses than this is logged as one line a minute.
const MAX_PEERS: usize = 1024;

/// Rejections per peer address in the current minute.
#[derive(Debug, Default)]
pub struct Rejections {
    peers: HashMap<IpAddr, Window>,
    /// Rejections not logged because `MAX_PEERS` peers were tracked already.
    overflow: Window,
}

#[derive(Debug, Clone, Default)]
struct Window {
    /// When this peer's line was logged (the window's start).
    since: Option<Instant>,
    /// Rejections since then that were not logged.
    suppressed: u64,
    /// The last of them.
    why: String,
}

impl Rejections {
    /// Note a client from `peer` turned away for `why` at `now`, and log it unless a line for
    /// this peer was logged less than a minute ago (then it is counted). Returns whether it
    /// was logged.
    pub fn note(&mut self, peer: IpAddr, why: &str, now: Instant) -> bool {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return count(&mut self.overflow, "", why, now);
        }
        count(self.peers.entry(peer).or_default(), &peer.to_string(), why, now)
    }

    /// Log the count of every peer whose minute is up with rejections not yet logged, and
    /// forget the quiet ones. Returns how many lines were logged.
    pub fn flush(&mut self, now: Instant) -> usize {
        let mut lines = 0;
        self.peers.retain(|peer, w| {
            let over = w.since.is_none_or(|t| now.duration_since(t) >= WINDOW);
            if over && w.suppressed > 0 {
                lines += 1;
                summary(w, &peer.to_string(), now);
                return true;
            }
            !over
        });
        let w = &mut self.overflow;
        if w.suppressed > 0 && w.since.is_none_or(|t| now.duration_since(t) >= WINDOW) {
            lines += 1;
            summary(w, "", now);
        }
        lines
    }
}

/// Count a rejection in `w`; log it when the window is over (a new one starts).
fn count(w: &mut Window, peer: &str, why: &str, now: Instant) -> bool {
    if w.since.is_some_and(|t| now.duration_since(t) < WINDOW) {
        w.suppressed += 1;
        w.why = why.to_string();
        return false;
    }
    if w.suppressed > 0 {
        w.why = why.to_string();
        w.suppressed += 1;
        summary(w, peer, now);
        return true;
    }
    w.since = Some(now);
    let from = if peer.is_empty() { "more peers" } else { peer };
    tracing::warn!("store: turned a client from {from} away: {why} (more from it within a minute are counted, not logged)");
    true
}

/// Log the count of `w`'s rejections not logged yet, and start a new window at `now`.
fn summary(w: &mut Window, peer: &str, now: Instant) {
    let from = if peer.is_empty() {
        "addresses beyond the tracked ones".to_string()
    } else {
        peer.to_string()
    };
    tracing::warn!(
        "store: turned away {} more client(s) from {from} in the last minute (the last: {})",
        w.suppressed,
        w.why
    );
    *w = Window {
        since: Some(now),
        ..Window::default()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_minute_with_a_count_of_the_rest() {
        let mut r = Rejections::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // A flood from one peer: its first rejection is logged, the next 9,999 are counted.
        let logged = (0..10_000)
            .filter(|i| r.note(a, "wrong secret", at(i % 50)))
            .count();
        assert_eq!(logged, 1);
        // Another peer gets its own line.
        assert!(r.note(b, "malformed join", at(1)));
        assert!(!r.note(b, "malformed join", at(2)));
        // Nothing is due before the minute is up.
        assert_eq!(r.flush(at(59)), 0);
        // Then one line per peer with a count, and a new window: the next one is counted.
        assert_eq!(r.flush(at(61)), 2);
        assert_eq!(r.peers[&a].suppressed, 0);
        assert!(!r.note(a, "wrong secret", at(62)));
        // A peer quiet for a minute is forgotten, and its next rejection logged again.
        assert_eq!(r.flush(at(122)), 1);
        assert!(!r.peers.contains_key(&b));
        assert_eq!(r.flush(at(200)), 0);
        assert!(r.peers.is_empty());
        assert!(r.note(b, "wrong secret", at(201)));
        // A rejection after the minute with some counted logs their count (one line).
        assert!(!r.note(b, "wrong secret", at(202)));
        assert!(r.note(b, "wrong secret", at(300)));
        assert_eq!(r.peers[&b].suppressed, 0);
    }

    #[test]
    fn peers_beyond_the_tracked_ones_share_one_line() {
        let mut r = Rejections::default();
        let now = Instant::now();
        let logged = (0..5000u32)
            .filter(|i| r.note(IpAddr::from(i.to_be_bytes()), "wrong secret", now))
            .count();
        assert_eq!(logged, MAX_PEERS + 1);
        assert_eq!(r.peers.len(), MAX_PEERS);
        assert_eq!(r.overflow.suppressed, 5000 - MAX_PEERS as u64 - 1);
    }
}
