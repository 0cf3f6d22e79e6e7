//! Backend choice: `round_robin` (smooth weighted, as nginx), `least_conn` (fewest requests
//! in flight per unit of weight) and `random_two` (power of two choices, weighted draw).
//! A pick skips backends that are down and those already tried for this request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::config::Algorithm;

use super::Backend;

pub(super) struct Balancer {
    algorithm: Algorithm,
    /// Backend indices in smooth weighted round-robin order, one slot per unit of weight;
    /// rebuilt when a weight changes at runtime (a read lock per pick: uncontended).
    schedule: RwLock<Vec<usize>>,
    next: AtomicUsize,
}

impl Balancer {
    pub(super) fn new(algorithm: Algorithm, weights: &[u32]) -> Self {
        Self {
            algorithm,
            schedule: RwLock::new(smooth_schedule(weights)),
            next: AtomicUsize::new(0),
        }
    }

    pub(super) fn reschedule(&self, weights: &[u32]) {
        let s = smooth_schedule(weights);
        *self.schedule.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// Index of the backend to use, or `None` when every eligible backend is down.
    pub(super) fn pick(
        &self,
        backends: &[Arc<Backend>],
        now_ms: impl Fn() -> u64,
        tried: &[usize],
    ) -> Option<usize> {
        let ok = |i: usize| backends[i].takes_new(&now_ms) && !tried.contains(&i);
        let schedule = self.schedule.read().unwrap_or_else(|p| p.into_inner());
        let schedule = &*schedule;
        let len = schedule.len();
        if len == 0 {
            return None;
        }
        match self.algorithm {
            Algorithm::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| schedule[(start + k) % len])
                    .find(|&i| ok(i))
            }
            Algorithm::LeastConn => {
                // Rotate the start so ties spread instead of piling on the first backend.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = backends.len();
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !ok(i) {
                        continue;
                    }
                    best = match best {
                        Some(b) if !less_loaded(&backends[i], &backends[b]) => Some(b),
                        _ => Some(i),
                    };
                }
                best
            }
            Algorithm::RandomTwo => {
                let a = (0..len)
                    .map(|k| schedule[(fastrand::usize(..len) + k) % len])
                    .find(|&i| ok(i))?;
                let r = fastrand::usize(..len);
                let b = (0..len)
                    .map(|k| schedule[(r + k) % len])
                    .find(|&i| ok(i) && i != a);
                match b {
                    Some(b) if less_loaded(&backends[b], &backends[a]) => Some(b),
                    _ => Some(a),
                }
            }
        }
    }
}

/// `a` has fewer requests in flight per unit of weight than `b`.
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let fa = a.in_flight() as u64 * u64::from(b.weight());
    let fb = b.in_flight() as u64 * u64::from(a.weight());
    fa < fb
}

/// nginx's smooth weighted round robin, unrolled into one cycle: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 2]), vec![1, 0, 1]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }
}
