//! The JSON Schema files and the crate's validation must give the same verdict
//! on the same examples, so producers in any language see the rules workers apply.

use std::path::Path;

use pushq_schemas::DeliveryResult;
use pushq_schemas::data::ProducerEvent;
use serde_json::Value;

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path:?}: {err}"))
}

fn crate_verdict(event_type: &str, data: &Value) -> Result<(), String> {
    if event_type == "pushq.delivery.result" {
        let result: DeliveryResult =
            serde_json::from_value(data.clone()).map_err(|e| e.to_string())?;
        return result.validate();
    }
    ProducerEvent::parse(event_type, Some(data))
        .map(drop)
        .map_err(|err| err.to_string())
}

#[test]
fn schema_files_and_crate_agree_on_every_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases = load(&root.join("examples/cases.json"));
    let cases = cases["cases"].as_array().expect("cases array");
    assert!(cases.len() > 40, "the example set shrank");
    let mut disagreements = Vec::new();
    for case in cases {
        let event_type = case["type"].as_str().expect("type");
        let data = &case["data"];
        let why = case["why"].as_str().unwrap_or_default();
        let expected_valid = case["valid"].as_bool().expect("valid");
        let schema_cannot_tell = case["schema_cannot_tell"].as_bool().unwrap_or(false);

        let schema = load(&root.join(format!("{event_type}.schema.json")));
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|err| panic!("{event_type} schema does not compile: {err}"));
        let schema_valid = validator.is_valid(data);
        let crate_result = crate_verdict(event_type, data);

        let schema_expected = expected_valid || schema_cannot_tell;
        if schema_valid != schema_expected {
            disagreements.push(format!(
                "{event_type} / {why}: schema says valid={schema_valid}, expected {schema_expected}"
            ));
        }
        if crate_result.is_ok() != expected_valid {
            disagreements.push(format!(
                "{event_type} / {why}: crate says {crate_result:?}, expected valid={expected_valid}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
