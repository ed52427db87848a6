//! The master's signals, taken the threaded way: blocked in every thread, and waited for by
//! one thread with `sigwait`, which turns each into an [`Event`]. No handler runs at an
//! arbitrary moment, so nothing here has to be async-signal-safe.

use crossbeam_channel::Sender;

use super::Event;

/// The signals the master acts on: SIGINT and SIGTERM drain and stop, SIGHUP replaces the child.
const HANDLED: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The signal set of [`HANDLED`].
fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill a plain-data set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the handled signals in this thread and every thread it starts after. Call it first
/// in `main`, before any thread exists. Children get an empty mask back (see `children`).
pub fn block() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: changes this thread's signal mask; `set` is initialised.
    match unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } {
        0 => Ok(()),
        error => Err(std::io::Error::from_raw_os_error(error)),
    }
}

/// Starts the thread that waits for the handled signals and sends each as an event.
pub fn spawn(events: Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut signal = 0;
                // SAFETY: waits for one of the blocked signals in `set`.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
