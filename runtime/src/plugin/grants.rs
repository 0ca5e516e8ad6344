//! Operator grants: what each plugin may actually have, decided by the operator's config rather
//! than by the plugin's own manifest.
//!
//! A manifest asks ([`Permissions`]); a [`Grant`] from the config's `[grants.NAME]` table allows;
//! [`resolve`] turns the two into the [`Granted`] set a plugin runs under, or refuses the plugin
//! with a message naming the first permission it asked for and was not granted. Capabilities
//! (models, environment variables, folders, hosts, the Python sandbox) are denied unless
//! granted; limits (memory, deadline, tokens, fuel) default to the host's defaults and a
//! manifest may ask for less, never more.
//!
//! The embedded default plugins ship with the binary the operator chose to run, so without a
//! `[grants.NAME]` entry of their own they are granted what their manifests ask.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime_wasi::sockets::SocketAddrUse;

use super::manifest::{Access, FolderAccess, Manifest, Permissions, parse_host};

/// Defaults for plugins whose manifest and grant do not say.
pub const DEFAULT_MEMORY_MB: u64 = 256;
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_TOKENS_PER_CALL: u32 = 2048;

/// What the operator allows one plugin, from `[grants.NAME]` in the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Grant {
    /// Models it may call (`"*"`: any).
    #[serde(default)]
    pub models: Vec<String>,
    pub max_tokens_per_call: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub fuel: Option<u64>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub folders: Vec<FolderGrant>,
    /// `host:port` or `host:*`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether the granted host *names* may lead to internal addresses (loopback, private
    /// networks: a compose or cluster service name). Off, a name reaches only public
    /// addresses, so whoever controls its DNS cannot point it inside ([`is_internal`]).
    /// Operator-only: a manifest cannot ask for it.
    #[serde(default)]
    pub internal_hosts: bool,
    #[serde(default)]
    pub run_python: bool,
}

/// A host folder the operator maps to the path a plugin asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FolderGrant {
    /// Path the plugin sees (as in its manifest).
    pub path: String,
    /// Folder on the host.
    pub host: PathBuf,
    #[serde(default)]
    pub access: Access,
}

impl Grant {
    /// Everything `manifest` asks for (folders excepted: a manifest cannot name host paths).
    pub fn as_asked(manifest: &Manifest) -> Self {
        let p = &manifest.permissions;
        Self {
            models: p.models.clone(),
            max_tokens_per_call: p.max_tokens_per_call,
            tokens_per_minute: p.tokens_per_minute,
            memory_mb: p.memory_mb,
            timeout_ms: p.timeout_ms,
            fuel: p.fuel,
            env: p.env.clone(),
            folders: Vec::new(),
            hosts: p.hosts.clone(),
            internal_hosts: false,
            run_python: p.run_python,
        }
    }
}

/// What a plugin runs under: the manifest's asks, checked against and bounded by the grant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Granted {
    pub models: Vec<String>,
    pub max_tokens_per_call: u32,
    pub tokens_per_minute: Option<u32>,
    pub memory_mb: u64,
    pub timeout_ms: u64,
    pub fuel: Option<u64>,
    pub env: Vec<String>,
    pub folders: Vec<FolderGrant>,
    pub hosts: Vec<String>,
    /// See [`Grant::internal_hosts`].
    pub internal_hosts: bool,
    pub run_python: bool,
}

impl Granted {
    /// Whether the plugin may call `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }

