//! The fault-injection lab, shared by `tests/chaos.rs` (sized for CI) and
//! `bench/chaos.rs` (the full table).
//!
//! Three caracal nodes, each in a network namespace of its own, on a bridge that lives in a
//! fourth namespace (the hub), so nothing of the host's firewall or bridge settings
//! applies. The test process reaches the bridge through one veth from the root namespace
//! (198.18.S.254, RFC 2544's benchmarking range, on a link the lab created): the backend
//! listens there and the clients send from there. Faults: kill -9 (and restart), SIGSTOP
//! past drop_time then SIGCONT, a cut from the peers only (an atomic iptables-restore in
//! the node's namespace; clients still reach it), and the node's link down.
//!
//! Clients each keep a session of their own and write in DNS round-robin order over the
//! nodes, retrying at once on the next node after any failure. The backend records each
//! write's number in the session (one attribute per write, so a client's timed-out request
//! that still runs cannot clobber a later one) and answers the writes it saw, so the
//! checker knows,
//! for every acked write, whether it survived (lost acked writes), whether a later
//! response missed it (stale reads), and, after convergence, whether the copies agree
//! (divergent copies; split-brain when they disagree on the owner).

// Shared by a test and a bench, each using a part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::whole::seen_writes;
use crate::common::*;

/// The lab nodes' admin listeners are off loopback: they need a token.
pub const ADMIN_TOKEN: &str = "chaos-lab-admin-token-0123";
use http::StatusCode;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct Setup {
    pub manager: &'static str,
    pub send: &'static str,
    pub clients: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Kill,
    KillRestart,
    Stop,
    Cut,
    LinkDown,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Kill,
        Fault::KillRestart,
        Fault::Stop,
        Fault::Cut,
        Fault::LinkDown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 of the busiest owner",
            Fault::KillRestart => "kill -9 and restart",
            Fault::Stop => "SIGSTOP past drop_time, then SIGCONT",
            Fault::Cut => "cut off from its peers, then healed",
            Fault::LinkDown => "its link down, then up",
        }
    }
}

/// What one round found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub acked: usize,
    pub failed: usize,
    pub lost: usize,
    pub stale: usize,
    pub split: usize,
    pub divergent: usize,
    /// The longest time a client waited between two acked writes while the fault lasted.
    pub stall: Duration,
}

impl Outcome {
    pub fn add(&mut self, o: &Outcome) {
        self.acked += o.acked;
        self.failed += o.failed;
        self.lost += o.lost;
        self.stale += o.stale;
        self.split += o.split;
        self.divergent += o.divergent;
        self.stall = self.stall.max(o.stall);
    }
}

