//! serde's refusals without the input they quote: the path of the field and
//! what was expected there.

use serde_json::Value;

use crate::error::{InvalidEvent, excerpt};

/// Deserializes an event's data; a refusal names the field and what was
/// expected there, never the value found. serde's own sentences quote the
/// input (`invalid type: string "https://…", expected …`), which would carry a
/// one-off subscription's endpoint into a dead letter's header and the logs.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, InvalidEvent> {
    serde_path_to_error::deserialize(data).map_err(|err| {
        let field = field_path(err.path());
        InvalidEvent::data(format!(
            "{field}: {}",
            problem(&err.into_inner().to_string())
        ))
    })
}

/// `data.to.subscription.keys`, `data.tags[3]`: names only, each cut short.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::from("data");
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                field.push('.');
                field.push_str(&excerpt(key));
            }
            Segment::Unknown => field.push_str(".?"),
        }
    }
    field
}

/// What serde found wrong, without what it found. serde's sentences put the
/// unexpected input first and what the type expected last (`…, expected a
/// string`): that last part is the type's own description, so it is kept. The
/// names in `missing field` and `duplicate field` are the type's own too. Any
/// other sentence is not quoted at all.
pub(crate) fn problem(message: &str) -> String {
    const QUOTING_INPUT: [&str; 5] = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
        "unknown field",
    ];
    if let Some(kind) = QUOTING_INPUT
        .iter()
        .find(|kind| message.starts_with(**kind))
    {
        return match message.rfind(", expected ") {
            Some(at) => format!("{kind}{}", &message[at..]),
            None => (*kind).to_owned(),
        };
    }
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        return excerpt(message);
    }
    "invalid value".to_owned()
}
