//! The record contract: the Avro schemas in `schemas/*.avsc`, compiled into the binary and parsed
//! once. They are the only copy: the encoder writes with them, the decoder resolves every writer
//! schema to them, and the registry is sent them as they are (minified).

use apache_avro::schema::{Name, Schema};
use std::sync::OnceLock;

/// Largest allocation the Avro decoder makes for one declared length (string, bytes, array).
/// A hostile record can declare any length in a few bytes; the record itself is bounded by the
/// broker's `message.max.bytes`, so anything larger is a lie, refused before it is allocated.
pub const MAX_DECODE_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;

/// The records of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    LaunchRequest,
    ControlCommand,
    RunStatusEvent,
    RunResult,
}

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [
        RecordKind::LaunchRequest,
        RecordKind::ControlCommand,
        RecordKind::RunStatusEvent,
        RecordKind::RunResult,
    ];

    /// The schema file's text, as committed in `schemas/`.
    pub fn avsc(self) -> &'static str {
        match self {
            RecordKind::LaunchRequest => include_str!("../../schemas/LaunchRequest.avsc"),
            RecordKind::ControlCommand => include_str!("../../schemas/ControlCommand.avsc"),
            RecordKind::RunStatusEvent => include_str!("../../schemas/RunStatusEvent.avsc"),
            RecordKind::RunResult => include_str!("../../schemas/RunResult.avsc"),
        }
    }

    /// The schema file's name in `schemas/`.
    pub fn file_name(self) -> &'static str {
        match self {
            RecordKind::LaunchRequest => "LaunchRequest.avsc",
            RecordKind::ControlCommand => "ControlCommand.avsc",
            RecordKind::RunStatusEvent => "RunStatusEvent.avsc",
            RecordKind::RunResult => "RunResult.avsc",
        }
    }

    /// Top-level fields that are open JSON objects: JSON values in the JSON form, JSON text
    /// (a string, or an array of strings for `inputs`) in Avro (design.md section 3).
    pub fn json_text_fields(self) -> &'static [&'static str] {
        match self {
            RecordKind::LaunchRequest => &["inputs", "parameters", "steps"],
            RecordKind::RunResult => &["input", "custom_data", "result"],
            RecordKind::ControlCommand | RecordKind::RunStatusEvent => &[],
        }
    }

    fn index(self) -> usize {
        match self {
            RecordKind::LaunchRequest => 0,
            RecordKind::ControlCommand => 1,
            RecordKind::RunStatusEvent => 2,
            RecordKind::RunResult => 3,
        }
    }
}

/// One parsed schema of the contract.
#[derive(Debug)]
pub struct ContractSchema {
    pub kind: RecordKind,
    pub schema: Schema,
    /// The record's full name (`dev.captainbridge.RunResult`): the subject under
    /// RecordNameStrategy.
    pub full_name: String,
    /// The schema text sent to the registry: the file, minified (docs and defaults kept, since
    /// both matter to readers and to compatibility checks).
    pub registration_text: String,
}

impl ContractSchema {
    /// The symbols of the enum type named `name` (short or full name) inside this schema.
    pub fn enum_symbols(&self, name: &str) -> Option<&[String]> {
        find_enum(&self.schema, name)
    }
}

/// The whole contract, parsed once per process.
#[derive(Debug)]
pub struct Contract {
    schemas: Vec<ContractSchema>,
}

/// A schema file of the contract does not parse: a build defect, reported instead of a panic.
#[derive(Debug, Clone, thiserror::Error)]
#[error("schemas/{file} is not a valid Avro schema: {reason}")]
pub struct ContractError {
    pub file: &'static str,
    pub reason: String,
}

impl Contract {
    /// The contract, parsed on first use.
    pub fn get() -> Result<&'static Contract, ContractError> {
        static CONTRACT: OnceLock<Result<Contract, ContractError>> = OnceLock::new();
        CONTRACT
            .get_or_init(|| {
                // First call wins; nothing else in the process decodes Avro.
                apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION_BYTES);
                Contract::parse()
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn parse() -> Result<Contract, ContractError> {
        let schemas = RecordKind::ALL
            .iter()
            .map(|&kind| {
                let fail = |reason: String| ContractError {
                    file: kind.file_name(),
                    reason,
                };
                let schema = Schema::parse_str(kind.avsc()).map_err(|e| fail(e.to_string()))?;
                let full_name = schema
                    .name()
                    .map(|n: &Name| n.fullname(None))
                    .ok_or_else(|| fail("the top-level type is not a named record".into()))?;
                let json: serde_json::Value =
                    serde_json::from_str(kind.avsc()).map_err(|e| fail(e.to_string()))?;
                Ok(ContractSchema {
                    kind,
                    schema,
                    full_name,
                    registration_text: json.to_string(),
                })
            })
            .collect::<Result<Vec<_>, ContractError>>()?;
        Ok(Contract { schemas })
    }

    pub fn schema(&self, kind: RecordKind) -> &ContractSchema {
        // `parse` builds one entry per kind, in `RecordKind::ALL` order.
        &self.schemas[kind.index()]
    }
}

fn find_enum<'a>(schema: &'a Schema, name: &str) -> Option<&'a [String]> {
    match schema {
        Schema::Enum(e) if e.name.name() == name || e.name.fullname(None) == name => {
            Some(&e.symbols)
        }
        Schema::Record(r) => r.fields.iter().find_map(|f| find_enum(&f.schema, name)),
        Schema::Union(u) => u.variants().iter().find_map(|v| find_enum(v, name)),
        Schema::Array(a) => find_enum(&a.items, name),
        Schema::Map(m) => find_enum(&m.types, name),
        _ => None,
    }
}

