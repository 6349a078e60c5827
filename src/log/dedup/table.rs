//! The dedup table's map of id keys to append times: open addressing with linear probing
//! over one flat array of 16-byte slots (key, time), a key of 0 marking an empty slot.
//!
//! Why not a `HashMap`: at `max_dedup_entries` = 1,000,000 the table is ~32 MiB, far
//! beyond the cache, and every appended id costs three lookups (admission, the settle's
//! insert, the eviction of the oldest id). hashbrown keeps its control bytes apart from
//! its entries, so each lookup misses the cache twice; here one slot is one cache line at
//! most, and a lookup's line can be fetched ahead ([`IdTable::prefetch`]) while the
//! previous id is handled, so the misses of a request's ids overlap instead of queueing.
//!
//! Keys are the low 64 bits of an xxh3 hash (see `dedup::key`, which never gives 0): their
//! low bits index the array directly. The load factor stays at most 1/2 (linear probes
//! stay short); the array doubles as the table grows, up to a fixed size, and removal
//! shifts the following probe run back (no tombstones).

/// Slots of an empty table; it doubles from here as ids arrive.
const SLOTS_MIN: usize = 1024;

/// From this size on the slots live in a mapping of their own, backed by 2 MiB pages
/// where the kernel allows (transparent huge pages, `madvise`): a table of a million ids
/// (32 MiB) spans 16 of them instead of 8,192 pages of 4 KiB, so random lookups stop
/// missing the TLB, which in a virtual machine costs a two-level page walk each.
const MAPPED_BYTES_MIN: usize = 2 << 20;

#[derive(Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    key: u64,
    time: i64,
}

pub struct IdTable {
    slots: Slots,
    len: usize,
}

/// The slot array: on the heap while small, else an anonymous mapping advised to use
/// huge pages (see [`MAPPED_BYTES_MIN`]). Zeroed (every slot empty) either way.
enum Slots {
    Heap(Box<[Slot]>),
    Mapped {
        ptr: std::ptr::NonNull<Slot>,
        len: usize,
    },
}

// SAFETY: `Mapped` owns its mapping exclusively, as a `Box` owns its allocation.
unsafe impl Send for Slots {}
// SAFETY: shared access only reads, as for `&[Slot]`.
unsafe impl Sync for Slots {}

impl Slots {
    fn zeroed(len: usize) -> Slots {
        let bytes = len * std::mem::size_of::<Slot>();
        if bytes >= MAPPED_BYTES_MIN {
            // SAFETY: a fresh private anonymous mapping, checked below; the kernel zeroes it.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ptr != libc::MAP_FAILED
                && let Some(ptr) = std::ptr::NonNull::new(ptr.cast::<Slot>())
            {
                // SAFETY: advice on the mapping just made; refused advice changes nothing.
                unsafe { libc::madvise(ptr.as_ptr().cast(), bytes, libc::MADV_HUGEPAGE) };
                return Slots::Mapped { ptr, len };
            }
        }
        Slots::Heap(vec![Slot::default(); len].into_boxed_slice())
    }
}