pub const MESH_PORT: u16 = 4000;
pub const HTTP_PORT: u16 = 8080;
pub const ADMIN_PORT: u16 = 9090;
/// Client timeout: a stopped node accepts connections and never answers.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why the lab cannot run here (not root, a tool missing), or `None`.
pub fn unavailable() -> Option<String> {
    let uid = sh(&["id", "-u"]).unwrap_or_default();
    if uid.trim() != "0" {
        return Some("needs root to create network namespaces".into());
    }
    for tool in ["ip", "iptables-restore"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// The namespaces and links of one lab; all deleted on drop.
pub struct Lab {
    tag: String,
    subnet: u8,
    hub: String,
    ns: Vec<String>,
    /// The cluster's CA and node certificates: the mesh beyond loopback is mutual TLS
    /// (REFERENCE 4.10), so the faults are tried on the deployment's own shape, forwards over
    /// mesh channels included.
    certs: tempfile::TempDir,
    /// The nodes' session files (`[persistence] mode = "fsync"`): the faults are tried with
    /// sessions on disk too, a restarted node starting from its own copies.
    data: tempfile::TempDir,
}

impl Lab {
    /// The `[persistence]` section every lab node runs with.
    pub fn persistence(&self) -> String {
        format!(
            "[persistence]\nmode = \"fsync\"\ndir = \"{}\"\n",
            self.data.path().display()
        )
    }

    pub fn create() -> Result<Lab, String> {
        Self::create_n(3)
    }

    /// A lab of `n` node namespaces (at most 9).
    pub fn create_n(n_nodes: usize) -> Result<Lab, String> {
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 10_000);
        let subnet = ((pid + n * 7) % 200 + 20) as u8;
        let lab = Lab {
            hub: format!("crh{tag}"),
            ns: (1..=n_nodes).map(|i| format!("crn{tag}-{i}")).collect(),
            tag,
            subnet,
            certs: tempfile::tempdir().map_err(|e| e.to_string())?,
            data: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let routes: Vec<String> = (1..=n_nodes).map(|i| format!("n{i}")).collect();
        write_certs(lab.certs.path(), &routes.join(","));
        let net = format!("198.18.{subnet}.0/24");
        if sh(&["ip", "route", "show", &net])?.contains("198.18") {
            return Err(format!("{net} is already routed on this machine"));
        }
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        let t = &self.tag;
        sh(&["ip", "netns", "add", &self.hub])?;
        self.exec(&self.hub, &["ip", "link", "set", "lo", "up"])?;
        self.exec(&self.hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        self.exec(&self.hub, &["ip", "link", "set", "br0", "up"])?;
        for (i, ns) in self.ns.iter().enumerate() {
            let (a, b) = (format!("cra{t}-{}", i + 1), format!("crb{t}-{}", i + 1));
            sh(&["ip", "netns", "add", ns])?;
            self.exec(ns, &["ip", "link", "set", "lo", "up"])?;
            sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
            sh(&["ip", "link", "set", &a, "netns", &self.hub])?;
            sh(&["ip", "link", "set", &b, "netns", ns])?;
            self.exec(&self.hub, &["ip", "link", "set", &a, "master", "br0", "up"])?;
            let ip = format!("{}/24", self.ip(i));
            self.exec(ns, &["ip", "addr", "add", &ip, "dev", &b])?;
            self.exec(ns, &["ip", "link", "set", &b, "up"])?;
        }
        let (r, h) = (format!("crr{t}"), format!("crs{t}"));
        sh(&["ip", "link", "add", &r, "type", "veth", "peer", "name", &h])?;
        sh(&["ip", "link", "set", &h, "netns", &self.hub])?;
        self.exec(&self.hub, &["ip", "link", "set", &h, "master", "br0", "up"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.host()),
            "dev",
            &r,
        ])?;
        sh(&["ip", "link", "set", &r, "up"])?;
        Ok(())
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.ns[i]
    }

    /// The cluster CA and the node certificates (`n1`, `n2`, ...).
    pub fn certs(&self) -> &std::path::Path {
        self.certs.path()
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, i as u8 + 1)
    }

    /// The root namespace's end of the lab: backend and clients.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, 254)
    }

    /// Drops everything between node `i` and its peers (both ways), atomically; clients
    /// still reach it.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        let mut rules = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for j in (0..self.ns.len()).filter(|j| *j != i) {
            rules += &format!("-A INPUT -s {} -j DROP\n", self.ip(j));
            rules += &format!("-A OUTPUT -d {} -j DROP\n", self.ip(j));
        }
        rules += "COMMIT\n";
        self.restore(i, &rules)
    }

    pub fn heal(&self, i: usize) -> Result<(), String> {
        self.restore(
            i,
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        )
    }

    fn restore(&self, i: usize, rules: &str) -> Result<(), String> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns[i], "iptables-restore"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "iptables-restore: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub fn link(&self, i: usize, up: bool) -> Result<(), String> {
        let dev = format!("crb{}-{}", self.tag, i + 1);
        let state = if up { "up" } else { "down" };
        self.exec(&self.ns[i], &["ip", "link", "set", &dev, state])
            .map(|_| ())
    }

    fn conf(&self, i: usize, s: &Setup, backend: SocketAddr) -> String {
        let peers: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("\"{}:{MESH_PORT}\"", self.ip(j)))
            .collect();
        let ip = self.ip(i);
        let tls = tls_section(self.certs.path(), &format!("n{}", i + 1));
        let conf = format!(
            "[node]\njvm_route = \"n{}\"\nshutdown_grace = \"1s\"\n\
             [http]\nlisten = [\"{ip}:{HTTP_PORT}\"]\n[admin]\nlisten = \"{ip}:{ADMIN_PORT}\"\ntoken = \"{ADMIN_TOKEN}\"\n\
             [backends]\nservers = [\"http://{backend}\"]\n[backends.health]\nenabled = false\n\
             [session]\nmax_session_bytes = 1048576\n\
             [cluster]\nenabled = true\nmanager = \"{}\"\nsend_options = \"{}\"\nack_timeout = \"500ms\"\n\
             key = \"chaos-test-cluster-key\"\n\
             [cluster.membership]\nkind = \"static\"\nmembers = [{}]\ndomain = \"chaos\"\n\
             frequency = \"200ms\"\ndrop_time = \"1s\"\nverify_timeout = \"500ms\"\n\
             [cluster.receiver]\naddress = \"{ip}\"\nport = {MESH_PORT}\nauto_bind = 1\n",
            i + 1,
            s.manager,
            s.send,
            peers.join(", ")
        );
        conf + &self.persistence() + &tls
    }

    async fn start(&self, i: usize, s: &Setup, backend: SocketAddr) -> Node {
        Node::start_in_netns(&self.conf(i, s, backend), &self.ns[i]).await
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.ns.iter().chain(std::iter::once(&self.hub)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Client {
    /// A client with no session yet.
    pub fn new() -> Client {
        Client {
            cookie: None,
            acked: Vec::new(),
            history: Vec::new(),
            failed: 0,
            stale: 0,
            stall: Duration::ZERO,
        }
    }
}

/// A client's record of one round.
pub struct Client {
    pub cookie: Option<String>,
    pub acked: Vec<u64>,
    /// (k, serving node, when) of each ack (CHAOS_DEBUG).
    history: Vec<(u64, String, Instant)>,
    pub failed: usize,
    pub stale: usize,
    pub stall: Duration,
}

/// A running cluster in a lab.
pub struct Cluster<'a> {
    lab: &'a Lab,
    setup: Setup,
    backend: TestBackend,
    nodes: Vec<Node>,
}

impl<'a> Cluster<'a> {
    pub async fn start(lab: &'a Lab, setup: Setup) -> Cluster<'a> {
        let backend = TestBackend::start_on("b", SocketAddr::new(lab.host().into(), 0)).await;
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(lab.start(i, &setup, backend.addr).await);
        }
        let c = Cluster {
            lab,
            setup,
            backend,
            nodes,
        };
        c.wait_formed().await;
        c
    }

    /// Every node's log (for a failing run).
    pub fn dump_logs(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            eprintln!("==== n{} ====\n{}", i + 1, n.log_text());
        }
    }

    fn http(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.lab.ip(i).into(), HTTP_PORT)
    }

    fn admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.lab.ip(i).into(), ADMIN_PORT)
    }

    async fn wait_formed(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        'outer: loop {
            assert!(Instant::now() < deadline, "the lab cluster did not form");
            tokio::time::sleep(Duration::from_millis(100)).await;
            for i in 0..3 {
                let Ok(r) = try_http(self.admin(i), get("/status")).await else {
                    continue 'outer;
                };
                let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let ready = s["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["state"] == "ready"));
                if !ready {
                    continue 'outer;
                }
            }
            return;
        }
    }

    /// Runs one round: fresh sessions, load, the fault on the node owning most of them,
    /// heal, convergence, check.
    pub async fn round(&mut self, fault: Fault) -> Outcome {
        let n = self.setup.clients;
        let stop = Arc::new(AtomicBool::new(false));
        let fault_on = Arc::new(AtomicBool::new(false));
        let addrs: Vec<SocketAddr> = (0..3).map(|i| self.http(i)).collect();
        let mut tasks = Vec::new();
        for c in 0..n {
            let (addrs, stop, fault_on) = (addrs.clone(), stop.clone(), fault_on.clone());
            tasks.push(tokio::spawn(async move {
                client(c, addrs, stop, fault_on).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let target = self.busiest_owner().await;
        fault_on.store(true, Ordering::SeqCst);
        self.inject(fault, target).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fault_on.store(false, Ordering::SeqCst);
        stop.store(true, Ordering::SeqCst);
        let mut clients = Vec::new();
        for t in tasks {
            clients.push(t.await.expect("client task"));
        }
        if fault == Fault::Kill {
            // The next round needs three nodes again.
            self.nodes[target] = self.lab.start(target, &self.setup, self.backend.addr).await;
            self.wait_formed().await;
        }
        self.check(&clients).await
    }

    async fn busiest_owner(&self) -> usize {
        let mut owned = [0usize; 3];
        for (i, o) in owned.iter_mut().enumerate() {
            if let Ok(r) = try_http(self.admin(i), get("/status")).await {
                let s: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                *o = s["sessions"]["owned"].as_u64().unwrap_or(0) as usize;
            }
        }
        (0..3).max_by_key(|i| owned[*i]).unwrap_or(0)
    }

    async fn inject(&mut self, fault: Fault, i: usize) {
        let hold = Duration::from_millis(2500);
        match fault {
            Fault::Kill => {
                self.nodes[i].kill();
                tokio::time::sleep(hold).await;
            }
            Fault::KillRestart => {
                self.nodes[i].kill();
                tokio::time::sleep(Duration::from_millis(1000)).await;
                self.nodes[i] = self.lab.start(i, &self.setup, self.backend.addr).await;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            Fault::Stop => {
                self.nodes[i].signal("STOP");
                tokio::time::sleep(hold).await;
                self.nodes[i].signal("CONT");
            }
            Fault::Cut => {
                self.lab.cut(i).expect("cut");
                tokio::time::sleep(hold).await;
                self.lab.heal(i).expect("heal");
            }
            Fault::LinkDown => {
                self.lab.link(i, false).expect("link down");
                tokio::time::sleep(hold).await;
                self.lab.link(i, true).expect("link up");
            }
        }
    }

    /// Waits for the copies to converge (at most 4 s), then counts.
    async fn check(&self, clients: &[Client]) -> Outcome {
        let copies_wanted = if self.setup.manager == "backup" { 2 } else { 3 };
        let admins: Vec<SocketAddr> = (0..3).map(|i| self.admin(i)).collect();
        check(&admins, clients, copies_wanted).await
    }
}

/// Waits for the copies of each client's session on the nodes at `admins` to
/// converge to `copies_wanted` agreeing copies (at most 4 s), then counts.
pub async fn check(admins: &[SocketAddr], clients: &[Client], copies_wanted: usize) -> Outcome {
    let mut o = Outcome::default();
    for c in clients {
        o.acked += c.acked.len();
        o.failed += c.failed;
        o.stale += c.stale;
        o.stall = o.stall.max(c.stall);
        let Some(base) = c.cookie.as_deref().and_then(|id| id.split('.').next()) else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(4);
        let copies = loop {
            let copies = copies(admins, base).await;
            let same = copies.windows(2).all(|w| {
                (&w[0]["owner"], &w[0]["version"], &w[0]["attributes"])
                    == (&w[1]["owner"], &w[1]["version"], &w[1]["attributes"])
            });
            if (same && copies.len() == copies_wanted) || Instant::now() > deadline {
                break copies;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let owners: std::collections::HashSet<String> = copies
            .iter()
            .map(|c| c["owner"].as_str().unwrap_or("").to_string())
            .collect();
        if owners.len() > 1 {
            o.split += 1;
        }
        let same = copies
            .windows(2)
            .all(|w| w[0]["attributes"] == w[1]["attributes"]);
        if !same || copies.len() != copies_wanted {
            o.divergent += 1;
            if std::env::var_os("CHAOS_DEBUG").is_some() {
                let brief: Vec<String> = copies
                    .iter()
                    .map(|s| {
                        let n = s["attributes"].as_object().map_or(0, |m| m.len());
                        format!(
                            "{} holds owner={} epoch={} v={} writes={n}",
                            s["held_by"], s["owner"], s["epoch"], s["version"]
                        )
                    })
                    .collect();
                eprintln!("divergent: session {base}: {brief:?}");
            }
        }
        // The owner's own copy is the session.
        let owner_copy = copies.iter().find(|s| {
            s["owner"]
                .as_str()
                .is_some_and(|r| r == s["held_by"].as_str().unwrap_or("-"))
        });
        let log: std::collections::HashSet<u64> = owner_copy
            .and_then(|s| s["attributes"].as_object())
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.strip_prefix('k')?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let lost: Vec<&u64> = c.acked.iter().filter(|k| !log.contains(k)).collect();
        if !lost.is_empty() && std::env::var_os("CHAOS_DEBUG").is_some() {
            eprintln!("lost: session {base}: {lost:?}");
            let t0 = std::time::SystemTime::now();
            let now = Instant::now();
            for (k, node, at) in &c.history {
                if lost.iter().any(|l| l.abs_diff(*k) < 4) {
                    let wall = t0 - now.duration_since(*at);
                    eprintln!("  acked k={k} by {node} at {:?}", wall);
                }
            }
        }
        o.lost += lost.len();
    }
    o
}

/// Every node's copy of session `base`, each with `held_by` (its route).
async fn copies(admins: &[SocketAddr], base: &str) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    for (i, admin) in admins.iter().enumerate() {
        // Off loopback, session contents need the admin token.
        let mut req = get(&format!("/sessions/{base}"));
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        if let Ok(Ok(r)) = tokio::time::timeout(CLIENT_TIMEOUT, try_http(*admin, req)).await {
            if r.status == StatusCode::OK {
                let mut s: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                s["held_by"] = format!("n{}", i + 1).into();
                v.push(s);
            }
        }
    }
    v
}

/// One client: its own session, writes in round-robin order over the nodes, the next node
/// at once after any failure. Bounded: it stops when `stop` is set (the round's end).
pub async fn client(
    id: usize,
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    fault_on: Arc<AtomicBool>,
) -> Client {
    let mut c = Client::new();
    let mut next = id;
    let mut k = 0u64;
    let mut last_ack = Instant::now();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
        k += 1;
        let addr = addrs[next % addrs.len()];
        next += 1;
        let mut req = http::Request::get(format!("/log?k={k}")).header("host", "chaos");
        if let Some(id) = &c.cookie {
            req = req.header("cookie", format!("JSESSIONID={id}"));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let r = tokio::time::timeout(CLIENT_TIMEOUT, try_http(addr, req)).await;
        let Ok(Ok(r)) = r else {
            c.failed += 1;
            continue;
        };
        if r.status != StatusCode::OK {
            c.failed += 1;
            // A 503 comes back at once: do not spin.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if let Some(id) = set_cookie_id(&r) {
            c.cookie = Some(id);
        }
        let seen = seen_writes(&r.body);
        // Every write acked before this request was sent must be in what it saw.
        if c.acked.iter().any(|k| !seen.contains(k)) {
            c.stale += 1;
            if std::env::var_os("CHAOS_DEBUG").is_some() {
                let missing: Vec<&u64> = c.acked.iter().filter(|k| !seen.contains(k)).collect();
                eprintln!(
                    "stale read: client {id} k={k} at {addr} cookie {:?}: missing {missing:?}; {}",
                    c.cookie,
                    r.text()
                );
            }
        }
        if fault_on.load(Ordering::SeqCst) {
            c.stall = c.stall.max(last_ack.elapsed());
        }
        c.acked.push(k);
        if std::env::var_os("CHAOS_DEBUG").is_some() {
            let node = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|b| b["node"].as_str().map(str::to_string))
                .unwrap_or_default();
            c.history
                .push((k, format!("{node} via {addr}"), Instant::now()));
        }
        last_ack = Instant::now();
    }
    c
}
