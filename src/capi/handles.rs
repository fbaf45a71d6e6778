//! Generation-tagged handle tables for the C ABI's opaque handles (`vramswap_context`,
//! `vramswap_guard`). What C holds is never an address: it is a slot index and the slot's
//! generation packed into a pointer-sized value, so a handle released twice, or used after its
//! release (even once its slot holds a new object), is found stale and answered with a status
//! instead of undefined behaviour. This is what the pointer frees already do with the
//! allocator's own bookkeeping.

use std::sync::{Arc, Mutex, MutexGuard};

struct Slot<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

/// Objects reachable from C by handle; see the module docs.
pub(crate) struct HandleTable<T> {
    inner: Mutex<Slots<T>>,
}

/// A handle's slot and generation: `(index + 1) << 32 | generation`, never 0 (NULL).
fn encode(index: usize, generation: u32) -> usize {
    (((index as u64 + 1) << 32) | u64::from(generation)) as usize
}

fn decode(handle: usize) -> Option<(usize, u32)> {
    let h = handle as u64;
    let index = (h >> 32).checked_sub(1)?;
    Some((usize::try_from(index).ok()?, h as u32))
}

impl<T> HandleTable<T> {
    /// An empty table.
    pub(crate) const fn new() -> Self {
        HandleTable {
            inner: Mutex::new(Slots {
                slots: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // Every update below is a single assignment: a panic elsewhere leaves no torn state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` and returns its handle (never 0).
    pub(crate) fn insert(&self, value: T) -> usize {
        let mut t = self.lock();
        let value = Some(Arc::new(value));
        match t.free.pop() {
            Some(i) => {
                let slot = &mut t.slots[i];
                slot.value = value;
                encode(i, slot.generation)
            }
            None => {
                t.slots.push(Slot {
                    generation: 0,
                    value,
                });
                encode(t.slots.len() - 1, 0)
            }
        }
    }

    /// The live object behind `handle`, or `None` when the handle was never issued or was
    /// released.
    pub(crate) fn get(&self, handle: usize) -> Option<Arc<T>> {
        let (i, generation) = decode(handle)?;
        let t = self.lock();
        let slot = t.slots.get(i)?;
        (slot.generation == generation)
            .then(|| slot.value.clone())
            .flatten()
    }

    /// Takes the object behind `handle` out of the table (it is dropped when the last call
    /// using it returns); `None` when the handle was never issued or was already released.
    pub(crate) fn remove(&self, handle: usize) -> Option<Arc<T>> {
        let (i, generation) = decode(handle)?;
        let mut t = self.lock();
        let slot = t.slots.get_mut(i)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        // A later object in this slot gets a new generation: this handle stays stale.
        slot.generation = slot.generation.wrapping_add(1);
        t.free.push(i);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_handle_stays_stale_when_its_slot_is_reused() {
        let t = HandleTable::new();
        let a = t.insert("a");
        assert_ne!(a, 0);
        assert_eq!(t.get(a).as_deref(), Some(&"a"));
        assert_eq!(t.remove(a).as_deref(), Some(&"a"));
        assert!(t.remove(a).is_none(), "a second release is refused");
        let b = t.insert("b");
        assert_ne!(a, b, "the reused slot has a new generation");
        assert!(t.get(a).is_none() && t.remove(a).is_none());
        assert_eq!(t.get(b).as_deref(), Some(&"b"));
        assert!(t.get(0).is_none() && t.get(12345).is_none() && t.get(usize::MAX).is_none());
    }
}
