//! Choosing a route: an ingress and an egress run by different operators, so no single
//! operator sees both who the client is and where its traffic goes.
//!
//! Policy: the ingress is uniform among those that can be paired; the egress is weighted by
//! advertised bandwidth, so load follows capacity. Callers exclude relays by key (for
//! example an egress that stays down), and the choice skips them.

#![deny(clippy::unwrap_used)]

use std::net::SocketAddr;

use rand::seq::IndexedRandom as _;
use rand::Rng;

use crate::directory::Directory;
use crate::error::SelectError;
use crate::relay::{PublicKey32, Relay, Role};

/// The two relays a client tunnels through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The first hop, which sees the client.
    pub ingress: Relay,
    /// The second hop, which sees the destination; never of the ingress's operator.
    pub egress: Relay,
}

/// Picks a route at random, skipping relays whose key is in `exclude`.
pub fn pick_route<R: Rng + ?Sized>(
    dir: &Directory,
    rng: &mut R,
    exclude: &[PublicKey32],
) -> Result<Route, SelectError> {
    let ingresses = usable(dir, Role::Ingress, exclude);
    let Some(first) = ingresses.first() else {
        return Err(SelectError::NoIngress {
            excluded: excluded(dir, Role::Ingress, exclude),
        });
    };
    let egresses = usable(dir, Role::Egress, exclude);
    let pairable: Vec<&Relay> = ingresses
        .iter()
        .copied()
        .filter(|i| egresses.iter().any(|e| e.operator != i.operator))
        .collect();
    // With no pairable ingress, either there is no egress, or every ingress and egress has
    // one operator; `first`'s error then says exactly that.
    let ingress = pairable.choose(rng).copied().unwrap_or(first);
    let egress = choose_egress(&egresses, ingress, rng, dir, exclude)?;
    Ok(Route {
        ingress: ingress.clone(),
        egress: egress.clone(),
    })
}

/// Picks an egress for a given ingress: of another operator, weighted by bandwidth,
/// skipping relays whose key is in `exclude` (to replace an egress that went down).
pub fn pick_egress<R: Rng + ?Sized>(
    dir: &Directory,
    ingress: &Relay,
    rng: &mut R,
    exclude: &[PublicKey32],
) -> Result<Relay, SelectError> {
    let egresses = usable(dir, Role::Egress, exclude);
    choose_egress(&egresses, ingress, rng, dir, exclude).cloned()
}

/// Where egress relays listen: the only places an ingress forwards to.
pub fn egress_endpoints(dir: &Directory) -> Vec<SocketAddr> {
    let mut endpoints: Vec<SocketAddr> = Vec::new();
    for relay in dir.relays_with_role(Role::Egress) {
        if !endpoints.contains(&relay.endpoint) {
            endpoints.push(relay.endpoint);
        }
    }
    endpoints
}

/// Relays of `role` that are not excluded and could carry traffic.
fn usable<'a>(dir: &'a Directory, role: Role, exclude: &[PublicKey32]) -> Vec<&'a Relay> {
    dir.relays_with_role(role)
        .filter(|r| !exclude.contains(&r.wg_public_key))
        .filter(|r| role == Role::Ingress || r.bandwidth_mbps > 0)
        .collect()
}

/// How many relays of `role` the caller excluded, for error messages.
fn excluded(dir: &Directory, role: Role, exclude: &[PublicKey32]) -> usize {
    dir.relays_with_role(role)
        .filter(|r| exclude.contains(&r.wg_public_key))
        .count()
}

