//! Fake results with the field shapes of an action's output schema: a small walker over the
//! (normalized) spec schema that fills strings, numbers, booleans, arrays and nested objects,
//! honouring enums and the common formats. Deterministic: the caller passes a seeded RNG.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use crate::spec::Spec;

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Hamilton",
];
const MAX_DEPTH: usize = 5;

/// A RNG for one result, derived from the seed and a few coordinates (run, input, index).
pub fn rng_for(seed: u64, parts: &[u64]) -> StdRng {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for p in parts {
        h = splitmix(h ^ p);
    }
    StdRng::seed_from_u64(h)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One fake result for `schema`.
pub fn generate(spec: &Spec, schema: &Value, rng: &mut StdRng) -> Value {
    value_for(spec, schema, rng, 0, "value")
}

fn value_for(spec: &Spec, schema: &Value, rng: &mut StdRng, depth: usize, name: &str) -> Value {
    let Value::Object(map) = schema else {
        return Value::Null;
    };
    if let Some(target) = map
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| spec.resolve_ref(r))
    {
        return value_for(spec, target, rng, depth, name);
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        let options: Vec<&Value> = values.iter().filter(|v| !v.is_null()).collect();
        if !options.is_empty() {
            return options[rng.random_range(0..options.len())].clone();
        }
    }
    if let Some(c) = map.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = map.get(key) {
            if let Some(branch) = branches.iter().find(|b| !is_null_schema(b)) {
                return value_for(spec, branch, rng, depth, name);
            }
        }
    }
    let ty = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if map.contains_key("properties") => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if depth < MAX_DEPTH {
                if let Some(Value::Object(props)) = map.get("properties") {
                    for (key, prop) in props {
                        out.insert(key.clone(), value_for(spec, prop, rng, depth + 1, key));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => {
            let n = if depth < MAX_DEPTH {
                rng.random_range(0..=2)
            } else {
                0
            };
            let items = map.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(
                (0..n)
                    .map(|_| value_for(spec, &items, rng, depth + 1, name))
                    .collect(),
            )
        }
        "integer" => {
            let lo = map.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let hi = map
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(lo.saturating_add(10_000))
                .max(lo);
            Value::from(rng.random_range(lo..=hi))
        }
        "number" => Value::from((rng.random_range(0.0..5.0f64) * 100.0).round() / 100.0),
        "boolean" => Value::Bool(rng.random_bool(0.5)),
        "null" => Value::Null,
        _ => Value::String(string_for(map, rng, name)),
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

fn string_for(map: &Map<String, Value>, rng: &mut StdRng, name: &str) -> String {
    let n: u32 = rng.random_range(1..1_000_000);
    let format = map.get("format").and_then(Value::as_str).unwrap_or("");
    match format {
        "uri" | "url" => return format!("https://example.com/{name}/{n}"),
        "uuid" => {
            return uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .to_string()
        }
        "date-time" => return format!("2025-0{}-1{}T10:{:02}:00.000Z", 1 + n % 9, n % 10, n % 60),
        "date" => return format!("2025-0{}-1{}", 1 + n % 9, n % 10),
        "time" => return format!("10:{:02}:00", n % 60),
        "email" => return format!("user{n}@example.com"),
        _ => {}
    }
    let first = FIRST[rng.random_range(0..FIRST.len())];
    let last = LAST[rng.random_range(0..LAST.len())];
    if name.ends_with("_url") || name.ends_with("url") {
        format!("https://example.com/{name}/{n}")
    } else if name == "full_name" || name == "name" || name.ends_with("_name") {
        match name {
            "first_name" => first.to_owned(),
            "last_name" => last.to_owned(),
            _ => format!("{first} {last}"),
        }
    } else if name.ends_with("_id") || name == "id" {
        n.to_string()
    } else {
        format!("{name} {n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_results_validate_against_the_output_schema_of_every_action() {
        let spec = crate::spec::spec().unwrap();
        for action in spec.actions() {
            let validator = spec
                .compile_at(&format!(
                    "/paths/{}/post/responses/200/content/application~1json/schema",
                    crate::spec::pointer_escape(&format!("/actions/{}/run/live", action.name))
                ))
                .unwrap();
            let mut rng = rng_for(7, &[action.id]);
            let one = generate(&spec, &action.output_schema, &mut rng);
            let body = if action.output_is_array {
                Value::Array(vec![one])
            } else {
                one
            };
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", action.name);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_result() {
        let spec = crate::spec::spec().unwrap();
        let action = spec.action("linkedin-search-people").unwrap();
        let a = generate(&spec, &action.output_schema, &mut rng_for(1, &[2, 3]));
        let b = generate(&spec, &action.output_schema, &mut rng_for(1, &[2, 3]));
        assert_eq!(a, b);
    }
}
