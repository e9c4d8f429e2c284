//! The bridge bench's printed report: the table of every scenario's rate beside the
//! ceiling's, latency and the publishers' own rate; CPU per part; the client-mode verdict
//! against the bar, with the measured facts behind it; and how it was measured. The row
//! labels are what `bench`'s end-to-end report looks for (`components::parse_bridge`),
//! so they stay as they are.

use crate::machine::{now_utc_seconds, Machine};
use crate::report::format::rate as fmt_rate;
use crate::report::BAR_RATE;

use super::cpu::Part;
use super::kafka::Percentiles;
use super::scenarios::Outcome;
use super::{Settings, READINGS_PER_FRAME};

/// `name run` and, when it waited noticeably for a CPU, `(+wait waiting)`.
fn fmt_part(part: &Part) -> String {
    if part.wait >= 5.0 {
        format!("{} {:.0} (+{:.0} waiting)", part.name, part.run, part.wait)
    } else {
        format!("{} {:.0}", part.name, part.run)
    }
}

fn fmt_latency(p: Option<Percentiles>) -> String {
    p.map_or("-".to_owned(), |p| {
        format!("{}/{}/{}/{}", p.p50, p.p90, p.p99, p.max)
    })
}

const LABELS: [(&str, &str); 8] = [
    ("ceiling", "Kafka ceiling (rdkafka, no MQTT)"),
    ("publish-only", "MQTT publish only (no subscriber)"),
    ("mqtt-side", "bridge MQTT side only, no Kafka"),
    ("client", "bridge, client mode (Mosquitto)"),
    ("embedded", "bridge, embedded mode (rumqttd)"),
    ("embedded-sealed", "bridge, embedded, registry + seals"),
    ("embedded-tls", "bridge, embedded, registry + seals + TLS"),
    ("shell", "mosquitto_sub | python producer"),
];

/// What security costs: the sealed embedded run beside the plain one (bar: at most 5 %),
/// and the same over TLS beside the sealed one (bar: at most 15 %).
fn print_security_costs(results: &[(&str, anyhow::Result<Outcome>)]) {
    let rate = |scenario: &str| {
        results.iter().find_map(|(name, r)| match r {
            Ok(o) if *name == scenario => Some(o.rate()),
            _ => None,
        })
    };
    if let (Some(plain), Some(sealed)) = (rate("embedded"), rate("embedded-sealed")) {
        let cost = 100.0 * (1.0 - sealed / plain);
        println!();
        println!(
            "authorisation (logins against the registry, every frame's seal checked): {} msgs/s against {} without, {cost:+.1} % of the throughput lost (bar: at most 5 %): {}",
            fmt_rate(sealed),
            fmt_rate(plain),
            if cost <= 5.0 { "met" } else { "NOT met" }
        );
    }
    if let (Some(plain), Some(tls)) = (rate("embedded-sealed"), rate("embedded-tls")) {
        let cost = 100.0 * (1.0 - tls / plain);
        println!(
            "TLS (device → bridge, client certificates): {} msgs/s against {} in plain MQTT, {cost:+.1} % of the throughput lost (bar: at most 15 %): {}",
            fmt_rate(tls),
            fmt_rate(plain),
            if cost <= 15.0 { "met" } else { "NOT met" }
        );
    }
}

fn label(scenario: &str) -> &'static str {
    LABELS
        .iter()
        .find(|(s, _)| *s == scenario)
        .map_or("?", |(_, l)| l)
}

