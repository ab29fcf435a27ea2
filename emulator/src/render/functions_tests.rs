//! The built-in functions (`functions`) exercised end to end through the expression evaluator (`expr`).
//! A module of its own so that `functions` does not depend back on `expr`, even in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Map, json};

use super::expr::evaluate;

fn vars() -> Map<String, serde_json::Value> {
    let serde_json::Value::Object(map) = json!({
        "name": "ada lovelace", "price": 1234.5, "tags": ["rust", "css", "html"], "none": null,
        "when": "2026-03-07T15:04:05Z", "nums": [3, 1, 2], "blank": "",
    }) else {
        unreachable!()
    };
    map
}

fn check(table: &[(&str, serde_json::Value)]) {
    for (src, want) in table {
        let got = evaluate(src, &vars()).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(&got, want, "{src}");
    }
}

#[test]
fn string_functions() {
    check(&[
        ("uppercase(name)", json!("ADA LOVELACE")),
        ("lowercase('ÉCOLE')", json!("école")),
        ("capitalize(name)", json!("Ada lovelace")),
        ("titleCase(name)", json!("Ada Lovelace")),
        ("trim('  x  ')", json!("x")),
        ("truncate('Hello World', 5)", json!("Hello...")),
        ("truncate('Hello World', 5, '…')", json!("Hello…")),
        ("truncate('Hi', 5)", json!("Hi")),
        ("replace('a-b-c', '-', '+')", json!("a+b+c")),
        ("split('a,b', ',')", json!(["a", "b"])),
        ("padStart('7', 3, '0')", json!("007")),
        ("padEnd('ab', 4, '.')", json!("ab..")),
        ("uppercase('straße')", json!("STRASSE")),
    ]);
}

#[test]
fn number_functions() {
    check(&[
        ("round(2.567, 2)", json!(2.57)),
        ("round(2.5)", json!(3)),
        ("floor(2.9)", json!(2)),
        ("ceil(2.1)", json!(3)),
        ("abs(-4)", json!(4)),
        ("min(3, 1, 2)", json!(1)),
        ("max(nums)", json!(3)),
        ("sum(nums)", json!(6)),
        ("average(nums)", json!(2)),
        ("sum([])", json!(0)),
    ]);
}

#[test]
fn formatting_functions() {
    check(&[
        ("currency(price)", json!("$1,234.50")),
        ("currency(price, 'EUR')", json!("€1,234.50")),
        ("currency(1234, 'JPY')", json!("¥1,234")),
        ("currency(-5, 'CHF')", json!("-CHF 5.00")),
        ("number(1234567.891)", json!("1,234,567.891")),
        ("number(1234567.891, 1)", json!("1,234,567.9")),
        ("number(1000)", json!("1,000")),
        ("percent(0.256)", json!("26%")),
        ("percent(0.256, 1)", json!("25.6%")),
        ("date(when)", json!("Mar 7, 2026")),
        (
            "date(when, 'dddd, MMMM D YYYY')",
            json!("Saturday, March 7 2026"),
        ),
        ("date('2026-01-02', 'DD/MM/YY')", json!("02/01/26")),
        ("date(0, 'YYYY-MM-DD')", json!("1970-01-01")),
        ("time(when)", json!("3:04 PM")),
        ("time(when, 'HH:mm:ss')", json!("15:04:05")),
        ("date('January 29, 2026')", json!("January 29, 2026")),
    ]);
}

#[test]
fn array_functions() {
    check(&[
        ("length(tags)", json!(3)),
        ("length(name)", json!(12)),
        ("first(tags)", json!("rust")),
        ("last(tags)", json!("html")),
        ("join(tags, ' · ')", json!("rust · css · html")),
        ("slice(tags, 1)", json!(["css", "html"])),
        ("slice(tags, -1)", json!(["html"])),
        ("slice(name, 0, 3)", json!("ada")),
        ("contains(tags, 'css')", json!(true)),
        ("contains(name, 'love')", json!(true)),
        ("indexOf(tags, 'html')", json!(2)),
        ("indexOf(tags, 'go')", json!(-1)),
    ]);
}

#[test]
fn type_checks_and_utils() {
    check(&[
        ("isEmpty(blank)", json!(true)),
        ("isEmpty(ghost)", json!(true)),
        ("isNotEmpty(tags)", json!(true)),
        ("isDefined(ghost)", json!(false)),
        ("isDefined(none)", json!(false)),
        ("isDefined(name)", json!(true)),
        ("isArray(tags)", json!(true)),
        ("isString(name)", json!(true)),
        ("isNumber(price)", json!(true)),
        ("default(ghost, 'x')", json!("x")),
        ("default(blank, 'x')", json!("x")),
        ("default(name, 'x')", json!("ada lovelace")),
        ("coalesce(none, ghost, 'z')", json!("z")),
        ("json(nums)", json!("[3,1,2]")),
        ("parseJson('{\"a\": [1]}').a[0]", json!(1)),
    ]);
}

#[test]
fn bad_calls_name_the_function() {
    for (src, want) in [
        ("uppercase()", "uppercase(): takes 1 argument(s), got 0"),
        ("round('x')", "round(): expected a number, got string"),
        ("date()", "date(): takes 1 to 2 argument(s), got 0"),
        ("parseJson('{')", "parseJson(): invalid JSON"),
    ] {
        let err = evaluate(src, &vars()).expect_err(src);
        assert!(err.0.contains(want), "{src}: {}", err.0);
    }
}
