//! The room registry: one task that knows which connections belong to which user, and fans
//! committed events out to them.
//!
//! It owns its state alone (no locks): connections talk to it through a cloneable
//! [`RegistryHandle`], and it learns about messages, seen receipts and room changes only from
//! the store's event bus, after they are committed. It never awaits a connection: each
//! connection has a bounded mailbox, filled with `try_send`; a connection whose mailbox is
//! full is too slow to read and is closed (1008 `slow_consumer`) rather than buffered without
//! limit. A frame is serialised once per event and shared by every connection it goes to.
//!
//! A kicked connection keeps its entry, and so its place under the per-user cap, until its
//! guard is dropped, which happens only when its socket is really gone (`ws/outbox.rs`): a
//! client that stops reading cannot open fresh connections beside the stuck ones (issue 8,
//! D2).
//!
//! Its state is rebuildable: it holds only live connections; rooms and members come with
//! each event. If it ever falls behind the bus it closes every connection with 1013 and the
//! clients catch up from the database.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use bytestring::ByteString;
use chat_domain::protocol::{Close, ServerFrame};
use chat_domain::{HistoryPage, Members, Message, Room, RoomId, RoomSummary, Seq, UserId};
use chat_store::{Repository, StoreEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::cluster::notice::members as notice_members;
use crate::cluster::sequencer::{Sequencer, Step};
use crate::cluster::{Incoming, Item};

pub type ConnId = u64;

/// Why the registry closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The mailbox was full: the client does not read fast enough.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The registry lost events; the client must reconnect and catch up.
    Resync,
    /// The user's account was erased (`DELETE /api/users/{id}`).
    AccountDeleted,
}

impl Kick {
    /// How the connection is closed.
    pub fn close(self) -> Close {
        match self {
            Self::SlowConsumer => Close::SlowConsumer,
            Self::Shutdown => Close::ServerShutdown,
            Self::Resync => Close::Resync,
            Self::AccountDeleted => Close::AccountDeleted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("too many connections for this user")]
    TooManyConnections,
    #[error("server is shutting down")]
    ShuttingDown,
}

/// A frame for a connection's mailbox. A message frame names its room and seq, so a
/// connection drops the ones its `ready` already counted (registered, then read its rooms:
/// a commit in between is both in `ready`'s `last_seq` and forwarded live).
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub text: ByteString,
    pub message: Option<Arc<(RoomId, u64)>>,
    /// When it was put in the mailboxes (`None` in tests).
    pub at: Option<std::time::Instant>,
}

/// What a mailbox carries: one shared [`Delivery`] per frame, whatever the number of
/// connections it goes to.
///
/// Why a pointer: tokio's bounded channel allocates its buffer in blocks of 32 slots of the
/// item type, and the first block when the channel is made, so every idle connection holds
/// one. With `Delivery` inline (56 bytes) that block is 1,824 bytes per connection; with an
/// 8-byte `Arc` it is 288. Measured with `chat-bench connections --count 19000`: server RSS
/// per idle connection went from 21.5 to 20.0 KiB. The price is one small allocation per
/// frame fanned out, shared by all its recipients (it was one `Delivery` clone per recipient).
pub type Mail = Arc<Delivery>;

/// What a connection gets when it registers.
pub struct Registration {
    pub id: ConnId,
    /// Frames to write to the socket, in order.
    pub mailbox: mpsc::Receiver<Mail>,
    /// Fires when the registry closes this connection.
    pub kicked: oneshot::Receiver<Kick>,
    /// Deregisters the connection when dropped, however the connection task ends.
    pub guard: RegistrationGuard,
}

struct Conn {
    id: ConnId,
    mailbox: mpsc::Sender<Mail>,
    kick: Option<oneshot::Sender<Kick>>,
    /// Opened with a token that does not hide presence.
    visible: bool,
}

impl Conn {
    /// Kicked connections stay listed (they count against the cap) but get nothing more.
    fn kicked(&self) -> bool {
        self.kick.is_none()
    }

    fn kick(&mut self, why: Kick) {
        if let Some(kick) = self.kick.take() {
            let _ = kick.send(why);
        }
    }
}

