//! The server's database pool, watched from outside through its `/metrics` (the gauges
//! `matchchat_db_pool_connections{state}`, `matchchat_db_pool_max_connections` and
//! `matchchat_db_pool_waiting`, read by the server at scrape time).
//!
//! A reading once a minute would miss what matters, so a thread scrapes once a second and
//! keeps, per interval, the largest use and queue it saw and the seconds that looked like the
//! stall issue 11 asks about: callers waiting for a connection while connections sat idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::breakdown::{Scraper, split_sample};

/// One reading, summed over the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub in_use: f64,
    pub idle: f64,
    pub max: f64,
    pub waiting: f64,
}

impl Reading {
    /// Another node's reading added to this one (a cluster's pool is the nodes' sum).
    fn add(&mut self, other: Reading) {
        self.in_use += other.in_use;
        self.idle += other.idle;
        self.max += other.max;
        self.waiting += other.waiting;
    }
}

/// Reads the pool gauges out of one exposition; `None` when it has none of them (a server
/// without the pool metrics).
pub fn reading(text: &str) -> Option<Reading> {
    let mut r = Reading::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        match name {
            "matchchat_db_pool_connections" if labels.contains("state=\"in_use\"") => {
                r.in_use += value;
            }
            "matchchat_db_pool_connections" if labels.contains("state=\"idle\"") => {
                r.idle += value;
            }
            "matchchat_db_pool_max_connections" => r.max += value,
            "matchchat_db_pool_waiting" => r.waiting += value,
            _ => continue,
        }
        found = true;
    }
    found.then_some(r)
}

/// What one interval saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolInterval {
    /// Scrapes that answered.
    pub samples: u64,
    /// Scrapes that failed (the server busy past the 10 s timeout, or gone).
    pub failed: u64,
    pub max_in_use: f64,
    pub max_waiting: f64,
    /// Seconds in which callers waited while connections were idle: the stall's signature.
    pub starved: u64,
    /// The last reading.
    pub last: Option<Reading>,
    /// The first failure's text.
    pub error: Option<String>,
}

impl PoolInterval {
    fn add(&mut self, r: Reading) {
        self.samples += 1;
        self.max_in_use = self.max_in_use.max(r.in_use);
        self.max_waiting = self.max_waiting.max(r.waiting);
        if r.waiting > 0.0 && r.idle > 0.0 {
            self.starved += 1;
        }
        self.last = Some(r);
    }

    /// For the per-minute line.
    pub fn summary(&self) -> String {
        match self.last {
            Some(last) => format!(
                "pool {}/{} max in use {} waiting max {} starved {} s",
                last.in_use, last.max, self.max_in_use, self.max_waiting, self.starved
            ),
            None => format!(
                "pool unread ({})",
                self.error.as_deref().unwrap_or("no sample")
            ),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "samples": self.samples,
            "failed": self.failed,
            "max_in_use": self.max_in_use,
            "max_waiting": self.max_waiting,
            "starved_secs": self.starved,
            "last": self.last.map(|r| json!({
                "in_use": r.in_use, "idle": r.idle, "max": r.max, "waiting": r.waiting,
            })),
            "error": self.error,
        })
    }
}

/// The sampling thread; it stops when dropped.
pub struct PoolWatch {
    current: Arc<Mutex<PoolInterval>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PoolWatch {
    pub fn start(scraper: Scraper) -> Self {
        let current = Arc::new(Mutex::new(PoolInterval::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (current.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            loop {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let result = scraper.texts().map(|texts| {
                    texts
                        .iter()
                        .filter_map(|t| reading(t))
                        .reduce(|mut sum, r| {
                            sum.add(r);
                            sum
                        })
                });
                if let Ok(mut iv) = c.lock() {
                    match result {
                        Ok(Some(r)) => iv.add(r),
                        Ok(None) => {
                            iv.failed += 1;
                            iv.error
                                .get_or_insert_with(|| "no pool gauges in /metrics".to_owned());
                        }
                        Err(e) => {
                            iv.failed += 1;
                            iv.error.get_or_insert(e);
                        }
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Self {
            current,
            stop,
            thread: Some(thread),
        }
    }

    /// What was seen since the last call.
    pub fn take(&self) -> PoolInterval {
        self.current
            .lock()
            .map(|mut iv| std::mem::take(&mut *iv))
            .unwrap_or_default()
    }
}

impl Drop for PoolWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pool_gauges_and_spots_starvation() {
        let text = "# TYPE matchchat_db_pool_connections gauge\n\
            matchchat_db_pool_connections{state=\"in_use\"} 3\n\
            matchchat_db_pool_connections{state=\"idle\"} 13\n\
            matchchat_db_pool_max_connections 16\n\
            matchchat_db_pool_waiting 2\n\
            matchchat_messages_total 5\n";
        let r = reading(text).expect("gauges");
        assert_eq!(
            r,
            Reading {
                in_use: 3.0,
                idle: 13.0,
                max: 16.0,
                waiting: 2.0
            }
        );
        let mut iv = PoolInterval::default();
        iv.add(r);
        iv.add(Reading {
            waiting: 0.0,
            in_use: 16.0,
            idle: 0.0,
            ..r
        });
        assert_eq!((iv.samples, iv.starved), (2, 1));
        assert_eq!((iv.max_in_use, iv.max_waiting), (16.0, 2.0));
        assert!(reading("matchchat_messages_total 5\n").is_none());
    }
}
