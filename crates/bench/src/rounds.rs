//! Several rounds of every scenario, summed up as each column's median.
//!
//! A shared VM's speed drifts within minutes (wireguard-go alone moved from 451 to 664
//! Mbit/s in sixteen minutes, bench/NOTES.md): one run's ratio moves with it. Each round
//! compares scenarios measured minutes apart, so a ratio is taken within its round (against
//! that round's wireguard-go and bare path) and the summary is the median of those, not a
//! ratio of medians.

use crate::measure::Metrics;
use crate::Row;

/// The median of the values (the mean of the middle two for an even count); `None` when
/// there are none.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// One row per scenario: each column's median over the rounds in which it was measured.
pub(crate) fn summarize(rounds: &[Vec<Row>]) -> Vec<Row> {
    by_scenario(rounds)
        .map(|each| summarize_one(&each))
        .collect()
}

/// Each scenario's rows, one per round (every round holds the same scenarios in the same
/// order).
fn by_scenario(rounds: &[Vec<Row>]) -> impl Iterator<Item = Vec<&Row>> {
    let scenarios = rounds.first().map_or(0, Vec::len);
    (0..scenarios).map(move |i| rounds.iter().filter_map(|r| r.get(i)).collect())
}

fn summarize_one(each: &[&Row]) -> Row {
    let measured: Vec<&Row> = each
        .iter()
        .copied()
        .filter(|r| r.metrics.is_some())
        .collect();
    let name = each.first().map(|r| r.name.clone()).unwrap_or_default();
    if measured.is_empty() {
        return Row {
            name,
            skipped: each.iter().rev().find_map(|r| r.skipped.clone()),
            ..Row::default()
        };
    }
    let of = |f: fn(&Row) -> Option<f64>| median(measured.iter().filter_map(|r| f(r)));
    let metrics: Vec<&Metrics> = measured.iter().filter_map(|r| r.metrics.as_ref()).collect();
    Row {
        name,
        skipped: None,
        metrics: Some(median_metrics(&metrics)),
        rtt_idle_added_ms: of(|r| r.rtt_idle_added_ms),
        rtt_awake_added_ms: of(|r| r.rtt_awake_added_ms),
        rtt_load_added_ms: of(|r| r.rtt_load_added_ms),
        tcp_up_vs_wireguard_go: of(|r| r.tcp_up_vs_wireguard_go),
        tcp_down_vs_wireguard_go: of(|r| r.tcp_down_vs_wireguard_go),
        connect_ms: of(|r| r.connect_ms),
        wake_ms: of(|r| r.wake_ms),
    }
}

/// Each field's median over `all` (not empty).
fn median_metrics(all: &[&Metrics]) -> Metrics {
    let of = |f: fn(&Metrics) -> f64| median(all.iter().map(|m| f(m))).unwrap_or(f64::NAN);
    let opt = |f: fn(&Metrics) -> Option<f64>| median(all.iter().filter_map(|m| f(m)));
    let count = |f: fn(&Metrics) -> Option<u64>| {
        median(all.iter().filter_map(|m| f(m)).map(|n| n as f64)).map(|n| n.round() as u64)
    };
    Metrics {
        tcp_up_mbps: of(|m| m.tcp_up_mbps),
        tcp_down_mbps: of(|m| m.tcp_down_mbps),
        udp_mbps: of(|m| m.udp_mbps),
        udp_loss_pct: of(|m| m.udp_loss_pct),
        udp_loss_at_rate_pct: of(|m| m.udp_loss_at_rate_pct),
        tcp_up_retransmits: count(|m| m.tcp_up_retransmits),
        tcp_down_retransmits: count(|m| m.tcp_down_retransmits),
        tcp_up_retransmit_pct: opt(|m| m.tcp_up_retransmit_pct),
        tcp_down_retransmit_pct: opt(|m| m.tcp_down_retransmit_pct),
        rtt_idle_ms: of(|m| m.rtt_idle_ms),
        idle_sleeps_per_s: opt(|m| m.idle_sleeps_per_s),
        sleeps_per_ping: opt(|m| m.sleeps_per_ping),
        rtt_awake_ms: of(|m| m.rtt_awake_ms),
        rtt_load_ms: opt(|m| m.rtt_load_ms),
        cpu_s_per_gb: opt(|m| m.cpu_s_per_gb),
    }
}