/// What the registry hands a new connection: its id, mailbox and kick signal.
type Admission = (ConnId, mpsc::Receiver<Mail>, oneshot::Receiver<Kick>);

enum Command {
    Register {
        user: UserId,
        visible: bool,
        reply: oneshot::Sender<Result<Admission, RegisterError>>,
    },
    /// A frame that is never stored (typing, presence) for some users' connections, here
    /// and on the other nodes.
    Ephemeral {
        users: Vec<UserId>,
        frame: String,
    },
    /// Closes every connection of `user` with 1008 `account_deleted`, on every node.
    EraseUser {
        user: UserId,
    },
    Unregister {
        user: UserId,
        id: ConnId,
    },
    /// A connection's `ready` showed these rooms at these seqs (a cluster node starts
    /// tracking them there).
    Track {
        user: UserId,
        id: ConnId,
        rooms: Vec<(RoomId, Members, u64)>,
    },
    Shutdown,
}

/// A cloneable handle to the registry task.
#[derive(Clone)]
pub struct RegistryHandle {
    commands: mpsc::Sender<Command>,
    connections: watch::Receiver<usize>,
}

pub struct RegistryConfig {
    pub max_connections_per_user: usize,
    pub mailbox_capacity: usize,
    /// For the commit-to-mailbox delay.
    pub clock: Arc<dyn chat_domain::Clock>,
    /// Where a user's presence on this node is reported when it changes: `Some(visible)`
    /// while they have connections here, `None` once the last is gone (`presence.rs`).
    /// `None` when presence is off (`CHAT_PRESENCE=off`): then summaries carry no `peer`.
    pub presence: Option<mpsc::UnboundedSender<(UserId, Option<bool>)>>,
}

/// What a registry of a cluster node needs beyond the local event bus.
pub struct ClusterInputs {
    /// Notices from the other nodes.
    pub incoming: mpsc::Receiver<Incoming>,
    /// Where missing messages are read from.
    pub store: Arc<dyn Repository>,
    /// How often the rooms this node serves are swept for messages whose notice was lost.
    pub sweep_every: Duration,
    /// Where ephemeral frames go to be published for the other nodes.
    pub ephemeral_out: mpsc::Sender<Item>,
}

impl RegistryHandle {
    /// Starts the registry task, fed by `events` (a subscription to the store's bus).
    pub fn spawn(
        config: RegistryConfig,
        events: broadcast::Receiver<Arc<StoreEvent>>,
        cluster: Option<ClusterInputs>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, rx) = mpsc::channel(4096);
        let (count_tx, connections) = watch::channel(0usize);
        let registry = Registry {
            config,
            users: HashMap::new(),
            next_id: 1,
            shutting_down: false,
            count: count_tx,
            cluster: None,
            warming: HashMap::new(),
            ephemeral_out: None,
        };
        let task = tokio::spawn(registry.run(rx, events, cluster));
        (
            Self {
                commands,
                connections,
            },
            task,
        )
    }

    /// Registers a connection of `user`; `visible` is false when its token hides presence.
    pub async fn register(
        &self,
        user: UserId,
        visible: bool,
    ) -> Result<Registration, RegisterError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Register {
                user: user.clone(),
                visible,
                reply,
            })
            .await
            .map_err(|_| RegisterError::ShuttingDown)?;
        let (id, mailbox, kicked) = answer.await.map_err(|_| RegisterError::ShuttingDown)??;
        Ok(Registration {
            id,
            mailbox,
            kicked,
            guard: RegistrationGuard {
                user,
                id,
                commands: self.commands.clone(),
            },
        })
    }

    /// Tells a cluster node's registry which rooms a new connection saw at which seq (a
    /// single node ignores it).
    pub async fn track(&self, user: UserId, id: ConnId, rooms: Vec<(RoomId, Members, u64)>) {
        let _ = self.commands.send(Command::Track { user, id, rooms }).await;
    }

    /// Delivers a frame that is never stored to every connection of `users`, on this node
    /// and (through the cluster bus) on the others.
    pub async fn ephemeral(&self, users: Vec<UserId>, frame: String) {
        let _ = self
            .commands
            .send(Command::Ephemeral { users, frame })
            .await;
    }

    /// Closes every connection of an erased user (1008 `account_deleted`), here and on the
    /// other nodes.
    pub async fn erase_user(&self, user: UserId) {
        let _ = self.commands.send(Command::EraseUser { user }).await;
    }

    /// Closes every connection with 1001 and refuses new ones.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }

    /// Waits until no connection is registered, or `timeout` passes. Returns how many remain.
    pub async fn drained(&self, timeout: std::time::Duration) -> usize {
        let mut count = self.connections.clone();
        let _ = tokio::time::timeout(timeout, count.wait_for(|n| *n == 0)).await;
        *count.borrow()
    }
}

