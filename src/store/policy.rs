//! What the store drops to make room, as a pure function over plain data: least recently used
//! ready sets that no client holds, until the new set fits the budget.

/// What the policy needs to know of one set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SetFacts<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its bytes.
    pub bytes: u64,
    /// When it was last attached (a counter; larger is later).
    pub tick: u64,
    /// Ready and held by no client: it may go.
    pub evictable: bool,
}

/// Why a set cannot be made room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shortfall {
    /// The set alone is larger than the budget.
    LargerThanBudget {
        /// Its bytes.
        need: u64,
        /// The budget.
        budget: u64,
    },
    /// Sets that clients hold (or that are being loaded) leave too little.
    Held {
        /// Its bytes.
        need: u64,
        /// The budget.
        budget: u64,
        /// Bytes of sets that cannot go.
        held: u64,
    },
}

/// The sets to drop, oldest first, so that `need` more bytes fit under `budget`; nothing when
/// there is no budget or room already.
pub(crate) fn make_room<'a>(
    sets: &[SetFacts<'a>],
    need: u64,
    budget: Option<u64>,
) -> Result<Vec<&'a str>, Shortfall> {
    let Some(budget) = budget else {
        return Ok(Vec::new());
    };
    if need > budget {
        return Err(Shortfall::LargerThanBudget { need, budget });
    }
    let used: u64 = sets.iter().map(|s| s.bytes).sum();
    let mut over = (used + need).saturating_sub(budget);
    if over == 0 {
        return Ok(Vec::new());
    }
    let mut idle: Vec<&SetFacts<'a>> = sets.iter().filter(|s| s.evictable).collect();
    idle.sort_by_key(|s| (s.tick, s.name));
    let mut out = Vec::new();
    for s in idle {
        if over == 0 {
            break;
        }
        out.push(s.name);
        over = over.saturating_sub(s.bytes);
    }
    if over > 0 {
        let held = sets.iter().filter(|s| !s.evictable).map(|s| s.bytes).sum();
        return Err(Shortfall::Held { need, budget, held });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(v: &[(u64, u64, bool)]) -> Vec<(String, u64, u64, bool)> {
        v.iter()
            .enumerate()
            .map(|(i, &(b, t, e))| (format!("s{i}"), b, t, e))
            .collect()
    }

    #[test]
    fn oldest_idle_sets_go_first_and_held_ones_never() {
        let owned = facts(&[(10, 3, true), (10, 1, true), (10, 0, false), (10, 2, true)]);
        let sets: Vec<SetFacts> = owned
            .iter()
            .map(|(n, b, t, e)| SetFacts {
                name: n,
                bytes: *b,
                tick: *t,
                evictable: *e,
            })
            .collect();
        assert_eq!(make_room(&sets, 15, Some(50)).unwrap(), vec!["s1"]);
        assert_eq!(make_room(&sets, 25, Some(50)).unwrap(), vec!["s1", "s3"]);
        assert_eq!(make_room(&sets, 10, None).unwrap(), Vec::<&str>::new());
        assert_eq!(
            make_room(&sets, 60, Some(50)),
            Err(Shortfall::LargerThanBudget {
                need: 60,
                budget: 50
            })
        );
        assert_eq!(
            make_room(&sets, 45, Some(50)),
            Err(Shortfall::Held {
                need: 45,
                budget: 50,
                held: 10
            })
        );
    }

    proptest! {
        #[test]
        fn what_it_drops_makes_room_and_is_idle(
            v in proptest::collection::vec((1u64..100, 0u64..50, any::<bool>()), 0..12),
            need in 1u64..200,
            budget in 1u64..600,
        ) {
            let owned = facts(&v);
            let sets: Vec<SetFacts> = owned
                .iter()
                .map(|(n, b, t, e)| SetFacts { name: n, bytes: *b, tick: *t, evictable: *e })
                .collect();
            let used: u64 = sets.iter().map(|s| s.bytes).sum();
            match make_room(&sets, need, Some(budget)) {
                Ok(drop) => {
                    let freed: u64 = drop
                        .iter()
                        .map(|n| sets.iter().find(|s| s.name == *n).unwrap())
                        .inspect(|s| assert!(s.evictable))
                        .map(|s| s.bytes)
                        .sum();
                    prop_assert!(used - freed + need <= budget);
                    // Minimal in count along the LRU order: without the last one it would not fit.
                    if let Some(last) = drop.last() {
                        let b = sets.iter().find(|s| s.name == *last).unwrap().bytes;
                        prop_assert!(used - (freed - b) + need > budget);
                    }
                }
                Err(Shortfall::LargerThanBudget { .. }) => prop_assert!(need > budget),
                Err(Shortfall::Held { held, .. }) => {
                    prop_assert!(held + need > budget);
                }
            }
        }
    }
}
