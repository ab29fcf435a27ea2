//! Behaviour of the streaming dataset reader: formats, numbering, rejections, limits, fingerprints.

#![allow(clippy::expect_used)]

use std::io::Read;

use serde_json::{Map, Value, json};
use shared::dataset::{
    DatasetError, DatasetFormat, DatasetReader, Encoded, Item, RejectReason, Row, RowRules,
    fingerprint,
};

// ---------- helpers ----------

fn read_with(
    format: DatasetFormat,
    data: &[u8],
    rules: RowRules,
) -> Result<Vec<Item>, DatasetError> {
    DatasetReader::new(data, format, rules)?.collect()
}

fn read(format: DatasetFormat, data: &str) -> Vec<Item> {
    read_with(format, data.as_bytes(), RowRules::default()).expect("dataset reads")
}

fn csv(data: &str) -> Vec<Item> {
    read(DatasetFormat::Csv, data)
}

fn required(columns: &[&str]) -> RowRules {
    RowRules {
        required: columns.iter().map(|c| c.to_string()).collect(),
        ..RowRules::default()
    }
}

fn valid(items: &[Item]) -> Vec<&Row> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Valid(row) => Some(row),
            Item::Rejected(_) => None,
        })
        .collect()
}

fn rejections(items: &[Item]) -> Vec<(u64, RejectReason)> {
    items
        .iter()
        .filter_map(|item| match item {
            Item::Rejected(r) => Some((r.number, r.reason.clone())),
            Item::Valid(_) => None,
        })
        .collect()
}

fn numbers(items: &[Item]) -> Vec<u64> {
    items.iter().map(Item::number).collect()
}

fn vars(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn dataset_error(format: DatasetFormat, data: &[u8], rules: RowRules) -> DatasetError {
    read_with(format, data, rules).expect_err("dataset should fail")
}

/// Hands out one byte per `read`, to exercise every chunk boundary of the scanners.
struct OneByte<'a>(&'a [u8]);

impl Read for OneByte<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

// ---------- formats and edge files ----------

#[test]
fn format_comes_from_the_key_extension() {
    let cases = [
        ("uploads/cards.csv", Some(DatasetFormat::Csv)),
        ("a/b/Cards.CSV", Some(DatasetFormat::Csv)),
        ("x.json", Some(DatasetFormat::Json)),
        ("x.jsonl", Some(DatasetFormat::JsonLines)),
        ("x.NDJSON", Some(DatasetFormat::JsonLines)),
        ("x.csv.gz", None),
        ("data.v2/readme", None),
        ("noextension", None),
    ];
    for (key, expected) in cases {
        assert_eq!(DatasetFormat::from_key(key), expected, "{key}");
    }
}

#[test]
fn an_empty_file_is_an_empty_dataset_in_every_format() {
    let cases: [(DatasetFormat, &[u8]); 5] = [
        (DatasetFormat::Csv, b""),
        (DatasetFormat::Csv, b"\xEF\xBB\xBF\n\r\n"),
        (DatasetFormat::Json, b" \n "),
        (DatasetFormat::JsonLines, b""),
        (DatasetFormat::JsonLines, b"\n  \n"),
    ];
    for (format, data) in cases {
        let error = dataset_error(format, data, RowRules::default());
        assert!(
            matches!(error, DatasetError::Empty),
            "{format:?} {data:?}: {error}"
        );
    }
}

#[test]
fn a_header_only_csv_has_zero_rows() {
    let reader = DatasetReader::new(
        &b"title,url\r\n"[..],
        DatasetFormat::Csv,
        RowRules::default(),
    )
    .expect("header reads");
    assert_eq!(
        reader.columns(),
        Some(&["title".to_string(), "url".to_string()][..])
    );
    assert_eq!(reader.count(), 0);
}

#[test]
fn the_bom_is_stripped_and_header_names_are_trimmed() {
    let reader = DatasetReader::new(
        OneByte(b"\xEF\xBB\xBFtitle , url\nA,b\n"),
        DatasetFormat::Csv,
        required(&["title"]),
    )
    .expect("header reads");
    assert_eq!(
        reader.columns(),
        Some(&["title".to_string(), "url".to_string()][..])
    );
}

#[test]
fn crlf_and_lf_files_read_the_same() {
    let lf = csv("title,url\na,1\nb,2\n");
    let crlf = csv("title,url\r\na,1\r\nb,2\r\n");
    assert_eq!(lf, crlf);
    assert_eq!(
        valid(&lf)[1].fields,
        vars(json!({"title": "b", "url": "2"}))
    );
}

