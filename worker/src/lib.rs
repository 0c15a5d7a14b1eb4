//! The pushq worker: consumes notification jobs and subscription events from
//! RabbitMQ, delivers Web Push messages and records every outcome.

pub mod app;
pub mod broker;
pub mod config;
pub mod consumer;
pub mod dead;
pub mod demo;
pub mod dependency;
pub mod feedback;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod push;
pub mod results;
pub mod retry;
pub mod shutdown;
pub mod step;
pub mod store;
pub mod telemetry;
pub mod terminal;
mod upkeep;
