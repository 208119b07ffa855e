//! Connecting many members at once: a bounded number of connects in flight, each member to
//! its node (see [`crate::nodes`]), source addresses spread over loopback, and a progress
//! line every second.
//!
//! A run cannot measure what it cannot connect, so the message modes fail on any connect
//! error; `connect_all` hands back every result and leaves that call to its caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use crate::conn::{self, Authed};
use crate::nodes::Nodes;
use crate::provision::Pair;

/// One member's connection, ready to run.
pub struct Live {
    pub authed: Authed,
    pub room_idx: usize,
    pub side: usize,
}

/// Connects every token (index, token) to its node (connection `2 i + side` is member `side`
/// of pair `i`: see [`crate::nodes::node_of_connection`]) with at most `concurrency` connects
/// in flight and source addresses spread per `per_source_ip`; counts each authenticated
/// connection on its node. Prints progress to stderr.
pub async fn connect_all(
    nodes: &Arc<Nodes>,
    tokens: Vec<(usize, String)>,
    concurrency: usize,
    per_source_ip: usize,
    label: &str,
) -> Vec<(usize, Result<Authed, String>)> {
    let total = tokens.len();
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut pending: FuturesUnordered<_> = tokens
        .into_iter()
        .map(|(n, token)| {
            let permits = permits.clone();
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let (node, target) = nodes.of_connection(n);
                let opened = conn::open(target, target.source_for(n, per_source_ip), &token).await;
                if opened.is_ok() {
                    nodes.note_connected(node);
                }
                (n, opened)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            next = pending.next() => match next {
                Some(Ok(result)) => out.push(result),
                Some(Err(e)) => out.push((usize::MAX, Err(format!("connect task: {e}")))),
                None => break,
            },
            _ = tick.tick() => {
                eprintln!("[{label}] {:>5.1}s connected {}/{}", started.elapsed().as_secs_f64(), out.len(), total);
            }
        }
    }
    out
}

/// Connects both members of every room. Any failure fails the run (it cannot measure what it
/// cannot connect).
pub async fn connect_pairs(
    nodes: &Arc<Nodes>,
    pairs: &[Pair],
    concurrency: usize,
    per_source_ip: usize,
) -> Result<Vec<Live>, String> {
    let tokens = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            [
                (2 * i, p.members[0].token.clone()),
                (2 * i + 1, p.members[1].token.clone()),
            ]
        })
        .collect();
    let results = connect_all(nodes, tokens, concurrency, per_source_ip, "connect").await;
    let mut live = Vec::with_capacity(results.len());
    for (n, result) in results {
        let authed = result.map_err(|e| format!("connection {n}: {e}"))?;
        live.push(Live {
            authed,
            room_idx: n / 2,
            side: n % 2,
        });
    }
    live.sort_by_key(|l| (l.room_idx, l.side));
    Ok(live)
}
