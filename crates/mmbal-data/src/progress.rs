//! Progress of the long passes (the input cache build, valuation, evaluation, preprocessing),
//! for whoever shows it. Library code reports through a [`Task`]; a program installs one
//! [`ProgressSink`] ([`set_sink`]), the command line one that draws bars. Without a sink
//! nothing is reported and a `Task` costs a relaxed atomic load.
//!
//! ```
//! use mmbal_data::progress::{task, set_sink, ProgressSink};
//! use std::sync::{Arc, Mutex};
//! #[derive(Default)]
//! struct Count(Mutex<Vec<String>>);
//! impl ProgressSink for Count {
//!     fn start(&self, _id: u64, name: &str, total: usize) {
//!         self.0.lock().unwrap().push(format!("{name} 0/{total}"));
//!     }
//!     fn advance(&self, _id: u64, _n: usize) {}
//!     fn finish(&self, _id: u64) {}
//! }
//! let sink = Arc::new(Count::default());
//! set_sink(Some(sink.clone()));
//! {
//!     let t = task("decoding", 3);
//!     t.advance(3);
//! }
//! set_sink(None);
//! assert_eq!(sink.0.lock().unwrap().as_slice(), ["decoding 0/3"]);
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Receives progress: a task starts with its total, advances, finishes (also when its pass
/// fails). Called from any thread.
pub trait ProgressSink: Send + Sync {
    /// Task `id` named `name` starts, `total` steps long.
    fn start(&self, id: u64, name: &str, total: usize);
    /// Task `id` did `n` more steps.
    fn advance(&self, id: u64, n: usize);
    /// Task `id` is over.
    fn finish(&self, id: u64);
}

static SINK: RwLock<Option<Arc<dyn ProgressSink>>> = RwLock::new(None);
static ACTIVE: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Installs the program's sink (`None`: report nothing).
pub fn set_sink(sink: Option<Arc<dyn ProgressSink>>) {
    ACTIVE.store(sink.is_some(), Ordering::Relaxed);
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

fn sink() -> Option<Arc<dyn ProgressSink>> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    SINK.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A pass being reported; finished when dropped.
pub struct Task {
    id: u64,
    sink: Option<Arc<dyn ProgressSink>>,
}

/// Starts reporting a pass of `total` steps named `name`.
pub fn task(name: &str, total: usize) -> Task {
    let sink = sink();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    if let Some(s) = &sink {
        s.start(id, name, total);
    }
    Task { id, sink }
}

impl Task {
    /// `n` more steps done.
    pub fn advance(&self, n: usize) {
        if let Some(s) = &self.sink {
            s.advance(self.id, n);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(s) = &self.sink {
            s.finish(self.id);
        }
    }
}