    /// One line naming every limit and capability a plugin runs under.
    pub fn summary(&self) -> String {
        let mut parts = vec![
            format!("memory {} MiB", self.memory_mb),
            format!("timeout {} ms", self.timeout_ms),
        ];
        if let Some(fuel) = self.fuel {
            parts.push(format!("fuel {fuel}"));
        }
        if !self.models.is_empty() {
            parts.push(format!(
                "models {} (max {} tokens per call{})",
                self.models.join(","),
                self.max_tokens_per_call,
                self.tokens_per_minute
                    .map(|n| format!(", {n} per minute"))
                    .unwrap_or_default()
            ));
        }
        if !self.env.is_empty() {
            parts.push(format!("env {}", self.env.join(",")));
        }
        for f in &self.folders {
            parts.push(format!(
                "folder {} = {} ({})",
                f.path,
                f.host.display(),
                f.access.as_str()
            ));
        }
        if !self.hosts.is_empty() {
            let internal = if self.internal_hosts {
                " (names may be internal)"
            } else {
                ""
            };
            parts.push(format!("hosts {}{internal}", self.hosts.join(",")));
        }
        if self.run_python {
            parts.push("run-python".into());
        }
        parts.join("; ")
    }
}

/// Ceilings no grant can exceed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HostLimits {
    pub max_memory_mb: u64,
    pub max_timeout_ms: u64,
    /// Plugin calls that can run at once from preallocated instance slots (the pooling
    /// allocator); 0 allocates every instance on demand instead.
    pub instance_pool: u32,
    /// MiB the memory caps of the plugin calls running at once may add up to (unset: half of
    /// this machine's memory): a call waits until its cap fits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_memory_mb: Option<u64>,
}

impl HostLimits {
    /// [`HostLimits::plugin_memory_mb`], or half of the memory this process may use: the
    /// machine's, or its container's limit when lower (4 GiB when neither can be read). A call
    /// whose cap is larger takes all of it, alone.
    pub fn plugin_memory_total_mb(&self) -> u64 {
        let machine = crate::doctor::meminfo().map(|(total, _)| total);
        let usable = match (machine, container_memory_limit()) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        let half = usable.map_or(4096, |bytes| (bytes / 2) >> 20);
        self.plugin_memory_mb.unwrap_or(half).max(16)
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1's), if one is set.
fn container_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    // "max" (v2) or a number near u64::MAX (v1) means no limit.
    .and_then(|text| text.trim().parse::<u64>().ok())
    .filter(|&bytes| bytes < 1 << 60)
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_memory_mb: 1024,
            max_timeout_ms: 300_000,
            instance_pool: 64,
            plugin_memory_mb: None,
        }
    }
}

/// Check `asked` against `grant`: the first permission asked for and not granted is the error.
pub fn resolve(asked: &Permissions, grant: &Grant, limits: &HostLimits) -> Result<Granted, String> {
    // Every shortfall is named at once: an operator fixing grants should not meet them one
    // restart at a time.
    let mut problems = Vec::new();
    for model in &asked.models {
        if !grant.models.iter().any(|g| g == "*" || g == model) {
            problems.push(format!("model {model:?} is not granted"));
        }
    }
    let max_tokens_per_call = kept(
        &mut problems,
        bounded_u32(
            "max-tokens-per-call",
            asked.max_tokens_per_call,
            grant.max_tokens_per_call,
            DEFAULT_MAX_TOKENS_PER_CALL,
        ),
    );
    let tokens_per_minute = kept(
        &mut problems,
        optional_budget(
            "tokens-per-minute",
            asked.tokens_per_minute.map(u64::from),
            grant.tokens_per_minute.map(u64::from),
        ),
    );
    let memory_mb = kept(
        &mut problems,
        bounded_u64(
            "memory-mb",
            asked.memory_mb,
            grant.memory_mb,
            DEFAULT_MEMORY_MB,
        ),
    );
    let timeout_ms = kept(
        &mut problems,
        bounded_u64(
            "timeout-ms",
            asked.timeout_ms,
            grant.timeout_ms,
            DEFAULT_TIMEOUT_MS,
        ),
    );
    let fuel = kept(
        &mut problems,
        optional_budget("fuel", asked.fuel, grant.fuel),
    );
    for name in &asked.env {
        if !grant.env.contains(name) {
            problems.push(format!("env {name:?} is not granted"));
        }
    }
    let folders: Vec<_> = asked
        .folders
        .iter()
        .filter_map(|want| kept(&mut problems, grant_folder(want, &grant.folders)))
        .collect();
    for host in &asked.hosts {
        if !host_covered(host, &grant.hosts) {
            problems.push(format!("host {host:?} is not granted"));
        }
    }
    if asked.run_python && !grant.run_python {
        problems.push("run-python is not granted".into());
    }
    match (
        max_tokens_per_call,
        tokens_per_minute,
        memory_mb,
        timeout_ms,
        fuel,
    ) {
        (
            Some(max_tokens_per_call),
            Some(tokens_per_minute),
            Some(memory_mb),
            Some(timeout_ms),
            Some(fuel),
        ) if problems.is_empty() => Ok(Granted {
            models: asked.models.clone(),
            max_tokens_per_call,
            tokens_per_minute: tokens_per_minute.map(|n| n as u32),
            memory_mb: memory_mb.min(limits.max_memory_mb),
            timeout_ms: timeout_ms.min(limits.max_timeout_ms),
            fuel,
            env: asked.env.clone(),
            folders,
            hosts: asked.hosts.clone(),
            internal_hosts: grant.internal_hosts && !asked.hosts.is_empty(),
            run_python: asked.run_python,
        }),
        _ => Err(problems.join("; ")),
    }
}

