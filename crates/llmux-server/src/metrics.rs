//! `GET /metrics` in the Prometheus text format (`prometheus-client`). For now the counters that
//! governance and pricing keep; request metrics arrive with the observability work.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use llmux_governance::Governance;

/// Reads the gateway's counters at scrape time.
#[derive(Debug)]
struct Counters {
    client: llmux::Client,
    governance: Option<Arc<Governance>>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            &mut encoder,
            "llmux_unpriced_requests",
            "Requests priced at 0 because their model has no price",
            self.client.pricing().unpriced_requests(),
        )?;
        if let Some(limiter) = self.governance.as_ref().and_then(|g| g.shared_state()) {
            counter(
                &mut encoder,
                "llmux_redis_fallbacks",
                "Shared rate-limit calls counted on this instance because Redis did not answer in time",
                limiter.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
            )?;
            let gauge = ConstGauge::new(i64::from(limiter.degraded()));
            let e = encoder.encode_descriptor(
                "llmux_redis_degraded",
                "1 while Redis is not answering and rate limits are counted per instance",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(e)?;
        }
        if let Some(gov) = &self.governance {
            let (written, aggregated) = gov.writer.counts();
            counter(
                &mut encoder,
                "llmux_spend_records_written",
                "Spend records written to the database (aggregates count once)",
                written,
            )?;
            counter(
                &mut encoder,
                "llmux_governance_lookups",
                "Key, user, team and other object lookups that read the database (cache misses; concurrent misses share one read)",
                gov.lookups(),
            )?;
            counter(
                &mut encoder,
                "llmux_spend_records_aggregated",
                "Spend records folded into aggregates because the queue was full",
                aggregated,
            )?;
            let gauge = ConstGauge::new(gov.in_flight() as i64);
            let e = encoder.encode_descriptor(
                "llmux_governed_requests_in_flight",
                "Admitted requests not yet settled",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(e)?;
        }
        Ok(())
    }
}

/// The exposition text.
pub fn render(state: &crate::AppState) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Counters {
        client: state.client.clone(),
        governance: state.governance.clone(),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}