#[test]
fn quoted_newlines_commas_and_quotes_stay_in_one_field() {
    let items = csv("title,body\n\"two\nlines\",\"a, \"\"b\"\"\"\nnext,x\n");
    let rows = valid(&items);
    assert_eq!(rows[0].fields["title"], "two\nlines");
    assert_eq!(rows[0].fields["body"], "a, \"b\"");
    assert_eq!(rows[1].number, 1);
}

#[test]
fn values_are_kept_as_given_and_blank_lines_take_no_number() {
    let items = csv("title,url\n  spaced  ,1\n\n\nb,2\n\n");
    assert_eq!(numbers(&items), [0, 1]);
    assert_eq!(valid(&items)[0].variables["title"], "  spaced  ");
}

// ---------- CSV rejections and dataset errors ----------

#[test]
fn ragged_rows_are_rejected_with_their_numbers_and_valid_rows_still_come_through() {
    let items = csv("a,b\n1,2\n1\n1,2,3\n3,4\n");
    assert_eq!(numbers(&items), [0, 1, 2, 3]);
    assert_eq!(
        rejections(&items),
        [
            (
                1,
                RejectReason::Ragged {
                    expected: 2,
                    found: 1
                }
            ),
            (
                2,
                RejectReason::Ragged {
                    expected: 2,
                    found: 3
                }
            ),
        ]
    );
    assert_eq!(valid(&items)[1].number, 3);
}

#[test]
fn invalid_utf8_rejects_only_that_row() {
    let data = b"title,url\nok,1\nbad\xFF\xFE,2\nfine,3\n";
    let items = read_with(DatasetFormat::Csv, data, RowRules::default()).expect("reads");
    let column = Some("title".to_string());
    assert_eq!(
        rejections(&items),
        [(1, RejectReason::InvalidUtf8 { column })]
    );
    assert_eq!(valid(&items).len(), 2);
}

#[test]
fn header_problems_fail_the_dataset_naming_the_column() {
    let with_mapping = RowRules {
        mapping: [("image".to_string(), "imageUrl".to_string())].into(),
        ..RowRules::default()
    };
    let cases: [(&[u8], RowRules, &str); 5] = [
        (
            b"title,url,title\n",
            RowRules::default(),
            "header column \"title\" appears more than once",
        ),
        (
            b"title,,url\n",
            RowRules::default(),
            "header column 2 has an empty name",
        ),
        (
            b"title,url\n",
            required(&["badge"]),
            "the header has no column \"badge\", which the job requires",
        ),
        (
            b"title,url\n",
            with_mapping,
            "the header has no column \"image\", which the job requires",
        ),
        (
            b"ti\xFFtle\n",
            RowRules::default(),
            "malformed dataset at byte 0: header column 1 is not valid UTF-8",
        ),
    ];
    for (data, rules, message) in cases {
        assert_eq!(
            dataset_error(DatasetFormat::Csv, data, rules).to_string(),
            message
        );
    }
}

#[test]
fn an_empty_required_value_rejects_the_row_in_csv_and_json() {
    let rules = required(&["title"]);
    let csv_items = read_with(
        DatasetFormat::Csv,
        b"title,url\n,1\n  ,2\nok,3\n",
        rules.clone(),
    );
    let jsonl = b"{\"title\":null}\n{\"title\":\"\"}\n{\"url\":1}\n{\"title\":0}\n";
    let json_items = read_with(DatasetFormat::JsonLines, jsonl, rules).expect("reads");
    let empty = RejectReason::EmptyValue {
        column: "title".into(),
    };
    let missing = RejectReason::MissingColumn {
        column: "title".into(),
    };
    assert_eq!(
        rejections(&csv_items.expect("reads")),
        [(0, empty.clone()), (1, empty.clone())]
    );
    assert_eq!(
        rejections(&json_items),
        [(0, empty.clone()), (1, empty.clone()), (2, missing)]
    );
    assert_eq!(empty.to_string(), "required column \"title\" is empty");
}

#[test]
fn an_empty_csv_cell_becomes_a_null_variable_but_stays_empty_in_fields() {
    let items = csv("title,badge\nHello,\n");
    let row = valid(&items)[0];
    assert_eq!(
        row.variables,
        vars(json!({"title": "Hello", "badge": null}))
    );
    assert_eq!(row.fields["badge"], "");
}

