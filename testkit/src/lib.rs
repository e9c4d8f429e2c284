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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

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
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    assert!(
        purpose.len() <= 7 && purpose.bytes().all(|b| b.is_ascii_lowercase()),
        "unique_name purpose {purpose:?}: up to 7 lowercase letters"
    );
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
    format!("{purpose}-{:016x}", hasher.finish())
}

/// A private Mosquitto broker for tests that must stop and start the broker (outages),
/// which the shared stack broker cannot do without disturbing other tests. It keeps a
/// persistent store, so durable sessions and their queued messages survive a restart as
/// they would in production.
pub struct Mosquitto {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
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
        let child = Command::new(binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker gracefully (SIGTERM, so it saves its store) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private Redis server (no persistence) for tests that stop and start Redis, which the
/// shared stack server cannot do without disturbing other tests.
pub struct Redis {
    port: u16,
    child: Option<Child>,
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
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nobody listens on right now, and never handed out before by this
/// process: the kernel may offer a just-released port again, and two tests running in
/// parallel must not both plan to listen on it.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
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
    child: Child,
    log: PathBuf,
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
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("tansu")));
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("tansu log file"))
            .spawn()
            .expect("starting tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start on port {port}; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child, log }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered,
    /// the nastiest way for Kafka to be slow.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {signal} tansu failed");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A private PostgreSQL server for tests that stop and start the database (outages),
/// which the shared stack's server must never suffer. Trust authentication on loopback,
/// superuser `postgres`, data in a temporary directory removed on drop.
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
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
            .find(|bin| bin.join("pg_ctl").exists())
            .expect("PostgreSQL is not installed: run scripts/stack.sh up, which installs it");
        let dir = std::env::temp_dir().join(unique_name("pgtest"));
        std::fs::create_dir_all(&dir).expect("temp dir for postgres");
        let mut postgres = Self {
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&postgres.dir)
                .status();
        }
        let data = postgres.dir.join("data");
        postgres.run_as_owner(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
            ],
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
        let data = self.dir.join("data").display().to_string();
        let log = self.dir.join("postgres.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        self.run_as_owner(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
        self.running = true;
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        self.run_as_owner("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
        self.running = false;
    }

    fn run_as_owner(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let status = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .current_dir("/")
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new(&program)
                .args(args)
                .stdout(Stdio::null())
                .status()
        };
        assert!(
            status.is_ok_and(|s| s.success()),
            "{} {args:?} failed; see {}",
            program.display(),
            self.dir.display()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