/// Deregisters a connection on drop.
pub struct RegistrationGuard {
    user: UserId,
    id: ConnId,
    commands: mpsc::Sender<Command>,
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let command = Command::Unregister {
            user: self.user.clone(),
            id: self.id,
        };
        if let Err(mpsc::error::TrySendError::Full(command)) = self.commands.try_send(command) {
            // Rare: the registry is busy. Hand the message to a task rather than block a drop.
            // If even that fails, the registry still drops the entry at its next failed send.
            let commands = self.commands.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
        }
    }
}

struct Registry {
    config: RegistryConfig,
    users: HashMap<UserId, Vec<Conn>>,
    next_id: ConnId,
    shutting_down: bool,
    count: watch::Sender<usize>,
    /// Set on a cluster node: per-room order across nodes.
    cluster: Option<Cluster>,
    /// Connections registered whose `ready` has not been tracked yet, by user: while one
    /// is, an event of a room of theirs that is not tracked is left to the `Track` and the
    /// sweep, so the room's cursor starts where that `ready` said, not at the event.
    warming: HashMap<UserId, Vec<ConnId>>,
    /// Where ephemeral frames go for the other nodes (a cluster node only).
    ephemeral_out: Option<mpsc::Sender<Item>>,
}

/// A cluster node's registry state: the sequencer, and the tasks it starts.
struct Cluster {
    sequencer: Sequencer,
    store: Arc<dyn Repository>,
    fetched: mpsc::Sender<(RoomId, Option<Vec<Message>>)>,
    swept: mpsc::Sender<Option<Vec<(RoomId, Seq)>>>,
    sweeping: bool,
}