// ---------- mapping ----------

fn mapping(pairs: &[(&str, &str)]) -> RowRules {
    RowRules {
        mapping: pairs
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect(),
        ..RowRules::default()
    }
}

#[test]
fn mapping_renames_columns_and_unmapped_columns_pass_through() {
    let rules = mapping(&[("Post Title", "title")]);
    let items = read_with(DatasetFormat::Csv, b"Post Title,url\nHi,x\n", rules).expect("reads");
    let row = valid(&items)[0];
    assert_eq!(row.variables, vars(json!({"title": "Hi", "url": "x"})));
    assert_eq!(row.fields, vars(json!({"Post Title": "Hi", "url": "x"})));
}

#[test]
fn a_mapped_column_wins_over_an_unmapped_column_of_the_same_name() {
    let rules = mapping(&[("headline", "title")]);
    let data = b"{\"title\":\"old\",\"headline\":\"new\"}\n";
    let items = read_with(DatasetFormat::JsonLines, data, rules).expect("reads");
    assert_eq!(valid(&items)[0].variables, vars(json!({"title": "new"})));
}

#[test]
fn two_columns_mapped_to_one_variable_fail_the_dataset() {
    let rules = mapping(&[("a", "title"), ("b", "title")]);
    let error = dataset_error(DatasetFormat::Csv, b"a,b\n1,2\n", rules);
    assert!(
        matches!(error, DatasetError::ConflictingMapping { ref variable, .. } if variable == "title")
    );
}

// ---------- JSON ----------

#[test]
fn json_that_is_not_an_array_fails_the_dataset() {
    let cases = [
        ("{\"a\":1}", "an object"),
        ("\"text\"", "a string"),
        ("42", "a number"),
        ("<html>", "something that is not JSON"),
    ];
    for (data, found) in cases {
        let error = dataset_error(DatasetFormat::Json, data.as_bytes(), RowRules::default());
        assert_eq!(
            error.to_string(),
            format!("a JSON dataset must be an array of objects, but it starts with {found}")
        );
    }
}

#[test]
fn a_json_array_rejects_a_non_object_and_a_bad_element_and_keeps_the_rest() {
    let data =
        r#" [ {"title":"a, ] \" {"}, 2, {"title":}, {"title":"b","nested":{"x":[1,{"y":2}]}} ] "#;
    let items = read(DatasetFormat::Json, data);
    assert_eq!(numbers(&items), [0, 1, 2, 3]);
    let reasons = rejections(&items);
    assert_eq!(
        reasons[0],
        (
            1,
            RejectReason::NotAnObject {
                found: "number".into()
            }
        )
    );
    assert!(
        matches!(&reasons[1], (2, RejectReason::BadJson { .. })),
        "{reasons:?}"
    );
    let rows = valid(&items);
    assert_eq!(rows[0].variables["title"], "a, ] \" {");
    assert_eq!(rows[1].variables["nested"], json!({"x": [1, {"y": 2}]}));
}

#[test]
fn an_empty_json_array_has_zero_rows() {
    assert!(read(DatasetFormat::Json, " [ \n ] \n").is_empty());
}

#[test]
fn a_truncated_or_trailing_json_array_fails_after_the_rows_before_it() {
    let cases = [
        ("[{\"a\":1}, {\"a\":", "input ends inside the array"),
        ("[{\"a\":1}] x", "unexpected data after"),
    ];
    for (data, message) in cases {
        let results: Vec<_> =
            DatasetReader::new(data.as_bytes(), DatasetFormat::Json, RowRules::default())
                .expect("starts as an array")
                .collect();
        assert!(matches!(results[0], Ok(Item::Valid(_))));
        let error = results[1].as_ref().expect_err("dataset error");
        assert!(
            matches!(error, DatasetError::Malformed { .. }) && error.to_string().contains(message),
            "{error}"
        );
        assert_eq!(results.len(), 2, "the reader stops after an error");
    }
}

