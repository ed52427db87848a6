//! The unit tables of the rules in `turns.rs`, case by case.

use super::*;

/// Connections are named by a client letter and a number: `('a', 1)` is client `a`'s first.
type Key = (char, u8);
type Rules = Turns<Key, char, u32>;

const LIMITS: Limits = Limits {
    per_client: 2,
    queue: 6,
    pipeline: 2,
};

fn arrive(turns: &mut Rules, key: Key, request: u32, queued: usize) -> Option<Step<u32>> {
    turns.arrive(key, key.0, request, queued)
}

#[test]
fn a_connection_is_served_one_request_at_a_time_in_order() {
    let mut turns = Rules::new(LIMITS);
    let a1 = ('a', 1);
    assert_eq!(arrive(&mut turns, a1, 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, a1, 2, 0), None);
    assert_eq!(arrive(&mut turns, a1, 3, 0), None);
    assert_eq!(turns.holding('a'), 1);
    assert_eq!(turns.finished(a1, false, 0), vec![Step::Send(2)]);
    assert_eq!(turns.finished(a1, false, 0), vec![Step::Send(3)]);
    assert_eq!(turns.finished(a1, false, 0), vec![]);
    assert_eq!(turns.holding('a'), 0);
    // Forgotten once idle: a finish for it now changes nothing.
    assert_eq!(turns.finished(a1, false, 0), vec![]);
    assert_eq!(arrive(&mut turns, a1, 4, 0), Some(Step::Send(4)));
}

#[test]
fn a_client_holds_at_most_its_share_and_waits_in_line_for_more() {
    let mut turns = Rules::new(LIMITS);
    let (a1, a2, a3, b1) = (('a', 1), ('a', 2), ('a', 3), ('b', 1));
    assert_eq!(arrive(&mut turns, a1, 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, a2, 2, 1), Some(Step::Send(2)));
    // The third connection of `a` waits for a turn; `b` is not held back by it.
    assert_eq!(arrive(&mut turns, a3, 3, 2), None);
    assert_eq!(turns.waiting(), 1);
    assert_eq!(arrive(&mut turns, b1, 4, 2), Some(Step::Send(4)));
    assert_eq!(turns.holding('a'), 2);
    assert_eq!(turns.holding('b'), 1);
    // A request behind a waiting connection stays behind it.
    assert_eq!(arrive(&mut turns, a3, 5, 3), None);
    // One of a's answers is written: a3's first request takes the freed turn.
    assert_eq!(turns.finished(a1, false, 2), vec![Step::Send(3)]);
    assert_eq!(turns.waiting(), 0);
    assert_eq!(turns.holding('a'), 2);
    // a3's next request follows its first, over a's share: a2 is still served.
    assert_eq!(turns.finished(a3, false, 2), vec![Step::Send(5)]);
    assert_eq!(turns.finished(b1, false, 1), vec![]);
    assert_eq!(turns.holding('b'), 0);
    assert_eq!(turns.finished(a2, false, 0), vec![]);
    assert_eq!(turns.finished(a3, false, 0), vec![]);
    // Nothing is remembered of connections and clients with nothing in turn or waiting.
    assert!(turns.connections.is_empty() && turns.clients.is_empty());
}

#[test]
fn the_line_is_first_come_first_served_across_connections() {
    let mut turns = Rules::new(Limits {
        per_client: 1,
        queue: 10,
        pipeline: 4,
    });
    assert_eq!(arrive(&mut turns, ('a', 1), 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, ('a', 2), 2, 1), None);
    assert_eq!(arrive(&mut turns, ('a', 3), 3, 1), None);
    assert_eq!(turns.finished(('a', 1), false, 0), vec![Step::Send(2)]);
    assert_eq!(turns.finished(('a', 2), false, 0), vec![Step::Send(3)]);
    assert_eq!(turns.finished(('a', 3), false, 0), vec![]);
    assert_eq!(turns.waiting(), 0);
}

#[test]
fn a_full_queue_or_a_full_share_of_it_is_refused() {
    let mut turns = Rules::new(LIMITS);
    // The workers' queue holds 6 already: no room for anyone.
    assert_eq!(arrive(&mut turns, ('b', 1), 1, 6), Some(Step::Refuse(1)));
    // `a` at its cap may keep 3 (half the queue) waiting; the fourth is refused.
    assert_eq!(arrive(&mut turns, ('a', 1), 2, 0), Some(Step::Send(2)));
    assert_eq!(arrive(&mut turns, ('a', 2), 3, 1), Some(Step::Send(3)));
    for n in 3..6 {
        assert_eq!(arrive(&mut turns, ('a', n), u32::from(n) + 1, 2), None);
    }
    assert_eq!(turns.waiting(), 3);
    assert_eq!(arrive(&mut turns, ('a', 6), 7, 2), Some(Step::Refuse(7)));
    // `c` still finds room: 2 queued and 3 waiting leave one of 6.
    assert_eq!(arrive(&mut turns, ('c', 1), 8, 2), Some(Step::Send(8)));
    // And then none.
    assert_eq!(arrive(&mut turns, ('d', 1), 9, 3), Some(Step::Refuse(9)));
}

