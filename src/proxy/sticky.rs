//! The sticky layer (REFERENCE 3 steps 3-6, 4.4): what the proxy calls around the backend.
//! [`SessionLayer::on_request`] resolves the request's session and plans who serves it
//! (this node, or the member that owns it); [`SessionLayer::on_response`] applies the
//! backend's directives to the store and hands the changes to the cluster.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::header::{HeaderValue, SET_COOKIE};
use http::{request, response, Uri};
use tokio_util::sync::CancellationToken;

use super::headers::Added;
use crate::cluster::{self, Cluster, NodeInfo, Wait};
use crate::metrics::Metrics;
use crate::session::{
    self as session, Change, CookieConfig, DirectiveError, Key, Names, Outcome, Planned,
    ReplicationConfig, SessionConfig, SessionError, SessionLimits, SessionStore, StaticFilter,
    Unsafe,
};

/// The session state of one request between `on_request` and `on_response`.
#[derive(Default)]
pub(super) struct RequestSession {
    /// The live session the request carried.
    pub key: Option<Key>,
    /// The owner's epoch of that session when the request was planned (this node's).
    pub epoch: Option<u64>,
    /// The client presented some session id (live or not).
    pub presented: bool,
    pub tls: bool,
    /// The client's full id when its route is not the owner's (JvmRouteBinder): the
    /// response rewrites the cookie to `<base>.<this node>`.
    pub rebind: Option<String>,
    /// Acks a takeover waits for (sync mode), settled with the response.
    waits: Vec<Wait>,
    /// Held while this node serves a session it owns: a draining node hands its sessions
    /// over only once the requests that may still write them are done.
    _in_flight: Option<Arc<()>>,
}

/// Where a request goes (REFERENCE 3, 4.4).
pub(super) enum Plan {
    /// The static filter matched: no session work at all.
    Static,
    /// Served by this node's backends.
    Local(RequestSession),
    /// Another member owns the session: forward the request there.
    Forward(NodeInfo),
    /// The owner is gone and this node is its successor: take the session over by a
    /// majority's vote ([`SessionLayer::claim`]), then plan again.
    Claim { key: Key, owner: String },
    /// This node cannot serve the session safely: answered 503 with the reason.
    Refuse(Unsafe),
    /// No copy here of a session the cookie says this node owns: ask the members for it
    /// ([`SessionLayer::locate`]), then plan again.
    Locate(Key),
}

/// Marks a request whose session was looked for at the members, with the owner found: it
/// is planned again without asking twice.
#[derive(Clone)]
pub(super) struct Located(pub(super) Option<String>);

/// What a response waits for before it goes out: the members' acks (sync replication)
/// and this node's own sync of the change to disk (`fsync` persistence).
pub(super) struct Settle {
    pub(super) waits: Vec<Wait>,
    pub(super) durable: Option<crate::session::Durable>,
}

pub(super) struct SessionLayer {
    pub store: Arc<SessionStore>,
    /// Set once the cluster runs; without it changes stay local.
    cluster: OnceLock<Arc<Cluster>>,
    cookie: CookieConfig,
    names: Names,
    /// `[replication] filter`; a reload replaces it (a read lock per request: uncontended).
    filter: std::sync::RwLock<StaticFilter>,
    route: HeaderValue,
    /// `[jvm_route_binder] enabled`.
    binder: bool,
    directive_errors: prometheus_client::metrics::counter::Counter,
    /// Its count of clones is the requests serving an owned session here (see
    /// `RequestSession`): one atomic increment per such request, no lock.
    in_flight: Arc<()>,
    /// Spreads a draining node's session-less requests over the ready members.
    spread: std::sync::atomic::AtomicUsize,
}

