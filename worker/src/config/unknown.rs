//! Misspelt `PUSHQ_*` names: nothing reads them, so without a warning the
//! setting meant is silently left at its default.

use super::variables::{VARIABLES, find};

/// One sentence per `PUSHQ_*` name in `names` that nothing reads, with the
/// closest known name when one is near enough to be a typo of it.
pub fn unknown<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut warnings: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with("PUSHQ_") && find(name).is_none())
        .map(|name| match closest(name) {
            Some(known) => format!("{name} is not a pushq setting; did you mean {known}?"),
            None => format!("{name} is not a pushq setting and is ignored"),
        })
        .collect();
    warnings.sort();
    warnings.dedup();
    warnings
}

fn closest(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .map(|variable| (edit_distance(name, variable.name), variable.name))
        .filter(|&(distance, _)| distance <= 3)
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance over bytes (the names are ASCII).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}
