//! Integration tests against the real RabbitMQ and PostgreSQL. Each test gets
//! its own database and topology prefix, a fake push service that decrypts
//! and verifies as a browser and a push service would, and a worker running
//! in-process or, where the process itself matters, as a child process.

mod browser;
mod cdp;
mod claims;
mod collector;
mod command_line;
mod command_line_output;
mod compose;
mod dead_letters;
mod delivery;
mod demo;
mod dependencies;
mod faults;
mod first_run;
mod fleet_rate;
mod health;
mod helpers;
mod hostile_endpoints;
mod hostile_input;
mod outcomes;
mod proxy;
mod redelivery;
mod refusals;
mod secrets;
mod subscriptions;
mod telemetry;
mod throttling;
mod vapid;