impl SessionLayer {
    /// `jvm_route` is this node's route; `binder` is `[jvm_route_binder] enabled`.
    pub(super) fn new(
        jvm_route: &str,
        s: &SessionConfig,
        replication: &ReplicationConfig,
        binder: bool,
        metrics: &Metrics,
    ) -> Result<Self, http::Error> {
        let store = Arc::new(SessionStore::new(
            jvm_route,
            SessionLimits {
                default_max_inactive: s.max_inactive,
                max_session_bytes: s.max_session_bytes,
                max_active_sessions: s.max_active_sessions,
            },
            metrics,
        ));
        let directive_errors = prometheus_client::metrics::counter::Counter::default();
        metrics.with_registry(|r| {
            r.register(
                "session_directive_errors",
                "Backend responses with a malformed session directive (answered 502)",
                directive_errors.clone(),
            )
        });
        Ok(Self {
            store,
            cluster: OnceLock::new(),
            cookie: s.cookie.clone(),
            names: Names::new(&s.header_prefix)?,
            filter: std::sync::RwLock::new(replication.filter.clone()),
            route: session::static_value(jvm_route)?,
            binder,
            directive_errors,
            in_flight: Arc::new(()),
            spread: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// A reload's session limits (the cookie and the header prefix need a restart).
    pub(super) fn set_limits(&self, s: &SessionConfig) {
        self.store.set_limits(&SessionLimits {
            default_max_inactive: s.max_inactive,
            max_session_bytes: s.max_session_bytes,
            max_active_sessions: s.max_active_sessions,
        });
    }

    /// A reload's replication filter.
    pub(super) fn set_filter(&self, replication: &ReplicationConfig) {
        *self.filter.write().unwrap_or_else(|p| p.into_inner()) = replication.filter.clone();
    }

    /// Resolves the request's session: who serves it and, when this node does, adds the
    /// session headers for the backend and strips the `;jsessionid=` parameter. A forwarded
    /// request is left as it came (the owner resolves it again).
    /// The session headers for the backend (REFERENCE 5) go to `added`, which the upstream
    /// client writes after the request's own (a client's session-prefixed headers were
    /// stripped by the header hygiene).
    pub(super) fn on_request(
        &self,
        parts: &mut request::Parts,
        added: &mut Added,
        tls: bool,
    ) -> Plan {
        let filtered = self
            .filter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(parts.uri.path());
        if filtered {
            // No session work, but no session id reaches the backend in the path either.
            let stripped =
                session::take_path_param(parts.uri.path(), &self.cookie.path_param).map(|p| p.1);
            strip_path_param(parts, stripped);
            return Plan::Static;
        }
        let mut rs = RequestSession {
            tls,
            ..Default::default()
        };
        // Cookie first, path parameter second. Both borrow `parts` until the headers are
        // written below (no copy of the id on the common path).
        let path_param = session::take_path_param(parts.uri.path(), &self.cookie.path_param);
        let presented = self
            .cookie
            .from_cookies(&parts.headers)
            .or_else(|| path_param.as_ref().map(|(v, _)| *v));
        rs.presented = presented.is_some();
        let client_id = presented.and_then(session::parse_id);

        let Some(c) = client_id else {
            if let Some(to) = self.elsewhere_while_draining() {
                return Plan::Forward(to);
            }
            strip_path_param(parts, path_param.map(|(_, stripped)| stripped));
            return Plan::Local(rs);
        };
        let me = self.store.route();
        // Read only for a request that names a session.
        let now = Instant::now();
        // The session found while deciding (one store lookup on the common path).
        let mut found = None;
        let decision = match self.cluster.get() {
            None => {
                // No cluster: only this node's store counts.
                found = self
                    .store
                    .access(c.key, now, &mut |ch| self.replicate_async(ch));
                if found.is_some() {
                    cluster::Decision::Local
                } else {
                    cluster::Decision::NoSession
                }
            }
            Some(r) => {
                if !r.has_lease(now) {
                    return Plan::Refuse(Unsafe::NoLease);
                }
                match self
                    .store
                    .access_if_owner(c.key, now, &mut |ch| self.replicate_async(ch))
                {
                    // The common case (sticky traffic at its owner): no member list needed.
                    Ok(f) if !r.is_handing_over() => {
                        found = Some(f);
                        cluster::Decision::Local
                    }
                    Ok(_) => match r.ready_successor(c.base, &r.members()) {
                        // Draining (REFERENCE 4.8): the successor takes the session over.
                        Some(to) => return Plan::Forward(to),
                        None => cluster::Decision::Local,
                    },
                    Err(o) => {
                        let members = r.members();
                        let d = r.decide(c.base, o.as_deref(), c.route, &members);
                        let here =
                            matches!(d, cluster::Decision::TakeOver | cluster::Decision::Local);
                        if here && r.is_handing_over() {
                            if let Some(to) = r.ready_successor(c.base, &members) {
                                return Plan::Forward(to);
                            }
                        }
                        if d == cluster::Decision::TakeOver && r.is_quorum() {
                            let owner = o.as_deref().or(c.route).unwrap_or("").to_string();
                            return Plan::Claim { key: c.key, owner };
                        }
                        // Every member is leaving (a whole-cluster stop): a session this node
                        // cannot find may be at one of them. A 503 to retry, not a new
                        // session in its place.
                        if d == cluster::Decision::NoSession
                            && r.is_handing_over()
                            && !members
                                .iter()
                                .any(|m| m.state == crate::lifecycle::State::Ready)
                        {
                            return Plan::Refuse(Unsafe::ShuttingDown);
                        }
                        // BackupManager: a cookie naming this node, and no copy here. The
                        // session may live on: handed over to a successor on a drain, this
                        // node's copy since dropped. Ask the members once.
                        if d == cluster::Decision::NoSession
                            && o.is_none()
                            && c.route == Some(me)
                            && r.manager() == cluster::Manager::Backup
                        {
                            match parts.extensions.get::<Located>() {
                                None => return Plan::Locate(c.key),
                                // Found: its owner serves it, if ready.
                                Some(Located(Some(owner))) => {
                                    if let Some(m) = members.iter().find(|m| {
                                        m.jvm_route == *owner
                                            && m.state == crate::lifecycle::State::Ready
                                    }) {
                                        return Plan::Forward(m.clone());
                                    }
                                }
                                Some(Located(None)) => {}
                            }
                        }
                        d
                    }
                }
            }
        };
        if let cluster::Decision::Forward(to) = decision {
            return Plan::Forward(to);
        }
        let found = match decision {
            cluster::Decision::Local => found.or_else(|| {
                self.store
                    .access(c.key, now, &mut |ch| self.replicate_async(ch))
            }),
            cluster::Decision::TakeOver => {
                let rep = self.cluster.get();
                let sync = rep.is_some_and(|r| r.is_sync());
                let waits = &mut rs.waits;
                let f = self.store.take_over(c.key, now, &mut |ch| {
                    if let Some(r) = rep {
                        r.replicate(ch, if sync { Some(&mut *waits) } else { None });
                    }
                });
                if f.is_some() {
                    tracing::info!(
                        session = c.base,
                        from = c.route.unwrap_or("-"),
                        "session taken over"
                    );
                }
                f
            }
            cluster::Decision::NoSession | cluster::Decision::Forward(_) => None,
        };
        let Some(found) = found else {
            if let Some(to) = self.elsewhere_while_draining() {
                return Plan::Forward(to);
            }
            strip_path_param(parts, path_param.map(|(_, stripped)| stripped));
            return Plan::Local(rs);
        };
        // Everything taken from the borrowed id before `parts` is written.
        let id_value = HeaderValue::from_str(c.base).ok();
        // JvmRouteBinderValve: the cookie names another node than the owner (this one).
        let original = (self.binder && c.route != Some(me))
            .then(|| presented.map(str::to_string))
            .flatten();
        rs.key = Some(c.key);
        rs.epoch = Some(found.epoch);
        if self.cluster.get().is_some() {
            rs._in_flight = Some(self.in_flight.clone());
        }
        strip_path_param(parts, path_param.map(|(_, stripped)| stripped));
        let h = added;
        if let Some(v) = id_value {
            h.push((self.names.id.clone(), v));
        }
        h.push((self.names.session.clone(), found.rendered));
        h.push((self.names.node.clone(), self.route.clone()));
        if let Some(old) = original {
            if let Ok(v) = HeaderValue::from_str(&old) {
                h.push((self.names.original_id.clone(), v));
            }
            rs.rebind = Some(old);
        }
        Plan::Local(rs)
    }

    /// A draining node creates no session (REFERENCE 4.8): a request without a live session
    /// goes to a ready member, in turn. `None` when not draining or nobody is ready.
    fn elsewhere_while_draining(&self) -> Option<NodeInfo> {
        let r = self.cluster.get().filter(|r| r.is_handing_over())?;
        let mut ready: Vec<NodeInfo> = r
            .members()
            .into_iter()
            .filter(|m| m.state == crate::lifecycle::State::Ready)
            .collect();
        if ready.is_empty() {
            return None;
        }
        ready.sort_by(|a, b| a.jvm_route.cmp(&b.jvm_route));
        let i = self
            .spread
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(ready.swap_remove(i % ready.len()))
    }

    /// Requests serving a session this node owns, now.
    pub(super) fn local_in_flight(&self) -> usize {
        Arc::strong_count(&self.in_flight) - 1
    }

    /// From now on changes go to the cluster (set once, before the node serves).
    pub(super) fn set_cluster(&self, c: Arc<Cluster>) {
        let _ = self.cluster.set(c);
    }

    pub(super) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Queues a change without waiting (touches, expiry, async mode).
    fn replicate_async(&self, c: Change) {
        if let Some(r) = self.cluster.get() {
            r.replicate(c, None);
        }
    }

    /// Applies the backend's directives and sets or clears the cookie; returns what the
    /// response must wait for in sync mode ([`SessionLayer::settle`]). On a malformed
    /// directive the session is unchanged and the caller answers 502.
    /// `directives` are the backend's session-prefixed response headers, which the
    /// upstream client set aside.
    pub(super) fn on_response(
        &self,
        rs: &mut RequestSession,
        parts: &mut response::Parts,
        directives: &[(bytes::Bytes, HeaderValue)],
    ) -> Result<Settle, SessionError> {
        let mut waits = std::mem::take(&mut rs.waits);
        let d = session::parse_directives(directives, &self.names).inspect_err(|e| {
            self.directive_error(rs, e);
        })?;
        if d.is_empty() {
            self.rebind_cookie(rs, parts);
            // A takeover this request made is a write too.
            let durable = if waits.is_empty() {
                None
            } else {
                self.store.durable()
            };
            return Ok(Settle { waits, durable });
        }
        let rep = self.cluster.get();
        let sync = rep.is_some_and(|r| r.is_sync());
        let mut emit = |c: Change| {
            if let Some(r) = rep {
                r.replicate(c, if sync { Some(&mut waits) } else { None });
            }
        };
        let outcome = self
            .store
            .apply_planned(
                rs.key.map(|key| Planned {
                    key,
                    epoch: rs.epoch,
                }),
                &d,
                Instant::now(),
                &mut emit,
            )
            .inspect_err(|e| {
                if let SessionError::Directive(de) = e {
                    self.directive_error(rs, de);
                }
            })?;
        let wrote = outcome != Outcome::Unchanged;
        let cookie = match outcome {
            Outcome::Created(full) | Outcome::Renewed(full) => self.cookie.set(&full, rs.tls),
            Outcome::Invalidated if rs.presented => self.cookie.clear(rs.tls),
            Outcome::Invalidated => None,
            Outcome::Changed | Outcome::Unchanged => {
                self.rebind_cookie(rs, parts);
                None
            }
        };
        if let Some(c) = cookie {
            parts.headers.append(SET_COOKIE, c);
        }
        let durable = if wrote || !waits.is_empty() {
            self.store.durable()
        } else {
            None
        };
        Ok(Settle { waits, durable })
    }

    /// `Set-Cookie: <base>.<this node>` after a failover (JvmRouteBinderValve).
    fn rebind_cookie(&self, rs: &RequestSession, parts: &mut response::Parts) {
        if let (Some(_), Some(key)) = (&rs.rebind, rs.key) {
            if let Some(c) = self
                .cookie
                .set(&session::full_id(&key.base(), self.store.route()), rs.tls)
            {
                parts.headers.append(SET_COOKIE, c);
            }
        }
    }

    /// Sync mode: waits until the members applied the changes (bounded by ack_timeout).
    /// A change a member fenced is [`SessionError::Moved`]; one too few copies hold is
    /// [`SessionError::NoMajority`]: the write did not count.
    pub(super) async fn settle(&self, s: Settle) -> Result<(), SessionError> {
        let Settle { waits, durable } = s;
        let Some(durable) = durable else {
            return self.replicated(waits).await;
        };
        // The members' acks and this node's own sync run at the same time.
        let disk = async {
            durable.await.map_err(|e| SessionError::NoMajority {
                why: Unsafe::NotDurable,
                detail: e.to_string(),
            })
        };
        let (acked, synced) = tokio::join!(self.replicated(waits), disk);
        acked.and(synced)
    }

    /// Sync mode: the members applied the changes (bounded by ack_timeout).
    async fn replicated(&self, waits: Vec<Wait>) -> Result<(), SessionError> {
        match self.cluster.get() {
            Some(r) => r.settle(waits).await.map_err(|e| match e {
                cluster::SettleError::Fenced => SessionError::Moved,
                other => SessionError::NoMajority {
                    why: Unsafe::NotReplicated,
                    detail: other.to_string(),
                },
            }),
            None => Ok(()),
        }
    }

    /// Takes the session `key` of the gone `owner` over by a majority's vote (REFERENCE 4.9),
    /// and in sync mode waits until the members hold the new ownership.
    pub(super) async fn claim(&self, key: Key, owner: &str) -> Result<(), SessionError> {
        let Some(r) = self.cluster.get() else {
            return Ok(());
        };
        let mut waits = Vec::new();
        let sync = r.is_sync();
        let taken = r
            .claim(key, owner, sync.then_some(&mut waits))
            .await
            .map_err(|e| SessionError::NoMajority {
                why: match e {
                    cluster::ClaimError::NoLease => Unsafe::NoLease,
                    cluster::ClaimError::NoMajority { .. } => Unsafe::NoVote,
                    cluster::ClaimError::Lost => Unsafe::ClaimLost,
                },
                detail: e.to_string(),
            })?;
        if taken {
            tracing::info!(session = %key.base(), from = owner, "session taken over by a majority's vote");
        }
        let durable = if taken { self.store.durable() } else { None };
        self.settle(Settle { waits, durable }).await
    }

    /// Asks the members for their copy of `key` (one round, bounded by the ack timeout):
    /// the owner it names, for the next plan.
    pub(super) async fn locate(&self, key: Key) -> Option<String> {
        let r = self.cluster.get()?;
        let owner = r.locate(key).await;
        tracing::debug!(session = %key.base(), owner = owner.as_deref().unwrap_or("-"), "looked for a session at the members");
        owner
    }

    fn directive_error(&self, rs: &RequestSession, e: &DirectiveError) {
        self.directive_errors.inc();
        tracing::warn!(
            session = %rs.key.map_or_else(|| "-".to_string(), |k| k.base()),
            error = %e,
            "malformed session directive from backend: answered 502, session unchanged"
        );
    }

    /// Ends every session this node owns and waits for the cluster to apply it (Tomcat's
    /// `expireSessionsOnShutdown = true`).
    pub(super) async fn end_owned_sessions(&self) -> usize {
        let rep = self.cluster.get();
        let mut waits = Vec::new();
        let now = Instant::now();
        let mut n = 0;
        for key in self.store.owned_keys() {
            let ended = self.store.end_owned(key, now, &mut |c| {
                if let Some(r) = rep {
                    r.replicate(c, Some(&mut waits));
                }
            });
            n += usize::from(ended);
        }
        // Shutting down: a fenced removal is another owner's business now.
        let durable = self.store.durable();
        let _ = self.settle(Settle { waits, durable }).await;
        n
    }

    /// Removes expired sessions and swaps idle ones out, periodically until `shutdown`.
    pub(super) async fn sweep(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    // Off the request threads: a swap pass writes to disk (REFERENCE 4.11).
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let n = me.store.sweep(Instant::now(), &mut |c| me.replicate_async(c));
                        let out = me.store.swap_idle(Instant::now());
                        tracing::debug!(expired = n, swapped_out = out, "sweep");
                    })
                    .await;
                }
            }
        }
    }
}

/// Served here: the `;jsessionid=` parameter never reaches a backend.
fn strip_path_param(parts: &mut request::Parts, stripped: Option<String>) {
    if let Some(stripped) = stripped {
        parts.uri = with_path(&parts.uri, &stripped);
    }
}

fn with_path(uri: &Uri, path: &str) -> Uri {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    match pq.parse() {
        Ok(p) => parts.path_and_query = Some(p),
        Err(_) => return uri.clone(),
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}
