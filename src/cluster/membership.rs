//! Who is in the cluster (REFERENCE 4.1): the member table, fed by authenticated pongs, and
//! the failure detector.
//!
//! - A member is added from its own pong: a heartbeat (multicast), a static address or a
//!   DNS answer only makes a candidate, which is pinged at its announced mesh address; the
//!   pong of the same process admits it. It is removed at once when it announces `leaving`.
//! - Silent for `drop_time`: suspect; verified over the mesh (connect + ping/pong within
//!   `verify_timeout`, like Tomcat's TcpFailureDetector but with a read test): alive ->
//!   kept (suspect-but-alive, re-verified every `drop_time` while silent); dead -> removed.
//!   [`Membership::suspect`] verifies a member at once (a failed send or forward).
//! - A heartbeat with this node's own route from another process is a conflict that the
//!   starting node resolves by verification ([`super::Cluster::join`]).
//! - A new process with the route of a silent member replaces it at once, so a crashed node
//!   that restarts within `drop_time` rejoins.
//!
//! The table is a `std::sync::Mutex<HashMap>`: never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use super::config::MembershipConfig;
use super::error::MeshError;
use super::link::Link;
use super::messages::{Heartbeat, NodeInfo, Reject};
use super::metrics::ClusterMetrics;
use crate::lifecycle::State;
use crate::tasks::Tasks;

/// New nodes pinged for admission at once (with TLS).
const MAX_ADMITTING: usize = 64;

/// Node ids whose last heartbeat sequence is remembered (the replay map).
const MAX_SEEN: usize = 4096;

/// A tagged heartbeat older or newer than this (sender's wall clock) is a replay.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub info: NodeInfo,
    pub last_heard: Instant,
    pub suspect: bool,
    verifying: bool,
    last_verified: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(super) enum MemberEvent {
    Added(NodeInfo),
    Changed(NodeInfo),
    Removed { info: NodeInfo, reason: String },
}

pub(super) struct Membership {
    pub link: Arc<Link>,
    pub cfg: MembershipConfig,
    members: Mutex<HashMap<u64, Member>>,
    /// Highest heartbeat sequence per node id, kept after removal so a replayed packet of
    /// a removed member cannot bring it back.
    seen: Mutex<HashMap<u64, u64>>,
    /// Another process announcing this node's route.
    conflict: Mutex<Option<NodeInfo>>,
    /// New nodes being pinged before they are admitted (with TLS).
    admitting: Mutex<std::collections::HashSet<u64>>,
    /// Every other route heard this run that did not announce `leaving`: the cluster size
    /// of multicast membership without `expected_members` (REFERENCE 4.9).
    routes: Mutex<std::collections::BTreeSet<String>>,
    events: broadcast::Sender<MemberEvent>,
    /// What the admin page lists (members added and removed, takeovers).
    pub log: super::events::Events,
    pub metrics: ClusterMetrics,
    /// Owns the verification tasks.
    tasks: Tasks,
}