/// The report on stdout: the heading, the table (whose row labels `bench`'s report
/// parses), CPU per part, notes, the client-mode verdict and how it was measured.
pub(super) fn print(
    settings: &Settings,
    machine: &Machine,
    frame_len: usize,
    results: &[(&'static str, anyhow::Result<Outcome>)],
) {
    let ceiling = results.iter().find_map(|(name, r)| match r {
        Ok(o) if *name == "ceiling" => Some(o.rate()),
        _ => None,
    });
    println!();
    println!("bridge throughput benchmark — {}", now_utc_seconds());
    println!(
        "machine: {} cores (nproc), {}, {:.0} GiB RAM",
        machine.cores, machine.cpu_model, machine.memory_gib
    );
    println!(
        "workload: N = {} frames × {READINGS_PER_FRAME} readings = {} readings; D = {} devices; C = {} MQTT connections (QoS 1, inflight {}); frame {frame_len} B; {}",
        settings.frames,
        settings.frames * READINGS_PER_FRAME,
        settings.devices,
        settings.connections,
        settings.inflight,
        settings.rate.map_or("publishers unpaced (as fast as PUBACKs return)".to_owned(), |r| format!("publishers paced at {} msgs/s in total", fmt_rate(r))),
    );
    println!();
    println!(
        "{:<36} {:>10} {:>12} {:>8} {:>12} {:>22} {:>18}",
        "scenario",
        "msgs/s",
        "readings/s",
        "÷ceiling",
        "pub msgs/s",
        "latency p50/p90/p99/max",
        "→bridge p50/p99"
    );
    for (name, result) in results {
        match result {
            Ok(o) => {
                let ratio = ceiling
                    .filter(|_| !matches!(*name, "publish-only" | "mqtt-side"))
                    .map_or("-".to_owned(), |c| format!("{:.2}", o.rate() / c));
                println!(
                    "{:<36} {:>10} {:>12} {:>8} {:>12} {:>22} {:>18}",
                    label(name),
                    fmt_rate(o.rate()),
                    fmt_rate(o.rate() * READINGS_PER_FRAME as f64),
                    ratio,
                    o.publisher_rate(settings.frames)
                        .map_or("-".to_owned(), fmt_rate),
                    fmt_latency(o.latency),
                    o.to_bridge
                        .map_or("-".to_owned(), |p| format!("{}/{}", p.p50, p.p99)),
                );
            }
            Err(e) => println!("{:<36} not measured: {e:#}", label(name)),
        }
    }
    println!();
    println!(
        "CPU during each measured interval, % of one core (machine total out of {}):",
        100 * std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (name, result) in results {
        if let Ok(o) = result {
            let parts: Vec<String> = o.cpu.parts.iter().map(fmt_part).collect();
            let others: Vec<String> = o
                .cpu
                .others
                .iter()
                .map(|(part, pct)| format!("{part} {pct:.0}"))
                .collect();
            println!(
                "  {:<34} machine {:>3.0} | {}",
                label(name),
                o.cpu.machine,
                parts.join(", ")
            );
            if !others.is_empty() {
                println!(
                    "  {:<34} not part of the scenario: {}",
                    "",
                    others.join(", ")
                );
            }
        }
    }
    let notes: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().ok().map(|o| (name, o)))
        .flat_map(|(name, o)| {
            let mut notes: Vec<String> = o
                .notes
                .iter()
                .map(|n| format!("  {}: {n}", label(name)))
                .collect();
            if o.latency.is_some() && o.probed < o.delivered {
                notes.push(format!(
                    "  {}: latency from {} of {} records (the probe fell behind)",
                    label(name),
                    o.probed,
                    o.delivered
                ));
            }
            notes
        })
        .collect();
    if !notes.is_empty() {
        println!();
        println!("notes:");
        for note in notes {
            println!("{note}");
        }
    }
    print_verdict(settings, results);
    print_security_costs(results);
    println!();
    println!("{}", HOW_MEASURED.trim());
}

fn print_verdict(settings: &Settings, results: &[(&str, anyhow::Result<Outcome>)]) {
    let find = |scenario: &str| {
        results
            .iter()
            .find(|(name, _)| *name == scenario)
            .and_then(|(_, r)| r.as_ref().ok())
    };
    let Some(client) = find("client") else {
        return;
    };
    println!();
    let rate = client.rate();
    if rate >= BAR_RATE {
        println!(
            "bar: ≥ {} msgs/s in client mode — MET ({} msgs/s)",
            fmt_rate(BAR_RATE),
            fmt_rate(rate)
        );
        return;
    }
    println!(
        "bar: ≥ {} msgs/s in client mode — NOT MET ({} msgs/s). Measured facts:",
        fmt_rate(BAR_RATE),
        fmt_rate(rate)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  - machine CPU during the client run: {:.0}% of {:.0}% ({})",
        client.cpu.machine,
        cores * 100.0,
        if client.cpu.machine >= cores * 90.0 {
            "saturated"
        } else {
            "not saturated"
        }
    );
    if let Some(m) = client.cpu.part("mosquitto") {
        println!(
            "  - mosquitto (one thread) ran {:.0}% of the interval and waited for a CPU {:.0}%{}",
            m.run,
            m.wait,
            if m.run + m.wait >= 90.0 {
                ": it was never idle, so it set the pace, limited by the CPU it got"
            } else {
                ""
            }
        );
    }
    if let Some(side) = find("mqtt-side") {
        println!(
            "  - the bridge's MQTT side alone (same client code, ack at once, no Kafka): {} msgs/s",
            fmt_rate(side.rate())
        );
    }
    print_cpu_per_message(client);
    if let Some(only) = find("publish-only") {
        println!(
            "  - publishers + Mosquitto alone, nobody subscribed: {} msgs/s{}",
            fmt_rate(only.rate()),
            if only.rate() < BAR_RATE {
                " — below the bar before the bridge does anything"
            } else {
                ""
            }
        );
    }
    if let Some(p) = client.publisher_rate(settings.frames) {
        println!(
            "  - publishers during the client run: {} msgs/s (bridge {} msgs/s){}",
            fmt_rate(p),
            fmt_rate(rate),
            if p > rate * 1.2 {
                ": the publishers were faster; the bridge side set the pace"
            } else {
                ": both moved at the pace of the slowest hop in between"
            }
        );
    }
    if let Some(c) = find("ceiling") {
        println!(
            "  - Kafka ceiling with the bridge's producer settings: {} msgs/s",
            fmt_rate(c.rate())
        );
    }
}

/// CPU each part spent per message in the client run, and what the bar would need.
fn print_cpu_per_message(client: &Outcome) {
    let per_message_us = |run: f64| {
        run / 100.0 * client.elapsed.as_secs_f64() / client.delivered.max(1) as f64 * 1e6
    };
    let mut total = 0.0;
    let parts: Vec<String> = client
        .cpu
        .parts
        .iter()
        .map(|p| {
            let us = per_message_us(p.run);
            total += us;
            format!("{} {us:.1}", p.name)
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  - CPU per message in the client run, µs: {} — {total:.1} in all, so {} msgs/s would need {:.0}% of a core where this machine has {:.0}%",
        parts.join(", "),
        fmt_rate(BAR_RATE),
        total * BAR_RATE / 1e4,
        cores * 100.0
    );
    if let Some(m) = client.cpu.part("mosquitto") {
        let need = per_message_us(m.run) * BAR_RATE / 1e4;
        println!(
            "  - Mosquitto alone would need {need:.0}% of its single thread at {} msgs/s{}",
            fmt_rate(BAR_RATE),
            if need > 100.0 {
                " — more than one core can give"
            } else {
                ""
            }
        );
    }
}

const HOW_MEASURED: &str = r#"
How measured. Each scenario gets fresh Kafka topics (3 partitions, created with rdkafka's
admin client, deleted afterwards) and a fresh topic prefix. The MQTT scenarios other than
embedded each get a private Mosquitto 2.0 (testkit::Mosquitto: persistence on,
max_queued_messages 1000000, plus max_inflight_messages 0 as in the stack's config).
Publishers are rumqttc v4 AsyncClients in this process (own 2-thread runtime), MQTT 3.1.1,
clean session, QoS 1; each encodes its frame just before publishing it, stamping base_ts_ms
with the wall clock, and publishes as fast as its inflight window of PUBACKs allows (or paced
with --rate). The publishers are part of what is measured: they share the 2 cores with the
broker, the bridge, Tansu and the latency consumer. "pub msgs/s" is N over the time from the
first publish to the last PUBACK. msgs/s is N over the time from the first publish to the last
Kafka confirmation: for the ceiling the last delivery report; for the bridge the moment its
own counter of Kafka-confirmed messages (stats().produced, counted after the delivery report,
as the MQTT ack is sent) reached N, polled every 1 ms; for the MQTT side alone the moment N
messages had been acknowledged; for the shell pipeline the Python producer's flush()
returning after N delivery reports. The bridge runs in-process (the library, on its own
2-thread runtime), default configuration except: unique topics, metrics record off, HTTP on
an ephemeral port; the "latest" values stay on. Before the clock starts, each scenario sends
warm-up frames until one is in Kafka and seen by the probe, so connecting, subscribing and
topic checks are not timed. embedded-sealed adds a private PostgreSQL (testkit) with the
schema, the devices and one gateway per connection; the publishers log in as their
gateway and seal each frame (HMAC-SHA-256, as the agent does) as they encode it, and the
bridge checks logins and seals against it (keys cached, as in production). embedded-tls
is embedded-sealed over TLS (rustls with ring on both ends): a CA and certificates made
for the run (rcgen), every publisher presenting a client certificate; connecting (the
handshakes) happens before the clock starts. Latency: a BaseConsumer on its own thread, manually assigned
every partition from the beginning (unique group id, auto.offset.reset=earliest,
fetch.wait.max.ms=10), takes consume wall time minus the frame's base_ts_ms, in whole
milliseconds (ms resolution, one clock); "→bridge" is the bridge's received-at-ms header
minus base_ts_ms. With unpaced publishers the latency is mostly queueing behind the
publishers' own backlog (C × inflight messages), not the bridge's per-message cost; use
--rate for latency at a given load. CPU: /proc/<pid>/task/*/schedstat for each thread of
this process (grouped by thread name) and for Mosquitto, Tansu, mosquitto_sub and Python,
over the measured interval, in % of one core: time running, and "+N waiting" runnable but
waiting for a CPU; "machine" is from /proc/stat; processes that are no part of the scenario
(on a shared machine) are listed when they used 2% or more.
"#;
