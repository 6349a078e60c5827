//! The session engine's key index: key hash -> key id, one cache line per lookup.
//!
//! Open addressing with linear probing over `u64` entries, each the upper 32 bits of
//! the key's hash (a tag) and its id; the lower bits place it. Against a general table
//! (control bytes and values apart) a lookup touches one line, not two, and its place
//! is known from the hash alone, so [`KeyIndex::prefetch`] can ask for it records
//! ahead. The index does not hold the keys: a tag match is confirmed by the caller
//! (`find`'s `is`), and [`KeyIndex::candidate`] skips that for a prefetch. At most half
//! full; removal shifts the entries after it back (no tombstones).

/// No entry. Never a real one: ids are below `u32::MAX`.
const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct KeyIndex {
    entries: Vec<u64>,
    len: usize,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            entries: vec![EMPTY; 16],
            len: 0,
        }
    }
}

fn tag(hash: u64) -> u64 {
    hash >> 32
}

#[allow(clippy::cast_possible_truncation, reason = "the low half is the id")]
fn id_of(entry: u64) -> u32 {
    entry as u32
}

impl KeyIndex {
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low bits place an entry"
    )]
    fn home(&self, hash: u64) -> usize {
        hash as usize & self.mask()
    }

    /// Asks for the line where a lookup of `hash` starts.
    pub(super) fn prefetch(&self, hash: u64) {
        crate::prefetch::prefetch(self.entries.as_ptr().wrapping_add(self.home(hash)));
    }

    /// The id of `hash` for which `is(id)` holds, if any.
    pub(super) fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let mut at = self.home(hash);
        loop {
            let e = self.entries[at];
            if e == EMPTY {
                return None;
            }
            if e >> 32 == tag(hash) && is(id_of(e)) {
                return Some(id_of(e));
            }
            at = (at + 1) & mask;
        }
    }

    /// The first id under `hash`'s tag, unconfirmed: a guess, for a prefetch.
    pub(super) fn candidate(&self, hash: u64) -> Option<u32> {
        self.find(hash, |_| true)
    }

    /// Adds `id` under `hash` (not in the index yet). `hash_of` gives the hash of an id
    /// already in, to place it again when the index grows.
    pub(super) fn insert(&mut self, hash: u64, id: u32, hash_of: impl Fn(u32) -> u64) {
        if (self.len + 1) * 2 > self.entries.len() {
            let grown = vec![EMPTY; self.entries.len() * 2];
            let old = std::mem::replace(&mut self.entries, grown);
            for e in old.into_iter().filter(|e| *e != EMPTY) {
                self.place(hash_of(id_of(e)), e);
            }
        }
        self.place(hash, (tag(hash) << 32) | u64::from(id));
        self.len += 1;
    }

    fn place(&mut self, hash: u64, entry: u64) {
        let mask = self.mask();
        let mut at = self.home(hash);
        while self.entries[at] != EMPTY {
            at = (at + 1) & mask;
        }
        self.entries[at] = entry;
    }

    /// Takes `id`, under `hash`, out. `hash_of` as for [`insert`](Self::insert): the
    /// entries after it move back to where a lookup finds them.
    pub(super) fn remove(&mut self, hash: u64, id: u32, hash_of: impl Fn(u32) -> u64) {
        let mask = self.mask();
        let mut at = self.home(hash);
        loop {
            let e = self.entries[at];
            if e == EMPTY {
                return;
            }
            if id_of(e) == id {
                break;
            }
            at = (at + 1) & mask;
        }
        self.len -= 1;
        // Backward shift: an entry after the hole moves into it unless its home lies
        // cyclically in (hole, its place], where a lookup would not pass the hole.
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        loop {
            let e = self.entries[next];
            if e == EMPTY {
                break;
            }
            let home = self.home(hash_of(id_of(e)));
            let stays = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !stays {
                self.entries[hole] = e;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.entries[hole] = EMPTY;
    }
}

#[cfg(test)]
mod tests {
    use super::KeyIndex;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a map, over inserts and removals whose hashes collide often (few
        /// distinct low bits and tags): every id present is found, no removed one is.
        #[test]
        fn finds_what_a_map_holds(ops in proptest::collection::vec((any::<bool>(), 0u32..200), 1..600)) {
            let hash_of = |id: u32| -> u64 { (u64::from(id % 3) << 32) | (u64::from(id % 5) * 16 + u64::from(id % 7)) };
            let mut index = KeyIndex::default();
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (add, id) in ops {
                let hash = hash_of(id);
                if add && !model.contains_key(&id) {
                    index.insert(hash, id, hash_of);
                    model.insert(id, hash);
                } else if !add && model.remove(&id).is_some() {
                    index.remove(hash, id, hash_of);
                }
                for probe in 0..200 {
                    let found = index.find(hash_of(probe), |i| i == probe);
                    prop_assert_eq!(found.is_some(), model.contains_key(&probe), "id {}", probe);
                }
            }
        }
    }

    #[test]
    fn candidate_is_the_first_id_under_the_tag() {
        let mut index = KeyIndex::default();
        let hash_of = |id: u32| u64::from(id) << 32 | 3;
        index.insert(hash_of(7), 7, hash_of);
        index.insert(hash_of(9), 9, hash_of);
        assert_eq!(index.candidate(hash_of(9)), Some(9));
        assert_eq!(index.candidate(hash_of(8)), None);
    }
}
