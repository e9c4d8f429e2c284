//! Where integration tests find the real services of the local stack, and how they keep
//! out of each other's way.
//!
//! `scripts/stack.sh up` starts the services and writes their addresses to `.stack/env`;
//! `scripts/test.sh` exports that file before running `cargo test`. This crate only reads
//! those variables, so the stack script stays the one source of truth for ports and
//! credentials. A missing variable fails the test with a message saying how to fix it,
//! rather than silently pointing at some default that may not be the stack.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

pub mod process;

pub use process::ChildGuard;

/// Reads a variable the stack exports, or panics with instructions. Panicking is right
/// here: this is test set-up, and the message is the useful part.
pub fn stack_var(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set. Start the stack and export its addresses first: \
             `scripts/stack.sh up && set -a && . .stack/env && set +a` \
             (scripts/test.sh does both)"
        ),
    }
}

/// `postgres://…` URL of the stack's database; the role may create databases, which
/// `#[sqlx::test]` needs for its throw-away test databases.
pub fn database_url() -> String {
    stack_var("DATABASE_URL")
}

/// The URL of database `name` on the stack's server (a `#[sqlx::test]` database, whose
/// name `SELECT current_database()` tells), for a service the test starts.
pub fn database_url_of(name: &str) -> String {
    let base = database_url();
    match base.rfind('/') {
        Some(slash) => format!("{}/{name}", &base[..slash]),
        None => panic!("DATABASE_URL {base:?} has no database path"),
    }
}

/// `redis://…` URL of the stack's Redis.
pub fn redis_url() -> String {
    stack_var("REDIS_URL")
}

/// Host and port of the stack's Mosquitto (not 1883: that port belongs to the bridge's
/// embedded broker).
pub fn mqtt_host_port() -> (String, u16) {
    let host = stack_var("MQTT_HOST");
    let port = stack_var("MQTT_PORT");
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("MQTT_PORT={port:?} is not a port number"));
    (host, port)
}

/// `host:port` list of the stack's Kafka-compatible broker.
pub fn kafka_brokers() -> String {
    stack_var("KAFKA_BROKERS")
}

/// A name no other test, and no earlier run of this test, uses: for topics, key
/// prefixes, consumer groups and client ids. `{purpose}-{16 hex digits}`, at most 24
/// characters, so it is also a valid device id, MQTT topic segment and Kafka topic.
pub fn unique_name(purpose: &str) -> String {
    assert!(
        purpose.len() <= 7 && purpose.bytes().all(|b| b.is_ascii_lowercase()),
        "unique_name purpose {purpose:?}: up to 7 lowercase letters"
    );
    format!("{purpose}-{}", unique_hex())
}

/// 16 hex digits no other call in any process is likely to get.
fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = DefaultHasher::new();
    (
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
    )
        .hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A private Mosquitto broker for tests that must stop and start the broker (outages),
