//! The bundled official OpenAPI document: loading it once, turning its OpenAPI-3.0-isms into
//! plain JSON Schema 2020-12, the per-action facts the simulator needs (output shape, page
//! size, `max_results` bounds), and the request-body validators compiled lazily per action and
//! mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

/// The official Captain Data v4 OpenAPI document (MIT, from captaindatatech/captaindata-mcp).
pub const OPENAPI_JSON: &str = include_str!("../spec/captaindata-v4-openapi.json");

/// Errors loading the document or compiling a schema from it.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("openapi document is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("openapi document has no {0}")]
    Missing(String),
    #[error("schema at {pointer} does not compile: {message}")]
    Compile { pointer: String, message: String },
}

/// The three ways to run an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Live,
    Async,
    Schedule,
}

impl Mode {
    /// Path suffix after `/run/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Async => "async",
            Mode::Schedule => "schedule",
        }
    }

    fn index(self) -> usize {
        match self {
            Mode::Live => 0,
            Mode::Async => 1,
            Mode::Schedule => 2,
        }
    }
}

/// `max_results` of an action's async parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxResults {
    pub default: Option<u64>,
    pub maximum: Option<u64>,
}

/// What the simulator knows about one action.
#[derive(Debug)]
pub struct ActionSpec {
    /// 1-based position in the document; used as `action_id`.
    pub id: u64,
    pub name: String,
    /// Schema of one result (one item of the live array, or the live object).
    pub output_schema: Value,
    /// Live answers an array (list action) rather than one object.
    pub output_is_array: bool,
    /// Live takes a `page` query parameter and answers `X-Pagination-*` headers.
    pub paginated: bool,
    /// Live also takes the `token` cursor (8 actions).
    pub cursor: bool,
    /// The live 200 answer declares `X-Pagination-Next`.
    pub next_header: bool,
    /// The live 200 answer declares `X-Pagination-Previous` (not the cursor actions).
    pub previous_header: bool,
    /// The live `page_size` default, when declared.
    pub page_size: Option<u64>,
    pub max_results: Option<MaxResults>,
    /// Pointer (into the normalized document) of each mode's request body schema.
    body_pointers: [String; 3],
    validators: [OnceLock<Result<Arc<jsonschema::Validator>, String>>; 3],
}

/// The loaded document and its actions.
pub struct Spec {
    doc: Value,
    actions: Vec<Arc<ActionSpec>>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("actions", &self.actions.len())
            .finish()
    }
}

static SPEC: OnceLock<Result<Arc<Spec>, String>> = OnceLock::new();

/// The process-wide spec, parsed on first use.
pub fn spec() -> Result<Arc<Spec>, SpecError> {
    SPEC.get_or_init(|| {
        Spec::load(OPENAPI_JSON)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(SpecError::Missing)
}

impl Spec {
    /// Parses and normalizes a document.
    pub fn load(text: &str) -> Result<Spec, SpecError> {
        let mut doc: Value = serde_json::from_str(text)?;
        normalize_document(&mut doc);
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| SpecError::Missing("paths".into()))?;
        let mut actions = Vec::new();
        for path in paths.keys() {
            let Some(name) = path
                .strip_prefix("/actions/")
                .and_then(|rest| rest.strip_suffix("/run/live"))
            else {
                continue;
            };
            let id = actions.len() as u64 + 1;
            actions.push(Arc::new(ActionSpec::from_doc(&doc, id, name)?));
        }
        let by_name = actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        Ok(Spec {
            doc,
            actions,
            by_name,
        })
    }

    /// The normalized document.
    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// All actions, in document order.
    pub fn actions(&self) -> &[Arc<ActionSpec>] {
        &self.actions
    }

    /// One action by slug.
    pub fn action(&self, name: &str) -> Option<&Arc<ActionSpec>> {
        self.by_name.get(name).map(|&i| &self.actions[i])
    }

    /// Resolves a `#/components/...` reference.
    pub fn resolve_ref<'a>(&'a self, reference: &str) -> Option<&'a Value> {
        reference
            .strip_prefix('#')
            .and_then(|pointer| self.doc.pointer(pointer))
    }

    /// Compiles the schema found at a JSON pointer of the normalized document, with the
    /// components it references reachable. Used for bodies here and by tests for responses.
    pub fn compile_at(&self, pointer: &str) -> Result<jsonschema::Validator, SpecError> {
        let schema = self
            .doc
            .pointer(pointer)
            .ok_or_else(|| SpecError::Missing(pointer.to_owned()))?;
        compile_with_components(&self.doc, schema).map_err(|message| SpecError::Compile {
            pointer: pointer.to_owned(),
            message,
        })
    }

    /// Compiles an arbitrary schema whose `#/components/schemas/*` references point into the
    /// document (for tests that adjust a schema before validating).
    pub fn compile_schema(&self, schema: &Value) -> Result<jsonschema::Validator, SpecError> {
        compile_with_components(&self.doc, schema).map_err(|message| SpecError::Compile {
            pointer: "(inline)".to_owned(),
            message,
        })
    }

    /// The cached body validator of an action and mode.
    pub fn body_validator(
        &self,
        action: &ActionSpec,
        mode: Mode,
    ) -> Result<Arc<jsonschema::Validator>, SpecError> {
        let slot = &action.validators[mode.index()];
        let pointer = &action.body_pointers[mode.index()];
        slot.get_or_init(|| {
            self.compile_at(pointer)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|message| SpecError::Compile {
            pointer: pointer.clone(),
            message,
        })
    }
}