/// The value of `result`, or `None` with its error added to `problems`.
fn kept<T>(problems: &mut Vec<String>, result: Result<T, String>) -> Option<T> {
    result.map_err(|e| problems.push(e)).ok()
}

/// A limit with a default: the manifest may ask up to the grant (or the default when the grant
/// says nothing); unasked, the plugin gets the smaller of the default and the grant.
fn bounded_u64(
    what: &str,
    asked: Option<u64>,
    granted: Option<u64>,
    default: u64,
) -> Result<u64, String> {
    let ceiling = granted.unwrap_or(default);
    match asked {
        Some(a) if a > ceiling => Err(format!("{what} {a} is above the {ceiling} granted")),
        Some(a) => Ok(a),
        None => Ok(default.min(ceiling)),
    }
}

fn bounded_u32(
    what: &str,
    asked: Option<u32>,
    granted: Option<u32>,
    default: u32,
) -> Result<u32, String> {
    bounded_u64(
        what,
        asked.map(u64::from),
        granted.map(u64::from),
        u64::from(default),
    )
    .map(|n| n as u32)
}

/// A budget without a default (absent = unlimited): the stricter of asked and granted.
fn optional_budget(
    what: &str,
    asked: Option<u64>,
    granted: Option<u64>,
) -> Result<Option<u64>, String> {
    match (asked, granted) {
        (Some(a), Some(g)) if a > g => Err(format!("{what} {a} is above the {g} granted")),
        (Some(a), _) => Ok(Some(a)),
        (None, g) => Ok(g),
    }
}

fn grant_folder(want: &FolderAccess, grants: &[FolderGrant]) -> Result<FolderGrant, String> {
    let grant = grants
        .iter()
        .find(|g| g.path == want.path)
        .ok_or_else(|| format!("folder {:?} is not granted", want.path))?;
    if want.access > grant.access {
        return Err(format!(
            "folder {:?} {} is not granted (only {})",
            want.path,
            want.access.as_str(),
            grant.access.as_str()
        ));
    }
    Ok(FolderGrant {
        path: want.path.clone(),
        host: grant.host.clone(),
        access: want.access,
    })
}

fn host_covered(asked: &str, grants: &[String]) -> bool {
    let Ok((host, port)) = parse_host(asked) else {
        return false;
    };
    grants.iter().any(|g| entry_covers(g, host, port))
}

/// Whether the `host:port` entry `entry` covers `host` at `port` (`None`: any port, which only
/// an entry with `*` covers). Names compare case-insensitively and are not resolved.
pub fn entry_covers(entry: &str, host: &str, port: Option<u16>) -> bool {
    match parse_host(entry) {
        Ok((name, entry_port)) => {
            name.eq_ignore_ascii_case(host) && (entry_port.is_none() || entry_port == port)
        }
        Err(_) => false,
    }
}

