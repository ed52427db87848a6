//! Telling connections apart, as pure rules. A request names its connection only by the
//! client's address and port; the kernel names a socket by its inode. The connection table
//! ([`super::connections`]) keys its entries by address and port and keeps the inode once seen,
//! and these rules decide, from what the kernel says, whether a socket is the entry's
//! connection, a newer one with the same address and port, or gone.

use std::time::Duration;

use super::phases::CLOSE_GRACE;

/// TCP state numbers (`include/net/tcp_states.h`).
pub mod states {
    /// Both ways open.
    pub const ESTABLISHED: u8 = 1;
    /// Both sides closed; the addresses may already belong to a new connection.
    pub const TIME_WAIT: u8 = 6;
    /// Closed, or reset by the peer.
    pub const CLOSE: u8 = 7;
    /// The peer sent its FIN; this side has not closed yet.
    pub const CLOSE_WAIT: u8 = 8;
    /// The peer's FIN came after this side's.
    pub const LAST_ACK: u8 = 9;
    /// A listening socket, not a connection.
    pub const LISTEN: u8 = 10;
    /// Both sides sent a FIN at once.
    pub const CLOSING: u8 = 11;
}

/// The client has left: its FIN or reset arrived, so nothing more will come from it.
pub fn client_left(state: u8) -> bool {
    use states::*;
    matches!(state, TIME_WAIT | CLOSE | CLOSE_WAIT | LAST_ACK | CLOSING)
}

/// The connection is over on both sides, so its address and port may name a new one.
pub fn addresses_free(state: u8) -> bool {
    matches!(state, states::TIME_WAIT | states::CLOSE)
}

/// A connection the client has not finished with: established, or close-wait (the client sent
/// its FIN, and the socket waits for tinylb, or a stuck thread, to close it).
pub fn client_not_done(state: u8) -> bool {
    matches!(state, states::ESTABLISHED | states::CLOSE_WAIT)
}

/// What a socket found with an entry's address and port is to that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// The entry's own socket.
    Same,
    /// The entry did not know its socket yet: now it does.
    Learned,
    /// A newer connection with the same address and port; the entry's socket is gone, so the
    /// entry starts afresh for this one.
    Newer,
    /// Another socket while the entry's own is still open (the client reset it and came back
    /// before tinylb let go of it): the entry stays with the old one until it is gone.
    Beside,
}

/// How the socket with inode `found` relates to an entry that knows `known`, given whether the
/// entry's own socket was seen open in the same look.
pub fn sighting(known: Option<u64>, found: u64, known_still_open: bool) -> Sighting {
    match known {
        None => Sighting::Learned,
        Some(inode) if inode == found => Sighting::Same,
        Some(_) if known_still_open => Sighting::Beside,
        Some(_) => Sighting::Newer,
    }
}

/// Whether an entry is forgotten after a look: its socket is gone from the process (by inode
/// if known, else by address and port), unless the entry guards an ending whose socket could
/// not be found, for [`CLOSE_GRACE`] after it.
pub fn forgotten(
    known: Option<u64>,
    inode_seen: bool,
    address_seen: bool,
    ended_without_socket_for: Option<Duration>,
) -> bool {
    let socket_gone = match known {
        Some(_) => !inode_seen,
        None => !address_seen,
    };
    let guarding = ended_without_socket_for.is_some_and(|since| since <= CLOSE_GRACE);
    socket_gone && !guarding
}

/// What tinylb knows of a connection it ended when a request arrives from its address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedSocket {
    /// Its refusal is decided but not written yet: the socket was not looked for.
    NotLookedFor,
    /// Its socket, in this TCP state (`None`: the kernel would not say).
    Found(Option<u8>),
    /// Its socket was already closed when tinylb ended it, this long ago.
    NotFound(Duration),
}

/// Whose a request from an ended connection's address and port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The ended connection's: tiny_http parsed it from bytes after the ending. Discard it.
    Ended,
    /// A new connection's: serve it.
    New,
    /// A new connection's if tiny_http no longer holds the ended socket (a request parsed
    /// from it would hold it); [`super::connections::Connections::settle`] looks.
    NewIfReleased,
}

