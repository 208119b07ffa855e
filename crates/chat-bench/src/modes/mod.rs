//! The five modes.

pub mod connections;
pub mod history;
pub mod latency;
mod open_loop;
pub mod soak;
pub mod throughput;

use std::sync::Arc;

use crate::breakdown::Scraper;
use crate::cli::Common;
use crate::conn::Target;
use crate::nodes::Nodes;
use crate::procstat::Servers;
use crate::provision::{self, Pair, Service};

/// What every mode gets.
pub struct Ctx {
    pub common: Common,
    /// The servers (`--url`), in order; the first one's service API opens rooms and issues
    /// tokens.
    pub nodes: Arc<Nodes>,
    /// The open-file soft limit in force.
    pub nofile: u64,
}

impl Ctx {
    /// A reader of every node's `/metrics`: on the public ports with the service key, or at
    /// `metrics_urls` (the servers' `CHAT_METRICS_BIND`). Scraped once here, so a server whose
    /// metrics cannot be read is a setup error found before anything is sent.
    pub fn scraper(&self, metrics_urls: &[String]) -> Result<Scraper, String> {
        let bases = self
            .nodes
            .urls()
            .iter()
            .map(|u| Target::parse(u).map(|t| t.http_base))
            .collect::<Result<Vec<_>, _>>()?;
        let scraper = Scraper::new(&bases, self.common.service_key.as_deref(), metrics_urls);
        scraper.scrape()?;
        Ok(scraper)
    }

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
            &self.nodes.first().http_base,
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

    /// Readings of every `--server-pid`, when there is one.
    pub fn server_sample(&self) -> Option<Servers> {
        Servers::of(&self.common.server_pids)
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

/// Both readings of the servers, when there are PIDs.
pub fn pair_of(a: Option<Servers>, b: Option<Servers>) -> Option<(Servers, Servers)> {
    a.zip(b)
}
