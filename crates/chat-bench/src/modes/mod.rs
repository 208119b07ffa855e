//! The four modes.

pub mod connections;
pub mod history;
pub mod latency;
pub mod throughput;

use crate::cli::Common;
use crate::conn::Target;
use crate::procstat::Sample;
use crate::provision::{self, Pair, Service};

/// What every mode gets.
pub struct Ctx {
    pub common: Common,
    pub target: Target,
    /// The open-file soft limit in force.
    pub nofile: u64,
}

impl Ctx {
    pub fn service(&self) -> Result<Service, String> {
        let key = self
            .common
            .service_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .ok_or(
                "--service-key (or CHAT_SERVICE_KEY) is required to open rooms and issue tokens",
            )?;
        Ok(Service::new(
            &self.target.http_base,
            key,
            self.common.provision_threads,
        ))
    }

    pub fn run_id(&self) -> String {
        self.common.run_id.clone().unwrap_or_else(|| {
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            format!("bench-{millis}-{}", std::process::id())
        })
    }

    /// Opens `rooms` rooms with fresh users and their tokens.
    pub fn provision(&self, rooms: usize) -> Result<Vec<Pair>, String> {
        let service = self.service()?;
        provision::pairs(
            &service,
            &self.run_id(),
            rooms,
            self.common.provision_threads,
        )
    }

    pub fn server_sample(&self) -> Option<Sample> {
        self.common.server_pid.map(Sample::of)
    }

    /// Fails early when the sockets would not fit under the open-file limit.
    pub fn check_sockets(&self, sockets: usize) -> Result<(), String> {
        // stdio, the runtime's epoll and eventfd, HTTP clients: keep a margin.
        let needed = sockets as u64 + 64;
        if self.nofile > 0 && needed > self.nofile {
            return Err(format!(
                "{sockets} connections need about {needed} open files but this process may have {} \
                 (raise the hard limit: ulimit -Hn)",
                self.nofile
            ));
        }
        Ok(())
    }
}

/// Both readings of the server, when there is a PID.
pub fn pair_of(a: Option<Sample>, b: Option<Sample>) -> Option<(Sample, Sample)> {
    a.zip(b)
}
