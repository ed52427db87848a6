//! Whose request goes to a worker next: the two rules that keep one client from taking the
//! pool, as a pure state machine (no threads, sockets or clocks), so that its unit tables can
//! show every case.
//!
//! - **A connection's requests are answered in order, one at a time.** tiny_http parses a
//!   pipelining client's requests as fast as they arrive; each one after the first waits
//!   *behind* its connection's request in turn until that one's answer is written, as nginx
//!   serves a pipeline. So one connection never holds more than one worker, a refusal is never
//!   written behind a long queue of that connection's answers, and requests that are not safe to
//!   run side by side (RFC 9112 section 9.3.2) never are.
//! - **One client address holds at most `clientMaxWorkers` workers at once** (nginx's
//!   `limit_conn`): a request beyond it *waits for its client's turn* instead of taking another
//!   worker, so the workers it leaves are everyone else's. Requests waiting that way, and
//!   requests sent to the workers' queue, share `queueSize`; one client may fill at most half of
//!   it. Past either bound the answer is a fast 503.
//!
//! A connection that pipelines more than `pipeline` requests ahead gets no more: the extra ones
//! are discarded and the connection ends after the ones already taken.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The bounds the rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `clientMaxWorkers`: requests of one client address queued for a worker or served at once.
    pub per_client: usize,
    /// `queueSize`: requests waiting for a worker, in the workers' queue or for their client's
    /// turn, all clients together.
    pub queue: usize,
    /// Requests that may wait behind their connection's request in turn.
    pub pipeline: usize,
}

impl Limits {
    /// Requests one client may have waiting for its turn: half the queue (at least one), so a
    /// crowd from one address leaves the other half to everyone else.
    pub fn per_client_queue(&self) -> usize {
        (self.queue / 2).max(1)
    }
}

/// What the caller must do with a request, decided under the rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Put it in the workers' queue now.
    Send(T),
    /// Answer it 503: the queue, or its client's share of it, is full. Its connection's next
    /// request waits until [`Turns::finished`] is called for it.
    Refuse(T),
    /// Never serve or answer it, and end its connection: it came from a connection that
    /// pipelined too far ahead, or one that ended.
    Discard(T),
}

/// Who holds a connection's turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// A request in the workers' queue or with a worker: counted against its client.
    Worker,
    /// A request being refused: not counted, but its answer comes before the next one.
    Refusal,
}

/// One connection with a request in turn, waiting, or behind.
#[derive(Debug)]
struct Connection<C, T> {
    client: C,
    turn: Option<Turn>,
    /// Requests in arrival order; while the connection waits for its client's turn, the first
    /// one is the waiting request.
    behind: VecDeque<T>,
    /// In its client's line, waiting for a worker.
    waiting: bool,
    /// Pipelined too far: whatever else it sends is discarded.
    overflowed: bool,
}

/// One client address's share.
#[derive(Debug)]
struct Client<K> {
    /// Requests in the workers' queue or with a worker.
    holding: usize,
    /// Connections whose next request waits for a worker, first come first served.
    line: VecDeque<K>,
}

/// The rules' state: connections (`K`, the peer's address and port) and client addresses
/// (`C`), with requests of type `T` held for them.
#[derive(Debug)]
pub struct Turns<K, C, T> {
    limits: Limits,
    connections: HashMap<K, Connection<C, T>>,
    clients: HashMap<C, Client<K>>,
    /// Requests waiting for their client's turn, all clients.
    waiting: usize,
}

impl<K: Copy + Eq + Hash, C: Copy + Eq + Hash, T> Turns<K, C, T> {
    /// No connections yet.
    pub fn new(limits: Limits) -> Self {
        Turns {
            limits,
            connections: HashMap::new(),
            clients: HashMap::new(),
            waiting: 0,
        }
    }

    /// A request from connection `key` of client `client` arrived; `queued` requests are in the
    /// workers' queue now.
    pub fn arrive(&mut self, key: K, client: C, request: T, queued: usize) -> Option<Step<T>> {
        let connection = self.connections.entry(key).or_insert(Connection {
            client,
            turn: None,
            behind: VecDeque::new(),
            waiting: false,
            overflowed: false,
        });
        if connection.overflowed {
            return Some(Step::Discard(request));
        }
        if connection.turn.is_some() || connection.waiting {
            if connection.behind.len() >= self.limits.pipeline {
                connection.overflowed = true;
                return Some(Step::Discard(request));
            }
            connection.behind.push_back(request);
            return None;
        }
        self.place(key, client, request, queued)
    }