#[test]
fn json_lines_reject_a_bad_line_skip_blank_lines_and_accept_crlf() {
    let data = "{\"a\":1}\n\n   \nnot json\n[1]\r\n{\"a\":2}\r\n";
    let items = read(DatasetFormat::JsonLines, data);
    assert_eq!(numbers(&items), [0, 1, 2, 3]);
    let reasons = rejections(&items);
    assert!(
        matches!(&reasons[0], (1, RejectReason::BadJson { message }) if message.contains("expected")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons[1],
        (
            2,
            RejectReason::NotAnObject {
                found: "array".into()
            }
        )
    );
    assert_eq!(valid(&items)[1].variables["a"], 2);
}

#[test]
fn json_values_keep_their_types() {
    let items = read(
        DatasetFormat::Json,
        r#"[{"n": 3, "ok": true, "tags": ["a"], "none": null}]"#,
    );
    assert_eq!(
        valid(&items)[0].variables,
        vars(json!({"n": 3, "ok": true, "tags": ["a"], "none": null}))
    );
}

// ---------- limits ----------

#[test]
fn a_10_kb_field_passes_and_a_field_over_the_limit_rejects() {
    let (small, big) = ("x".repeat(10 * 1024), "y".repeat(64 * 1024 + 1));
    let data = format!("title,body\nok,{small}\nbig,{big}\n");
    let items = csv(&data);
    assert_eq!(
        valid(&items)[0].fields["body"].as_str().map(str::len),
        Some(10 * 1024)
    );
    let too_large = RejectReason::FieldTooLarge {
        column: "body".into(),
        bytes: 65537,
        limit: 65536,
    };
    assert_eq!(rejections(&items), [(1, too_large.clone())]);
    let jsonl = format!("{{\"body\":\"{small}\"}}\n{{\"body\":\"{big}\"}}\n");
    assert_eq!(
        rejections(&read(DatasetFormat::JsonLines, &jsonl)),
        [(1, too_large)]
    );
}

#[test]
fn a_row_over_the_row_limit_is_rejected_and_the_next_row_still_reads() {
    let rules = RowRules {
        max_row_bytes: 1024,
        max_field_bytes: 1024,
        ..RowRules::default()
    };
    let big = "z".repeat(5000);
    let cases = [
        (DatasetFormat::Csv, format!("a\n\"{big}\n{big}\"\nnext\n")),
        (
            DatasetFormat::Json,
            format!("[{{\"a\":\"{big}\"}},{{\"a\":\"next\"}}]"),
        ),
        (
            DatasetFormat::JsonLines,
            format!("{{\"a\":\"{big}\"}}\n{{\"a\":\"next\"}}\n"),
        ),
    ];
    for (format, data) in cases {
        let items = read_with(format, data.as_bytes(), rules.clone()).expect("reads");
        assert!(
            matches!(
                rejections(&items)[..],
                [(0, RejectReason::RowTooLarge { limit: 1024, .. })]
            ),
            "{format:?}"
        );
        assert_eq!(valid(&items)[0].variables["a"], "next", "{format:?}");
    }
}

#[test]
fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
    let depth = 100_000;
    let balanced = format!("[{}{}]", "[".repeat(depth), "]".repeat(depth));
    let items = read(DatasetFormat::Json, &balanced);
    assert!(
        matches!(&rejections(&items)[..], [(0, RejectReason::BadJson { message })] if message.contains("recursion"))
    );
    let unbalanced_line = format!("{}\n{{\"a\":1}}\n", "[".repeat(depth));
    let items = read(DatasetFormat::JsonLines, &unbalanced_line);
    assert!(matches!(
        &rejections(&items)[..],
        [(0, RejectReason::BadJson { .. })]
    ));
    assert_eq!(valid(&items).len(), 1);
    let unbalanced_array = format!("[{}", "{\"a\":".repeat(depth));
    let results: Vec<_> = DatasetReader::new(
        unbalanced_array.as_bytes(),
        DatasetFormat::Json,
        RowRules::default(),
    )
    .expect("starts as an array")
    .collect();
    assert!(matches!(results[..], [Err(DatasetError::Malformed { .. })]));
}

#[test]
fn more_rows_than_the_limit_fail_the_dataset() {
    let rules = RowRules {
        max_rows: Some(2),
        ..RowRules::default()
    };
    let results: Vec<_> = DatasetReader::new(&b"a\n1\n2\n3\n4\n"[..], DatasetFormat::Csv, rules)
        .expect("header reads")
        .collect();
    assert_eq!(results.len(), 3);
    assert!(matches!(
        results[2],
        Err(DatasetError::TooManyRows { limit: 2 })
    ));
}

// ---------- determinism and chunk boundaries ----------

