//! Prometheus metrics: every name beatd exports is defined here, once, with its help text
//! (the README's metrics table mirrors this file). Owns the registry; the beat, the leader
//! code and the worker only increment what they are handed.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::per_entry::PerEntry;
use std::sync::Arc;

/// Label set: a list of (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric beatd exports.
#[derive(Debug)]
pub struct Metrics {
    /// The registry the families are in.
    registry: Registry,
    /// `beatd_messages_sent_total{entry}`.
    pub messages_sent: PerEntry,
    /// `beatd_emission_lateness_seconds`: from the scheduled fire time to the message in Redis.
    pub emission_lateness: Histogram,
    /// `beatd_is_leader`: 1 while this replica holds the lease.
    pub is_leader: Gauge,
    /// `beatd_leader_epoch`: fencing epoch of the current or last lease.
    pub epoch: Gauge,
    /// `beatd_lock_acquisitions_total`.
    pub lock_acquisitions: Counter,
    /// `beatd_lock_renewals_total`.
    pub lock_renewals: Counter,
    /// `beatd_lock_losses_total`.
    pub lock_losses: Counter,
    /// `beatd_redis_errors_total`.
    pub redis_errors: Counter,
    /// `beatd_reloads_total`.
    pub reloads: Counter,
    /// `beatd_amqp_publishes_total`: messages published to RabbitMQ (republishes included).
    pub amqp_publishes: Counter,
    /// `beatd_amqp_confirms_total`: publishes RabbitMQ confirmed.
    pub amqp_confirms: Counter,
    /// `beatd_amqp_returns_total`: publishes returned as unroutable (or nacked).
    pub amqp_returns: Counter,
    /// `beatd_amqp_republishes_total`: unconfirmed intents of an earlier term published again
    /// with the same task id.
    pub amqp_republishes: Counter,
    /// `beatd_amqp_reconnects_total`: connections (re)opened to RabbitMQ after the first.
    pub amqp_reconnects: Counter,
    /// `beatd_reload_failures_total`.
    pub reload_failures: Counter,
    /// `beatd_worker_tasks_total{task,state}`.
    pub worker_tasks: Family<Labels, Counter>,
    /// `beatd_worker_task_duration_seconds{task}`.
    pub task_duration: Family<Labels, Histogram>,
    /// `beatd_worker_in_flight`.
    pub in_flight: Gauge,
    /// `beatd_schedule_mismatch`: 1 while this replica's schedule differs from the leader's.
    pub schedule_mismatch: Gauge,
    /// `beatd_fires_late_total`: fire times sent more than a second after they fell due
    /// while leading (a beat falling behind its schedule).
    pub fires_late: Counter,
    /// `beatd_fires_skipped_total{entry,reason}`: fire times not sent (reason `overlap`,
    /// `pause`, `catch_up`) or sent late (`late`), per entry.
    pub fires_skipped: Family<Labels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("beatd");
        let messages_sent = PerEntry::new("messages_sent", "Messages sent per entry");
        registry.register_collector(Box::new(messages_sent.clone()));
        let emission_lateness = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
        ]);
        registry.register(
            "emission_lateness_seconds",
            "Seconds from a scheduled fire time to its message being in Redis",
            emission_lateness.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "is_leader",
            "1 while this replica is the leader",
            is_leader.clone(),
        );
        let epoch = Gauge::default();
        registry.register(
            "leader_epoch",
            "Fencing epoch of the current or last lease",
            epoch.clone(),
        );
        let lock_acquisitions = Counter::default();
        registry.register(
            "lock_acquisitions",
            "Leader lock acquisitions",
            lock_acquisitions.clone(),
        );
        let lock_renewals = Counter::default();
        registry.register(
            "lock_renewals",
            "Leader lock renewals",
            lock_renewals.clone(),
        );
        let lock_losses = Counter::default();
        registry.register("lock_losses", "Leader leases lost", lock_losses.clone());
        let redis_errors = Counter::default();
        registry.register("redis_errors", "Failed Redis calls", redis_errors.clone());
        let reloads = Counter::default();
        registry.register("reloads", "Schedule reloads applied", reloads.clone());
        let amqp_publishes = Counter::default();
        registry.register(
            "amqp_publishes",
            "Messages published to RabbitMQ",
            amqp_publishes.clone(),
        );
        let amqp_confirms = Counter::default();
        registry.register(
            "amqp_confirms",
            "Publishes RabbitMQ confirmed",
            amqp_confirms.clone(),
        );
        let amqp_returns = Counter::default();
        registry.register(
            "amqp_returns",
            "Publishes RabbitMQ returned as unroutable or nacked",
            amqp_returns.clone(),
        );
        let amqp_republishes = Counter::default();
        registry.register(
            "amqp_republishes",
            "Unconfirmed messages of an earlier term published again with the same task id",
            amqp_republishes.clone(),
        );
        let amqp_reconnects = Counter::default();
        registry.register(
            "amqp_reconnects",
            "Connections reopened to RabbitMQ",
            amqp_reconnects.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "reload_failures",
            "Schedule reloads rejected",
            reload_failures.clone(),
        );
        let worker_tasks = Family::<Labels, Counter>::default();
        registry.register(
            "worker_tasks",
            "Worker tasks by task and final state",
            worker_tasks.clone(),
        );
        let task_duration = Family::<Labels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "worker_task_duration_seconds",
            "Task run time",
            task_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("worker_in_flight", "Tasks running now", in_flight.clone());
        let schedule_mismatch = Gauge::default();
        registry.register(
            "schedule_mismatch",
            "1 while this replica's schedule files differ from the leader's",
            schedule_mismatch.clone(),
        );
        let fires_late = Counter::default();
        registry.register(
            "fires_late",
            "Fire times sent more than a second after they fell due",
            fires_late.clone(),
        );
        let fires_skipped = Family::<Labels, Counter>::default();
        registry.register(
            "fires_skipped",
            "Fire times not sent (reason overlap, pause, catch_up) or sent late (late), per entry",
            fires_skipped.clone(),
        );
        Self {
            registry,
            fires_skipped,
            schedule_mismatch,
            fires_late,
            messages_sent,
            emission_lateness,
            is_leader,
            epoch,
            lock_acquisitions,
            lock_renewals,
            lock_losses,
            redis_errors,
            reloads,
            amqp_publishes,
            amqp_confirms,
            amqp_returns,
            amqp_republishes,
            amqp_reconnects,
            reload_failures,
            worker_tasks,
            task_duration,
            in_flight,
        }
    }
}

