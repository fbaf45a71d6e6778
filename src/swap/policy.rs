//! Which sets the engine moves, decided by pure functions over plain facts: no backend, no lock,
//! no clock. The engine gathers one [`SetFacts`] per set under its lock, asks, and applies the
//! answer (an offload, a release of a host copy), then asks again with fresh facts, since an
//! offload can fail or change what is eligible. Before, the same choices were written in three
//! places (the eviction loop, a closure in the host-budget retry of loads, the idle thread);
//! here each rule is written once and has property tests.

use std::time::Duration;

/// What the policy needs to know of one set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SetFacts<'a> {
    /// The set's name.
    pub name: &'a str,
    /// When it was last used, on the engine's use counter (larger is more recent).
    pub tick: u64,
    /// How long ago it was last used.
    pub idle_for: Duration,
    /// A guard holds it, or an operation is moving it: it may not be touched.
    pub held: bool,
    /// Device memory backs it now.
    pub resident: bool,
    /// Only a host copy holds it (no device memory).
    pub in_host_only: bool,
    /// Its host copy may be dropped and read again from its file: loaded from a path, never
    /// changed on the device since (not dirty) and no device changes copied into it.
    pub reloadable: bool,
}

impl SetFacts<'_> {
    /// Its device memory may be taken now.
    fn evictable(&self) -> bool {
        !self.held && self.resident
    }
}

/// The least recently used among `candidates`, the earliest name on a tie (the engine's sets
/// are listed in name order, so the choice never depends on hashing).
fn least_recent<'a, 'b>(candidates: impl Iterator<Item = &'b SetFacts<'a>>) -> Option<&'a str>
where
    'a: 'b,
{
    candidates.min_by_key(|s| s.tick).map(|s| s.name)
}

/// The set to offload next to make device room: the least recently used resident set that
/// nothing holds, other than `except` (the set the room is for). `None`: nothing can go.
pub(crate) fn device_victim<'a>(sets: &[SetFacts<'a>], except: &str) -> Option<&'a str> {
    least_recent(sets.iter().filter(|s| s.name != except && s.evictable()))
}

/// The set whose host copy to drop next to make host room for a load: the least recently used
/// reloadable set that nothing holds, among those with no device memory first (dropping them
/// costs nothing now), then among the resident ones (they are offloaded first: clean, so an
/// unmap with no copy). `None`: nothing can go.
pub(crate) fn host_victim<'a>(sets: &[SetFacts<'a>]) -> Option<&'a str> {
    let eligible = |s: &&SetFacts<'a>| s.reloadable && !s.held;
    least_recent(sets.iter().filter(eligible).filter(|s| s.in_host_only))
        .or_else(|| least_recent(sets.iter().filter(eligible).filter(|s| s.resident)))
}

/// The sets to offload for being idle: resident, held by nothing, unused for at least
/// `timeout`. `None` as the timeout takes every evictable set (`offload_idle`).
pub(crate) fn idle_sets<'a>(sets: &[SetFacts<'a>], timeout: Option<Duration>) -> Vec<&'a str> {
    sets.iter()
        .filter(|s| s.evictable() && timeout.is_none_or(|t| s.idle_for >= t))
        .map(|s| s.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random facts for up to 12 sets; names are unique, as in the engine.
    fn facts() -> impl Strategy<Value = Vec<(u64, u64, bool, bool, bool, bool)>> {
        prop::collection::vec(
            (
                0u64..20,
                0u64..100,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
            0..12,
        )
    }

    fn build(
        names: &[String],
        raw: &[(u64, u64, bool, bool, bool, bool)],
    ) -> Vec<SetFacts<'static>> {
        raw.iter()
            .zip(names)
            .map(
                |(&(tick, idle, held, resident, host_only, reloadable), n)| SetFacts {
                    name: Box::leak(n.clone().into_boxed_str()),
                    tick,
                    idle_for: Duration::from_secs(idle),
                    held,
                    resident,
                    // A set is either backed by device memory or, at most, in host memory.
                    in_host_only: host_only && !resident,
                    reloadable,
                },
            )
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i:02}")).collect()
    }

    proptest! {
        #[test]
        fn the_device_victim_is_the_least_recent_evictable_set_but_the_excepted(
            raw in facts(), except in 0usize..12,
        ) {
            let sets = build(&names(raw.len()), &raw);
            let except = format!("s{except:02}");
            let eligible: Vec<_> = sets
                .iter()
                .filter(|s| !s.held && s.resident && s.name != except)
                .collect();
            match device_victim(&sets, &except) {
                None => prop_assert!(eligible.is_empty()),
                Some(v) => {
                    let s = sets.iter().find(|s| s.name == v).unwrap();
                    prop_assert!(!s.held && s.resident && s.name != except);
                    prop_assert!(eligible.iter().all(|o| o.tick >= s.tick));
                }
            }
        }

        #[test]
        fn the_host_victim_is_reloadable_and_free_and_prefers_sets_off_the_device(raw in facts()) {
            let sets = build(&names(raw.len()), &raw);
            let ok = |s: &SetFacts| s.reloadable && !s.held;
            match host_victim(&sets) {
                None => prop_assert!(!sets.iter().any(|s| ok(s) && (s.in_host_only || s.resident))),
                Some(v) => {
                    let s = sets.iter().find(|s| s.name == v).unwrap();
                    prop_assert!(ok(s));
                    let off_device: Vec<_> = sets.iter().filter(|o| ok(o) && o.in_host_only).collect();
                    if off_device.is_empty() {
                        prop_assert!(s.resident);
                        prop_assert!(sets.iter().filter(|o| ok(o) && o.resident).all(|o| o.tick >= s.tick));
                    } else {
                        prop_assert!(s.in_host_only);
                        prop_assert!(off_device.iter().all(|o| o.tick >= s.tick));
                    }
                }
            }
        }

        #[test]
        fn idle_sets_are_exactly_the_free_resident_sets_past_the_timeout(
            raw in facts(), timeout in 0u64..100,
        ) {
            let sets = build(&names(raw.len()), &raw);
            let t = Duration::from_secs(timeout);
            let got = idle_sets(&sets, Some(t));
            let want: Vec<&str> = sets
                .iter()
                .filter(|s| !s.held && s.resident && s.idle_for >= t)
                .map(|s| s.name)
                .collect();
            prop_assert_eq!(got, want);
            let all = idle_sets(&sets, None);
            prop_assert_eq!(all.len(), sets.iter().filter(|s| !s.held && s.resident).count());
        }
    }

    #[test]
    fn ties_go_to_the_earlier_name() {
        let mk = |name: &'static str| SetFacts {
            name,
            tick: 3,
            idle_for: Duration::ZERO,
            held: false,
            resident: true,
            in_host_only: false,
            reloadable: true,
        };
        let sets = [mk("a"), mk("b")];
        assert_eq!(device_victim(&sets, "none"), Some("a"));
        assert_eq!(device_victim(&sets, "a"), Some("b"));
        assert_eq!(host_victim(&sets), Some("a"));
    }
}
