use crate::firewall::valid_interface;
use crate::{HostError, Runner};

/// Policy routing for whole-host mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// The tunnel device.
    pub tun: String,
    /// Routing table holding the default route into the tunnel.
    pub table: u32,
    /// Firewall mark of the tunnel's own packets (they use the main table).
    pub fwmark: u32,
    /// Priority of the `not fwmark` rule; `priority - 1` holds the suppress rule.
    pub priority: u32,
}

impl RoutePlan {
    /// The plan for `tun` with the usual numbers (table and mark 51820).
    pub fn new(tun: &str) -> Self {
        Self {
            tun: tun.to_string(),
            table: 51820,
            fwmark: 51820,
            priority: 32000,
        }
    }

    fn rules(&self) -> [Vec<String>; 2] {
        [
            vec![
                "table".into(),
                "main".into(),
                "suppress_prefixlength".into(),
                "0".into(),
                "priority".into(),
                (self.priority - 1).to_string(),
            ],
            vec![
                "not".into(),
                "fwmark".into(),
                self.fwmark.to_string(),
                "table".into(),
                self.table.to_string(),
                "priority".into(),
                self.priority.to_string(),
            ],
        ]
    }
}

/// Applies and removes [`RoutePlan`]s.
#[derive(Debug, Clone)]
pub struct Routes {
    runner: Runner,
}

/// Routes that are in place; [`RouteGuard::restore`] (or drop) removes them.
#[derive(Debug)]
pub struct RouteGuard {
    routes: Routes,
    plan: RoutePlan,
    active: bool,
}

impl Routes {
    /// Route changes through `runner`.
    pub fn new(runner: Runner) -> Self {
        Self { runner }
    }

    /// Sends all IPv4 and IPv6 traffic into `plan.tun`, except packets carrying the mark
    /// and routes more specific than the default in the main table (the local network).
    pub fn apply(&self, plan: &RoutePlan) -> Result<RouteGuard, HostError> {
        if !valid_interface(&plan.tun) || plan.priority < 2 {
            return Err(HostError::Invalid {
                what: "route plan",
                value: format!("{plan:?}"),
            });
        }
        // Leftovers of a crash would make `add` fail; remove them first.
        self.cleanup(plan);
        let guard = RouteGuard {
            routes: self.clone(),
            plan: plan.clone(),
            active: true,
        };
        let table = plan.table.to_string();
        for family in ["-4", "-6"] {
            self.runner.run(
                "ip",
                &[
                    family, "route", "add", "default", "dev", &plan.tun, "table", &table,
                ],
                None,
            )?;
            for rule in plan.rules() {
                let mut args = vec![family, "rule", "add"];
                args.extend(rule.iter().map(String::as_str));
                self.runner.run("ip", &args, None)?;
            }
        }
        Ok(guard)
    }

    /// Removes whatever `plan` may have added; errors (nothing to remove) are ignored.
    pub fn cleanup(&self, plan: &RoutePlan) {
        let table = plan.table.to_string();
        for family in ["-4", "-6"] {
            for rule in plan.rules() {
                let mut args = vec![family, "rule", "del"];
                args.extend(rule.iter().map(String::as_str));
                while self.runner.run("ip", &args, None).is_ok() {}
            }
            let _ = self
                .runner
                .run("ip", &[family, "route", "flush", "table", &table], None);
        }
    }
}

impl RouteGuard {
    /// Removes the routes and rules this guard added.
    pub fn restore(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        if std::mem::take(&mut self.active) {
            self.routes.cleanup(&self.plan);
        }
    }
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.undo();
    }
}
