//! A real DNS server for the dns membership tests: Debian's dnsmasq, run by the test
//! in the root namespace on the lab's own link (never on another address), answering A
//! records for one name from a hosts file the test rewrites (SIGHUP reloads it). Each node
//! namespace gets `/etc/netns/<ns>/resolv.conf` naming it, which `ip netns exec`
//! bind-mounts over /etc/resolv.conf: the nodes resolve through the system resolver as
//! they would in a pod.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

/// A running dnsmasq; stopped (by PID) and its files removed on drop.
pub struct Dns {
    child: Child,
    pub name: String,
    hosts: std::path::PathBuf,
    netns_dirs: Vec<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

/// Why dnsmasq cannot run here, or `None`.
pub fn unavailable() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v dnsmasq"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| "dnsmasq is not installed (Debian: dnsmasq-base)".to_string())
}

impl Dns {
    /// Serves `name` (under the local zone `caracal.test`) on `listen`:53 with the
    /// addresses `ips`, for the namespaces `netns`.
    pub fn start(listen: Ipv4Addr, name: &str, ips: &[Ipv4Addr], netns: &[&str]) -> Dns {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        write_hosts(&hosts, name, ips);
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--listen-address={listen}"))
            .arg("--bind-interfaces")
            .arg("--port=53")
            .arg("--local=/caracal.test/")
            .arg("--no-negcache")
            .arg("--local-ttl=0")
            .arg("--user=root")
            .arg("--pid-file=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let mut netns_dirs = Vec::new();
        for ns in netns {
            let d = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("resolv.conf"),
                format!("nameserver {listen}\noptions timeout:1 attempts:2\n"),
            )
            .unwrap();
            netns_dirs.push(d);
        }
        let dns = Dns {
            child,
            name: name.to_string(),
            hosts,
            netns_dirs,
            _dir: dir,
        };
        dns.wait_listening(listen);
        dns
    }

    /// The name now resolves to `ips` (none: NXDOMAIN).
    pub fn set(&self, ips: &[Ipv4Addr]) {
        write_hosts(&self.hosts, &self.name, ips);
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -HUP {}", self.child.id())])
            .status();
        // dnsmasq rereads the file on the signal; give it a moment (no readiness signal).
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    fn wait_listening(&self, listen: Ipv4Addr) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let bound = std::fs::read_to_string("/proc/net/udp")
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&format!("{}:0035", hex_ip(listen))));
            if bound {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("dnsmasq did not start on {listen}:53");
    }
}

fn hex_ip(ip: Ipv4Addr) -> String {
    // /proc/net/udp shows the address as a little-endian hex u32.
    format!("{:08X}", u32::from_le_bytes(ip.octets()))
}

fn write_hosts(path: &std::path::Path, name: &str, ips: &[Ipv4Addr]) {
    let text: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
    std::fs::write(path, text).unwrap();
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in &self.netns_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