/// Whether `ip` is inside this machine or a private network: loopback, private, shared and
/// benchmarking ranges, "this network" (0.0.0.0/8), link-local (cloud metadata services),
/// unique-local and the old site-local, multicast, broadcast, the local-use NAT64 prefix
/// (64:ff9b:1::/48), and internal IPv4 addresses written as IPv6 (mapped, IPv4-compatible,
/// 6to4, or through the well-known NAT64 prefix 64:ff9b::/96).
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv4Addr};
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            let shared = first == 100 && (second & 0xc0) == 64;
            let benchmarking = first == 198 && (second & 0xfe) == 18;
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || first == 0
                || shared
                || benchmarking
        }
        IpAddr::V6(a) => {
            let segments = a.segments();
            let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            let site_local = (segments[0] & 0xffc0) == 0xfec0;
            let local_nat64 = segments[..3] == [0x64, 0xff9b, 1];
            let [.., hi, lo] = segments;
            let last_32_bits = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64
                || segments[..6] == [0; 6]; // IPv4-compatible (deprecated)
            let embedded = if last_32_bits {
                Some(v4(hi, lo))
            } else if segments[0] == 0x2002 {
                Some(v4(segments[1], segments[2])) // 6to4
            } else {
                a.to_ipv4_mapped()
            };
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unique_local()
                || a.is_unicast_link_local()
                || site_local
                || local_nat64
                || embedded.is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Whether a granted host names where it leads: an address, or `localhost`. Any other name is
/// resolved through DNS, which whoever controls the name controls: such a name may only lead
/// to public addresses ([`is_internal`]), so a grant of `api.vendor.example` cannot be turned
/// into one of the loopback or the cloud's metadata service by a DNS record.
pub fn names_its_address(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok() || bare.eq_ignore_ascii_case("localhost")
}

/// Whether a granted `host` may lead to `ip`: an internal address only for a host that names
/// its address ([`names_its_address`]), or with the operator's `internal-hosts` (`internal`).
pub fn may_lead_to(host: &str, ip: std::net::IpAddr, internal: bool) -> bool {
    internal || names_its_address(host) || !is_internal(ip)
}

/// The hosts one plugin call may open TCP connections to. A granted name is looked up when the
/// plugin first connects to one of its ports, under the call's deadline, not when the call
/// starts, and once per call: a call that never connects waits on no DNS, a slow resolver
/// cannot hold a call past its deadline, and many connects do not mean many lookups.
#[derive(Debug)]
pub struct GrantedHosts {
    /// The granted `host:port` entries (`None`: any port), with a name's addresses once looked
    /// up (none when the lookup failed or ran out of time).
    entries: Vec<(
        String,
        Option<u16>,
        tokio::sync::OnceCell<Vec<std::net::IpAddr>>,
    )>,
    /// Whether granted names may lead to internal addresses ([`Grant::internal_hosts`]).
    internal: bool,
    deadline: Instant,
}

impl GrantedHosts {
    pub fn new(hosts: &[String], internal: bool, deadline: Instant) -> Self {
        let entries = hosts
            .iter()
            .filter_map(|entry| {
                let (host, port) = parse_host(entry).ok()?;
                Some((host.to_string(), port, tokio::sync::OnceCell::new()))
            })
            .collect();
        Self {
            entries,
            internal,
            deadline,
        }
    }

    /// Whether the plugin may use `addr` this way: connect to an address of a granted host on
    /// a granted port, or the implicit bind to an unspecified local address a connect performs;
    /// nothing else (no listening, no explicit binds). A name's internal addresses count only
    /// for `localhost` or with the operator's `internal-hosts` ([`names_its_address`]).
    pub async fn allow(&self, addr: std::net::SocketAddr, use_: SocketAddrUse) -> bool {
        match use_ {
            SocketAddrUse::TcpConnect => {}
            SocketAddrUse::TcpBind => return addr.ip().is_unspecified() && addr.port() == 0,
            _ => return false,
        }
        for (host, port, looked_up) in &self.entries {
            if port.is_some_and(|p| p != addr.port()) {
                continue;
            }
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                if ip == addr.ip() {
                    return true;
                }
                continue;
            }
            if !may_lead_to(host, addr.ip(), self.internal) {
                continue;
            }
            let addresses = looked_up
                .get_or_init(|| async {
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    let lookup = tokio::net::lookup_host((host.as_str(), 0));
                    match tokio::time::timeout(left, lookup).await {
                        Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                        _ => Vec::new(),
                    }
                })
                .await;
            if addresses.contains(&addr.ip()) {
                return true;
            }
        }
        false
    }
}