const MIXED_CSV: &str = "\u{feff}title,badge\r\nA,\r\n\"multi\r\nline\",x\r\nragged\r\n,y\r\n";
const MIXED_JSON: &str = r#"[{"title":"A"}, 7, {"title":}, {"title":"B,]\"","n":[1,[2]]}, {}]"#;
const MIXED_JSONL: &str = "{\"title\":\"A\"}\n\nnope\n{\"title\":\"\"}\n{\"title\":\"B\"}";

#[test]
fn reading_twice_gives_identical_items() {
    for (format, data) in [
        (DatasetFormat::Csv, MIXED_CSV),
        (DatasetFormat::Json, MIXED_JSON),
        (DatasetFormat::JsonLines, MIXED_JSONL),
    ] {
        let rules = required(&["title"]);
        let first = read_with(format, data.as_bytes(), rules.clone()).expect("reads");
        let second = read_with(format, data.as_bytes(), rules).expect("reads");
        assert_eq!(first, second, "{format:?}");
        assert!(
            !rejections(&first).is_empty() && !valid(&first).is_empty(),
            "{format:?}"
        );
    }
}

#[test]
fn a_reader_that_returns_one_byte_at_a_time_gives_the_same_items() {
    for (format, data) in [
        (DatasetFormat::Csv, MIXED_CSV),
        (DatasetFormat::Json, MIXED_JSON),
        (DatasetFormat::JsonLines, MIXED_JSONL),
    ] {
        let whole = read_with(format, data.as_bytes(), required(&["title"])).expect("reads");
        let trickled: Vec<Item> =
            DatasetReader::new(OneByte(data.as_bytes()), format, required(&["title"]))
                .expect("starts")
                .collect::<Result<_, _>>()
                .expect("reads");
        assert_eq!(whole, trickled, "{format:?}");
    }
}

// ---------- fingerprint ----------

