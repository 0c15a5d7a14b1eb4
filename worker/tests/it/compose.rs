//! Docker cannot run on the CI machine, so compose.yaml is checked against the
//! Compose Specification's JSON Schema (docs/compose-spec.schema.json, from
//! the compose-spec repository, Apache-2.0) and for what the stack needs.

use std::path::Path;

use serde_json::Value;

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let compose: Value =
        serde_norway::from_str(&repo_file("compose.yaml")).expect("compose.yaml is YAML");
    let schema: Value =
        serde_json::from_str(&repo_file("docs/compose-spec.schema.json")).expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&compose)
        .map(|err| format!("{} at {}", err, err.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let services = &compose["services"];
    for service in ["rabbitmq", "postgres", "jaeger", "worker"] {
        assert!(services[service].is_object(), "{service} is missing");
    }
    let worker = &services["worker"];
    assert_eq!(worker["deploy"]["replicas"], 2);
    assert!(worker["healthcheck"]["test"].is_array());
    let environment = &worker["environment"];
    for variable in [
        "PUSHQ_VAPID_PRIVATE_KEY",
        "PUSHQ_VAPID_SUBJECT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(
            environment[variable].is_string(),
            "{variable} is not passed to the worker"
        );
    }
}