/// Tokens a plugin used over the last minute, shared by all its calls. A generation reserves
/// its tokens before it starts and settles what it really used after, so calls running at
/// once cannot each spend the same remainder of the budget.
#[derive(Debug, Default)]
pub struct TokenMeter {
    spent: Mutex<Spent>,
}

#[derive(Debug, Default)]
struct Spent {
    /// (reservation id, when, tokens) in the order they were taken.
    entries: VecDeque<(u64, Instant, u64)>,
    next_id: u64,
}

impl Spent {
    fn used(&mut self) -> u64 {
        let now = Instant::now();
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| now.duration_since(*at) > TokenMeter::WINDOW)
        {
            self.entries.pop_front();
        }
        self.entries.iter().map(|(_, _, n)| n).sum()
    }
}

/// Tokens set aside for one generation ([`TokenMeter::reserve`]).
#[derive(Debug, Clone, Copy)]
pub struct Reservation {
    id: u64,
    /// Whether it counts against a budget (tokens under no budget are not kept).
    metered: bool,
    /// How many tokens the generation may produce.
    pub tokens: u32,
}

impl TokenMeter {
    const WINDOW: Duration = Duration::from_secs(60);

    fn lock(&self) -> std::sync::MutexGuard<'_, Spent> {
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens used (or reserved) in the last minute.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// Set aside up to `want` tokens of a `budget` per minute (`None`: no budget), or `None`
    /// when the budget is spent.
    pub fn reserve(&self, budget: Option<u32>, want: u32) -> Option<Reservation> {
        let mut spent = self.lock();
        let tokens = match budget {
            // Nothing to count against: keeping an entry per call would grow without end.
            None => {
                return Some(Reservation {
                    id: 0,
                    metered: false,
                    tokens: want,
                });
            }
            Some(budget) => {
                let left = u64::from(budget).saturating_sub(spent.used());
                if left == 0 {
                    return None;
                }
                want.min(u32::try_from(left).unwrap_or(u32::MAX))
            }
        };
        let id = spent.next_id;
        spent.next_id += 1;
        spent
            .entries
            .push_back((id, Instant::now(), u64::from(tokens)));
        Some(Reservation {
            id,
            metered: true,
            tokens,
        })
    }

