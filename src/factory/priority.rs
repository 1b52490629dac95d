//! The training pool's threads run at the lowest CPU priority (nice 19, `--training-nice`), so on cores that serving
//! also uses the scheduler runs a runnable serving thread first and training gets what serving
//! leaves (about 1.5% of a contended core under Linux's CFS weights, all of an idle one). What
//! always holds: a training thread that could not be lowered logs it once and trains anyway.

/// The default nice value of training threads (the lowest priority).
pub const TRAINING_NICE: i32 = 19;

/// Sets the calling thread's (a training pool thread's, from its start handler) nice value.
pub fn lower_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions; `setpriority` takes plain integers and, with
        // PRIO_PROCESS and a thread id, changes only that thread's nice value (Linux semantics).
        let rc =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "training thread kept its priority (setpriority failed)"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of the calling thread, field 19 of `/proc/thread-self/stat`.
    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        after_comm.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn pool_threads_are_lowered_and_the_caller_is_not() {
        let before = nice_of_this_thread();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .start_handler(|_| lower_this_thread(TRAINING_NICE))
            .build()
            .unwrap();
        assert_eq!(pool.install(nice_of_this_thread), TRAINING_NICE);
        assert_eq!(nice_of_this_thread(), before);
    }
}