impl Metrics {
    /// Counts a message sent for `entry` in `beatd_messages_sent_total`.
    pub fn count_sent(&self, entry: &Arc<str>) {
        self.messages_sent.inc(entry);
    }

    /// Counts `n` fire times of `entry` under `reason` in `beatd_fires_skipped_total`.
    pub fn count_skip(&self, entry: &str, reason: &'static str, n: u64) {
        self.fires_skipped
            .get_or_create(&vec![
                ("entry", entry.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_documented_names() {
        let m = Metrics::default();
        m.count_sent(&"a".into());
        m.emission_lateness.observe(0.003);
        m.is_leader.set(1);
        let text = m.render();
        for name in [
            "beatd_messages_sent_total{entry=\"a\"} 1",
            "beatd_emission_lateness_seconds_bucket",
            "beatd_is_leader 1",
            "beatd_leader_epoch",
            "beatd_lock_acquisitions_total",
            "beatd_lock_renewals_total",
            "beatd_lock_losses_total",
            "beatd_redis_errors_total",
            "beatd_amqp_publishes_total",
            "beatd_amqp_confirms_total",
            "beatd_amqp_returns_total",
            "beatd_amqp_republishes_total",
            "beatd_amqp_reconnects_total",
            "beatd_reloads_total",
            "beatd_reload_failures_total",
            "beatd_worker_in_flight",
            "beatd_schedule_mismatch 0",
            "beatd_fires_late_total 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
