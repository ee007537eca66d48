//! The kernels' threads: candle's own CPU worker pool ([`candle_core::utils::barrier_pool`]),
//! the one candle's element-wise ops already run on. Its workers spin between ops, so a kernel
//! handed to them starts at once; kernels on a second pool (rayon's, before) fought those
//! spinning workers for the same cores: GRID train step 45 -> 37 ms on 2 cores with candle's
//! spinning cut short, which is what moving the kernels here does without the cut.
//!
//! Work is split into tasks that threads take from a shared counter, so which thread runs a
//! task never changes a result: every kernel's summation order depends on shapes only.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::utils::barrier_pool;

/// Threads a kernel runs on: candle's workers and the calling thread.
pub(crate) fn threads() -> usize {
    barrier_pool().n_workers() + 1
}

/// A pointer the tasks share; each task touches only its own piece.
struct Shared<T>(*mut T);

// Safety: tasks reach disjoint pieces through it (see `for_each_chunk_init`).
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// Through a method, so closures capture the whole `Shared` (a field use would capture
    /// the bare pointer).
    fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Splits `data` into `chunk`-long pieces (the last may be shorter) and runs
/// `f(state, i, piece)` on each, on the pool; a thread makes its `state` with `init` when it
/// takes its first piece (scratch buffers, made once per thread, not per piece).
pub(crate) fn for_each_chunk_init<T: Send, S>(
    data: &mut [T],
    chunk: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let (len, pieces) = (data.len(), data.len().div_ceil(chunk));
    let base = Shared(data.as_mut_ptr());
    // Consecutive pieces per task: about 8 tasks per thread balance the load without a
    // hand-off per tiny piece.
    let group = pieces.div_ceil(8 * threads()).max(1);
    let tasks = pieces.div_ceil(group);
    thread_local_state(tasks, init, |state, t| {
        for i in t * group..((t + 1) * group).min(pieces) {
            let start = i * chunk;
            let n = chunk.min(len - start);
            // Safety: pieces `start..start + n` are disjoint and inside `data`, which stays
            // mutably borrowed until every task has returned.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.ptr().add(start), n) };
            f(state, i, piece);
        }
    });
}

/// [`for_each_chunk_init`] without per-thread state.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    for_each_chunk_init(data, chunk, || (), |_, i, piece| f(i, piece));
}

/// `f(0), .., f(n - 1)` computed on the pool, in index order.
pub(crate) fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for_each_chunk(&mut out, 1, |i, slot| slot[0] = Some(f(i)));
    out.into_iter()
        .map(|r| r.expect("every task ran"))
        .collect()
}

/// Runs `task(state, t)` for `t` in `0..tasks`, each thread with one `state` made by `init`
/// when it takes its first task.
fn thread_local_state<S>(
    tasks: usize,
    init: impl Fn() -> S + Sync,
    task: impl Fn(&mut S, usize) + Sync,
) {
    let threads = threads();
    if tasks <= 1 || threads == 1 {
        let mut state = None;
        for t in 0..tasks {
            task(state.get_or_insert_with(&init), t);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    // One slot per thread; `execute_chunked` runs the slots inline when called from one of
    // the pool's own workers (where `execute` would deadlock), and then the first slot takes
    // every task.
    barrier_pool().execute_chunked(threads, |_| {
        let mut state = None;
        loop {
            let t = next.fetch_add(1, Ordering::Relaxed);
            if t >= tasks {
                break;
            }
            task(state.get_or_insert_with(&init), t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_once_with_its_index() {
        for (len, chunk) in [(0, 3), (1, 3), (10, 3), (1000, 1), (97, 10)] {
            let mut data = vec![0usize; len];
            for_each_chunk(&mut data, chunk, |i, piece| {
                for v in piece.iter_mut() {
                    *v += i + 1;
                }
            });
            let want: Vec<usize> = (0..len).map(|j| j / chunk + 1).collect();
            assert_eq!(data, want, "len {len} chunk {chunk}");
        }
        assert_eq!(map(5, |i| i * i), vec![0, 1, 4, 9, 16]);
    }
}
