//! The pushq worker: consumes notification jobs and subscription events from
//! RabbitMQ, delivers Web Push messages and records every outcome.

pub mod app;
pub mod config;
pub mod demo;
pub mod telemetry;
pub mod push;
pub mod store;
pub mod broker;
pub mod pipeline;