    /// The request in turn on `key` has been answered (or refused), and the connection
    /// `ended` or stays open. Returns what to do next: the connection's next request, and a
    /// request of the same client that waited for its turn.
    pub fn finished(&mut self, key: K, ended: bool, queued: usize) -> Vec<Step<T>> {
        let mut steps = Vec::new();
        let Some(connection) = self.connections.get_mut(&key) else {
            return steps;
        };
        let client = connection.client;
        let turn = connection.turn.take();
        if turn == Some(Turn::Worker)
            && let Some(share) = self.clients.get_mut(&client)
        {
            share.holding = share.holding.saturating_sub(1);
        }
        if ended || connection.overflowed {
            // Nothing more is read from it: what it sent ahead is never served.
            let connection = self.connections.remove(&key).expect("looked up above");
            self.forget_waiting(key, client, connection.waiting);
            steps.extend(connection.behind.into_iter().map(Step::Discard));
        } else if let Some(next) = connection.behind.pop_front() {
            steps.extend(self.place(key, client, next, queued));
        } else {
            self.connections.remove(&key);
        }
        steps.extend(self.next_in_line(client));
        self.forget_idle_client(client);
        steps
    }

    /// Requests waiting for their client's turn, all clients.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Requests of `client` in the workers' queue or with a worker.
    pub fn holding(&self, client: C) -> usize {
        self.clients.get(&client).map_or(0, |c| c.holding)
    }

    /// Every request held (behind a connection's request in turn, or waiting for its
    /// client's turn), for a process that stops serving: none of them will be.
    pub fn take_all(&mut self) -> Vec<T> {
        self.clients.clear();
        self.waiting = 0;
        self.connections
            .drain()
            .flat_map(|(_, connection)| connection.behind)
            .collect()
    }

    /// A request that is next on its connection: to a worker if its client is under its cap
    /// and the queue has room, into its client's line if there is room to wait, else refused.
    fn place(&mut self, key: K, client: C, request: T, queued: usize) -> Option<Step<T>> {
        let share = self.clients.entry(client).or_insert_with(|| Client {
            holding: 0,
            line: VecDeque::new(),
        });
        let connection = self
            .connections
            .get_mut(&key)
            .expect("placed on a known connection");
        if share.holding < self.limits.per_client && queued + self.waiting < self.limits.queue {
            share.holding += 1;
            connection.turn = Some(Turn::Worker);
            return Some(Step::Send(request));
        }
        let room_to_wait = share.holding >= self.limits.per_client
            && share.line.len() < self.limits.per_client_queue()
            && queued + self.waiting < self.limits.queue;
        if room_to_wait {
            share.line.push_back(key);
            connection.waiting = true;
            connection.behind.push_front(request);
            self.waiting += 1;
            return None;
        }
        connection.turn = Some(Turn::Refusal);
        Some(Step::Refuse(request))
    }

    /// The next connection in `client`'s line, if the client is under its cap again. A waiting
    /// request already counts in the queue, so moving it to the workers' queue needs no room.
    fn next_in_line(&mut self, client: C) -> Option<Step<T>> {
        let share = self.clients.get_mut(&client)?;
        if share.holding >= self.limits.per_client {
            return None;
        }
        let key = share.line.pop_front()?;
        share.holding += 1;
        self.waiting -= 1;
        let connection = self.connections.get_mut(&key)?;
        connection.waiting = false;
        connection.turn = Some(Turn::Worker);
        connection.behind.pop_front().map(Step::Send)
    }

    /// Takes a removed connection out of its client's line.
    fn forget_waiting(&mut self, key: K, client: C, was_waiting: bool) {
        if !was_waiting {
            return;
        }
        if let Some(share) = self.clients.get_mut(&client) {
            share.line.retain(|k| *k != key);
        }
        self.waiting -= 1;
    }

    fn forget_idle_client(&mut self, client: C) {
        if self
            .clients
            .get(&client)
            .is_some_and(|c| c.holding == 0 && c.line.is_empty())
        {
            self.clients.remove(&client);
        }
    }
}

#[cfg(test)]
#[path = "turns_tests.rs"]
mod tests;
