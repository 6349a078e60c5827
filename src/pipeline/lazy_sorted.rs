//! A bucket of entries sorted only when first read in order: the session close queue's
//! buckets of end time and the hot view's buckets of start time.
//!
//! Entries come in nearly in order but not quite, many per bucket, and most leave in
//! order from the oldest bucket: appending and sorting a bucket once when it is reached
//! costs far less than an ordered insert per entry. Once sorted (descending, so the
//! smallest leaves from the back) an entry added goes into its place.

/// See the module doc.
#[derive(Debug)]
pub struct LazySorted<T> {
    items: Vec<T>,
    sorted: bool,
}

impl<T> Default for LazySorted<T> {
    fn default() -> LazySorted<T> {
        LazySorted {
            items: Vec::new(),
            sorted: false,
        }
    }
}

impl<T: Ord + Copy> LazySorted<T> {
    pub fn add(&mut self, item: T) {
        if self.sorted {
            let at = self.items.partition_point(|e| *e > item);
            self.items.insert(at, item);
        } else {
            self.items.push(item);
        }
    }

    /// Removes one entry equal to `item`, if held.
    pub fn remove(&mut self, item: T) {
        if self.sorted {
            if let Ok(i) = self.items.binary_search_by(|e| item.cmp(e)) {
                self.items.remove(i);
            }
        } else if let Some(i) = self.items.iter().position(|e| *e == item) {
            self.items.swap_remove(i);
        }
    }

    /// Sorts the entries (descending) if they are not yet, and returns them.
    pub fn sorted(&mut self) -> &[T] {
        if !self.sorted {
            self.items.sort_unstable_by(|a, b| b.cmp(a));
            self.sorted = true;
        }
        &self.items
    }

    /// The entries as they are: descending once sorted, else in no order.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    pub fn is_sorted(&self) -> bool {
        self.sorted
    }

    /// Takes the smallest entry; sorts first if need be.
    pub fn pop(&mut self) -> Option<T> {
        self.sorted();
        self.items.pop()
    }

    /// Keeps the `len` largest entries; sorts first if need be.
    pub fn truncate(&mut self, len: usize) {
        self.sorted();
        self.items.truncate(len);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::LazySorted;

    /// Entries leave smallest first whether they came before the sort or after it, and
    /// a removal finds its entry in either state.
    #[test]
    fn entries_leave_smallest_first_before_and_after_the_sort() {
        let mut b = LazySorted::default();
        for x in [5, 1, 9, 3, 7] {
            b.add(x);
        }
        assert!(!b.is_sorted());
        b.remove(9);
        assert_eq!(b.sorted(), [7, 5, 3, 1]);
        b.add(4);
        b.add(0);
        b.remove(5);
        b.remove(42);
        assert_eq!(b.items(), [7, 4, 3, 1, 0]);
        assert_eq!(b.pop(), Some(0));
        b.truncate(2);
        assert_eq!(b.items(), [7, 4]);
        assert_eq!((b.pop(), b.pop(), b.pop()), (Some(4), Some(7), None));
        assert!(b.is_empty());
    }
}