    /// Replace `reservation` with the tokens the generation really used (its prompt included,
    /// so it may exceed the reservation).
    pub fn settle(&self, reservation: Reservation, used: u64) {
        if !reservation.metered {
            return;
        }
        let mut spent = self.lock();
        // The newest entries are the likeliest: search from the back.
        match spent
            .entries
            .iter_mut()
            .rev()
            .find(|(id, _, _)| *id == reservation.id)
        {
            Some(entry) => entry.2 = used,
            // Reserved over a minute ago: what it used counts from now.
            None => spent
                .entries
                .push_back((reservation.id, Instant::now(), used)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_granted_name_reaches_only_public_addresses_and_an_address_itself() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "198.18.0.1",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::808:808",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            let ip: std::net::IpAddr = internal.parse().expect("address");
            assert!(is_internal(ip), "{internal}");
        }
        for public in [
            "93.184.216.34",
            "100.128.0.1",
            "198.20.0.1",
            "2606:2800:220:1::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "::8.8.8.8",
            "2002:808:808::1",
        ] {
            let ip: std::net::IpAddr = public.parse().expect("address");
            assert!(!is_internal(ip), "{public}");
        }
        for operator_named in ["127.0.0.1", "[::1]", "10.0.0.7", "LOCALHOST"] {
            assert!(names_its_address(operator_named), "{operator_named}");
        }
        assert!(!names_its_address("api.vendor.example"));
    }

    #[tokio::test]
    async fn a_call_connects_only_to_granted_hosts_and_ports() {
        let in_a_minute = Instant::now() + Duration::from_secs(60);
        let granted = |hosts: &[&str], internal: bool| {
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            GrantedHosts::new(&hosts, internal, in_a_minute)
        };
        let at = |text: &str| text.parse::<std::net::SocketAddr>().expect("address");
        let connect = SocketAddrUse::TcpConnect;
        // An address granted as such stays reachable, internal or not, on its port only.
        let address = granted(&["10.0.0.7:443"], false);
        assert!(address.allow(at("10.0.0.7:443"), connect).await);
        assert!(!address.allow(at("10.0.0.7:80"), connect).await);
        assert!(!address.allow(at("10.0.0.8:443"), connect).await);
        // localhost leads where it says; `*` is any port.
        let local = granted(&["localhost:*"], false);
        assert!(local.allow(at("127.0.0.1:8080"), connect).await);
        assert!(!local.allow(at("10.0.0.7:8080"), connect).await);
        // A name may not lead inside unless the operator said so; without that, it is not even
        // looked up for an internal address.
        let name = granted(&["api.vendor.example:443"], false);
        assert!(!name.allow(at("127.0.0.1:443"), connect).await);
        assert!(!name.allow(at("169.254.169.254:443"), connect).await);
        // The bind a connect makes is allowed; listening and explicit binds are not.
        assert!(address.allow(at("0.0.0.0:0"), SocketAddrUse::TcpBind).await);
        assert!(
            !address
                .allow(at("0.0.0.0:8080"), SocketAddrUse::TcpBind)
                .await
        );
        assert!(
            !address
                .allow(at("10.0.0.7:443"), SocketAddrUse::TcpListen)
                .await
        );
        // Nothing granted, nothing reachable.
        assert!(!granted(&[], true).allow(at("127.0.0.1:443"), connect).await);
    }

    fn asks(toml_permissions: &str) -> Permissions {
        let text = format!(
            "name=\"p\"\nversion=\"1\"\nworld=\"reviewer\"\n[permissions]\n{toml_permissions}"
        );
        Manifest::parse(&text).expect("manifest").permissions
    }

    fn grant(toml: &str) -> Grant {
        toml::from_str(toml).expect("grant")
    }

    fn denied(asked: &str, granted: &str) -> String {
        resolve(&asks(asked), &grant(granted), &HostLimits::default()).expect_err("must be refused")
    }

    #[test]
    fn generations_at_once_cannot_spend_the_same_remainder_of_a_budget() {
        let meter = TokenMeter::default();
        let first = meter.reserve(Some(100), 70).expect("budget left");
        assert_eq!(first.tokens, 70);
        // A second call while the first runs gets only what the first did not reserve.
        let second = meter.reserve(Some(100), 70).expect("budget left");
        assert_eq!(second.tokens, 30);
        assert!(
            meter.reserve(Some(100), 1).is_none(),
            "the budget is all reserved"
        );
        // The first used less than it reserved (prompt included): the rest comes back.
        meter.settle(first, 40);
        assert_eq!(meter.used(), 70);
        assert_eq!(meter.reserve(Some(100), 50).expect("left").tokens, 30);
        // No budget: anything, and nothing kept to count against.
        assert_eq!(meter.reserve(None, 500).expect("unlimited").tokens, 500);
        assert_eq!(meter.used(), 100);
    }

    #[test]
    fn nothing_asked_gets_the_defaults_and_no_capabilities() {
        let g = resolve(&asks(""), &Grant::default(), &HostLimits::default()).expect("ok");
        assert_eq!(g.memory_mb, DEFAULT_MEMORY_MB);
        assert_eq!(g.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(g.models.is_empty() && g.env.is_empty() && g.folders.is_empty());
        assert!(!g.run_python && g.fuel.is_none() && g.tokens_per_minute.is_none());
    }

    #[test]
    fn each_ungranted_capability_is_named() {
        assert!(denied("models=[\"m\"]", "").contains("model \"m\""));
        assert!(denied("models=[\"*\"]", "models=[\"m\"]").contains("model \"*\""));
        assert!(denied("env=[\"HOME\"]", "env=[\"USER\"]").contains("env \"HOME\""));
        assert!(denied("folders=[{path=\"/d\"}]", "").contains("folder \"/d\""));
        assert!(
            denied(
                "folders=[{path=\"/d\", access=\"read-write\"}]",
                "folders=[{path=\"/d\", host=\"/tmp\"}]"
            )
            .contains("read-write is not granted")
        );
        assert!(denied("hosts=[\"a.example:443\"]", "hosts=[\"a.example:80\"]").contains("host"));
        assert!(denied("run-python=true", "").contains("run-python"));
        assert!(denied("memory-mb=512", "").contains("memory-mb 512"));
        assert!(denied("timeout-ms=9000", "timeout-ms=1000").contains("timeout-ms"));
        assert!(denied("fuel=100", "fuel=10").contains("fuel 100"));
        assert!(
            denied("tokens-per-minute=1000", "tokens-per-minute=10").contains("tokens-per-minute")
        );
        assert!(
            denied("max-tokens-per-call=4096", "max-tokens-per-call=64").contains("max-tokens")
        );
    }

    #[test]
    fn granted_asks_run_with_what_was_asked_and_the_grant_caps_the_rest() {
        let g = resolve(
            &asks(
                "models=[\"m\"]\nenv=[\"A\"]\nfolders=[{path=\"/d\"}]\nhosts=[\"x.example:443\"]\nrun-python=true\nmemory-mb=64",
            ),
            &grant(
                "models=[\"*\"]\nenv=[\"A\",\"B\"]\nfolders=[{path=\"/d\", host=\"/srv/d\", access=\"read-write\"}]\nhosts=[\"X.example:*\"]\nrun-python=true\ntokens-per-minute=500\nfuel=99",
            ),
            &HostLimits::default(),
        )
        .expect("granted");
        assert_eq!(g.models, ["m"]);
        assert_eq!(
            g.env,
            ["A"],
            "only what was asked, not all that was granted"
        );
        assert_eq!(g.folders[0].access, Access::ReadOnly);
        assert_eq!(g.folders[0].host, PathBuf::from("/srv/d"));
        assert_eq!(g.memory_mb, 64);
        assert_eq!(
            g.tokens_per_minute,
            Some(500),
            "the operator's budget applies"
        );
        assert_eq!(g.fuel, Some(99));
        assert!(g.allows_model("m") && !g.allows_model("n"));
    }

    #[test]
    fn host_limits_cap_every_grant() {
        let limits = HostLimits {
            max_memory_mb: 32,
            max_timeout_ms: 100,
            ..HostLimits::default()
        };
        let g = resolve(&asks("memory-mb=64"), &grant("memory-mb=64"), &limits).expect("ok");
        assert_eq!((g.memory_mb, g.timeout_ms), (32, 100));
    }

    #[test]
    fn the_meter_sums_recent_tokens() {
        let m = TokenMeter::default();
        let a = m.reserve(Some(1000), 50).expect("budget left");
        let b = m.reserve(Some(1000), 50).expect("budget left");
        m.settle(a, 5);
        m.settle(b, 7);
        assert_eq!(m.used(), 12);
        // Without a budget nothing is kept: a plugin's calls do not grow the meter.
        let unmetered = TokenMeter::default();
        for _ in 0..1000 {
            let r = unmetered.reserve(None, 64).expect("no budget, no refusal");
            assert_eq!(r.tokens, 64);
            unmetered.settle(r, 100);
        }
        assert_eq!(unmetered.lock().entries.len(), 0);
    }
}
