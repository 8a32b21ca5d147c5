//! The kill switch and the routes, applied inside testbed hosts. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use host::{BlockPolicy, Firewall, RoutePlan, Routes, Runner};
use testbed::Testbed;

/// A TCP connection attempt from the client host to the dest host, by python3.
fn tcp_reaches(bed: &Testbed, port: u16) -> bool {
    let script = format!(
        "import socket,sys\ns=socket.socket()\ns.settimeout(1.5)\ntry:\n  s.connect(('{}',{port}))\nexcept ConnectionRefusedError:\n  sys.exit(0)\nexcept Exception:\n  sys.exit(1)\n",
        bed.dest.addr
    );
    // A refused connection (RST) also proves the packet got through.
    bed.command(&bed.client, "python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success()
}

#[test]
fn kill_switch_blocks_all_but_the_allowed_endpoint_and_unblocks() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let fw = Firewall::new(Runner::in_netns(&bed.client.ns));
    assert!(tcp_reaches(&bed, 9), "the testbed routes nothing");
    assert!(!fw.is_blocking().unwrap());
    fw.block(&BlockPolicy {
        allowed_endpoints: vec![format!("{}:51820", bed.ingress.addr).parse().unwrap()],
        tunnel_interface: None,
    })
    .unwrap();
    assert!(fw.is_blocking().unwrap());
    assert!(
        !tcp_reaches(&bed, 9),
        "traffic left the host through the kill switch"
    );
    // Applying again replaces the table in one step.
    fw.block(&BlockPolicy::default()).unwrap();
    fw.unblock().unwrap();
    fw.unblock().unwrap();
    assert!(!fw.is_blocking().unwrap());
    assert!(tcp_reaches(&bed, 9));
}

#[test]
fn routes_are_restored_exactly() {
    if !testbed::required() {
        return;
    }
    let bed = Testbed::new().unwrap();
    let ns = &bed.client.ns;
    bed.exec(
        ns,
        &["ip", "tuntap", "add", "dev", "ortest0", "mode", "tun"],
    )
    .unwrap();
    bed.exec(ns, &["ip", "link", "set", "ortest0", "up"])
        .unwrap();
    let snapshot = || {
        ["-4", "-6"]
            .iter()
            .map(|f| {
                bed.exec(ns, &["ip", f, "rule", "show"]).unwrap()
                    + &bed
                        .exec(ns, &["ip", f, "route", "show", "table", "all"])
                        .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let routes = Routes::new(Runner::in_netns(ns));
    let plan = RoutePlan::new("ortest0");
    let guard = routes.apply(&plan).unwrap();
    let rules = bed.exec(ns, &["ip", "rule", "show"]).unwrap();
    assert!(
        rules.contains("not from all fwmark 0xca6c lookup 51820"),
        "{rules}"
    );
    assert!(rules.contains("suppress_prefixlength 0"), "{rules}");
    let table = bed
        .exec(ns, &["ip", "-6", "route", "show", "table", "51820"])
        .unwrap();
    assert!(table.contains("default dev ortest0"), "{table}");
    guard.restore();
    assert_eq!(snapshot(), before);

    // After a crash (guard forgotten), cleanup removes the leftovers.
    std::mem::forget(routes.apply(&plan).unwrap());
    assert_ne!(snapshot(), before);
    routes.cleanup(&plan);
    assert_eq!(snapshot(), before);
}
