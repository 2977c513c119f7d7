//! What users and machines read: the text and JSON records (the contract is docs/json.md), the
//! kernel-log warning, the ignore list that silences known call sites, and the Prometheus
//! metrics with their HTTP endpoint.

pub mod http;
pub mod ignore;
pub mod kmsg;
pub mod metrics;
pub mod records;
pub mod report;
pub mod static_sites;
pub mod text;
