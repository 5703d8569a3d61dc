//! Kafka's default key partitioning (Java `Utils.murmur2` and `toPositive(h) % partitions`),
//! so the bridge can name the partition of a key without asking the producer.

/// Java's `org.apache.kafka.common.utils.Utils.murmur2`, bit for bit (seed `0x9747b28c`,
/// little-endian words, same tail handling), returned as Java's signed `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner (and librdkafka's `murmur2_random`) picks for a
/// non-empty key: `(murmur2(key) & 0x7fffffff) % partitions`. `partitions` must be > 0.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_vectors_librdkafka_checks_against_java() {
        // librdkafka src/rdmurmur2.c unittest_murmur2 (expected values computed with Java).
        let pre = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: &[(&str, u32)] = &[
            ("kafka", 0xd067cf64),
            ("giberish123456789", 0x8f552b0c),
            ("1234", 0x9fc97b14),
            ("234", 0xe7c009ca),
            ("34", 0x873930da),
            ("4", 0x5a4b5ca1),
            (pre, 0x78424f1c),
            (&pre[1..], 0x4a62b377),
            (&pre[2..], 0xe0e4e09e),
            (&pre[3..], 0x62b8b43f),
            ("", 0x106e08d9),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), *expected as i32, "key {key:?}");
        }
    }

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // Kafka clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "key {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partition_for_key_is_positive_and_below_the_partition_count() {
        assert_eq!(
            partition_for_key(b"21", 7),
            (-973932308i32 & 0x7fffffff) % 7
        );
        for i in 0..1000 {
            let p = partition_for_key(format!("k{i}").as_bytes(), 5);
            assert!((0..5).contains(&p));
        }
    }
}