#[test]
fn waiting_requests_of_every_client_count_in_the_queue() {
    let mut turns = Rules::new(Limits {
        per_client: 1,
        queue: 6,
        pipeline: 4,
    });
    for (client, request) in [('a', 1), ('b', 2), ('c', 3)] {
        assert_eq!(
            arrive(&mut turns, (client, 1), request, 0),
            Some(Step::Send(request))
        );
    }
    // Five wait, each client within its share of three.
    for (key, request) in [
        (('a', 2), 4),
        (('a', 3), 5),
        (('b', 2), 6),
        (('b', 3), 7),
        (('c', 2), 8),
    ] {
        assert_eq!(arrive(&mut turns, key, request, 0), None);
    }
    assert_eq!(turns.waiting(), 5);
    // c may keep another waiting, but one in the workers' queue and five waiting fill six.
    assert_eq!(arrive(&mut turns, ('c', 3), 9, 1), Some(Step::Refuse(9)));
    assert_eq!(arrive(&mut turns, ('c', 4), 10, 0), None);
}

#[test]
fn a_refusal_keeps_the_connections_turn_without_counting_against_its_client() {
    let mut turns = Rules::new(LIMITS);
    let a1 = ('a', 1);
    assert_eq!(arrive(&mut turns, a1, 1, 6), Some(Step::Refuse(1)));
    assert_eq!(turns.holding('a'), 0);
    // The next request of that connection waits until the 503 is written.
    assert_eq!(arrive(&mut turns, a1, 2, 0), None);
    assert_eq!(turns.finished(a1, false, 0), vec![Step::Send(2)]);
    assert_eq!(turns.holding('a'), 1);
}

#[test]
fn a_connection_pipelining_too_far_is_cut_off() {
    let mut turns = Rules::new(LIMITS);
    let a1 = ('a', 1);
    assert_eq!(arrive(&mut turns, a1, 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, a1, 2, 0), None);
    assert_eq!(arrive(&mut turns, a1, 3, 0), None);
    assert_eq!(arrive(&mut turns, a1, 4, 0), Some(Step::Discard(4)));
    // Whatever follows is discarded too, even once there is room behind.
    assert_eq!(arrive(&mut turns, a1, 5, 0), Some(Step::Discard(5)));
    // The ones taken before are not served either: the connection ends.
    assert_eq!(
        turns.finished(a1, false, 0),
        vec![Step::Discard(2), Step::Discard(3)]
    );
    assert_eq!(turns.holding('a'), 0);
    assert_eq!(arrive(&mut turns, a1, 6, 0), Some(Step::Send(6)));
}

#[test]
fn an_ended_connection_gives_up_its_place_in_line_and_its_requests() {
    let mut turns = Rules::new(Limits {
        per_client: 1,
        queue: 10,
        pipeline: 4,
    });
    let (a1, a2, a3) = (('a', 1), ('a', 2), ('a', 3));
    assert_eq!(arrive(&mut turns, a1, 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, a1, 2, 1), None);
    assert_eq!(arrive(&mut turns, a2, 3, 1), None);
    assert_eq!(arrive(&mut turns, a3, 4, 1), None);
    assert_eq!(turns.waiting(), 2);
    // a1 ended after its answer: its pipelined request goes, and a2 takes the turn.
    assert_eq!(
        turns.finished(a1, true, 0),
        vec![Step::Discard(2), Step::Send(3)]
    );
    assert_eq!(turns.waiting(), 1);
    // A connection ended while it waited in line leaves the line.
    assert_eq!(turns.finished(a3, true, 0), vec![Step::Discard(4)]);
    assert_eq!(turns.waiting(), 0);
    assert_eq!(turns.finished(a2, false, 0), vec![]);
    assert_eq!(turns.holding('a'), 0);
}

#[test]
fn a_stopping_process_takes_every_held_request() {
    let mut turns = Rules::new(LIMITS);
    assert_eq!(arrive(&mut turns, ('a', 1), 1, 0), Some(Step::Send(1)));
    assert_eq!(arrive(&mut turns, ('a', 1), 2, 0), None);
    assert_eq!(arrive(&mut turns, ('a', 2), 3, 1), Some(Step::Send(3)));
    assert_eq!(arrive(&mut turns, ('a', 3), 4, 2), None);
    let mut held = turns.take_all();
    held.sort();
    assert_eq!(held, vec![2, 4]);
    assert_eq!((turns.waiting(), turns.holding('a')), (0, 0));
}

#[test]
fn a_share_of_the_queue_is_half_of_it_and_never_none() {
    let limits = |queue| Limits {
        per_client: 1,
        queue,
        pipeline: 1,
    };
    assert_eq!(limits(512).per_client_queue(), 256);
    assert_eq!(limits(3).per_client_queue(), 1);
    assert_eq!(limits(1).per_client_queue(), 1);
}
