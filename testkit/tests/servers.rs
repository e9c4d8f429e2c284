//! The private servers start, stop, restart, and are gone once dropped. They need the
//! programs `scripts/stack.sh up` installs, not the running stack.

use std::net::TcpStream;

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn port_of(url: &str) -> u16 {
    // scheme://[user@]host:port/...
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn postgres_runs_in_the_foreground_and_goes_with_its_guard() {
    let mut postgres = testkit::Postgres::start();
    let port = port_of(&postgres.url("postgres"));
    assert!(listening(port), "postgres listens on {port}");
    postgres.stop();
    assert!(!listening(port), "postgres stopped");
    postgres.restart();
    assert!(listening(port), "postgres listens again");
    drop(postgres);
    assert!(!listening(port), "postgres gone with its guard");
}

#[test]
fn mosquitto_stops_restarts_and_goes() {
    let mut mosquitto = testkit::Mosquitto::start();
    let port = mosquitto.port();
    mosquitto.stop();
    assert!(!listening(port));
    mosquitto.restart();
    assert!(listening(port));
    drop(mosquitto);
    assert!(!listening(port));
}

#[test]
fn redis_stops_restarts_and_goes() {
    let mut redis = testkit::Redis::start();
    let port = port_of(&redis.url());
    redis.stop();
    assert!(!listening(port));
    redis.restart();
    assert!(listening(port));
    drop(redis);
    assert!(!listening(port));
}

#[test]
fn tansu_pauses_resumes_and_goes() {
    let tansu = testkit::Tansu::start();
    let port: u16 = tansu.brokers().rsplit(':').next().unwrap().parse().unwrap();
    assert!(listening(port));
    tansu.pause();
    tansu.resume();
    drop(tansu);
    assert!(!listening(port));
}