/// JSON pointer escaping of one path segment.
pub fn pointer_escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

impl ActionSpec {
    fn from_doc(doc: &Value, id: u64, name: &str) -> Result<ActionSpec, SpecError> {
        let op_pointer = |mode: &str| {
            format!(
                "/paths/{}/post",
                pointer_escape(&format!("/actions/{name}/run/{mode}"))
            )
        };
        let live_pointer = op_pointer("live");
        let live = doc
            .pointer(&live_pointer)
            .ok_or_else(|| SpecError::Missing(live_pointer.clone()))?;
        let params = live
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let param = |n: &str| {
            params
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(n))
        };
        let paginated = param("page").is_some();
        let cursor = param("token").is_some();
        let declares = |header: &str| {
            live.pointer(&format!("/responses/200/headers/{header}"))
                .is_some()
        };
        let next_header = declares("X-Pagination-Next");
        let previous_header = declares("X-Pagination-Previous");
        let page_size = param("page_size")
            .and_then(|p| p.pointer("/schema/default"))
            .and_then(Value::as_u64);
        let response = live
            .pointer("/responses/200/content/application~1json/schema")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        let output_is_array = response.get("type").and_then(Value::as_str) == Some("array");
        let output_schema = if output_is_array {
            response.get("items").cloned().unwrap_or_default()
        } else {
            response
        };
        let async_schema = format!(
            "{}/requestBody/content/application~1json/schema",
            op_pointer("async")
        );
        let max_results = doc
            .pointer(&format!(
                "{async_schema}/properties/parameters/properties/max_results"
            ))
            .map(|m| MaxResults {
                default: m.get("default").and_then(Value::as_u64),
                maximum: m.get("maximum").and_then(Value::as_u64),
            });
        let body_pointer = |mode: &str| {
            format!(
                "{}/requestBody/content/application~1json/schema",
                op_pointer(mode)
            )
        };
        for mode in ["live", "async", "schedule"] {
            if doc.pointer(&body_pointer(mode)).is_none() {
                return Err(SpecError::Missing(body_pointer(mode)));
            }
        }
        Ok(ActionSpec {
            id,
            name: name.to_owned(),
            output_schema,
            output_is_array,
            paginated,
            cursor,
            next_header,
            previous_header,
            page_size,
            max_results,
            body_pointers: [
                body_pointer("live"),
                body_pointer("async"),
                body_pointer("schedule"),
            ],
            validators: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        })
    }
}

