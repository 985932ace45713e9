//! The suspicions a node holds and hears of, as plain state (no links, no jobs; time passed
//! in): as a coordinator, which of its hosting nodes cannot reach which other member and since
//! when the verdict is due; as a hosting node, which members it reported unreachable and to
//! which coordinators, so that it can withdraw the report once the link is back.
//! The `verdict` module carries the decisions out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Suspicions this node holds and hears of (see the module docs).
#[derive(Debug)]
pub(crate) struct Suspicions {
    /// How long a coordinator waits for a suspicion to be withdrawn before it decides.
    grace: Duration,
    /// As a coordinator: `(reporter, suspect)` → when the verdict is due.
    reports: BTreeMap<(String, String), Instant>,
    /// As a hosting node: suspect → the coordinators told of it.
    reported: HashMap<String, BTreeSet<String>>,
}

impl Suspicions {
    /// No suspicions; a coordinator decides `grace` after a report that is not withdrawn.
    pub(crate) fn new(grace: Duration) -> Self {
        Suspicions {
            grace,
            reports: BTreeMap::new(),
            reported: HashMap::new(),
        }
    }

    /// `reporter` cannot reach `suspect` (heard `now`): the verdict is due after the grace,
    /// or at once if frames between them may be lost (`lost`). A repeated report keeps the
    /// earlier due time, unless it is `lost`.
    pub(crate) fn report(&mut self, reporter: &str, suspect: &str, lost: bool, now: Instant) {
        let due = if lost { now } else { now + self.grace };
        let key = (reporter.to_string(), suspect.to_string());
        let at = self.reports.entry(key).or_insert(due);
        *at = (*at).min(due);
    }

    /// `reporter` reaches `suspect` again: its suspicion is withdrawn.
    pub(crate) fn withdraw(&mut self, reporter: &str, suspect: &str) -> bool {
        let key = (reporter.to_string(), suspect.to_string());
        self.reports.remove(&key).is_some()
    }

    /// The suspicions whose verdict is due by `now`, oldest first: `(reporter, suspect)`;
    /// they are taken (decided once).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut due: Vec<(Instant, (String, String))> = self
            .reports
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        due.sort();
        for (_, k) in &due {
            self.reports.remove(k);
        }
        due.into_iter().map(|(_, k)| k).collect()
    }

    /// As a hosting node: `coordinators` were told that `suspect` is unreachable.
    pub(crate) fn reported(&mut self, suspect: &str, coordinators: &[String]) {
        self.reported
            .entry(suspect.to_string())
            .or_default()
            .extend(coordinators.iter().cloned());
    }

    /// As a hosting node: the coordinators told that `suspect` is unreachable, if any (the
    /// record is taken: the link is back, and they are told so).
    pub(crate) fn take_reported(&mut self, suspect: &str) -> Vec<String> {
        self.reported
            .remove(suspect)
            .map(|c| c.into_iter().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(400);

    #[test]
    fn a_suspicion_is_decided_after_the_grace_unless_withdrawn() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(GRACE);
        s.report("n2", "n3", false, t0);
        s.report("n3", "n2", false, t0 + Duration::from_millis(10));
        assert!(s.due(t0 + Duration::from_millis(399)).is_empty());
        // Reported again later: the first due time holds.
        s.report("n2", "n3", false, t0 + Duration::from_millis(300));
        assert_eq!(
            s.due(t0 + GRACE),
            vec![("n2".to_string(), "n3".to_string())]
        );
        assert!(s.withdraw("n3", "n2"), "the other report is withdrawn");
        assert!(s.due(t0 + GRACE * 10).is_empty(), "each is decided once");
    }

    #[test]
    fn lost_frames_are_decided_at_once_and_in_the_order_reported() {
        let t0 = Instant::now();
        let mut s = Suspicions::new(GRACE);
        s.report("n3", "n2", false, t0);
        s.report("n2", "n3", true, t0 + Duration::from_millis(1));
        assert_eq!(
            s.due(t0 + Duration::from_millis(1)),
            vec![("n2".to_string(), "n3".to_string())]
        );
        // Both due: the older first.
        s.report("n4", "n2", true, t0 + GRACE);
        assert_eq!(
            s.due(t0 + GRACE),
            vec![
                ("n3".to_string(), "n2".to_string()),
                ("n4".to_string(), "n2".to_string())
            ]
        );
    }

    #[test]
    fn a_host_remembers_whom_it_told() {
        let mut s = Suspicions::new(GRACE);
        s.reported("n3", &["n1".to_string()]);
        s.reported("n3", &["n1".to_string(), "n0".to_string()]);
        assert_eq!(s.take_reported("n3"), vec!["n0", "n1"]);
        assert!(s.take_reported("n3").is_empty());
    }
}
