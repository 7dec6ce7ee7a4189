//! A fixed-memory log-scale latency histogram: percentiles without
//! memory that grows with `--frames`.

/// Latency samples in fixed memory: a log-scale histogram with 16
/// sub-buckets per power of two (values within 1/16 of each other share a
/// bucket), so p50/p99 are within about 3% whatever the number of frames.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    pub(super) counts: Vec<u64>,
    pub(super) total: u64,
    pub(super) max: u64,
}

impl LatencyHistogram {
    const SUB_BITS: u32 = 4;
    const SUB: u64 = 1 << Self::SUB_BITS;
    /// Buckets: one per value below `SUB`, then `SUB` per power of two up to 2^63.
    const BUCKETS: usize = ((64 - Self::SUB_BITS + 1) as usize) * Self::SUB as usize;

    pub(crate) fn new() -> Self {
        Self { counts: vec![0; Self::BUCKETS], total: 0, max: 0 }
    }

    fn bucket(v: u64) -> usize {
        if v < Self::SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (e - Self::SUB_BITS)) & (Self::SUB - 1);
        (e - Self::SUB_BITS + 1) as usize * Self::SUB as usize + sub as usize
    }

    /// The smallest value of bucket `i` and its width.
    fn bounds(i: usize) -> (u64, u64) {
        let (b, sub) = ((i as u64) / Self::SUB, (i as u64) % Self::SUB);
        if b == 0 {
            (sub, 1)
        } else {
            ((Self::SUB + sub) << (b - 1), 1 << (b - 1))
        }
    }

    pub(crate) fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.max = 0;
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, at most
    /// the largest sample; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = Self::bounds(i);
                return (low + (width - 1) / 2).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn p50_p99(&self) -> (u64, u64) {
        (self.quantile(0.50), self.quantile(0.99))
    }
}