/// Compiles `schema` as a root whose `#/components/schemas/*` references resolve: the
/// referenced component schemas (transitively) are copied under a `components` key.
fn compile_with_components(doc: &Value, schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut needed: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending = Vec::new();
    collect_refs(schema, &mut pending);
    while let Some(reference) = pending.pop() {
        let Some(name) = reference.strip_prefix("#/components/schemas/") else {
            return Err(format!("unsupported reference {reference}"));
        };
        if needed.contains_key(name) {
            continue;
        }
        let target = doc
            .pointer(&format!("/components/schemas/{name}"))
            .ok_or_else(|| format!("dangling reference {reference}"))?;
        collect_refs(target, &mut pending);
        needed.insert(name.to_owned(), target.clone());
    }
    let mut root = match schema {
        Value::Object(map) => map.clone(),
        other => {
            let mut map = Map::new();
            map.insert("allOf".into(), Value::Array(vec![other.clone()]));
            map
        }
    };
    let schemas: Map<String, Value> = needed.into_iter().collect();
    let mut components = Map::new();
    components.insert("schemas".into(), Value::Object(schemas));
    root.insert("components".into(), Value::Object(components));
    jsonschema::draft202012::options()
        .build(&Value::Object(root))
        .map_err(|e| e.to_string())
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_owned());
                    }
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Rewrites every schema of the document (component schemas and every `schema` found in
/// operations) from OpenAPI 3.0 dialect to plain JSON Schema.
fn normalize_document(doc: &mut Value) {
    fn walk_non_schema(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if k == "schema" {
                        normalize_schema(v);
                    } else {
                        walk_non_schema(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk_non_schema),
            _ => {}
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.values_mut().for_each(normalize_schema);
    }
    if let Some(responses) = doc.pointer_mut("/components/responses") {
        walk_non_schema(responses);
    }
    if let Some(paths) = doc.get_mut("paths") {
        walk_non_schema(paths);
    }
}

/// Two OpenAPI-3.0-isms the document uses are not JSON Schema 2020-12:
/// `nullable: true` (becomes a `null` type / enum member / `anyOf` branch), and JavaScript
/// regex literals as `pattern` (`/^https:.../i` becomes `(?i)^https:...`); left alone the first
/// rejects documented nulls and the second rejects every URL.
pub fn normalize_schema(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    for (k, child) in map.iter_mut() {
        match k.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(children) = child {
                    children.values_mut().for_each(normalize_schema);
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else"
            | "unevaluatedProperties"
            | "unevaluatedItems" => normalize_schema(child),
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                if let Value::Array(children) = child {
                    children.iter_mut().for_each(normalize_schema);
                }
            }
            _ => {}
        }
    }
    if let Some(Value::String(pattern)) = map.get("pattern") {
        if let Some(fixed) = strip_regex_literal(pattern) {
            map.insert("pattern".into(), Value::String(fixed));
        }
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        map.remove("nullable");
        if let Some(Value::Array(values)) = map.get_mut("enum") {
            if !values.contains(&Value::Null) {
                values.push(Value::Null);
            }
        }
        match map.get("type").cloned() {
            Some(Value::String(t)) => {
                map.insert("type".into(), serde_json::json!([t, "null"]));
            }
            Some(Value::Array(mut types)) => {
                if !types.contains(&Value::String("null".into())) {
                    types.push(Value::String("null".into()));
                }
                map.insert("type".into(), Value::Array(types));
            }
            _ => {
                let inner = std::mem::take(map);
                map.insert(
                    "anyOf".into(),
                    serde_json::json!([Value::Object(inner), {"type": "null"}]),
                );
            }
        }
    } else {
        map.remove("nullable");
    }
}

fn strip_regex_literal(pattern: &str) -> Option<String> {
    let rest = pattern.strip_prefix('/')?;
    let end = rest.rfind('/')?;
    let (body, flags) = (&rest[..end], &rest[end + 1..]);
    if !flags.chars().all(|c| "gimsuy".contains(c)) {
        return None;
    }
    Some(if flags.contains('i') {
        format!("(?i){body}")
    } else {
        body.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_bundled_document_has_all_71_actions_with_their_facts() {
        let spec = spec().unwrap();
        assert_eq!(spec.actions().len(), 71);
        let people = spec.action("linkedin-search-people").unwrap();
        assert!(people.output_is_array && people.paginated);
        assert_eq!(people.page_size, Some(10));
        assert_eq!(
            people.max_results,
            Some(MaxResults {
                default: Some(100),
                maximum: Some(1000)
            })
        );
        assert!(
            !spec
                .action("linkedin-extract-people")
                .unwrap()
                .output_is_array
        );
        assert!(people.next_header && people.previous_header && !people.cursor);
        let places = spec.action("googlemaps-search-places").unwrap();
        assert!(places.cursor && places.next_header && !places.previous_header);
        let cursors: Vec<&str> = spec
            .actions()
            .iter()
            .filter(|a| a.cursor)
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(cursors.len(), 8, "{cursors:?}");
        assert!(spec
            .actions()
            .iter()
            .all(|a| a.paginated == (a.next_header && (a.cursor || a.previous_header))));
    }

    #[test]
    fn every_body_schema_compiles() {
        let spec = spec().unwrap();
        for action in spec.actions() {
            for mode in [Mode::Live, Mode::Async, Mode::Schedule] {
                spec.body_validator(action, mode).unwrap();
            }
        }
    }

    #[test]
    fn nullable_and_regex_literals_become_json_schema() {
        let mut s = json!({"type": "string", "nullable": true, "pattern": "/^a/i"});
        normalize_schema(&mut s);
        assert_eq!(s, json!({"type": ["string", "null"], "pattern": "(?i)^a"}));
        let mut r = json!({"$ref": "#/x", "nullable": true});
        normalize_schema(&mut r);
        assert_eq!(r, json!({"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}));
    }
}