/// Each scenario's ratios against wireguard-go, round by round, for the lines under the
/// table: the spread that the medians hide.
pub(crate) fn ratios_by_round(rounds: &[Vec<Row>]) -> Vec<(String, Vec<String>)> {
    by_scenario(rounds)
        .filter_map(|each| {
            let ratios: Vec<String> = each
                .iter()
                .map(
                    |r| match (r.tcp_up_vs_wireguard_go, r.tcp_down_vs_wireguard_go) {
                        (Some(u), Some(d)) => format!("{u:.2}x / {d:.2}x"),
                        _ => "-".to_string(),
                    },
                )
                .collect();
            let name = each.first()?.name.clone();
            ratios.iter().any(|e| e != "-").then_some((name, ratios))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{relate, BARE, WG_GO};

    fn row(name: &str, up: f64, down: f64, rtt_idle: f64, rtt_load: Option<f64>) -> Row {
        Row {
            name: name.to_string(),
            metrics: Some(Metrics {
                tcp_up_mbps: up,
                tcp_down_mbps: down,
                rtt_idle_ms: rtt_idle,
                rtt_awake_ms: rtt_idle,
                rtt_load_ms: rtt_load,
                tcp_up_retransmits: Some(up as u64),
                ..Metrics::default()
            }),
            ..Row::default()
        }
    }

    fn round(wg_up: f64, ours_up: f64, bare_rtt: f64, ours_load: f64) -> Vec<Row> {
        let mut rows = vec![
            row(BARE, 10_000.0, 10_000.0, bare_rtt, None),
            row(WG_GO, wg_up, wg_up, bare_rtt + 0.5, Some(bare_rtt + 3.0)),
            row(
                "OpenRelay 2 hops",
                ours_up,
                ours_up,
                bare_rtt + 0.6,
                Some(ours_load),
            ),
            Row {
                name: "boringtun-cli 1 hop".to_string(),
                skipped: Some("skipped: not installed".to_string()),
                ..Row::default()
            },
        ];
        relate(&mut rows);
        rows
    }

    #[test]
    fn the_median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([f64::NAN, 7.0]), Some(7.0));
        assert_eq!(median(Vec::new()), None);
    }

    /// Ratios are taken within each round, then their median: a slow round of
    /// wireguard-go must not lift the ratio of a fast round of OpenRelay.
    #[test]
    fn a_summary_is_the_median_of_each_rounds_own_ratios() {
        let rounds = vec![
            round(500.0, 1500.0, 0.10, 2.10),
            round(700.0, 1400.0, 0.08, 3.08),
            round(400.0, 1300.0, 0.12, 2.62),
        ];
        let summary = summarize(&rounds);
        assert_eq!(summary.len(), 4);
        let ours = &summary[2];
        // Ratios 3.0, 2.0, 3.25: median 3.0 (the ratio of the medians would be 2.8).
        assert_eq!(ours.tcp_up_vs_wireguard_go, Some(3.0));
        let m = ours.metrics.as_ref().unwrap();
        assert_eq!(m.tcp_up_mbps, 1400.0);
        assert_eq!(m.tcp_up_retransmits, Some(1400));
        // RTT under load added over each round's own bare path: 2.0, 3.0, 2.5.
        let load = ours.rtt_load_added_ms.unwrap();
        assert!((load - 2.5).abs() < 1e-9, "{load}");
        assert_eq!(summary[1].tcp_up_vs_wireguard_go, Some(1.0));
        assert_eq!(
            summary[3].skipped.as_deref(),
            Some("skipped: not installed")
        );
        assert!(summary[3].metrics.is_none());
        let by_round = ratios_by_round(&rounds);
        let (name, each) = by_round
            .iter()
            .find(|(n, _)| n == "OpenRelay 2 hops")
            .unwrap();
        assert_eq!(name, "OpenRelay 2 hops");
        assert_eq!(each, &["3.00x / 3.00x", "2.00x / 2.00x", "3.25x / 3.25x"]);
        assert!(by_round.iter().all(|(n, _)| n != "boringtun-cli 1 hop"));
    }

    /// A scenario that failed in one round is summed up from the rounds it ran in.
    #[test]
    fn a_round_that_failed_leaves_the_others() {
        let mut rounds = vec![
            round(500.0, 1500.0, 0.1, 2.0),
            round(500.0, 1000.0, 0.1, 2.0),
        ];
        rounds.push(round(500.0, 1200.0, 0.1, 2.0));
        rounds[1][2].metrics = None;
        rounds[1][2].skipped = Some("failed: iperf3 timed out".to_string());
        relate(&mut rounds[1]);
        let ours = &summarize(&rounds)[2];
        assert_eq!(ours.skipped, None);
        assert_eq!(ours.metrics.as_ref().unwrap().tcp_up_mbps, 1350.0);
        let ratio = ours.tcp_up_vs_wireguard_go.unwrap();
        assert!((ratio - 2.7).abs() < 1e-9, "{ratio}");
    }
}