/// Whose a request from an ended connection's address and port is. A new connection can only
/// exist once the old one is over on both sides; an ending without its socket guards for
/// [`CLOSE_GRACE`].
pub fn whose(ended: EndedSocket) -> Whose {
    match ended {
        EndedSocket::NotLookedFor => Whose::Ended,
        EndedSocket::Found(Some(state)) if !addresses_free(state) => Whose::Ended,
        EndedSocket::Found(_) => Whose::NewIfReleased,
        EndedSocket::NotFound(since) if since <= CLOSE_GRACE => Whose::Ended,
        EndedSocket::NotFound(_) => Whose::New,
    }
}

#[cfg(test)]
mod tests {
    use super::states::*;
    use super::*;

    #[test]
    fn tcp_states_say_who_has_left() {
        // (state, client left, addresses free, client not done)
        let cases = [
            (ESTABLISHED, false, false, true),
            (CLOSE_WAIT, true, false, true),
            (LAST_ACK, true, false, false),
            (CLOSING, true, false, false),
            (TIME_WAIT, true, true, false),
            (CLOSE, true, true, false),
            (LISTEN, false, false, false),
            // FIN_WAIT1 and FIN_WAIT2: tinylb closed its side, the client has not.
            (4, false, false, false),
            (5, false, false, false),
        ];
        for (state, left, free, not_done) in cases {
            assert_eq!(client_left(state), left, "state {state}");
            assert_eq!(addresses_free(state), free, "state {state}");
            assert_eq!(client_not_done(state), not_done, "state {state}");
        }
    }

    #[test]
    fn a_socket_is_the_entrys_own_a_newer_one_or_beside_it() {
        assert_eq!(sighting(None, 7, false), Sighting::Learned);
        assert_eq!(sighting(None, 7, true), Sighting::Learned);
        assert_eq!(sighting(Some(7), 7, true), Sighting::Same);
        assert_eq!(sighting(Some(7), 7, false), Sighting::Same);
        assert_eq!(sighting(Some(7), 8, false), Sighting::Newer);
        assert_eq!(sighting(Some(7), 8, true), Sighting::Beside);
    }

    #[test]
    fn an_entry_is_forgotten_with_its_socket() {
        let grace = CLOSE_GRACE;
        let second = Duration::from_secs(1);
        let cases = [
            // (known inode, inode seen, address seen, ended without socket since, forgotten)
            (Some(7), true, true, None, false),
            (Some(7), false, true, None, true),
            (Some(7), true, false, None, false),
            (None, false, true, None, false),
            (None, false, false, None, true),
            (None, false, false, Some(second), false),
            (None, false, false, Some(grace), false),
            (None, false, false, Some(grace + second), true),
            (Some(7), true, true, Some(grace + second), false),
        ];
        for (known, inode_seen, address_seen, since, forgotten_now) in cases {
            assert_eq!(
                forgotten(known, inode_seen, address_seen, since),
                forgotten_now,
                "{known:?} {inode_seen} {address_seen} {since:?}"
            );
        }
    }

    #[test]
    fn only_a_connection_over_on_both_sides_frees_its_address_and_port() {
        let cases = [
            (EndedSocket::NotLookedFor, Whose::Ended),
            (EndedSocket::Found(Some(ESTABLISHED)), Whose::Ended),
            (EndedSocket::Found(Some(CLOSE_WAIT)), Whose::Ended),
            (EndedSocket::Found(Some(4)), Whose::Ended),
            (EndedSocket::Found(Some(TIME_WAIT)), Whose::NewIfReleased),
            (EndedSocket::Found(Some(CLOSE)), Whose::NewIfReleased),
            (EndedSocket::Found(None), Whose::NewIfReleased),
            (EndedSocket::NotFound(Duration::ZERO), Whose::Ended),
            (EndedSocket::NotFound(CLOSE_GRACE), Whose::Ended),
            (
                EndedSocket::NotFound(CLOSE_GRACE + Duration::from_millis(1)),
                Whose::New,
            ),
        ];
        for (ended, verdict) in cases {
            assert_eq!(whose(ended), verdict, "{ended:?}");
        }
    }
}
