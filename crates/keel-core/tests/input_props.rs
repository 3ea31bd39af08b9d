//! Property tests (the CI-bounded fuzzing) of the input rules every request goes through:
//! depth counting and compaction of JSON text, names, and queue patterns. Each property holds
//! for any input, including hostile text that is not JSON at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_core::access::{check_pattern, glob_match};
use keel_core::validate::{check_name, compact_json, json_depth};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        // Strings full of what trips a scanner: quotes, escapes, brackets, whitespace, unicode.
        "[\\\\\"\\[\\]{}: \t\n\ra-zé€😀]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[\\\\\"\\[\\]{} a-z]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn depth_is_the_nesting_of_the_value(v in json_value()) {
        prop_assert_eq!(json_depth(v.to_string().as_bytes()), depth(&v));
        prop_assert_eq!(json_depth(serde_json::to_string_pretty(&v).unwrap().as_bytes()), depth(&v));
    }

    #[test]
    fn compaction_keeps_the_value_and_removes_all_whitespace_between_tokens(v in json_value()) {
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let compact = compact_json(&pretty);
        // Compared as text: the same tokens in the same order (float parsing is not exact).
        prop_assert!(serde_json::from_str::<Value>(&compact).is_ok());
        prop_assert_eq!(compact.as_ref(), v.to_string());
    }

    #[test]
    fn scanners_never_panic_on_any_text(text in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = json_depth(text.as_bytes());
        let _ = json_depth(&bytes);
        let _ = compact_json(&text);
    }

    #[test]
    fn names_are_exactly_the_documented_alphabet(name in "[ -~é]{0,140}") {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        prop_assert_eq!(check_name(&name).is_ok(), ok);
        // Every valid name is a valid pattern that matches exactly itself.
        if ok {
            prop_assert!(check_pattern(&name).is_ok());
            prop_assert!(glob_match(&name, &name));
        }
    }

    #[test]
    fn a_star_pattern_matches_every_name_with_its_prefix(prefix in "[a-z.]{0,8}", rest in "[a-z.:-]{0,8}") {
        let pattern = format!("{}*", prefix);
        let name = format!("{}{}", prefix, rest);
        prop_assert!(glob_match(&pattern, &name));
        // A name shorter than the literal prefix can never match.
        if !prefix.is_empty() {
            prop_assert!(!glob_match(&pattern, &prefix[1..]));
        }
    }
}
