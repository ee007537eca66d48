//! The kernels' threads: candle's own CPU worker pool ([`candle_core::utils::barrier_pool`]),
//! the one candle's element-wise ops already run on. Its workers spin between ops, so a kernel
//! handed to them starts at once; kernels on a second pool (rayon's, before) fought those
//! spinning workers for the same cores: GRID train step 45 -> 37 ms on 2 cores with candle's
//! spinning cut short, which is what moving the kernels here does without the cut.
//!
//! Work is split into tasks that threads take from a shared counter, so which thread runs a
//! task never changes a result: every kernel's summation order depends on shapes only.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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

thread_local! {
    /// Set while this thread hands tasks to the pool: a kernel reached again from inside one of
    /// its own tasks runs inline (the pool's lock is held; candle marks only its workers).
    static HANDING_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `task(state, t)` for `t` in `0..tasks`, each thread with one `state` made by `init`
/// when it takes its first task. A panicking task stops the others from taking more and is
/// re-raised here once every thread has returned: candle's pool would otherwise re-raise it
/// while holding its lock, poisoning it for every later CPU op of the process.
fn thread_local_state<S>(
    tasks: usize,
    init: impl Fn() -> S + Sync,
    task: impl Fn(&mut S, usize) + Sync,
) {
    let threads = threads();
    if tasks <= 1 || threads == 1 || HANDING_OUT.with(|h| h.get()) {
        let mut state = None;
        for t in 0..tasks {
            task(state.get_or_insert_with(&init), t);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    let panicked: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    HANDING_OUT.with(|h| h.set(true));
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
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                task(state.get_or_insert_with(&init), t)
            }));
            if let Err(payload) = run {
                // No more tasks for anyone; the first panic is the one re-raised.
                next.store(tasks, Ordering::Relaxed);
                panicked.lock().unwrap().get_or_insert(payload);
                break;
            }
        }
    });
    HANDING_OUT.with(|h| h.set(false));
    if let Some(payload) = panicked.into_inner().unwrap() {
        std::panic::resume_unwind(payload);
    }
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

    #[test]
    fn a_panicking_task_is_re_raised_and_the_pool_still_works() {
        let r = std::panic::catch_unwind(|| {
            map(64, |i| {
                assert!(i != 17, "task 17 fails");
                i
            })
        });
        // The task's own panic, not a later symptom of it.
        let payload = r.expect_err("the panic is re-raised");
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("task 17 fails"), "{msg}");
        // The pool (and candle's CPU ops on it) still run afterwards.
        assert_eq!(map(64, |i| i).len(), 64);
        let t = candle_core::Tensor::arange(0f32, 1024., &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            (&t + &t)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            1047552.0
        );
    }

    #[test]
    fn a_kernel_inside_a_kernel_runs_inline() {
        let inner: Vec<usize> = map(8, |i| map(4, |j| i * j).iter().sum());
        assert_eq!(inner, (0..8).map(|i| 6 * i).collect::<Vec<_>>());
    }
}
