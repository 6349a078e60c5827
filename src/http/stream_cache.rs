//! Chunks of SSE text shared by the streams that reach the same position.
//!
//! Streams tailing a topic all stand at the same offsets once they catch up, and a
//! chunk is a function of where it starts: the first stream to reach a position reads
//! and encodes the chunk from there, the others wait for it and send the same bytes (a
//! reference count, no copy). So 100 live tails cost one read and one encoding per
//! chunk, not 100. Bounded: the newest [`STREAM_CACHE_CHUNKS_MAX`] chunks are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::limits::STREAM_CACHE_CHUNKS_MAX;

/// A chunk of SSE text and where the stream goes on after it.
#[derive(Debug)]
pub struct SharedChunk {
    pub text: Bytes,
    pub records: usize,
    pub bytes: usize,
    /// Next offset per partition after this chunk.
    pub next: Vec<i64>,
}

/// Where a chunk starts: topic and every partition's next offset.
type Position = (Arc<str>, Vec<i64>);
type Slot = Arc<OnceCell<Arc<SharedChunk>>>;

#[derive(Default)]
pub struct StreamCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Position, Slot>,
    /// Insertion order, for eviction.
    order: VecDeque<Position>,
}

impl StreamCache {
    /// The chunk starting at `from`: from the cache, or read by `read` (once, however
    /// many streams ask at the same time). Empty chunks are not kept: new appends will
    /// make the next read from the same place longer.
    pub async fn chunk<E>(
        &self,
        topic: &Arc<str>,
        from: &[i64],
        read: impl AsyncFnOnce() -> Result<SharedChunk, E>,
    ) -> Result<Arc<SharedChunk>, E> {
        let position: Position = (Arc::clone(topic), from.to_vec());
        let slot = self.slot(&position);
        let chunk = slot
            .get_or_try_init(|| async { read().await.map(Arc::new) })
            .await?
            .clone();
        if chunk.records == 0 {
            self.forget(&position, &slot);
        }
        Ok(chunk)
    }

    fn slot(&self, position: &Position) -> Slot {
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.slots.get(position) {
            return Arc::clone(slot);
        }
        let slot = Slot::default();
        inner.slots.insert(position.clone(), Arc::clone(&slot));
        inner.order.push_back(position.clone());
        while inner.order.len() > STREAM_CACHE_CHUNKS_MAX {
            if let Some(old) = inner.order.pop_front() {
                inner.slots.remove(&old);
            }
        }
        slot
    }

    fn forget(&self, position: &Position, slot: &Slot) {
        let mut inner = self.inner.lock();
        if inner
            .slots
            .get(position)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            inner.slots.remove(position);
            inner.order.retain(|p| p != position);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn chunk(records: usize, next: i64) -> SharedChunk {
        SharedChunk {
            text: Bytes::from(vec![b'x'; records]),
            records,
            bytes: records,
            next: vec![next],
        }
    }

    #[tokio::test]
    async fn streams_at_the_same_place_share_one_read() {
        let cache = StreamCache::default();
        let topic: Arc<str> = "t".into();
        let reads = AtomicUsize::new(0);
        let read = || async {
            reads.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok::<_, ()>(chunk(3, 3))
        };
        let (a, b) = tokio::join!(
            cache.chunk(&topic, &[0], read),
            cache.chunk(&topic, &[0], read)
        );
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        let other: Arc<str> = "u".into();
        cache.chunk(&other, &[0], read).await.unwrap();
        assert_eq!(
            reads.load(Ordering::Relaxed),
            2,
            "another topic is another place"
        );
    }

    #[tokio::test]
    async fn empty_chunks_and_errors_are_not_kept_and_the_cache_is_bounded() {
        let cache = StreamCache::default();
        let topic: Arc<str> = "t".into();
        let empty = cache.chunk(&topic, &[5], || async { Ok::<_, ()>(chunk(0, 5)) });
        assert_eq!(empty.await.unwrap().records, 0);
        let full = cache.chunk(&topic, &[5], || async { Ok::<_, ()>(chunk(2, 7)) });
        assert_eq!(
            full.await.unwrap().records,
            2,
            "read again after the empty chunk"
        );
        let failed = cache.chunk(&topic, &[9], || async { Err::<SharedChunk, _>("io") });
        assert_eq!(failed.await.unwrap_err(), "io");
        let retried = cache.chunk(&topic, &[9], || async { Ok::<_, &str>(chunk(1, 10)) });
        assert_eq!(retried.await.unwrap().records, 1);
        for i in (0i64..).take(STREAM_CACHE_CHUNKS_MAX + 10) {
            cache
                .chunk(&topic, &[100 + i], || async {
                    Ok::<_, ()>(chunk(1, 101 + i))
                })
                .await
                .unwrap();
        }
        let inner = cache.inner.lock();
        assert_eq!(inner.slots.len(), STREAM_CACHE_CHUNKS_MAX);
        assert_eq!(inner.order.len(), STREAM_CACHE_CHUNKS_MAX);
    }
}