fn choose_egress<'a, R: Rng + ?Sized>(
    egresses: &[&'a Relay],
    ingress: &Relay,
    rng: &mut R,
    dir: &Directory,
    exclude: &[PublicKey32],
) -> Result<&'a Relay, SelectError> {
    if egresses.is_empty() {
        return Err(SelectError::NoEgress {
            excluded: excluded(dir, Role::Egress, exclude),
        });
    }
    let candidates: Vec<&Relay> = egresses
        .iter()
        .copied()
        .filter(|e| e.operator != ingress.operator)
        .collect();
    // Fails only without a candidate: every weight is positive and bounded by validation
    // (and zero-weight relays were filtered out above).
    candidates
        .choose_weighted(rng, |e| e.bandwidth_mbps)
        .copied()
        .map_err(|_| SelectError::NoEgressOfOtherOperator {
            operator: ingress.operator.clone(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::directory::tests::relay;

    fn dir(relays: Vec<Relay>) -> Directory {
        let dir = Directory {
            version: 1,
            serial: 1,
            relays,
            images: Vec::new(),
            sim_vendors: Vec::new(),
            issuer: None,
        };
        dir.validate().unwrap();
        dir
    }

    fn mixed() -> Directory {
        dir(vec![
            relay("in-a", Role::Ingress, "a", 100, 1),
            relay("in-b", Role::Ingress, "b", 100, 2),
            relay("in-c", Role::Ingress, "c", 100, 3),
            relay("out-a", Role::Egress, "a", 500, 4),
            relay("out-b", Role::Egress, "b", 500, 5),
            relay("out-c", Role::Egress, "c", 500, 6),
        ])
    }

    #[test]
    fn same_operator_pair_is_never_chosen() {
        let dir = mixed();
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let route = pick_route(&dir, &mut rng, &[]).unwrap();
            assert_ne!(route.ingress.operator, route.egress.operator);
            assert_eq!(route.ingress.role, Role::Ingress);
            assert_eq!(route.egress.role, Role::Egress);
            seen.insert((route.ingress.name, route.egress.name));
        }
        // Every allowed pair (3 ingresses × 2 other-operator egresses) occurs.
        assert_eq!(seen.len(), 6);
    }

    #[test]
    fn egress_is_weighted_by_bandwidth() {
        let dir = dir(vec![
            relay("in", Role::Ingress, "a", 100, 1),
            relay("slow", Role::Egress, "b", 100, 2),
            relay("fast", Role::Egress, "c", 900, 3),
        ]);
        let mut rng = StdRng::seed_from_u64(42);
        let picks = 10_000;
        let fast = (0..picks)
            .filter(|_| pick_route(&dir, &mut rng, &[]).unwrap().egress.name == "fast")
            .count();
        assert!(
            (8_500..=9_500).contains(&fast),
            "fast chosen {fast} of {picks} times"
        );
    }

    #[test]
    fn ingress_is_uniform() {
        let dir = dir(vec![
            relay("in-1", Role::Ingress, "a", 1, 1),
            relay("in-2", Role::Ingress, "a", 1000, 2),
            relay("out", Role::Egress, "b", 100, 3),
        ]);
        let mut rng = StdRng::seed_from_u64(7);
        let first = (0..10_000)
            .filter(|_| pick_route(&dir, &mut rng, &[]).unwrap().ingress.name == "in-1")
            .count();
        assert!(
            (4_500..=5_500).contains(&first),
            "in-1 chosen {first} times"
        );
    }

    #[test]
    fn excluded_relays_are_skipped() {
        let dir = mixed();
        let mut rng = StdRng::seed_from_u64(3);
        let exclude = [PublicKey32([5; 32]), PublicKey32([1; 32])];
        for _ in 0..500 {
            let route = pick_route(&dir, &mut rng, &exclude).unwrap();
            assert_ne!(route.egress.name, "out-b");
            assert_ne!(route.ingress.name, "in-a");
        }
        let ingress = &dir.relays[0];
        for _ in 0..200 {
            let egress = pick_egress(&dir, ingress, &mut rng, &[PublicKey32([5; 32])]).unwrap();
            assert_eq!(egress.name, "out-c");
        }
    }

    #[test]
    fn ingress_without_a_partner_is_not_chosen() {
        // in-b's operator runs the only egress, so only in-a can form a route.
        let dir = dir(vec![
            relay("in-a", Role::Ingress, "a", 100, 1),
            relay("in-b", Role::Ingress, "b", 100, 2),
            relay("out-b", Role::Egress, "b", 100, 3),
        ]);
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..200 {
            assert_eq!(
                pick_route(&dir, &mut rng, &[]).unwrap().ingress.name,
                "in-a"
            );
        }
    }

    #[test]
    fn errors_say_what_is_missing() {
        let mut rng = StdRng::seed_from_u64(0);
        let only_ingress = dir(vec![relay("in", Role::Ingress, "a", 100, 1)]);
        assert_eq!(
            pick_route(&only_ingress, &mut rng, &[]),
            Err(SelectError::NoEgress { excluded: 0 })
        );
        let only_egress = dir(vec![relay("out", Role::Egress, "a", 100, 1)]);
        assert_eq!(
            pick_route(&only_egress, &mut rng, &[]),
            Err(SelectError::NoIngress { excluded: 0 })
        );
        let one_operator = dir(vec![
            relay("in", Role::Ingress, "op-x", 100, 1),
            relay("out", Role::Egress, "op-x", 100, 2),
        ]);
        let err = pick_route(&one_operator, &mut rng, &[]).unwrap_err();
        assert_eq!(
            err,
            SelectError::NoEgressOfOtherOperator {
                operator: "op-x".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("no egress of an operator other than \"op-x\""),
            "{err}"
        );
        let two = dir(vec![
            relay("in", Role::Ingress, "a", 100, 1),
            relay("out", Role::Egress, "b", 100, 2),
        ]);
        assert_eq!(
            pick_route(&two, &mut rng, &[PublicKey32([2; 32])]),
            Err(SelectError::NoEgress { excluded: 1 })
        );
        assert_eq!(
            pick_route(&two, &mut rng, &[PublicKey32([1; 32])]),
            Err(SelectError::NoIngress { excluded: 1 })
        );
    }

    #[test]
    fn zero_bandwidth_egress_in_an_unvalidated_directory_is_skipped() {
        let dir = Directory {
            version: 1,
            serial: 1,
            relays: vec![
                relay("in", Role::Ingress, "a", 100, 1),
                relay("out", Role::Egress, "b", 0, 2),
            ],
            images: Vec::new(),
            sim_vendors: Vec::new(),
            issuer: None,
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            pick_route(&dir, &mut rng, &[]),
            Err(SelectError::NoEgress { excluded: 0 })
        );
    }

    #[test]
    fn egress_endpoints_lists_only_egresses() {
        let endpoints = egress_endpoints(&mixed());
        let expected: Vec<SocketAddr> = ["127.0.0.1:51004", "127.0.0.1:51005", "127.0.0.1:51006"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(endpoints, expected);
    }
}
