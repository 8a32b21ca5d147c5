use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use crate::capture::Capture;
use crate::Error;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One host of the testbed.
#[derive(Debug, Clone)]
pub struct Host {
    /// Role name (client, ingress, egress, dest).
    pub name: &'static str,
    /// The network namespace.
    pub ns: String,
    /// The host's interface towards the router.
    pub iface: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
    /// Its IPv6 address.
    pub addr6: Ipv6Addr,
}

/// The hosts and the router, alive until dropped.
pub struct Testbed {
    /// The user's machine.
    pub client: Host,
    /// The first relay's machine.
    pub ingress: Host,
    /// The second relay's machine.
    pub egress: Host,
    /// A server on the internet.
    pub dest: Host,
    router: String,
    children: Mutex<Vec<Child>>,
}

fn run(cmd: &mut Command) -> Result<String, Error> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: line.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: line,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

impl Testbed {
    /// Builds the namespaces, links, addresses and routes.
    pub fn new() -> Result<Self, Error> {
        let id = format!(
            "or{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let router = format!("{id}r");
        ip(&["netns", "add", &router])?;
        let bed = Self {
            client: Host::new(&id, "client", 1),
            ingress: Host::new(&id, "ingress", 2),
            egress: Host::new(&id, "egress", 3),
            dest: Host::new(&id, "dest", 4),
            router,
            children: Mutex::new(Vec::new()),
        };
        bed.exec(&bed.router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        bed.exec(
            &bed.router,
            &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
        )?;
        bed.exec(&bed.router, &["ip", "link", "set", "lo", "up"])?;
        let hosts_file = bed.hosts_file();
        for (i, h) in bed.hosts().into_iter().enumerate() {
            let n = i + 1;
            let router_if = format!("{}r", h.iface);
            ip(&["netns", "add", &h.ns])?;
            // `ip netns exec` bind-mounts these over /etc/resolv.conf and /etc/hosts: each
            // host gets its own, with no resolver outside the testbed.
            let etc = Self::etc_dir(&h.ns);
            std::fs::create_dir_all(&etc).map_err(|e| Error::Capture(e.to_string()))?;
            std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n")
                .map_err(|e| Error::Capture(e.to_string()))?;
            std::fs::write(etc.join("hosts"), &hosts_file)
                .map_err(|e| Error::Capture(e.to_string()))?;
            ip(&[
                "link",
                "add",
                &h.iface,
                "netns",
                &h.ns,
                "type",
                "veth",
                "peer",
                "name",
                &router_if,
                "netns",
                &bed.router,
            ])?;
            bed.exec(
                &bed.router,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.18.{n}.1/24"),
                    "dev",
                    &router_if,
                ],
            )?;
            bed.exec(
                &bed.router,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:db8:{n}::1/64"),
                    "dev",
                    &router_if,
                    "nodad",
                ],
            )?;
            bed.exec(&bed.router, &["ip", "link", "set", &router_if, "up"])?;
            bed.exec(&h.ns, &["ip", "link", "set", "lo", "up"])?;
            bed.exec(
                &h.ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", h.addr),
                    "dev",
                    &h.iface,
                ],
            )?;
            bed.exec(
                &h.ns,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", h.addr6),
                    "dev",
                    &h.iface,
                    "nodad",
                ],
            )?;
            bed.exec(&h.ns, &["ip", "link", "set", &h.iface, "up"])?;
            bed.exec(
                &h.ns,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("198.18.{n}.1"),
                ],
            )?;
            bed.exec(
                &h.ns,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("2001:db8:{n}::1"),
                ],
            )?;
        }
        Ok(bed)
    }

    /// Where `ip netns exec` finds a namespace's own /etc files.
    pub fn etc_dir(ns: &str) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(ns)
    }

    /// /etc/hosts of every host: each host's name under `openrelay.test`.
    fn hosts_file(&self) -> String {
        let mut s = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for h in self.hosts() {
            s.push_str(&format!(
                "{} {}.openrelay.test\n{} {}.openrelay.test\n",
                h.addr, h.name, h.addr6, h.name
            ));
        }
        s
    }

    /// The four hosts.
    pub fn hosts(&self) -> [&Host; 4] {
        [&self.client, &self.ingress, &self.egress, &self.dest]
    }

    /// A command that runs inside `host`'s namespace.
    pub fn command(&self, host: &Host, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns, program]);
        c
    }

    /// Runs a command in a namespace and returns its output, or an error with its stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, Error> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Starts a long-running process in `host`; it is killed when the testbed is dropped
    /// (or earlier with [`Testbed::kill_all`]).
    pub fn spawn(
        &self,
        host: &Host,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<u32, Error> {
        let child = self.start(host, args, stdout, stderr)?;
        Ok(self.keep(child))
    }

    /// Like [`Testbed::spawn`], with the process's standard output for the caller to read.
    pub fn spawn_piped(
        &self,
        host: &Host,
        args: &[&str],
        stderr: Stdio,
    ) -> Result<(u32, ChildStdout), Error> {
        let mut child = self.start(host, args, Stdio::piped(), stderr)?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Spawn {
            command: format!("{args:?}"),
            source: std::io::Error::other("no standard output pipe"),
        })?;
        Ok((self.keep(child), stdout))
    }

    fn start(
        &self,
        host: &Host,
        args: &[&str],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Child, Error> {
        let mut cmd = self.command(host, args.first().copied().unwrap_or("true"));
        cmd.args(args.get(1..).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        cmd.spawn().map_err(|source| Error::Spawn {
            command: format!("{args:?}"),
            source,
        })
    }

    /// Keeps a child to kill when the testbed is dropped; returns its pid.
    fn keep(&self, child: Child) -> u32 {
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        pid
    }

    /// Starts tcpdump on `host`'s link to the router.
    pub fn capture(&self, host: &Host) -> Result<Capture, Error> {
        Capture::start(self, host)
    }

    /// Kills one process this testbed started (SIGKILL) and reaps it.
    pub fn kill(&self, pid: u32) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut c = children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills every process this testbed started.
    pub fn kill_all(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        children.clear();
    }
}

impl Host {
    fn new(id: &str, name: &'static str, n: u8) -> Self {
        let short = name.chars().next().unwrap_or('h');
        Self {
            name,
            ns: format!("{id}{short}"),
            iface: format!("{id}{short}"),
            addr: Ipv4Addr::new(198, 18, n, 2),
            addr6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(n), 0, 0, 0, 0, 2),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.kill_all();
        for h in self.hosts() {
            let _ = ip(&["netns", "del", &h.ns]);
            let _ = std::fs::remove_dir_all(Self::etc_dir(&h.ns));
        }
        let _ = ip(&["netns", "del", &self.router]);
    }
}
