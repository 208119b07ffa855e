//! The chat-server nodes of a run (one per `--url`) and which node each connection goes to.
//!
//! With several nodes, the two members of a pair are put on different nodes, so every
//! message the bench sends has to cross from one node to another: member `a` of pair `i`
//! connects to node `i % n` and member `b` to node `(i + 1) % n`. With one node both go to
//! it, as they always did. The service API (rooms, tokens) is only ever asked on the first
//! node.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::conn::Target;

/// The node of member `side` (0 = `a`, 1 = `b`) of pair `pair`, among `nodes` nodes.
pub fn node_of(pair: usize, side: usize, nodes: usize) -> usize {
    if nodes == 0 {
        return 0;
    }
    (pair % nodes + side % 2) % nodes
}

/// The node of connection number `n`, where connection `2 i + side` is member `side` of pair
/// `i` (the order every mode connects in).
pub fn node_of_connection(n: usize, nodes: usize) -> usize {
    node_of(n / 2, n % 2, nodes)
}

/// One node: where it is, and how many connections the bench opened to it (authenticated).
#[derive(Debug)]
pub struct Node {
    pub url: String,
    pub target: Target,
    connected: AtomicU64,
}

/// The nodes of a run, in `--url` order; never empty.
#[derive(Debug)]
pub struct Nodes {
    list: Vec<Node>,
}

impl Nodes {
    /// Parses every `--url`. Fails on none, on a bad one, and on the same node named twice
    /// (its connections would be counted as two nodes').
    pub fn parse(urls: &[String]) -> Result<Self, String> {
        let mut list: Vec<Node> = Vec::with_capacity(urls.len());
        for url in urls {
            let url = url.trim();
            if url.is_empty() {
                return Err("--url: an empty URL in the list".to_owned());
            }
            let target = Target::parse(url)?;
            if let Some(same) = list.iter().find(|n| n.target.addr == target.addr) {
                return Err(format!(
                    "--url {url} names the same node as {} ({}): give each node once",
                    same.url, target.addr
                ));
            }
            list.push(Node {
                url: url.to_owned(),
                target,
                connected: AtomicU64::new(0),
            });
        }
        if list.is_empty() {
            return Err("--url: at least one server URL is needed".to_owned());
        }
        Ok(Self { list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The first node: the one whose service API opens rooms and issues tokens.
    pub fn first(&self) -> &Target {
        &self.list[0].target
    }

    /// The node connection number `n` goes to (see [`node_of_connection`]).
    pub fn of_connection(&self, n: usize) -> (usize, &Target) {
        let i = node_of_connection(n, self.len());
        (i, &self.list[i].target)
    }

    /// Counts one connection opened and authenticated on node `i`.
    pub fn note_connected(&self, i: usize) {
        if let Some(node) = self.list.get(i) {
            node.connected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections opened and authenticated on each node so far, in `--url` order.
    pub fn connected(&self) -> Vec<u64> {
        self.list
            .iter()
            .map(|n| n.connected.load(Ordering::Relaxed))
            .collect()
    }

    pub fn urls(&self) -> Vec<String> {
        self.list.iter().map(|n| n.url.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_takes_everything() {
        for n in 0..10 {
            assert_eq!(node_of_connection(n, 1), 0);
        }
    }

    #[test]
    fn with_two_or_more_nodes_the_members_of_a_pair_are_on_different_nodes() {
        for nodes in 2..6 {
            for pair in 0..20 {
                let a = node_of(pair, 0, nodes);
                let b = node_of(pair, 1, nodes);
                assert_eq!(a, pair % nodes, "pair {pair} of {nodes} nodes");
                assert_eq!(b, (pair + 1) % nodes, "pair {pair} of {nodes} nodes");
                assert_ne!(a, b);
                assert_eq!(node_of_connection(2 * pair, nodes), a);
                assert_eq!(node_of_connection(2 * pair + 1, nodes), b);
            }
        }
    }

    #[test]
    fn connections_spread_evenly() {
        for nodes in 1..6 {
            let mut count = vec![0usize; nodes];
            // Whole rounds of `nodes` pairs put exactly two connections on every node.
            for n in 0..(2 * nodes * 7) {
                count[node_of_connection(n, nodes)] += 1;
            }
            assert!(count.iter().all(|&c| c == 14), "{nodes} nodes: {count:?}");
        }
    }

    #[test]
    fn urls_are_parsed_in_order_and_each_node_only_once() {
        let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let nodes = Nodes::parse(&urls(&["http://127.0.0.1:1001", "http://127.0.0.1:1002/"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes.first().http_base, "http://127.0.0.1:1001");
        assert_eq!(nodes.of_connection(0).0, 0);
        assert_eq!(nodes.of_connection(1).1.http_base, "http://127.0.0.1:1002");
        nodes.note_connected(1);
        nodes.note_connected(7);
        assert_eq!(nodes.connected(), vec![0, 1]);
        assert!(Nodes::parse(&[]).is_err());
        assert!(Nodes::parse(&urls(&["http://127.0.0.1:1001", " "])).is_err());
        assert!(
            Nodes::parse(&urls(&["http://127.0.0.1:1001", "http://127.0.0.1:1001/x"])).is_err()
        );
        assert!(Nodes::parse(&urls(&["ws://127.0.0.1:1001"])).is_err());
    }
}
