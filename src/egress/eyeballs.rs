//! Happy Eyeballs (RFC 8305): connecting to a host's checked addresses as a staggered race, so
//! a dead address or a broken address family costs [`ATTEMPT_DELAY`], not a connect timeout.
//!
//! [`interleave`] orders the addresses as section 4 asks: the families alternate, starting with
//! the family of the resolver's first answer (IPv6 first when it has both). [`race`] starts the
//! first attempt, and the next one whenever the delay passes without an answer or an attempt
//! fails (section 5); the first attempt to connect wins and the others are dropped (their
//! sockets closed). It owns no addresses of its own: what it dials was checked by the guard.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

/// The default stagger between two connection attempts (RFC 8305 recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// `addrs` with the families alternating, the first address's family first; the order within
/// a family is kept (it is the resolver's).
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let first_v6 = first.is_ipv6();
    let mut preferred = addrs.iter().filter(|a| a.is_ipv6() == first_v6);
    let mut other = addrs.iter().filter(|a| a.is_ipv6() != first_v6);
    let mut order = Vec::with_capacity(addrs.len());
    loop {
        let a = preferred.next();
        let b = other.next();
        if a.is_none() && b.is_none() {
            return order;
        }
        order.extend(a.into_iter().chain(b).copied());
    }
}

/// Runs `attempt` on `addrs` in order, staggered by `delay` (see the module docs): the first
/// success, or, when every attempt failed, the last failure (`None` for no address).
pub async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    mut attempt: F,
) -> Result<T, Option<E>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    // One address (the common case): no race to run.
    if let [only] = addrs {
        return attempt(*only).await.map_err(Some);
    }
    let mut running: Vec<Pin<Box<Fut>>> = Vec::with_capacity(addrs.len());
    let mut next = 0;
    let mut last = None;
    let stagger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(stagger);
    loop {
        if next == addrs.len() && running.is_empty() {
            return Err(last);
        }
        let event = poll_fn(|cx| {
            if next < addrs.len() && stagger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            for (index, future) in running.iter_mut().enumerate() {
                if let Poll::Ready(result) = future.as_mut().poll(cx) {
                    return Poll::Ready(Some((index, result)));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            // The stagger passed: the next address gets its attempt.
            None => {
                running.push(Box::pin(attempt(addrs[next])));
                next += 1;
                stagger.as_mut().reset(Instant::now() + delay);
            }
            // The winner; dropping `running` abandons the others.
            Some((_, Ok(connected))) => return Ok(connected),
            // A failure starts the next attempt at once.
            Some((index, Err(err))) => {
                drop(running.swap_remove(index));
                last = Some(err);
                stagger.as_mut().reset(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(text: &[&str]) -> Vec<SocketAddr> {
        text.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn families_alternate_starting_with_the_first_answer() {
        let given = addrs(&[
            "[2001:db8::1]:443",
            "[2001:db8::2]:443",
            "192.0.2.1:443",
            "192.0.2.2:443",
            "192.0.2.3:443",
        ]);
        assert_eq!(
            interleave(&given),
            addrs(&[
                "[2001:db8::1]:443",
                "192.0.2.1:443",
                "[2001:db8::2]:443",
                "192.0.2.2:443",
                "192.0.2.3:443"
            ])
        );
        let v4_first = addrs(&["192.0.2.1:443", "[2001:db8::1]:443"]);
        assert_eq!(interleave(&v4_first), v4_first);
        assert!(interleave(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_silent_address_costs_one_delay_and_the_first_success_wins() {
        let given = addrs(&["[2001:db8::1]:443", "192.0.2.1:443", "192.0.2.2:443"]);
        let started = Instant::now();
        let won = race(&given, ATTEMPT_DELAY, |addr| async move {
            if addr.is_ipv6() {
                std::future::pending::<()>().await; // never answers
            }
            Ok::<_, ()>(addr)
        })
        .await;
        assert_eq!(won, Ok(given[1]));
        // One stagger, give or take a busy machine; never the silent attempt's (endless) wait.
        let took = started.elapsed();
        assert!(
            took >= ATTEMPT_DELAY && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_starts_the_next_attempt_at_once_and_all_failing_returns_the_last() {
        let given = addrs(&["192.0.2.1:443", "192.0.2.2:443"]);
        let started = Instant::now();
        let failed = race(
            &given,
            ATTEMPT_DELAY,
            |addr| async move { Err::<(), _>(addr) },
        )
        .await;
        assert_eq!(failed, Err(Some(given[1])));
        // No stagger waited for: far below one delay.
        assert!(started.elapsed() < ATTEMPT_DELAY, "{:?}", started.elapsed());
        assert_eq!(
            race::<(), (), _, std::future::Ready<_>>(&[], ATTEMPT_DELAY, |_| unreachable!()).await,
            Err(None)
        );
    }
}