impl Registry {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: broadcast::Receiver<Arc<StoreEvent>>,
        cluster: Option<ClusterInputs>,
    ) {
        let (fetched_tx, mut fetched) = mpsc::channel(1024);
        let (swept_tx, mut swept) = mpsc::channel(4);
        let (mut incoming, sweep_every) = match cluster {
            Some(inputs) => {
                self.ephemeral_out = Some(inputs.ephemeral_out);
                self.cluster = Some(Cluster {
                    sequencer: Sequencer::default(),
                    store: inputs.store,
                    fetched: fetched_tx,
                    swept: swept_tx,
                    sweeping: false,
                });
                (Some(inputs.incoming), inputs.sweep_every)
            }
            None => (None, Duration::from_secs(3600)),
        };
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clustered = incoming.is_some();
        let mut events_open = true;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                event = events.recv(), if events_open => match event {
                    Ok(event) => self.fan_out(&event),
                    Err(broadcast::error::RecvError::Lagged(lost)) => {
                        tracing::error!(lost, "registry fell behind the event bus; closing connections so clients resync");
                        self.kick_all(Kick::Resync);
                    }
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                Some(notice) = recv_incoming(&mut incoming), if clustered => match notice {
                    Incoming::Notice(notice) => {
                        metrics::counter!(crate::metrics::BUS_NOTICES_RECEIVED).increment(1);
                        for item in notice.items {
                            self.remote(item);
                        }
                    }
                    Incoming::Reconnected => {
                        metrics::counter!(crate::metrics::BUS_RECONNECTS).increment(1);
                        tracing::info!("cluster bus reconnected; sweeping for messages announced meanwhile");
                        self.start_sweep();
                    }
                },
                Some((room, messages)) = fetched.recv(), if clustered => {
                    let steps = self.sequencer().map(|s| s.fetched(&room, messages)).unwrap_or_default();
                    self.carry_out(steps);
                }
                Some(result) = swept.recv(), if clustered => {
                    if let Some(cluster) = self.cluster.as_mut() {
                        cluster.sweeping = false;
                    }
                    let steps = match (result, self.sequencer()) {
                        (Some(last_seqs), Some(sequencer)) => sequencer.swept(last_seqs),
                        _ => Vec::new(),
                    };
                    self.carry_out(steps);
                }
                _ = sweep.tick(), if clustered => self.start_sweep(),
            }
        }
    }

    fn sequencer(&mut self) -> Option<&mut Sequencer> {
        self.cluster.as_mut().map(|c| &mut c.sequencer)
    }

    /// True when a member of the room has a connection here.
    fn serves(&self, members: &Members) -> bool {
        members
            .as_slice()
            .iter()
            .any(|m| self.users.contains_key(m))
    }

    /// True when an event of this room may start or move its cursor: a member's connection
    /// is here, and none of them is between registering and tracking its `ready`.
    fn sequences(&self, room: &RoomId, members: &Members) -> bool {
        if !self.serves(members) {
            return false;
        }
        let tracked = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.sequencer.tracks(room));
        tracked
            || !members
                .as_slice()
                .iter()
                .any(|m| self.warming.get(m).is_some_and(|w| !w.is_empty()))
    }

    /// An event another node committed.
    fn remote(&mut self, item: Item) {
        match item {
            Item::Messages {
                room,
                members,
                first,
                last,
                messages,
            } => {
                let Some(members) = notice_members(&members) else {
                    return;
                };
                if !self.sequences(&room, &members) {
                    return;
                }
                if let Some(first) = messages.first() {
                    let lag = crate::metrics::seconds_since(first.sent_at, self.config.clock.now());
                    metrics::histogram!(crate::metrics::BUS_LAG_SECONDS).record(lag);
                }
                let steps = self
                    .sequencer()
                    .map(|s| s.announced(room, members, (first.get(), last.get()), messages))
                    .unwrap_or_default();
                self.carry_out(steps);
            }
            Item::Seen {
                room,
                members,
                reader,
                up_to,
                at,
            } => {
                let frame = ServerFrame::Seen {
                    room_id: room,
                    reader_id: reader,
                    up_to_seq: up_to,
                    seen_at: at,
                };
                self.deliver(&members, &frame);
            }
            Item::RoomOpened {
                room,
                members,
                created_at,
                presence,
            } => {
                if let Some(members) = notice_members(&members) {
                    let room = Room {
                        id: room,
                        members,
                        created_at,
                        closed_at: None,
                    };
                    self.room_opened(&room, &presence);
                }
            }
            Item::Delivered {
                room,
                members,
                reader,
                up_to,
                at,
            } => {
                let frame = ServerFrame::Delivered {
                    room_id: room,
                    reader_id: reader,
                    up_to_seq: up_to,
                    delivered_at: at,
                };
                self.deliver(&members, &frame);
            }
            Item::Deleted {
                room,
                members,
                seq,
                at,
            } => {
                let frame = ServerFrame::MessageDeleted {
                    room_id: room,
                    seq,
                    deleted_at: at,
                };
                self.deliver(&members, &frame);
            }
            Item::RoomClosed { room, members, .. } => {
                self.deliver(&members, &ServerFrame::RoomClosed { room_id: room });
            }
            Item::Erased { user } => self.kick_user(&user, Kick::AccountDeleted),
            Item::Ephemeral { users, frame } => self.deliver_text(
                &users,
                "ephemeral",
                Delivery {
                    text: ByteString::from(frame),
                    message: None,
                    at: Some(std::time::Instant::now()),
                },
            ),
        }
    }

    /// Carries out the sequencer's steps: forwards messages, starts reads.
    fn carry_out(&mut self, steps: Vec<Step>) {
        for step in steps {
            match step {
                Step::Deliver(members, message) => {
                    let frame = ServerFrame::Message {
                        room_id: message.room_id.clone(),
                        message,
                    };
                    self.deliver(members.as_slice(), &frame);
                }
                Step::Fetch {
                    room,
                    reader,
                    after,
                } => {
                    let Some(cluster) = self.cluster.as_ref() else {
                        continue;
                    };
                    let (store, fetched) = (cluster.store.clone(), cluster.fetched.clone());
                    tokio::spawn(async move {
                        let page = HistoryPage::from_cursors(None, Some(after), None);
                        let messages = match page {
                            Ok(page) => store.history(&room, &reader, page).await,
                            Err(rule) => Err(chat_store::StoreError::Rule(rule)),
                        };
                        let messages = messages
                            .inspect_err(|error| tracing::warn!(room = %room, %error, "reading announced messages failed; the sweep retries"))
                            .ok();
                        let _ = fetched.send((room, messages)).await;
                    });
                }
            }
        }
    }

    /// Reads `last_seq` of every room this node serves, off the registry task.
    fn start_sweep(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if cluster.sweeping {
            return;
        }
        let rooms = cluster.sequencer.rooms();
        if rooms.is_empty() {
            return;
        }
        cluster.sweeping = true;
        let (store, swept) = (cluster.store.clone(), cluster.swept.clone());
        tokio::spawn(async move {
            let result = store
                .last_seqs(&rooms)
                .await
                .inspect_err(|error| tracing::warn!(%error, "cluster sweep failed"))
                .ok();
            let _ = swept.send(result).await;
        });
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Register {
                user,
                visible,
                reply,
            } => {
                let before = self.presence_here(&user);
                let result = self.register(&user, visible);
                self.report_presence(&user, before);
                if let Err(error) = &result {
                    tracing::info!(user = %user, %error, "connection refused");
                }
                let _ = reply.send(result);
            }
            Command::Unregister { user, id } => {
                let before = self.presence_here(&user);
                self.stop_warming(&user, id);
                if let Some(conns) = self.users.get_mut(&user) {
                    conns.retain(|c| c.id != id);
                    if conns.is_empty() {
                        self.users.remove(&user);
                        let users = &self.users;
                        if let Some(cluster) = self.cluster.as_mut() {
                            cluster.sequencer.retain(|u| users.contains_key(u));
                        }
                    }
                }
                self.report_presence(&user, before);
                self.publish_count();
            }
            Command::EraseUser { user } => {
                if let Some(out) = &self.ephemeral_out
                    && out.try_send(Item::Erased { user: user.clone() }).is_err()
                {
                    tracing::warn!(user = %user, "cluster publisher busy; the erased user's connections on other nodes stay until they reconnect");
                }
                self.kick_user(&user, Kick::AccountDeleted);
            }
            Command::Ephemeral { users, frame } => {
                let kind = "ephemeral";
                if let Some(out) = &self.ephemeral_out {
                    let item = Item::Ephemeral {
                        users: users.clone(),
                        frame: frame.clone(),
                    };
                    if out.try_send(item).is_err() {
                        tracing::debug!("cluster publisher busy; an ephemeral frame stays local");
                    }
                }
                self.deliver_text(
                    &users,
                    kind,
                    Delivery {
                        text: ByteString::from(frame),
                        message: None,
                        at: Some(std::time::Instant::now()),
                    },
                );
            }
            Command::Track { user, id, rooms } => {
                if let Some(sequencer) = self.sequencer() {
                    for (room, members, last_seq) in rooms {
                        sequencer.snapshot(room, members, last_seq);
                    }
                }
                self.stop_warming(&user, id);
            }
            Command::Shutdown => {
                self.shutting_down = true;
                self.kick_all(Kick::Shutdown);
            }
        }
    }

    /// `user`'s presence on this node: `None` without connections, else whether one of them
    /// shows presence.
    fn presence_here(&self, user: &UserId) -> Option<bool> {
        self.users
            .get(user)
            .filter(|conns| !conns.is_empty())
            .map(|conns| conns.iter().any(|c| c.visible))
    }

    /// Tells the presence service when `user`'s presence here changed from `before`.
    fn report_presence(&self, user: &UserId, before: Option<bool>) {
        let now = self.presence_here(user);
        if now != before
            && let Some(presence) = &self.config.presence
        {
            let _ = presence.send((user.clone(), now));
        }
    }

    fn register(&mut self, user: &UserId, visible: bool) -> Result<Admission, RegisterError> {
        if self.shutting_down {
            return Err(RegisterError::ShuttingDown);
        }
        // Room for one: most users have one connection, and `push` on an empty Vec would
        // make room for four (160 bytes instead of 40, for every connected user).
        let conns = self
            .users
            .entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        if conns.len() >= self.config.max_connections_per_user {
            return Err(RegisterError::TooManyConnections);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (mailbox, rx) = mpsc::channel(self.config.mailbox_capacity.max(1));
        let (kick, kicked) = oneshot::channel();
        conns.push(Conn {
            id,
            mailbox,
            kick: Some(kick),
            visible,
        });
        if self.cluster.is_some() {
            self.warming.entry(user.clone()).or_default().push(id);
        }
        self.publish_count();
        Ok((id, rx, kicked))
    }

    fn stop_warming(&mut self, user: &UserId, id: ConnId) {
        if let Some(ids) = self.warming.get_mut(user) {
            ids.retain(|&w| w != id);
            if ids.is_empty() {
                self.warming.remove(user);
            }
        }
    }

    fn publish_count(&self) {
        let n: usize = self.users.values().map(Vec::len).sum();
        metrics::gauge!(crate::metrics::CONNECTIONS).set(n as f64);
        self.count.send_replace(n);
    }

    fn kick_user(&mut self, user: &UserId, why: Kick) {
        if let Some(conns) = self.users.get_mut(user) {
            tracing::info!(user = %user, connections = conns.len(), ?why, "closing the user's connections");
            for conn in conns.iter_mut() {
                conn.kick(why);
            }
        }
    }

    fn kick_all(&mut self, why: Kick) {
        for conns in self.users.values_mut() {
            for conn in conns.iter_mut() {
                conn.kick(why);
            }
        }
    }

    fn fan_out(&mut self, event: &StoreEvent) {
        match event {
            StoreEvent::MessageCommitted { members, message } => {
                if self.cluster.is_some() {
                    // Through the sequencer: it must not overtake another node's commit.
                    if self.sequences(&message.room_id, members) {
                        let steps = self
                            .sequencer()
                            .map(|s| s.committed(members.clone(), message.clone()))
                            .unwrap_or_default();
                        self.carry_out(steps);
                    }
                    return;
                }
                let frame = ServerFrame::Message {
                    room_id: message.room_id.clone(),
                    message: message.clone(),
                };
                self.deliver(members.as_slice(), &frame);
            }
            StoreEvent::SeenMarked {
                room_id,
                members,
                reader,
                up_to,
                seen_at,
            } => {
                let frame = ServerFrame::Seen {
                    room_id: room_id.clone(),
                    reader_id: reader.clone(),
                    up_to_seq: *up_to,
                    seen_at: *seen_at,
                };
                self.deliver(members.as_slice(), &frame);
            }
            StoreEvent::RoomOpened { room, presence } => self.room_opened(room, presence),
            StoreEvent::DeliveredMarked {
                room_id,
                members,
                reader,
                up_to,
                delivered_at,
            } => {
                let frame = ServerFrame::Delivered {
                    room_id: room_id.clone(),
                    reader_id: reader.clone(),
                    up_to_seq: *up_to,
                    delivered_at: *delivered_at,
                };
                self.deliver(members.as_slice(), &frame);
            }
            StoreEvent::MessageDeleted {
                room_id,
                members,
                seq,
                deleted_at,
            } => {
                let frame = ServerFrame::MessageDeleted {
                    room_id: room_id.clone(),
                    seq: *seq,
                    deleted_at: *deleted_at,
                };
                self.deliver(members.as_slice(), &frame);
            }
            StoreEvent::RoomClosed { room } => {
                let frame = ServerFrame::RoomClosed {
                    room_id: room.id.clone(),
                };
                self.deliver(room.members.as_slice(), &frame);
            }
        }
    }

    /// A new room: each member's `room_opened` shows the other member's presence (when
    /// presence is on), so the two frames differ.
    fn room_opened(&mut self, room: &Room, presence: &[(UserId, chat_domain::Presence)]) {
        if self.serves(&room.members)
            && let Some(sequencer) = self.sequencer()
        {
            sequencer.snapshot(room.id.clone(), room.members.clone(), 0);
        }
        for member in room.members.as_slice() {
            let mut summary = RoomSummary::new(room, None, 0);
            if self.config.presence.is_some()
                && let Ok(peer) = room.members.other(member)
            {
                let shown = presence
                    .iter()
                    .find(|(user, _)| user == peer)
                    .map(|(_, p)| *p)
                    .unwrap_or_default();
                summary.peer = Some(shown);
            }
            let frame = ServerFrame::RoomOpened { room: summary };
            self.deliver(std::slice::from_ref(member), &frame);
        }
    }

    fn deliver(&mut self, users: &[UserId], frame: &ServerFrame) {
        if users.iter().any(|u| self.users.contains_key(u)) {
            let message = match frame {
                ServerFrame::Message { message, .. } => {
                    let delay =
                        crate::metrics::seconds_since(message.sent_at, self.config.clock.now());
                    metrics::histogram!(crate::metrics::COMMIT_TO_MAILBOX_SECONDS).record(delay);
                    Some(Arc::new((message.room_id.clone(), message.seq.get())))
                }
                _ => None,
            };
            self.deliver_text(
                users,
                frame.kind(),
                Delivery {
                    text: ByteString::from(frame.to_json()),
                    message,
                    at: Some(std::time::Instant::now()),
                },
            );
        }
    }

    /// Sends a serialised frame to every live connection of `users`.
    fn deliver_text(&mut self, users: &[UserId], kind: &'static str, delivery: Delivery) {
        let mut delivered = 0u64;
        let delivery: Mail = Arc::new(delivery);
        for user in users {
            let Some(conns) = self.users.get_mut(user) else {
                continue;
            };
            for conn in conns.iter_mut().filter(|c| !c.kicked()) {
                match conn.mailbox.try_send(Arc::clone(&delivery)) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(user = %user, conn = conn.id, "mailbox full; closing slow connection");
                        metrics::counter!(crate::metrics::SLOW_CONSUMER_CLOSES, "cause" => "mailbox")
                            .increment(1);
                        conn.kick(Kick::SlowConsumer);
                    }
                    // The task has ended; the entry goes when its socket does.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        metrics::counter!(crate::metrics::FRAMES_OUT, "type" => kind).increment(delivered);
    }
}

/// The next notice from the cluster bus; pending for ever on a single node.
async fn recv_incoming(incoming: &mut Option<mpsc::Receiver<Incoming>>) -> Option<Incoming> {
    match incoming {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_domain::{Body, ClientMsgId, Members, Message, Room, RoomId, Seq, Timestamp};
    use chat_store::EventBus;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn message_event(seq: u64) -> StoreEvent {
        let members = Members::new(user("alice"), user("bob")).unwrap();
        let message = Message {
            room_id: RoomId::new("r1").unwrap(),
            seq: Seq::new(seq).unwrap(),
            sender_id: user("alice"),
            body: Some(Body::new("hi").unwrap()),
            sent_at: Timestamp::from_unix_micros(1).unwrap(),
            seen_at: None,
            client_msg_id: ClientMsgId::new(format!("c{seq}")).unwrap(),
            deleted_at: None,
        };
        StoreEvent::MessageCommitted { members, message }
    }

    fn start(max: usize, mailbox: usize) -> (RegistryHandle, EventBus) {
        let bus = EventBus::new(64);
        let (handle, _task) = RegistryHandle::spawn(
            RegistryConfig {
                max_connections_per_user: max,
                mailbox_capacity: mailbox,
                clock: Arc::new(chat_domain::FixedClock(
                    Timestamp::from_unix_micros(0).unwrap(),
                )),
                presence: None,
            },
            bus.subscribe(),
            None,
        );
        (handle, bus)
    }

    #[tokio::test]
    async fn fans_out_to_every_connection_of_both_members_only() {
        let (registry, bus) = start(4, 8);
        let mut alice1 = registry.register(user("alice"), true).await.unwrap();
        let mut alice2 = registry.register(user("alice"), true).await.unwrap();
        let mut bob = registry.register(user("bob"), true).await.unwrap();
        let mut carol = registry.register(user("carol"), true).await.unwrap();
        bus.publish(message_event(1));
        for conn in [&mut alice1, &mut alice2, &mut bob] {
            let frame = conn.mailbox.recv().await.unwrap_or_default().text.clone();
            assert!(frame.contains(r#""seq":1"#), "{frame}");
        }
        // Carol is not a member: the next thing she gets is an event of her own.
        let carol_room = Room {
            id: RoomId::new("r2").unwrap(),
            members: Members::new(user("carol"), user("dave")).unwrap(),
            created_at: Timestamp::from_unix_micros(0).unwrap(),
            closed_at: None,
        };
        bus.publish(StoreEvent::RoomClosed { room: carol_room });
        let frame = carol.mailbox.recv().await.unwrap_or_default().text.clone();
        assert_eq!(frame, r#"{"type":"room_closed","room_id":"r2"}"#);
    }

    #[tokio::test]
    async fn a_connection_that_does_not_read_is_kicked_not_buffered() {
        let (registry, bus) = start(4, 2);
        let slow = registry.register(user("bob"), true).await.unwrap();
        let mut fast = registry.register(user("alice"), true).await.unwrap();
        for seq in 1..=3 {
            bus.publish(message_event(seq));
            // Alice reads; her mailbox never fills.
            let frame = fast.mailbox.recv().await.unwrap_or_default().text.clone();
            assert!(frame.contains(&format!(r#""seq":{seq}"#)));
        }
        assert_eq!(slow.kicked.await.ok(), Some(Kick::SlowConsumer));
        assert_eq!(Kick::SlowConsumer.close().code(), 1008);
    }

    #[tokio::test]
    async fn caps_connections_per_user_and_frees_a_slot_on_drop() {
        let (registry, _bus) = start(2, 8);
        let first = registry.register(user("alice"), true).await.unwrap();
        let _second = registry.register(user("alice"), true).await.unwrap();
        assert_eq!(
            registry.register(user("alice"), true).await.err(),
            Some(RegisterError::TooManyConnections)
        );
        assert!(
            registry.register(user("bob"), true).await.is_ok(),
            "the cap is per user"
        );
        drop(first);
        assert!(
            registry.register(user("alice"), true).await.is_ok(),
            "the guard deregistered on drop"
        );
    }

    #[tokio::test]
    async fn a_kicked_connection_counts_against_the_cap_until_its_guard_drops() {
        let (registry, bus) = start(1, 1);
        let stuck = registry.register(user("bob"), true).await.unwrap();
        bus.publish(message_event(1));
        bus.publish(message_event(2));
        let Registration {
            kicked,
            guard,
            mailbox,
            ..
        } = stuck;
        assert_eq!(kicked.await.ok(), Some(Kick::SlowConsumer));
        // The task ended (mailbox gone) but the socket lingers (guard held): still counted.
        drop(mailbox);
        assert_eq!(
            registry.register(user("bob"), true).await.err(),
            Some(RegisterError::TooManyConnections)
        );
        drop(guard);
        assert!(registry.register(user("bob"), true).await.is_ok());
    }

    #[tokio::test]
    async fn shutdown_kicks_everyone_and_refuses_newcomers() {
        let (registry, _bus) = start(2, 8);
        let conn = registry.register(user("alice"), true).await.unwrap();
        registry.shutdown().await;
        assert_eq!(conn.kicked.await.ok(), Some(Kick::Shutdown));
        assert_eq!(
            registry.register(user("bob"), true).await.err(),
            Some(RegisterError::ShuttingDown)
        );
    }
}