/// True when a named type refers to itself (directly or through other types). Such a writer
/// schema lets a small record nest as deep as its bytes allow, and decoding recurses once per
/// level: the decoder refuses these schemas instead of risking its stack.
pub fn is_recursive(schema: &Schema) -> bool {
    fn walk<'a>(schema: &'a Schema, namespace: Option<&'a str>, open: &mut Vec<String>) -> bool {
        match schema {
            Schema::Ref { name } => open.contains(&name.fullname(namespace)),
            Schema::Record(r) => {
                let full = r.name.fullname(namespace);
                let inner_ns = r.name.namespace().or(namespace);
                open.push(full);
                let found = r.fields.iter().any(|f| walk(&f.schema, inner_ns, open));
                open.pop();
                found
            }
            Schema::Union(u) => u.variants().iter().any(|v| walk(v, namespace, open)),
            Schema::Array(a) => walk(&a.items, namespace, open),
            Schema::Map(m) => walk(&m.types, namespace, open),
            _ => false,
        }
    }
    walk(schema, None, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use apache_avro::schema::RecordSchema;

    fn record(kind: RecordKind) -> &'static RecordSchema {
        match &Contract::get().unwrap().schema(kind).schema {
            Schema::Record(r) => r,
            other => panic!("{kind:?} is {other:?}"),
        }
    }

    #[test]
    fn every_schema_file_parses_as_a_named_record_of_the_bridge_namespace() {
        let contract = Contract::get().unwrap();
        for kind in RecordKind::ALL {
            let s = contract.schema(kind);
            assert_eq!(s.kind, kind);
            assert_eq!(
                s.full_name,
                format!(
                    "dev.captainbridge.{}",
                    kind.file_name().trim_end_matches(".avsc")
                )
            );
            assert!(!s.registration_text.contains('\n'));
            assert!(!is_recursive(&s.schema), "{kind:?}");
        }
    }

    #[test]
    fn json_text_fields_are_strings_or_arrays_of_strings_in_the_schema() {
        for kind in RecordKind::ALL {
            for name in kind.json_text_fields() {
                let field = record(kind)
                    .fields
                    .iter()
                    .find(|f| f.name == *name)
                    .unwrap_or_else(|| panic!("{kind:?} has no field {name}"));
                let text = |s: &Schema| match s {
                    Schema::String => true,
                    Schema::Union(u) => {
                        matches!(u.variants(), [Schema::Null, Schema::String])
                    }
                    _ => false,
                };
                let ok = match &field.schema {
                    Schema::Array(a) => text(&a.items),
                    other => text(other),
                };
                assert!(ok, "{kind:?}.{name} is {:?}", field.schema);
            }
        }
    }

    #[test]
    fn every_optional_field_is_a_union_with_null_first_and_a_null_default() {
        // The encoder writes optional values as union branch 0 (null) or 1 (the value).
        for kind in RecordKind::ALL {
            for field in &record(kind).fields {
                if let Schema::Union(u) = &field.schema {
                    assert!(
                        matches!(u.variants(), [Schema::Null, _]),
                        "{kind:?}.{}",
                        field.name
                    );
                    assert_eq!(
                        field.default,
                        Some(serde_json::Value::Null),
                        "{kind:?}.{}",
                        field.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_self_referencing_record_is_recursive() {
        let list = Schema::parse_str(
            r#"{"type":"record","name":"L","namespace":"x","fields":[
                {"name":"v","type":"int"},
                {"name":"next","type":["null","L"],"default":null}]}"#,
        )
        .unwrap();
        assert!(is_recursive(&list));
        let nested = Schema::parse_str(
            r#"{"type":"record","name":"A","fields":[
                {"name":"b","type":{"type":"record","name":"B","fields":[
                    {"name":"a","type":{"type":"array","items":"A"}}]}}]}"#,
        )
        .unwrap();
        assert!(is_recursive(&nested));
    }

    #[test]
    fn enum_symbols_are_found_by_short_or_full_name() {
        let status = Contract::get().unwrap().schema(RecordKind::RunStatusEvent);
        assert_eq!(status.enum_symbols("StatusSource").unwrap()[0], "submit");
        assert_eq!(
            status
                .enum_symbols("dev.captainbridge.RunStatus")
                .unwrap()
                .len(),
            13
        );
        assert!(status.enum_symbols("Nope").is_none());
    }
}
