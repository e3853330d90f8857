//! Device CPU time for `/metrics/resource`, from the executor's trace hooks: the time between
//! the executor starting to poll tasks and going idle again (WFE) is busy time. Interrupt
//! handlers that run while the executor sleeps (UART, timer, USB) are not counted; they are
//! short next to the agent's TLS and JSON work.

use embassy_time::Instant;
use portable_atomic::{AtomicU64, Ordering};

/// When the current busy stretch began (µs since boot), or `u64::MAX` while idle.
static BUSY_SINCE_US: AtomicU64 = AtomicU64::new(u64::MAX);
/// Busy time of finished stretches, in µs.
static BUSY_TOTAL_US: AtomicU64 = AtomicU64::new(0);

/// CPU time, in µs, the executor has spent running tasks since boot.
pub fn busy_us() -> u64 {
    let now = Instant::now().as_micros();
    let running = match BUSY_SINCE_US.load(Ordering::Relaxed) {
        u64::MAX => 0,
        since => now.saturating_sub(since),
    };
    BUSY_TOTAL_US.load(Ordering::Relaxed) + running
}

// The executor calls these (its `trace` feature); only the first two carry information here.

#[unsafe(no_mangle)]
fn _embassy_trace_poll_start(_executor_id: u32) {
    BUSY_SINCE_US.store(Instant::now().as_micros(), Ordering::Relaxed);
}

#[unsafe(no_mangle)]
fn _embassy_trace_executor_idle(_executor_id: u32) {
    let since = BUSY_SINCE_US.swap(u64::MAX, Ordering::Relaxed);
    if since != u64::MAX {
        let took = Instant::now().as_micros().saturating_sub(since);
        BUSY_TOTAL_US.fetch_add(took, Ordering::Relaxed);
    }
}

#[unsafe(no_mangle)]
fn _embassy_trace_task_new(_executor_id: u32, _task_id: u32) {}

#[unsafe(no_mangle)]
fn _embassy_trace_task_end(_executor_id: u32, _task_id: u32) {}

#[unsafe(no_mangle)]
fn _embassy_trace_task_exec_begin(_executor_id: u32, _task_id: u32) {}

#[unsafe(no_mangle)]
fn _embassy_trace_task_exec_end(_executor_id: u32, _task_id: u32) {}

#[unsafe(no_mangle)]
fn _embassy_trace_task_ready_begin(_executor_id: u32, _task_id: u32) {}
