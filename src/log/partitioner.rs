//! Which partition a keyed record goes to: Kafka's default partitioner, bit for bit, so
//! a key lands where a Kafka client would put it.
//!
//! This file owns only the hash and the key-to-partition rule; keyless round-robin and
//! the partition count belong to the topic.

/// Kafka's `Utils.murmur2`: MurmurHash2, 32-bit, seed 0x9747b28c, with Java's `int`
/// arithmetic (wrapping multiply, `>>>` as a logical shift) and its tail handling.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    // Mixing constants of MurmurHash2.
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java computes `seed ^ length` on int: only the low 32 bits of the length count.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "Java's int length; keys are far shorter than 4 GiB anyway"
    )]
    let mut h = SEED ^ data.len() as u32;

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // Java's fall-through switch on length % 4: case 3 also does 2 and 1; the multiply
    // happens only once, after the last byte.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h.cast_signed()
}

/// Kafka's `BuiltInPartitioner.partitionForKey`: `toPositive(murmur2(key)) % partitions`,
/// where `toPositive` masks the sign bit (it is not `abs`).
///
/// # Panics
///
/// If `partitions` is 0: a topic always has at least one partition.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff).cast_unsigned() % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From Apache Kafka's `UtilsTest.testMurmur2`
    /// (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, checked at
    /// commit 1eb7644349cb07139d6a3c1ad1986979647cac99).
    const KAFKA_VECTORS: [(&[u8], i32); 6] = [
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    /// From librdkafka's `unittest_murmur2` (src/rdmurmur2.c, `java_murmur2_results`,
    /// values it states come from the Java client). Kafka's own vectors have no key with
    /// a one-byte tail; these ("kafka", "4", "PreAmble...") and the empty key cover it.
    #[expect(
        clippy::cast_possible_wrap,
        reason = "the C test writes Java ints as hex u32"
    )]
    const LIBRDKAFKA_VECTORS: [(&[u8], i32); 11] = [
        (b"kafka", 0xd067_cf64_u32 as i32),
        (b"giberish123456789", 0x8f55_2b0c_u32 as i32),
        (b"1234", 0x9fc9_7b14_u32 as i32),
        (b"234", 0xe7c0_09ca_u32 as i32),
        (b"34", 0x8739_30da_u32 as i32),
        (b"4", 0x5a4b_5ca1_u32 as i32),
        (
            b"PreAmbleWillBeRemoved,ThePrePartThatIs",
            0x7842_4f1c_u32 as i32,
        ),
        (
            b"reAmbleWillBeRemoved,ThePrePartThatIs",
            0x4a62_b377_u32 as i32,
        ),
        (
            b"eAmbleWillBeRemoved,ThePrePartThatIs",
            0xe0e4_e09e_u32 as i32,
        ),
        (
            b"AmbleWillBeRemoved,ThePrePartThatIs",
            0x62b8_b43f_u32 as i32,
        ),
        (b"", 0x106e_08d9_u32 as i32),
    ];

    #[test]
    fn murmur2_matches_kafka_vectors() {
        for (key, want) in KAFKA_VECTORS.into_iter().chain(LIBRDKAFKA_VECTORS) {
            assert_eq!(murmur2(key), want, "{:?}", String::from_utf8_lossy(key));
        }
    }

    /// Kafka's partitioner tests (DefaultPartitionerTest, BuiltInPartitionerTest) only
    /// assert that a key's partition is stable, with no numeric vectors. These are
    /// Kafka's murmur2 vectors run through `BuiltInPartitioner.partitionForKey`
    /// (`Utils.toPositive(murmur2(key)) % n`) by hand: the sign bit is masked, not
    /// negated, which `abs` would get wrong for every negative hash here.
    #[test]
    fn partition_for_key_masks_the_sign_bit() {
        let cases: [(&[u8], [u32; 5]); 4] = [
            (b"21", [0, 0, 3, 0, 40]),
            (b"foobar", [0, 2, 0, 6, 66]),
            (b"a-little-bit-longer-string", [2, 3, 0, 11, 19]),
            (b"abc", [0, 3, 4, 3, 7]),
        ];
        for (key, want) in cases {
            let got = [3, 4, 7, 12, 100].map(|n| partition_for_key(key, n));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(key));
        }
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_is_a_bug() {
        partition_for_key(b"k", 0);
    }
}
