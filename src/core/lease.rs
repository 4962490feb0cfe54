//! Leader election decisions over a coordination.k8s.io Lease, as client-go's leaderelection does
//! them: expiry is judged by when *we* last saw the record change, never by comparing our clock
//! with the holder's `renewTime`, so clock skew between replicas cannot make two leaders.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long followers wait after the last observed change before taking over.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops acting (shorter than `duration`).
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What we know of the Lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Empty or missing: released.
    pub holder: Option<String>,
    pub duration_secs: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease object yet.
    Create,
    /// We hold it: renew.
    Renew,
    /// Released or expired: take it.
    Acquire,
    /// Someone else holds a live lease.
    Wait,
}

/// `since_change` is how long ago we first saw the record in its current state.
pub fn decide(
    record: Option<&LeaseRecord>,
    me: &str,
    since_change: Duration,
    timings: &LeaseTimings,
) -> LeaseStep {
    let Some(record) = record else {
        return LeaseStep::Create;
    };
    match record.holder.as_deref() {
        None | Some("") => LeaseStep::Acquire,
        Some(holder) if holder == me => LeaseStep::Renew,
        Some(_) => {
            // The holder's own duration governs, as in client-go; fall back to ours.
            let duration = record
                .duration_secs
                .and_then(|s| u64::try_from(s).ok())
                .map_or(timings.duration, Duration::from_secs);
            if since_change >= duration {
                LeaseStep::Acquire
            } else {
                LeaseStep::Wait
            }
        }
    }
}

/// A leader may act only while its last successful renewal is younger than the renew deadline:
/// the lease it wrote then is valid for `duration`, so it stops well before others may take over.
pub fn may_act(since_renewal: Duration, timings: &LeaseTimings) -> bool {
    since_renewal < timings.renew_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: LeaseTimings = LeaseTimings {
        duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    fn held_by(h: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(h.into()),
            duration_secs: Some(15),
        }
    }

    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "me", Duration::ZERO, &T), LeaseStep::Create);
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("me")), "me", Duration::from_secs(100), &T),
            LeaseStep::Renew
        );
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        let released = LeaseRecord {
            holder: None,
            duration_secs: Some(1),
        };
        assert_eq!(
            decide(Some(&released), "me", Duration::ZERO, &T),
            LeaseStep::Acquire
        );
        let empty = LeaseRecord {
            holder: Some(String::new()),
            duration_secs: Some(1),
        };
        assert_eq!(decide(Some(&empty), "me", Duration::ZERO, &T), LeaseStep::Acquire);
    }

    #[test]
    fn live_lease_of_another_is_respected_until_it_expires() {
        let other = held_by("other");
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(14), &T),
            LeaseStep::Wait
        );
        assert_eq!(
            decide(Some(&other), "me", Duration::from_secs(15), &T),
            LeaseStep::Acquire
        );
    }

    #[test]
    fn holder_duration_governs_expiry() {
        let long = LeaseRecord {
            holder: Some("other".into()),
            duration_secs: Some(60),
        };
        assert_eq!(
            decide(Some(&long), "me", Duration::from_secs(30), &T),
            LeaseStep::Wait
        );
    }

    #[test]
    fn leader_stops_acting_before_its_lease_can_expire() {
        assert!(may_act(Duration::from_secs(9), &T));
        assert!(!may_act(Duration::from_secs(10), &T));
        assert!(T.renew_deadline < T.duration);
    }
}