#[test]
fn fingerprint_ignores_key_order_and_depends_on_the_template() {
    let a = vars(json!({"title": "Hi", "meta": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}));
    let b = vars(
        serde_json::from_str(r#"{"meta":{"y":[1,{"a":1,"b":2}],"x":1},"title":"Hi"}"#)
            .expect("json"),
    );
    let print = fingerprint("tmpl_1", &a);
    assert_eq!(print, fingerprint("tmpl_1", &b));
    assert_ne!(print, fingerprint("tmpl_2", &a));
    assert_ne!(print, fingerprint("tmpl_1", &vars(json!({"title": "Hi!"}))));
    assert_eq!(print.len(), 32);
    assert!(
        print
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

#[test]
fn fingerprint_treats_integral_floats_like_integers() {
    let float = vars(serde_json::from_str(r#"{"n": 1.0}"#).expect("json"));
    assert_eq!(
        fingerprint("t", &float),
        fingerprint("t", &vars(json!({"n": 1})))
    );
    assert_ne!(
        fingerprint("t", &vars(json!({"n": "1"}))),
        fingerprint("t", &vars(json!({"n": 1})))
    );
}

// ---------- ingest's read: variables written as JSON ----------

/// Reads `data` twice, with `next` and with ingest's `next_into`: the same rows, the same
/// rejections and the same error, and each valid row's JSON is, byte for byte, what serde_json
/// writes for the variables `next` read.
fn assert_next_into_matches_next(format: DatasetFormat, data: &[u8], rules: RowRules) {
    let whole: Vec<_> = DatasetReader::new(data, format, rules.clone())
        .expect("dataset opens")
        .map(|item| item.map_err(|e| e.to_string()))
        .collect();
    let mut reader = DatasetReader::new(data, format, rules).expect("dataset opens");
    let mut out = String::from("["); // what came before stays
    for (index, expected) in whole.iter().enumerate() {
        let before = out.len();
        let read = reader.next_into(&mut out).expect("as many items");
        match (expected, read) {
            (Ok(Item::Valid(row)), Ok(Encoded::Valid { number })) => {
                assert_eq!(number, row.number);
                let json = serde_json::to_string(&row.variables).expect("encodes");
                assert_eq!(out[before..], json, "row {number}");
            }
            (Ok(Item::Rejected(rejected)), Ok(Encoded::Rejected(got))) => {
                assert_eq!(&got, rejected);
                assert_eq!(out.len(), before, "a rejected row writes nothing");
            }
            (Err(error), Err(got)) => {
                assert_eq!(&got.to_string(), error);
                assert_eq!(out.len(), before, "an error writes nothing");
            }
            (expected, got) => panic!("item {index}: next read {expected:?}, next_into {got:?}"),
        }
    }
    assert!(reader.next_into(&mut out).is_none(), "no more items");
    assert!(out.starts_with('['));
}

#[test]
fn ingests_csv_read_writes_the_variables_the_full_read_reads() {
    let mut data = "Title,author,title,blank,zeta,Alpha\n\
        One,Ann,shadowed,,z,a\n\
        ,Bob,two,x,z,a\n\
        Three,Cy\n\
        Four,Di,four,\"\",z,a\n\
        \"q \"\"uoted\"\", back\\slash\",\"tab\there\",\"new\r\nline\",\u{1}ctl\u{1f},\u{7f}del,\"é 日本 😀 \u{2028}\"\n\
        \u{a0},nbsp title,x,y,z,a\n\
        Seven,\u{3000}ideographic space author,x,y,z,a\n"
        .as_bytes()
        .to_vec();
    data.extend_from_slice(b"Eight,\xff\xfe,x,y,z,a\n");
    data.extend_from_slice(format!("Nine,{},x,y,z,a\n", "e".repeat(70_000)).as_bytes());
    data.extend_from_slice(format!("Ten,{},x,y,z,a\n", "f".repeat(300_000)).as_bytes());
    data.extend_from_slice(b"Eleven,ok,x,y,z,a");
    // `Title` is renamed onto `title` (which it shadows), `Alpha` sorts among the lower case.
    let rules = RowRules {
        mapping: [
            ("Title".to_owned(), "title".to_owned()),
            ("zeta".to_owned(), "a_zeta".to_owned()),
        ]
        .into(),
        required: vec!["Title".into(), "author".into()],
        ..RowRules::default()
    };
    assert_next_into_matches_next(DatasetFormat::Csv, &data, rules.clone());
    let capped = RowRules {
        max_rows: Some(4),
        ..rules
    };
    assert_next_into_matches_next(DatasetFormat::Csv, &data, capped);
    assert_next_into_matches_next(DatasetFormat::Csv, &data, RowRules::default());
}

#[test]
fn ingests_json_read_writes_the_variables_the_full_read_reads() {
    let lines = "{\"Title\": \"One\", \"n\": 1.5, \"nested\": {\"b\": [1, null]}, \"title\": \"x\"}\n\
        {\"Title\": \"\"}\n\
        not json\n\
        [1]\n\
        {\"Title\": \"q \\\"uoted\\\" \\u00e9 \\ud83d\\ude00\", \"flag\": true}\n";
    let rules = RowRules {
        mapping: [("Title".to_owned(), "title".to_owned())].into(),
        required: vec!["Title".into()],
        ..RowRules::default()
    };
    assert_next_into_matches_next(DatasetFormat::JsonLines, lines.as_bytes(), rules.clone());
    // With no mapping a row's fields are moved whole into its variables.
    assert_next_into_matches_next(
        DatasetFormat::JsonLines,
        lines.as_bytes(),
        required(&["Title"]),
    );
    let array = format!("[{}]", lines.trim_end().replace('\n', ",\n"));
    assert_next_into_matches_next(DatasetFormat::Json, array.as_bytes(), rules);
}

// ---------- resuming a read at a row boundary ----------

/// Reads `data` whole, then resumes a fresh reader at every position the first read passed
/// through (after each item, and before the first): every resumed read must yield exactly the
/// items the whole read yielded from there on, errors included.
fn assert_resumes_everywhere(format: DatasetFormat, data: &[u8], rules: RowRules) {
    let mut whole = DatasetReader::new(data, format, rules.clone()).expect("dataset opens");
    let mut positions = vec![whole.position()];
    let mut items = Vec::new();
    while let Some(item) = whole.next() {
        // An error ends a read: no position after it is one to resume from.
        if item.is_ok() {
            positions.push(whole.position());
        }
        items.push(item.map_err(|e| e.to_string()));
    }
    assert!(items.len() > 3, "the sample has rows");
    for (start, at) in positions.iter().enumerate() {
        let offset = usize::try_from(at.offset).expect("offset fits");
        let resumed = DatasetReader::resume(data, &data[offset..], format, rules.clone(), *at)
            .expect("a resumed read opens");
        let rest: Vec<_> = resumed
            .map(|item| item.map_err(|e| e.to_string()))
            .collect();
        // A resumed read reports a later error with the same message.
        assert_eq!(rest, items[start..], "resumed at {at:?} (item {start})");
    }
}

#[test]
fn a_csv_read_resumes_at_any_row_boundary_with_bom_crlf_and_quoted_newlines() {
    let mut data = b"\xEF\xBB\xBFtitle,author\r\n".to_vec();
    for i in 0..40 {
        match i % 5 {
            0 => data.extend_from_slice(
                format!("\"multi\r\nline {i}\",\"a, \"\"b\"\"\"\r\n").as_bytes(),
            ),
            1 => data.extend_from_slice(format!("plain {i},x\r\n").as_bytes()),
            2 => data.extend_from_slice(b"ragged,row,here\r\n"),
            3 => data.extend_from_slice(format!("\r\n\"lf only\n{i}\",y\n").as_bytes()),
            _ => data.extend_from_slice(format!(",empty title {i}\r\n").as_bytes()),
        }
    }
    data.extend_from_slice(b"last,row"); // no final terminator
    assert_resumes_everywhere(DatasetFormat::Csv, &data, required(&["title"]));
}

#[test]
fn a_json_array_read_resumes_at_any_element_boundary() {
    let mut data = b"\xEF\xBB\xBF[\n".to_vec();
    for i in 0..30 {
        let element = match i % 4 {
            0 => format!("{{\"title\": \"t{i}, [with] {{braces}}\"}}"),
            1 => "42".to_owned(),
            2 => format!("{{\"title\": \"nested\", \"tags\": [{i}, {{\"x\": \"]\"}}]}}"),
            _ => "{\"title\": \"\"}".to_owned(),
        };
        data.extend_from_slice(element.as_bytes());
        data.extend_from_slice(if i < 29 { b",\r\n" } else { b"\n" });
    }
    data.extend_from_slice(b"]  \n");
    assert_resumes_everywhere(DatasetFormat::Json, &data, required(&["title"]));
    // Data after the array fails a resumed read the same way.
    let mut trailing = data.clone();
    trailing.extend_from_slice(b"{}");
    assert_resumes_everywhere(DatasetFormat::Json, &trailing, RowRules::default());
}

#[test]
fn a_json_lines_read_resumes_at_any_line_boundary() {
    let mut data = b"\xEF\xBB\xBF".to_vec();
    for i in 0..30 {
        let line = match i % 3 {
            0 => format!("{{\"title\": \"t{i}\"}}\r\n"),
            1 => "\n  \n{not json}\n".to_owned(),
            _ => format!("{{\"title\": \"line {i}\\nescaped\"}}\n"),
        };
        data.extend_from_slice(line.as_bytes());
    }
    assert_resumes_everywhere(DatasetFormat::JsonLines, &data, required(&["title"]));
}

// ---------- limits ----------

#[test]
fn a_csv_header_over_the_column_or_byte_limit_fails_the_dataset_by_name() {
    let wide: Vec<String> = (0..501).map(|i| format!("c{i}")).collect();
    let data = format!("{}\n{}\n", wide.join(","), vec!["x"; 501].join(","));
    let error = dataset_error(DatasetFormat::Csv, data.as_bytes(), RowRules::default());
    assert!(
        matches!(
            error,
            DatasetError::TooManyColumns {
                found: 501,
                limit: 500
            }
        ),
        "{error}"
    );
    let long = format!("{},b\n1,2\n", "a".repeat(70_000));
    let error = dataset_error(DatasetFormat::Csv, long.as_bytes(), RowRules::default());
    assert_eq!(
        error.to_string(),
        "the header row is 70003 bytes, over the 65536-byte limit"
    );
    // 500 columns is still a dataset.
    let data = format!("{}\n{}\n", wide[..500].join(","), vec!["x"; 500].join(","));
    assert_eq!(valid(&csv(&data)).len(), 1);
}

#[test]
fn a_json_row_over_the_field_limit_is_rejected_and_the_others_go_through() {
    let keys: Vec<String> = (0..501).map(|i| format!("\"k{i}\": 1")).collect();
    let data = format!("{{\"title\": \"ok\"}}\n{{{}}}\n", keys.join(", "));
    let items = read(DatasetFormat::JsonLines, &data);
    assert_eq!(numbers(&items), vec![0, 1]);
    assert_eq!(
        rejections(&items),
        vec![(
            1,
            RejectReason::TooManyFields {
                found: 501,
                limit: 500
            }
        )]
    );
}