impl Membership {
    pub(super) fn new(
        link: Arc<Link>,
        cfg: MembershipConfig,
        metrics: ClusterMetrics,
        tasks: Tasks,
    ) -> Self {
        Self {
            link,
            cfg,
            members: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            conflict: Mutex::new(None),
            admitting: Mutex::new(std::collections::HashSet::new()),
            routes: Mutex::new(std::collections::BTreeSet::new()),
            events: broadcast::channel(1024).0,
            log: Default::default(),
            metrics,
            tasks,
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<u64, Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.events.subscribe()
    }

    /// The other members now.
    pub(super) fn members(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self.table().values().cloned().collect();
        v.sort_by(|a, b| a.info.jvm_route.cmp(&b.info.jvm_route));
        v
    }

    fn routes_seen(&self) -> MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many other routes were heard this run and did not leave.
    pub(super) fn routes_heard(&self) -> usize {
        self.routes_seen().len()
    }

    /// The member with route `route`, if any.
    pub(super) fn by_route(&self, route: &str) -> Option<Member> {
        self.table()
            .values()
            .find(|m| m.info.jvm_route == route)
            .cloned()
    }

    pub(super) fn conflict(&self) -> Option<NodeInfo> {
        self.conflict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn clear_conflict(&self) {
        *self.conflict.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A heartbeat datagram that decoded and authenticated.
    pub(super) fn on_heartbeat(
        self: &Arc<Self>,
        hb: Heartbeat,
        tagged: bool,
    ) -> Result<(), Reject> {
        if hb.domain != self.cfg.domain {
            return Err(Reject::Domain);
        }
        if hb.info.node_id == self.link.node_id() {
            return Ok(()); // our own, looped back
        }
        if tagged {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if now.abs_diff(hb.sent_unix_ms) > MAX_CLOCK_SKEW.as_millis() as u64 {
                return Err(Reject::Replay);
            }
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_SEEN && !seen.contains_key(&hb.info.node_id) {
                // Bounded: past the cap only current members' sequences are kept. A
                // replay of a forgotten process is still refused by its tag's age (with a
                // key) and is only a heartbeat of a gone process (without one). The table
                // is never locked before `seen`, so this order cannot deadlock.
                let t = self.table();
                seen.retain(|id, _| t.contains_key(id));
                tracing::debug!(kept = seen.len(), "heartbeat replay map pruned");
            }
            let last = seen.entry(hb.info.node_id).or_insert(0);
            if hb.seq <= *last {
                return Err(Reject::Replay);
            }
            *last = hb.seq;
        }
        self.hear(hb.info);
        Ok(())
    }

    /// A heartbeat or an inbound ping: news of a member, or a candidate. A datagram or a
    /// connection alone admits no one: a node not in the table is pinged at the mesh
    /// address it announced and added from the pong of the same process (with TLS, its
    /// certificate naming its route; with a key, the pong's tag). So spoofed heartbeats
    /// with random ids make no member, no per-peer series and no route in the cluster
    /// size.
    /// A `leaving` from a process not in the table changes nothing.
    pub(super) fn hear(self: &Arc<Self>, info: NodeInfo) {
        if self.table().contains_key(&info.node_id) {
            self.observe(info);
        } else if info.state != State::Leaving {
            self.admit(info);
        }
    }

    /// Pings a member heard of for the first time and adds it from its pong (verified by
    /// [`Link::ping`]: the tag, and with TLS the CA and the route its certificate names).
    /// One at a time per node, at most [`MAX_ADMITTING`] at once (past that, a candidate
    /// waits for its next heartbeat).
    fn admit(self: &Arc<Self>, info: NodeInfo) {
        {
            let mut a = self.admitting.lock().unwrap_or_else(|p| p.into_inner());
            if a.contains(&info.node_id) || a.len() >= MAX_ADMITTING {
                return;
            }
            a.insert(info.node_id);
        }
        let this = self.clone();
        self.tasks.spawn_until_stopped(async move {
            match this.link.ping(info.mesh_addr).await {
                Ok(pong) if pong.node_id == info.node_id => this.observe(pong),
                Ok(_) => {
                    this.link.forget(info.mesh_addr);
                    tracing::debug!(route = %info.jvm_route, "another process answered at its mesh address: not admitted")
                }
                Err(e) => {
                    this.metrics.rejected("not_admitted").inc();
                    tracing::warn!(route = %info.jvm_route, error = %e, "heartbeat from a node that failed the mesh handshake: not admitted");
                }
            }
            this.admitting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&info.node_id);
        });
    }

    /// What a member says about itself (heartbeat, ping or pong).
    pub(super) fn observe(&self, info: NodeInfo) {
        if info.node_id == self.link.node_id() {
            return;
        }
        if info.jvm_route == self.link.route() {
            *self.conflict.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
            return;
        }
        if info.state == State::Leaving {
            self.routes_seen().remove(&info.jvm_route);
            self.remove(info.node_id, "announced leaving");
            return;
        }
        if !self.routes_seen().contains(&info.jvm_route) {
            self.routes_seen().insert(info.jvm_route.clone());
        }
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let mut t = self.table();
            let same_route = t
                .iter()
                .find(|(id, m)| **id != info.node_id && m.info.jvm_route == info.jvm_route)
                .map(|(id, m)| (*id, m.last_heard, m.suspect));
            if let Some((old_id, last_heard, suspect)) = same_route {
                // The old process is clearly alive: this newcomer is the duplicate and will
                // refuse to start on its own; do not flap the route over to it.
                if !suspect && last_heard.elapsed() < self.cfg.frequency * 2 {
                    return;
                }
                if let Some(old) = t.remove(&old_id) {
                    events.push(MemberEvent::Removed {
                        info: old.info,
                        reason: "replaced by a restarted process with the same route".into(),
                    });
                }
            }
            match t.get_mut(&info.node_id) {
                // Older news of this process than what the table has (a pong generated
                // before the ping that told us `draining`, processed after it): it proves
                // the member alive, but its state is not the current one.
                Some(m) if info.alive_ms < m.info.alive_ms => {
                    m.last_heard = now;
                    m.suspect = false;
                }
                Some(m) => {
                    if m.info.state != info.state || m.info.http_addr != info.http_addr {
                        events.push(MemberEvent::Changed(info.clone()));
                    }
                    m.info = info;
                    m.last_heard = now;
                    m.suspect = false;
                    m.last_verified = None;
                }
                None => {
                    events.push(MemberEvent::Added(info.clone()));
                    t.insert(
                        info.node_id,
                        Member {
                            info,
                            last_heard: now,
                            suspect: false,
                            verifying: false,
                            last_verified: None,
                        },
                    );
                }
            }
            self.count_states(&t);
        }
        self.emit(events);
    }

    pub(super) fn remove(&self, node_id: u64, reason: &str) {
        let removed = {
            let mut t = self.table();
            let r = t.remove(&node_id);
            self.count_states(&t);
            r
        };
        if let Some(m) = removed {
            self.link.forget(m.info.mesh_addr);
            self.emit(vec![MemberEvent::Removed {
                info: m.info,
                reason: reason.to_string(),
            }]);
        }
    }

    fn emit(&self, events: Vec<MemberEvent>) {
        for e in events {
            match &e {
                MemberEvent::Added(i) => tracing::info!(
                    route = %i.jvm_route, mesh = %i.mesh_addr, http = %i.http_addr,
                    state = i.state.as_str(), "member added"
                ),
                MemberEvent::Changed(i) => tracing::info!(
                    route = %i.jvm_route, mesh = %i.mesh_addr, state = i.state.as_str(),
                    "member changed"
                ),
                MemberEvent::Removed { info, reason } => tracing::info!(
                    route = %info.jvm_route, mesh = %info.mesh_addr, %reason, "member removed"
                ),
            }
            match &e {
                MemberEvent::Added(i) => {
                    self.log
                        .push("member_added", &i.jvm_route, i.mesh_addr.to_string())
                }
                MemberEvent::Removed { info, reason } => {
                    self.log
                        .push("member_removed", &info.jvm_route, reason.clone())
                }
                MemberEvent::Changed(_) => {}
            }
            // No subscriber is fine.
            let _ = self.events.send(e);
        }
    }

    fn count_states(&self, t: &HashMap<u64, Member>) {
        let mut n = [0i64; 4];
        for m in t.values() {
            n[m.info.state as usize] += 1;
        }
        for (i, s) in State::ALL.into_iter().enumerate() {
            self.metrics.members(s).set(n[i]);
        }
    }

    /// Connect + ping/pong within `verify_timeout`: the member's announced state if it is
    /// the same process, else why not. Counted either way.
    pub(super) async fn probe(&self, info: &NodeInfo) -> Result<State, MeshError> {
        let res = self.link.ping(info.mesh_addr).await;
        let out = match res {
            Ok(pong) if pong.node_id == info.node_id => Ok(pong.state),
            Ok(_) => Err(MeshError::OtherProcess),
            Err(e) => Err(e),
        };
        self.metrics
            .verification(if out.is_ok() { "alive" } else { "dead" })
            .inc();
        out
    }

    /// Verifies a member now and waits for the answer (a refused forward): `true` if it is
    /// alive; a dead member is removed before this returns.
    pub(super) async fn check_now(self: &Arc<Self>, node_id: u64) -> bool {
        let Some(info) = self.table().get(&node_id).map(|m| m.info.clone()) else {
            return false;
        };
        match self.probe(&info).await {
            Ok(_) => true,
            Err(why) => {
                self.remove(
                    node_id,
                    &format!("a forward failed and verification failed: {why}"),
                );
                false
            }
        }
    }

    /// The other members' announced state, for routing.
    /// Whether `ip` is a current member's announced mesh address: its connections are not
    /// held to the limits for strangers (a flood from elsewhere must not crowd out the
    /// pings that tell a member alive, nor a burst of its own forwarding channels).
    pub(super) fn is_member_ip(&self, ip: std::net::IpAddr) -> bool {
        self.table()
            .values()
            .any(|m| m.info.mesh_addr.ip().to_canonical() == ip)
    }

    pub(super) fn infos(&self) -> Vec<NodeInfo> {
        self.table().values().map(|m| m.info.clone()).collect()
    }

    /// The other members that have not announced `leaving`: those that count for a
    /// majority, vote, answer digests and hold copies.
    pub(super) fn live(&self) -> Vec<NodeInfo> {
        self.table()
            .values()
            .filter(|m| m.info.state != State::Leaving)
            .map(|m| m.info.clone())
            .collect()
    }

    /// The live members that may hold new copies (BackupManager): not `draining`, which
    /// is about to leave.
    pub(super) fn placeable(&self) -> Vec<NodeInfo> {
        self.table()
            .values()
            .filter(|m| !matches!(m.info.state, State::Leaving | State::Draining))
            .map(|m| m.info.clone())
            .collect()
    }

    /// Verifies a member now (a failed send or forward), unless already under way.
    pub(super) fn suspect(self: &Arc<Self>, node_id: u64) {
        let target = {
            let mut t = self.table();
            t.get_mut(&node_id).and_then(|m| {
                if m.verifying {
                    return None;
                }
                m.verifying = true;
                m.suspect = true;
                Some(m.info.clone())
            })
        };
        if let Some(info) = target {
            self.tasks.spawn_until_stopped(self.clone().verify(info));
        }
    }

    /// A silent member: keep (verified alive) or drop.
    async fn verify(self: Arc<Self>, info: NodeInfo) {
        match self.probe(&info).await {
            Ok(state) => {
                let mut t = self.table();
                if let Some(m) = t.get_mut(&info.node_id) {
                    m.verifying = false;
                    m.last_verified = Some(Instant::now());
                    m.info.state = state;
                }
                tracing::info!(route = %info.jvm_route, "silent member answered verification: kept");
            }
            Err(why) => {
                self.remove(
                    info.node_id,
                    &format!("silent and failed verification: {why}"),
                );
            }
        }
    }

    /// The failure detector: verifies members silent for `drop_time`.
    pub(super) async fn detect(self: Arc<Self>) {
        let shutdown = self.tasks.token().clone();
        let every = (self.cfg.frequency / 2).max(Duration::from_millis(20));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let drop_time = self.cfg.drop_time;
            let due: Vec<NodeInfo> = {
                let mut t = self.table();
                t.values_mut()
                    .filter(|m| {
                        !m.verifying
                            && m.last_heard.elapsed() > drop_time
                            && m.last_verified.is_none_or(|v| v.elapsed() > drop_time)
                    })
                    .map(|m| {
                        m.verifying = true;
                        m.suspect = true;
                        m.info.clone()
                    })
                    .collect()
            };
            for info in due {
                tracing::info!(route = %info.jvm_route, "member silent: verifying over the mesh");
                self.tasks.spawn_until_stopped(self.clone().verify(info));
            }
        }
    }
}
