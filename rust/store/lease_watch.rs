//! How a rescuer decides that a lease's holder is gone, without trusting another process's
//! clock: a lease is taken over only when its stored expiry has passed by the store's time
//! and the rescuer itself has watched it go unrenewed for half a lease of its own monotonic
//! time. A live holder renews every third of a lease, so a rescuer whose wall clock jumped
//! ahead (every stored lease then looks expired) still sees healthy leases renewed within its
//! window and leaves them alone; a dead holder's lease, watched from its midpoint on, is taken
//! over as soon as it expires. Engine-neutral: each engine reads the sightings its own way.

use std::collections::HashMap;

use crate::clock::Millis;
use crate::task::{LeaseToken, TaskId};

/// A running task's lease as stored: when it expires and when it was last renewed (claim or
/// heartbeat), so its length is the difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub id: TaskId,
    pub token: LeaseToken,
    pub expires_at: Millis,
    pub renewed_at: Millis,
}

impl Sighting {
    fn length(&self) -> Millis {
        (self.expires_at - self.renewed_at).max(1)
    }

    /// Whether it is past its midpoint at `now`: from then on a rescuer watches it.
    pub fn watched_at(&self, now: Millis) -> bool {
        self.expires_at - self.length() / 2 <= now
    }
}

/// The leases one rescuer is watching: since when (its monotonic time) each has stood still.
#[derive(Debug, Default)]
pub struct LeaseWatch {
    still_since: HashMap<(TaskId, LeaseToken), (Millis, Millis)>,
}

impl LeaseWatch {
    /// Takes this pass's sightings (the leases past their midpoint) and returns those to take
    /// over. Leases not sighted any more (renewed, finished) are forgotten.
    pub fn overdue(
        &mut self,
        sightings: &[Sighting],
        now: Millis,
        monotonic: Millis,
    ) -> Vec<Sighting> {
        let mut still_since = HashMap::with_capacity(sightings.len());
        let mut overdue = Vec::new();
        for s in sightings {
            let since = match self.still_since.get(&(s.id, s.token)) {
                Some(&(expires_at, since)) if expires_at == s.expires_at => since,
                _ => monotonic, // new, or renewed since the last pass
            };
            still_since.insert((s.id, s.token), (s.expires_at, since));
            if s.expires_at <= now && monotonic - since >= s.length() / 2 {
                overdue.push(*s);
            }
        }
        self.still_since = still_since;
        overdue
    }

    /// How long (monotonic) this rescuer has watched `lease` stand still; 0 if it has not.
    pub fn watched_for(&self, lease: &Sighting, monotonic: Millis) -> Millis {
        match self.still_since.get(&(lease.id, lease.token)) {
            Some(&(expires_at, since)) if expires_at == lease.expires_at => monotonic - since,
            _ => 0,
        }
    }
}

/// Whether a rescuer that found no run journal of a lease's holder should leave the lease,
/// this pass, to a rescuer on the holder's host, which can read that journal (and so give
/// back the attempt of a task the holder claimed but never started): yes while another
/// worker on that host was seen after the holder's last renewal (`sibling_seen`: both times
/// by that host's clock, so no clocks are compared across hosts), for at most one more lease
/// after this rescuer would have taken it over. A host that died whole is taken over that
/// much later, charged as before.
pub fn leave_to_holders_host(
    lease: &Sighting,
    sibling_seen: Option<Millis>,
    watched_for: Millis,
) -> bool {
    let takeover = lease.length() / 2;
    sibling_seen.is_some_and(|seen| seen > lease.renewed_at)
        && watched_for < takeover + lease.length()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Millis = 30_000;

    fn lease(id: TaskId, renewed_at: Millis) -> Sighting {
        Sighting {
            id,
            token: 7,
            expires_at: renewed_at + LEASE,
            renewed_at,
        }
    }

    #[test]
    fn a_lease_watched_from_its_midpoint_is_taken_over_when_it_expires() {
        let mut watch = LeaseWatch::default();
        let s = lease(1, 0);
        assert!(!s.watched_at(LEASE / 2 - 1) && s.watched_at(LEASE / 2));
        assert!(watch.overdue(&[s], LEASE / 2, 1_000).is_empty());
        assert!(
            watch
                .overdue(&[s], LEASE - 1, 1_000 + LEASE / 2 - 1)
                .is_empty()
        );
        assert_eq!(watch.overdue(&[s], LEASE, 1_000 + LEASE / 2), [s]);
    }

    #[test]
    fn a_rescuer_whose_clock_jumped_ahead_leaves_renewed_leases_alone() {
        let mut watch = LeaseWatch::default();
        let far_ahead = 1_000 * LEASE; // every stored lease looks long expired
        let mut monotonic = 0;
        let mut renewed = 0;
        for _ in 0..30 {
            // The holder renews every third of a lease; the rescuer passes every second.
            for _ in 0..(LEASE / 3 / 1_000) {
                assert!(
                    watch
                        .overdue(&[lease(1, renewed)], far_ahead, monotonic)
                        .is_empty()
                );
                monotonic += 1_000;
            }
            renewed += LEASE / 3;
        }
        // Once the holder stops renewing, half a lease of watching takes it over.
        let last = lease(1, renewed);
        assert!(watch.overdue(&[last], far_ahead, monotonic).is_empty());
        assert!(
            watch
                .overdue(&[last], far_ahead, monotonic + LEASE / 2 - 1)
                .is_empty()
        );
        assert_eq!(
            watch.overdue(&[last], far_ahead, monotonic + LEASE / 2),
            [last]
        );
    }

    #[test]
    fn a_foreign_rescuer_waits_for_the_holders_host_while_a_sibling_there_lives() {
        let s = lease(1, 0);
        // A sibling seen after the holder's last renewal: leave it, up to 1.5 leases of watching.
        assert!(leave_to_holders_host(&s, Some(1), 0));
        assert!(leave_to_holders_host(&s, Some(1), LEASE / 2 + LEASE - 1));
        assert!(!leave_to_holders_host(&s, Some(1), LEASE / 2 + LEASE));
        // No sibling, or none seen since the holder's last renewal: take it over now.
        assert!(!leave_to_holders_host(&s, None, 0));
        assert!(!leave_to_holders_host(&s, Some(0), 0));
    }

    #[test]
    fn tells_how_long_a_lease_was_watched_standing_still() {
        let mut watch = LeaseWatch::default();
        let s = lease(1, 0);
        assert_eq!(watch.watched_for(&s, 5), 0);
        watch.overdue(&[s], LEASE / 2, 100);
        watch.overdue(&[s], LEASE, 700);
        assert_eq!(watch.watched_for(&s, 700), 600);
        // Renewed: a new expiry is watched afresh.
        assert_eq!(watch.watched_for(&lease(1, 10), 700), 0);
    }

    #[test]
    fn forgets_leases_no_longer_sighted() {
        let mut watch = LeaseWatch::default();
        watch.overdue(&[lease(1, 0), lease(2, 0)], LEASE, 0);
        watch.overdue(&[lease(2, 0)], LEASE, 10);
        assert_eq!(watch.still_since.len(), 1);
        // Sighted again later: watched afresh.
        assert!(watch.overdue(&[lease(1, 0)], LEASE, LEASE).is_empty());
    }
}