impl std::ops::Deref for Slots {
    type Target = [Slot];
    fn deref(&self) -> &[Slot] {
        match self {
            Slots::Heap(b) => b,
            // SAFETY: `len` zero-initialised (all-zero is a valid `Slot`), page-aligned
            // slots owned by this value.
            Slots::Mapped { ptr, len } => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), *len) },
        }
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [Slot] {
        match self {
            Slots::Heap(b) => b,
            // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
            Slots::Mapped { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Slots::Mapped { ptr, len } = self {
            // SAFETY: unmaps the mapping `zeroed` made, once; nothing refers to it after.
            unsafe { libc::munmap(ptr.as_ptr().cast(), *len * std::mem::size_of::<Slot>()) };
        }
    }
}

impl Default for IdTable {
    fn default() -> IdTable {
        IdTable::with_slots(SLOTS_MIN)
    }
}

impl IdTable {
    fn with_slots(n: usize) -> IdTable {
        IdTable {
            slots: Slots::zeroed(n),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the low bits index the array"
    )]
    fn home(&self, key: u64) -> usize {
        key as usize & self.mask()
    }

    /// The slot holding `key`, or the empty slot ending its probe run.
    fn find(&self, key: u64) -> (usize, bool) {
        debug_assert_ne!(key, 0, "0 marks an empty slot");
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return (i, true);
            }
            if k == 0 {
                return (i, false);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Asks the CPU to fetch `key`'s home slot into the cache; a later lookup of it then
    /// finds it there. A hint only: it changes no result.
    pub fn prefetch(&self, key: u64) {
        crate::prefetch::prefetch(&raw const self.slots[self.home(key)]);
    }

    pub fn get(&self, key: u64) -> Option<i64> {
        match self.find(key) {
            (i, true) => Some(self.slots[i].time),
            _ => None,
        }
    }

    /// `key`'s time if held; else adds it with `time` (one probe for both).
    pub fn get_or_insert(&mut self, key: u64, time: i64) -> Option<i64> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (i, found) = self.find(key);
        if found {
            return Some(self.slots[i].time);
        }
        self.slots[i] = Slot { key, time };
        self.len += 1;
        None
    }

    /// Sets `key`'s time, adding it if absent.
    pub fn insert(&mut self, key: u64, time: i64) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (i, found) = self.find(key);
        self.slots[i] = Slot { key, time };
        if !found {
            self.len += 1;
        }
    }

    /// Removes `key` if it is held with `time` (not from a later insert); true if removed.
    pub fn remove_if(&mut self, key: u64, time: i64) -> bool {
        let (i, found) = self.find(key);
        if !found || self.slots[i].time != time {
            return false;
        }
        self.remove_at(i);
        true
    }

    /// Empties slot `hole`, then moves back every later slot of the probe run that may
    /// sit earlier: each stays reachable from its home without a tombstone.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.key == 0 {
                break;
            }
            // `s` may fill the hole if its home is not within (hole, j], cyclically.
            let home = self.home(s.key);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }

    /// Makes room for `additional` more keys at once (the rebuild at start knows how many
    /// it loads), instead of doubling through every size on the way.
    pub fn reserve(&mut self, additional: usize) {
        let slots = (self.len + additional)
            .saturating_mul(2)
            .next_power_of_two();
        if slots > self.slots.len() {
            self.rehash_into(slots);
        }
    }

    fn grow(&mut self) {
        self.rehash_into(self.slots.len() * 2);
    }

    fn rehash_into(&mut self, slots: usize) {
        let old = std::mem::replace(self, IdTable::with_slots(slots));
        for s in old.slots.iter().filter(|s| s.key != 0) {
            let (i, _) = self.find(s.key);
            self.slots[i] = *s;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn time(i: usize) -> i64 {
        i64::try_from(i).unwrap()
    }

    /// A small xorshift: keys with many shared low bits and plain random ones.
    fn keys(n: usize, seed: u64) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Every third key collides with others in its low 10 bits: long runs.
                let k = if i % 3 == 0 { (x << 10) | 7 } else { x };
                k.max(1)
            })
            .collect()
    }

    /// Random inserts, re-inserts and removals (matching and stale times) agree with a
    /// `HashMap` at every step, through growth, wrapping runs and backward shifts.
    #[test]
    fn agrees_with_a_hash_map() {
        for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
            let pool = keys(3000, seed);
            let mut t = IdTable::default();
            let mut model: HashMap<u64, i64> = HashMap::new();
            let mut x = seed;
            for step in 0..40_000i64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                #[allow(clippy::cast_possible_truncation, reason = "a test index")]
                let key = pool[(x % pool.len() as u64) as usize];
                match x % 5 {
                    0 | 1 => {
                        t.insert(key, step);
                        model.insert(key, step);
                    }
                    2 => {
                        let held = model.get(&key).copied();
                        let time = if x % 2 == 0 { held.unwrap_or(0) } else { -1 };
                        let want = held == Some(time);
                        assert_eq!(t.remove_if(key, time), want, "step {step}");
                        if want {
                            model.remove(&key);
                        }
                    }
                    3 => {
                        let want = model.get(&key).copied();
                        assert_eq!(t.get_or_insert(key, step), want, "step {step}");
                        model.entry(key).or_insert(step);
                    }
                    _ => assert_eq!(t.get(key), model.get(&key).copied(), "step {step}"),
                }
                assert_eq!(t.len(), model.len());
            }
            for (k, v) in &model {
                assert_eq!(t.get(*k), Some(*v));
                t.prefetch(*k);
            }
            assert!(t.slots.len() >= 2 * t.len());
        }
    }

    /// A table grown past [`MAPPED_BYTES_MIN`] (slots in a mapping of their own) holds
    /// and removes like a small one.
    #[test]
    fn a_large_table_lives_in_a_mapping_and_behaves_alike() {
        let ks = keys(100_000, 7);
        let mut t = IdTable::default();
        for (i, k) in ks.iter().enumerate() {
            t.insert(*k, time(i));
        }
        assert!(matches!(t.slots, Slots::Mapped { .. }));
        let model: HashMap<u64, i64> = ks.iter().enumerate().map(|(i, k)| (*k, time(i))).collect();
        assert_eq!(t.len(), model.len());
        for (k, time) in &model {
            if time % 2 == 0 {
                assert!(t.remove_if(*k, *time));
            }
        }
        for (k, time) in &model {
            let want = (time % 2 == 1).then_some(*time);
            assert_eq!(t.get(*k), want);
        }
    }

    /// A reserve sized for what comes keeps every key it held, and the inserts it was
    /// sized for then never grow the table.
    #[test]
    fn a_reserve_keeps_what_it_held_and_makes_room_once() {
        let ks = keys(50_000, 11);
        let mut t = IdTable::default();
        for (i, k) in ks[..1000].iter().enumerate() {
            t.insert(*k, time(i));
        }
        t.reserve(49_000);
        let slots = t.slots.len();
        assert!(slots >= 2 * 50_000, "{slots} slots");
        for (i, k) in ks.iter().enumerate().skip(1000) {
            t.insert(*k, time(i));
        }
        assert_eq!(t.slots.len(), slots, "an insert grew the reserved table");
        let model: HashMap<u64, i64> = ks.iter().enumerate().map(|(i, k)| (*k, time(i))).collect();
        assert_eq!(t.len(), model.len());
        for (k, time) in &model {
            assert_eq!(t.get(*k), Some(*time));
        }
        // A reserve within the room there is changes nothing.
        t.reserve(10);
        assert_eq!(t.slots.len(), slots);
    }

    /// Runs that wrap past the array's end stay findable after removals at the end.
    #[test]
    fn probe_runs_wrap_around_the_end() {
        let mut t = IdTable::default();
        let last = (SLOTS_MIN - 1) as u64;
        // Five keys whose home is the last slot, then two whose home is slot 0.
        let ks: Vec<u64> = (1..=5)
            .map(|i| (i << 32) | last)
            .chain([1 << 40, 2 << 40])
            .collect();
        for (i, k) in ks.iter().enumerate() {
            t.insert(*k, time(i));
        }
        assert!(t.remove_if(ks[0], 0));
        assert!(t.remove_if(ks[2], 2));
        for (i, k) in ks.iter().enumerate() {
            let want = (i != 0 && i != 2).then_some(time(i));
            assert_eq!(t.get(*k), want, "key {i}");
        }
    }
}
