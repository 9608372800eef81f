//! A progress spinner on stderr, only when stderr is a terminal (never stdout).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Spins until dropped, then clears its line.
#[derive(Debug)]
pub struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spinner {
    pub fn start(message: &str) -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr()
            .is_terminal()
            .then(|| spawn(message.to_string(), stop.clone()));
        Spinner { stop, thread }
    }
}

fn spawn(message: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        let started = Instant::now();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let secs = started.elapsed().as_secs();
            eprint!("\r{} {message} ({secs}s)", FRAMES[i % FRAMES.len()]);
            let _ = std::io::stderr().flush();
            i += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    })
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `fut` with a spinner showing `message`.
pub async fn with_spinner<T>(message: &str, fut: impl std::future::Future<Output = T>) -> T {
    let _spinner = Spinner::start(message);
    fut.await
}
