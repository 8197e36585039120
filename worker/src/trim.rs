//! Giving memory back once a burst has passed.
//!
//! mimalloc (the binaries' allocator) frees a page only when the thread that owns it calls
//! into the allocator again, does not look at pages it filled whose blocks other threads
//! freed (a loop thread's `Subscribe` strings, freed by the link thread) unless forced, and
//! returns free memory to the OS only on a later allocator call after `purge_delay` (1 s).
//! A worker that goes idle after a burst makes no such call: what the burst allocated and
//! dropped would stay in its RSS for as long as the worker stays idle. So each worker
//! thread, after a second without allocator work following some, collects once with
//! `mi_collect(true)` (frees its empty pages and purges at once); under steady work it does
//! so every [`BUSY_COLLECT_SECS`] instead, leaving mimalloc's own reuse alone in between.
//!
//! Measured (benches/idle-memory.sh 18000, after a burst of 4 x 4 KiB to every connection,
//! worker RSS growth per connection): without collecting, WebSocket 391 B and long-poll
//! 327-454 B; see benches/RESULTS.md for the figures with it.

/// Makes mimalloc (v3, the crate's default) return freed memory to the OS at once instead
/// of after `purge_delay` (1 s): a delayed purge needs a later allocator call, which an
/// idle worker does not make, and a forced collect does not reach every pending one.
/// Measured with the run of benches/idle-memory.sh 18000 poll (4 x 4 KiB burst): 208-316 B
/// per held long-poll after the burst with the delay, 138-154 B without (see
/// benches/RESULTS.md). An operator's own `MIMALLOC_PURGE_DELAY` is left alone.
pub(crate) fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain option value; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
    }
}

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in v2 and v3; the
/// crate does not export it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Longest a busy thread goes without collecting.
const BUSY_COLLECT_SECS: u32 = 10;

/// One thread's collect schedule; [`Trim::second`] is called once a second.
#[derive(Debug, Default)]
pub(crate) struct Trim {
    /// Allocator work since the last collect.
    dirty: bool,
    /// Allocator work since the last [`Trim::second`].
    busy: bool,
    /// Seconds since the work began (while dirty).
    waited: u32,
}

impl Trim {
    /// The thread did allocator work (deliveries, accepts, requests, closes).
    pub fn busy(&mut self) {
        self.dirty = true;
        self.busy = true;
    }

    /// Collects after a quiet second that follows work, or every [`BUSY_COLLECT_SECS`] of
    /// steady work. Returns whether it collected.
    pub fn second(&mut self) -> bool {
        if !self.dirty {
            return false;
        }
        self.waited += 1;
        let quiet = !std::mem::replace(&mut self.busy, false);
        if quiet || self.waited >= BUSY_COLLECT_SECS {
            self.dirty = false;
            self.waited = 0;
            collect();
            return true;
        }
        false
    }
}

/// Frees this thread's empty pages (also those other threads emptied) and returns free
/// memory to the OS now. With another global allocator it only touches mimalloc's own
/// (unused) heap.
fn collect() {
    // SAFETY: mi_collect takes a plain bool and only walks mimalloc's own structures.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_at_once_once_configured() {
        // SAFETY: reads a plain option value.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc v3's default (1000 ms) unless this process configured it already: a
        // wrong option index would read another option's value.
        assert!(matches!(get(), 1000 | 0), "purge_delay reads {}", get());
        configure();
        assert_eq!(get(), 0);
    }

    #[test]
    fn collects_after_a_quiet_second_or_every_few_busy_ones() {
        let mut t = Trim::default();
        assert!(!t.second(), "nothing to collect");
        t.busy();
        assert!(!t.second(), "busy during that second");
        assert!(t.second(), "a quiet second after work");
        assert!(!t.second(), "collected already");
        for s in 1..=BUSY_COLLECT_SECS {
            t.busy();
            assert_eq!(t.second(), s == BUSY_COLLECT_SECS, "second {s}");
        }
    }
}