/// which the shared stack broker cannot do without disturbing other tests. It keeps a
/// persistent store, so durable sessions and their queued messages survive a restart as
/// they would in production.
pub struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<ChildGuard>,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Mosquitto::start`], with extra settings for its listener (e.g. TLS files:
    /// `cafile`, `certfile`, `keyfile`).
    pub fn start_with(listener_settings: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique_name("mosq"));
        std::fs::create_dir_all(&dir).expect("temp dir for mosquitto");
        let user = if is_root() {
            "root".to_owned()
        } else {
            whoami()
        };
        let config = format!(
            "listener {port} 127.0.0.1\n{listener_settings}\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nmax_queued_messages 1000000\nuser {user}\n\
             log_dest file {}/mosquitto.log\n",
            dir.display(),
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config).expect("mosquitto config");
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// (Re)starts the broker on the same port with the same store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: run scripts/stack.sh up, which installs it");
        let mut child = ChildGuard::spawn(
            "mosquitto",
            Command::new(binary)
                .arg("-c")
                .arg(self.dir.join("mosquitto.conf")),
        );
        wait_listening(&mut child, self.port, Duration::from_secs(10));
        self.child = Some(child);
    }

    /// Stops the broker gracefully (SIGTERM, so it saves its store) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.terminate(Duration::from_secs(30));
        }
    }

    /// Kills the broker (SIGKILL): what it acknowledged since its last autosave, sessions
    /// included, is gone, as in a crash or a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Killed with the guard, before its directory goes.
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `child` accepts connections on `port`; panics, quoting its log, if it
/// exits or `within` passes first.
fn wait_listening(child: &mut ChildGuard, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on port {port}; log {}:\n{}",
                child.name(),
                child.log_path().display(),
                child.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on port {port} within {within:?}; log {}:\n{}",
            child.name(),
            child.log_path().display(),
            child.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private Redis server (no persistence) for tests that stop and start Redis, which the
/// shared stack server cannot do without disturbing other tests.
pub struct Redis {
    port: u16,
    child: Option<ChildGuard>,
}

impl Redis {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the server on the same port (empty: it keeps nothing).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("redis-server is not installed: run scripts/stack.sh up, which installs it");
        let mut child = ChildGuard::spawn(
            "redis",
            Command::new(binary)
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]),
        );
        wait_listening(&mut child, self.port, Duration::from_secs(10));
        self.child = Some(child);
    }

    /// Kills the server and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `free_port` looks: below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768 and up by default), which is where outgoing connections and port-0 listeners get
/// their ports; a port picked there could be taken by any process's next connection
/// between the pick and the test's bind (seen: the embedded broker's listen failing with
/// "Address already in use" while another process made many connections).
const FREE_PORTS: std::ops::Range<u16> = 10_000..32_000;

/// A loopback port nobody listens on right now, outside the kernel's ephemeral range, and
/// never handed out before by this process: two tests running in parallel must not both
/// plan to listen on it.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let span = u64::from(FREE_PORTS.end - FREE_PORTS.start);
    for _ in 0..10_000 {
        // A different start per process and call, so parallel test processes spread out.
        let mut hasher = DefaultHasher::new();
        (std::process::id(), Instant::now(), handed_out.len()).hash(&mut hasher);
        let port = FREE_PORTS.start + (hasher.finish() % span) as u16;
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.push(port);
        return port;
    }
    panic!("no free loopback port in {FREE_PORTS:?} after 10 000 tries");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A private Kafka-compatible broker (Tansu, memory storage) for tests that pause or
/// stop Kafka, which the shared stack broker cannot do without disturbing other tests.
/// It starts empty: create topics with rdkafka's admin client (the bridge creates its own).
pub struct Tansu {
    port: u16,
    child: ChildGuard,
}

impl Tansu {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (for tests whose client was told the port before the
    /// broker existed).
    pub fn start_on(port: u16) -> Self {
        let binary = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .chain(std::env::var_os("CARGO_HOME").map(|home| Path::new(&home).join("bin")))
            .chain(std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin")))
            .map(|dir| dir.join("tansu"))
            .find(|p| p.exists())
            .expect("tansu is not installed: run scripts/stack.sh up, which installs it");
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = ChildGuard::spawn(
            "tansu",
            Command::new(binary)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"]),
        );
        wait_listening(&mut child, port, Duration::from_secs(20));
        Self { port, child }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered,
    /// the nastiest way for Kafka to be slow.
    pub fn pause(&self) {
        self.child.signal(libc::SIGSTOP);
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.child.signal(libc::SIGCONT);
    }

    /// Kills the broker and starts a new one on the same port: with memory storage,
    /// every topic, record and producer id is gone, as with the local stack's Kafka
    /// after a restart.
    pub fn restart(&mut self) {
        self.child.kill();
        *self = Self::start_on(self.port);
    }
}

/// A private PostgreSQL server for tests that stop and start the database (outages),
/// which the shared stack's server must never suffer. Trust authentication on loopback,
/// superuser `postgres`, data in a temporary directory removed on drop. The server
/// (`postgres` itself, not `pg_ctl`, which would daemonise it) is a [`ChildGuard`]
/// child, so it dies with the test.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// As root, the `postgres` account's uid and gid, which the server runs as.
    owner: Option<(u32, u32)>,
    server: Option<ChildGuard>,
}

impl Postgres {
    /// Creates a cluster and starts it on a free loopback port.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
            .expect("PostgreSQL is not installed: run scripts/stack.sh up, which installs it");
        let dir = std::env::temp_dir().join(unique_name("pgtest"));
        std::fs::create_dir_all(&dir).expect("temp dir for postgres");
        let owner = is_root().then(|| (account_id("-u"), account_id("-g")));
        let mut postgres = Self {
            port: free_port(),
            dir,
            bin,
            owner,
            server: None,
        };
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&postgres.dir)
                .status();
        }
        let data = postgres.dir.join("data");
        let status = postgres
            .as_owner("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
            ])
            .stdout(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "initdb failed in {}",
            postgres.dir.display()
        );
        postgres.restart();
        postgres
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// (Re)starts the server on the same port and data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "postgres already running");
        let data = self.dir.join("data");
        let mut server = ChildGuard::spawn(
            "postgres",
            self.as_owner("postgres")
                .arg("-D")
                .arg(&data)
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        );
        // What `pg_ctl -w` waits for: the status line of postmaster.pid says "ready".
        let pid_file = data.join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status_line = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.lines().nth(7).map(|l| l.trim().to_owned()));
            if status_line.as_deref() == Some("ready") {
                break;
            }
            if let Some(status) = server.try_wait() {
                panic!(
                    "postgres exited ({status}) while starting; log {}:\n{}",
                    server.log_path().display(),
                    server.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within 60 s; log {}:\n{}",
                server.log_path().display(),
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server = Some(server);
    }

    /// Stops the server (fast shutdown, SIGINT: open connections are cut) and waits.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.signal(libc::SIGINT);
            if server.wait_timeout(Duration::from_secs(60)).is_none() {
                panic!(
                    "postgres did not stop within 60 s of SIGINT; log {}:\n{}",
                    server.log_path().display(),
                    server.log_tail()
                );
            }
        }
    }

    /// A command for one of the server's programs, run as the cluster's owner.
    fn as_owner(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir("/");
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // A clean stop if it comes quickly (it releases its shared memory); the
            // guard SIGKILLs it otherwise.
            server.signal(libc::SIGINT);
            let _ = server.wait_timeout(Duration::from_secs(30));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `id -u postgres` or `id -g postgres`.
fn account_id(which: &str) -> u32 {
    let output = Command::new("id")
        .args([which, "postgres"])
        .output()
        .expect("running id");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no postgres account (`id {which} postgres` failed)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(FREE_PORTS.contains(&port), "{port}");
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
