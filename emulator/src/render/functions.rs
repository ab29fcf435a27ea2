//! Built-in functions of the expression language (strings, numbers, formatting, arrays, type checks, utils).

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use serde_json::Value;

use super::value::{ExprError, ExprResult, loose_eq, number, to_display, to_number, type_name};

/// Every function name the parser accepts.
pub const NAMES: &[&str] = &[
    "uppercase",
    "lowercase",
    "capitalize",
    "titleCase",
    "trim",
    "truncate",
    "replace",
    "split",
    "padStart",
    "padEnd",
    "round",
    "floor",
    "ceil",
    "abs",
    "min",
    "max",
    "sum",
    "average",
    "currency",
    "number",
    "percent",
    "date",
    "time",
    "length",
    "first",
    "last",
    "join",
    "slice",
    "contains",
    "indexOf",
    "isEmpty",
    "isNotEmpty",
    "isDefined",
    "isArray",
    "isString",
    "isNumber",
    "default",
    "coalesce",
    "json",
    "parseJson",
];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

/// Functions that must see an undefined name as "absent" rather than fail on it.
const LENIENT: &[&str] = &["isDefined", "isEmpty", "isNotEmpty", "default", "coalesce"];

/// Whether `name` must see an undefined argument as "absent" (see [`apply_lenient`]) rather than fail on it.
pub fn is_lenient(name: &str) -> bool {
    LENIENT.contains(&name)
}

/// Applies a non-lenient function to its evaluated arguments.
pub fn apply(name: &str, vals: &[Value]) -> ExprResult<Value> {
    Args { name, vals }.dispatch()
}

fn present(v: &Option<Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

fn empty(v: &Option<Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

/// Applies a lenient function to its arguments, `None` for an undefined name.
pub fn apply_lenient(name: &str, vals: &[Option<Value>]) -> ExprResult<Value> {
    let arg = |i: usize| vals.get(i).cloned().flatten();
    let arity = |n: usize| -> ExprResult<()> {
        if vals.len() == n {
            Ok(())
        } else {
            Err(ExprError::new(format!(
                "{name}() takes {n} argument(s), got {}",
                vals.len()
            )))
        }
    };
    match name {
        "isDefined" => arity(1).map(|()| Value::Bool(present(&arg(0)))),
        "isEmpty" => arity(1).map(|()| Value::Bool(empty(&arg(0)))),
        "isNotEmpty" => arity(1).map(|()| Value::Bool(!empty(&arg(0)))),
        "default" => {
            arity(2)?;
            let v = arg(0);
            let blank = matches!(&v, Some(Value::String(s)) if s.is_empty());
            Ok(if present(&v) && !blank {
                v.unwrap_or(Value::Null)
            } else {
                arg(1).unwrap_or(Value::Null)
            })
        }
        _ => Ok(vals
            .iter()
            .flatten()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null)),
    }
}

/// Evaluated arguments of one call, with typed accessors that produce errors naming the function.
struct Args<'a> {
    name: &'a str,
    vals: &'a [Value],
}

impl Args<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> ExprError {
        ExprError::new(format!("{}(): {msg}", self.name))
    }

    fn arity(&self, min: usize, max: usize) -> ExprResult<()> {
        let n = self.vals.len();
        if n < min || n > max {
            let want = if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            };
            return Err(self.err(format!("takes {want} argument(s), got {n}")));
        }
        Ok(())
    }

    fn get(&self, i: usize) -> &Value {
        self.vals.get(i).unwrap_or(&Value::Null)
    }

    fn str(&self, i: usize) -> String {
        to_display(self.get(i))
    }

    fn num(&self, i: usize) -> ExprResult<f64> {
        let v = self.get(i);
        to_number(v).ok_or_else(|| self.err(format!("expected a number, got {}", type_name(v))))
    }

    fn opt_num(&self, i: usize) -> ExprResult<Option<f64>> {
        if self.get(i).is_null() {
            Ok(None)
        } else {
            self.num(i).map(Some)
        }
    }

    fn int(&self, i: usize) -> ExprResult<i64> {
        self.num(i).map(|n| n.trunc() as i64)
    }

    /// Numbers from either one array argument or the argument list itself (`max([1,2])` == `max(1,2)`).
    fn numbers(&self) -> ExprResult<Vec<f64>> {
        let items: &[Value] = match self.vals {
            [Value::Array(items)] => items,
            all => all,
        };
        items
            .iter()
            .map(|v| {
                to_number(v)
                    .ok_or_else(|| self.err(format!("expected numbers, got {}", type_name(v))))
            })
            .collect()
    }

    fn dispatch(&self) -> ExprResult<Value> {
        let s = |v: String| Ok(Value::String(v));
        match self.name {
            "uppercase" => self
                .arity(1, 1)
                .and_then(|()| s(self.str(0).to_uppercase())),
            "lowercase" => self
                .arity(1, 1)
                .and_then(|()| s(self.str(0).to_lowercase())),
            "capitalize" => self.arity(1, 1).and_then(|()| s(capitalize(&self.str(0)))),
            "titleCase" => self.arity(1, 1).and_then(|()| {
                s(self
                    .str(0)
                    .split(' ')
                    .map(|w| capitalize(&w.to_lowercase()))
                    .collect::<Vec<_>>()
                    .join(" "))
            }),
            "trim" => self
                .arity(1, 1)
                .and_then(|()| s(self.str(0).trim().to_string())),
            "truncate" => {
                self.arity(2, 3)?;
                let text = self.str(0);
                let max = usize::try_from(self.int(1)?).unwrap_or(0);
                let suffix = if self.vals.len() > 2 {
                    self.str(2)
                } else {
                    "...".into()
                };
                if text.chars().count() <= max {
                    return s(text);
                }
                s(text
                    .chars()
                    .take(max)
                    .collect::<String>()
                    .trim_end()
                    .to_string()
                    + &suffix)
            }
            "replace" => {
                self.arity(3, 3)?;
                let from = self.str(1);
                if from.is_empty() {
                    return s(self.str(0));
                }
                s(self.str(0).replace(&from, &self.str(2)))
            }
            "split" => {
                self.arity(1, 2)?;
                let sep = if self.vals.len() > 1 {
                    self.str(1)
                } else {
                    ",".into()
                };
                let text = self.str(0);
                let parts: Vec<Value> = if sep.is_empty() {
                    text.chars().map(|c| Value::String(c.to_string())).collect()
                } else {
                    text.split(sep.as_str())
                        .map(|p| Value::String(p.to_string()))
                        .collect()
                };
                Ok(Value::Array(parts))
            }
            "padStart" | "padEnd" => {
                self.arity(2, 3)?;
                let text = self.str(0);
                let width = usize::try_from(self.int(1)?).unwrap_or(0).min(10_000);
                let fill = if self.vals.len() > 2 {
                    self.str(2)
                } else {
                    " ".into()
                };
                let missing = width.saturating_sub(text.chars().count());
                if missing == 0 || fill.is_empty() {
                    return s(text);
                }
                let pad: String = fill.chars().cycle().take(missing).collect();
                s(if self.name == "padStart" {
                    pad + &text
                } else {
                    text + &pad
                })
            }
            "round" => {
                self.arity(1, 2)?;
                let digits = self.opt_num(1)?.unwrap_or(0.0).clamp(0.0, 12.0) as i32;
                let factor = 10f64.powi(digits);
                number((self.num(0)? * factor).round() / factor)
            }
            "floor" => self.arity(1, 1).and_then(|()| number(self.num(0)?.floor())),
            "ceil" => self.arity(1, 1).and_then(|()| number(self.num(0)?.ceil())),
            "abs" => self.arity(1, 1).and_then(|()| number(self.num(0)?.abs())),
            "min" | "max" | "sum" | "average" => {
                let nums = self.numbers()?;
                if nums.is_empty() {
                    return if self.name == "sum" {
                        number(0.0)
                    } else {
                        Ok(Value::Null)
                    };
                }
                let total: f64 = nums.iter().sum();
                number(match self.name {
                    "min" => nums.iter().copied().fold(f64::INFINITY, f64::min),
                    "max" => nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "sum" => total,
                    _ => total / nums.len() as f64,
                })
            }
            "currency" => {
                self.arity(1, 2)?;
                let code = if self.vals.len() > 1 {
                    self.str(1).to_uppercase()
                } else {
                    "USD".into()
                };
                s(currency(self.num(0)?, &code))
            }
            "number" => {
                self.arity(1, 2)?;
                let n = self.num(0)?;
                s(match self.opt_num(1)? {
                    Some(d) => group_thousands(n, d.clamp(0.0, 12.0) as usize),
                    None => trim_fraction(group_thousands(n, 3)),
                })
            }
            "percent" => {
                self.arity(1, 2)?;
                let digits = self.opt_num(1)?.unwrap_or(0.0).clamp(0.0, 12.0) as usize;
                s(format!(
                    "{}%",
                    group_thousands(self.num(0)? * 100.0, digits)
                ))
            }
            "date" => {
                self.arity(1, 2)?;
                let fmt = if self.vals.len() > 1 {
                    self.str(1)
                } else {
                    "MMM D, YYYY".into()
                };
                // Datasets often carry dates already formatted ("January 29, 2026"): show those as given.
                match parse_datetime(self.get(0)) {
                    Some(dt) => s(format_datetime(&dt, &fmt)),
                    None => s(self.str(0)),
                }
            }
            "time" => {
                self.arity(1, 2)?;
                let fmt = if self.vals.len() > 1 {
                    self.str(1)
                } else {
                    "h:mm A".into()
                };
                match parse_datetime(self.get(0)) {
                    Some(dt) => s(format_datetime(&dt, &fmt)),
                    None => s(self.str(0)),
                }
            }
            "length" => {
                self.arity(1, 1)?;
                Ok(Value::from(match self.get(0) {
                    Value::Array(a) => a.len(),
                    Value::Object(o) => o.len(),
                    Value::Null => 0,
                    other => to_display(other).chars().count(),
                }))
            }
            "first" | "last" => {
                self.arity(1, 1)?;
                let pick = |len: usize| {
                    if self.name == "first" {
                        0
                    } else {
                        len.saturating_sub(1)
                    }
                };
                Ok(match self.get(0) {
                    Value::Array(a) => a.get(pick(a.len())).cloned().unwrap_or(Value::Null),
                    Value::String(t) => {
                        let chars: Vec<char> = t.chars().collect();
                        chars
                            .get(pick(chars.len()))
                            .map(|c| Value::String(c.to_string()))
                            .unwrap_or(Value::Null)
                    }
                    _ => Value::Null,
                })
            }
            "join" => {
                self.arity(1, 2)?;
                let sep = if self.vals.len() > 1 {
                    self.str(1)
                } else {
                    ", ".into()
                };
                match self.get(0) {
                    Value::Array(a) => s(a.iter().map(to_display).collect::<Vec<_>>().join(&sep)),
                    other => s(to_display(other)),
                }
            }
            "slice" => {
                self.arity(2, 3)?;
                let end = self.opt_num(2)?.map(|n| n as i64);
                let start = self.int(1)?;
                match self.get(0) {
                    Value::Array(a) => {
                        let (from, to) = slice_bounds(a.len(), start, end);
                        Ok(Value::Array(a[from..to].to_vec()))
                    }
                    other => {
                        let chars: Vec<char> = to_display(other).chars().collect();
                        let (from, to) = slice_bounds(chars.len(), start, end);
                        s(chars[from..to].iter().collect())
                    }
                }
            }
            "contains" | "indexOf" => {
                self.arity(2, 2)?;
                let needle = self.get(1);
                let pos = match self.get(0) {
                    Value::Array(a) => a.iter().position(|v| loose_eq(v, needle)),
                    other => {
                        let hay = to_display(other);
                        hay.find(&to_display(needle))
                            .map(|byte| hay[..byte].chars().count())
                    }
                };
                Ok(if self.name == "contains" {
                    Value::Bool(pos.is_some())
                } else {
                    pos.map_or(Value::from(-1), Value::from)
                })
            }
            "isArray" => self
                .arity(1, 1)
                .map(|()| Value::Bool(self.get(0).is_array())),
            "isString" => self
                .arity(1, 1)
                .map(|()| Value::Bool(self.get(0).is_string())),
            "isNumber" => self
                .arity(1, 1)
                .map(|()| Value::Bool(self.get(0).is_number())),
            "json" => self.arity(1, 1).and_then(|()| s(self.get(0).to_string())),
            "parseJson" => {
                self.arity(1, 1)?;
                serde_json::from_str(&self.str(0))
                    .map_err(|e| self.err(format!("invalid JSON: {e}")))
            }
            other => Err(ExprError::new(format!("unknown function '{other}'"))),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// JS `slice` semantics: negative indices count from the end; bounds clamp.
fn slice_bounds(len: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let clamp = |i: i64| -> usize {
        let len = len as i64;
        (if i < 0 { (len + i).max(0) } else { i.min(len) }) as usize
    };
    let from = clamp(start);
    let to = end.map_or(len, clamp);
    (from, to.max(from))
}

/// `1234567.891` with 2 digits → `1,234,567.89`.
fn group_thousands(n: f64, digits: usize) -> String {
    let fixed = format!("{:.*}", digits, n.abs());
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if n < 0.0 && fixed.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

fn trim_fraction(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn currency(n: f64, code: &str) -> String {
    let (symbol, digits) = match code {
        "USD" => ("$", 2),
        "EUR" => ("€", 2),
        "GBP" => ("£", 2),
        "JPY" => ("¥", 0),
        "INR" => ("₹", 2),
        "CNY" => ("CN¥", 2),
        "KRW" => ("₩", 0),
        "CAD" => ("CA$", 2),
        "AUD" => ("A$", 2),
        _ => ("", 2),
    };
    let amount = group_thousands(n.abs(), digits);
    let sign = if n < 0.0 { "-" } else { "" };
    if symbol.is_empty() {
        format!("{sign}{code} {amount}")
    } else {
        format!("{sign}{symbol}{amount}")
    }
}

/// Dates arrive as ISO-8601 strings (date or date-time) or epoch milliseconds.
fn parse_datetime(v: &Value) -> Option<NaiveDateTime> {
    match v {
        Value::Number(n) => {
            DateTime::from_timestamp_millis(n.as_f64()? as i64).map(|d| d.naive_utc())
        }
        Value::String(s) => {
            let s = s.trim();
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.naive_local())
                .ok()
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok())
                .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok())
                .or_else(|| {
                    NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                })
        }
        _ => None,
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Moment/dayjs-style tokens (`YYYY MMMM MMM MM M DD D dddd ddd HH H hh h mm ss A a`); `[text]` is literal.
fn format_datetime(dt: &NaiveDateTime, fmt: &str) -> String {
    const TOKENS: [&str; 19] = [
        "YYYY", "YY", "MMMM", "MMM", "MM", "M", "DD", "D", "dddd", "ddd", "HH", "H", "hh", "h",
        "mm", "m", "ss", "A", "a",
    ];
    let month = MONTHS.get(dt.month0() as usize).copied().unwrap_or("");
    let weekday = WEEKDAYS
        .get(dt.weekday().num_days_from_monday() as usize)
        .copied()
        .unwrap_or("");
    let hour12 = match dt.hour() % 12 {
        0 => 12,
        h => h,
    };
    let mut out = String::new();
    let mut rest = fmt;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[')
            && let Some(close) = inner.find(']')
        {
            out.push_str(&inner[..close]);
            rest = &inner[close + 1..];
            continue;
        }
        let Some(token) = TOKENS.iter().find(|t| rest.starts_with(**t)) else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        let piece = match *token {
            "YYYY" => dt.year().to_string(),
            "YY" => format!("{:02}", dt.year().rem_euclid(100)),
            "MMMM" => month.to_string(),
            "MMM" => month.chars().take(3).collect(),
            "MM" => format!("{:02}", dt.month()),
            "M" => dt.month().to_string(),
            "DD" => format!("{:02}", dt.day()),
            "D" => dt.day().to_string(),
            "dddd" => weekday.to_string(),
            "ddd" => weekday.chars().take(3).collect(),
            "HH" => format!("{:02}", dt.hour()),
            "H" => dt.hour().to_string(),
            "hh" => format!("{hour12:02}"),
            "h" => hour12.to_string(),
            "mm" => format!("{:02}", dt.minute()),
            "m" => dt.minute().to_string(),
            "ss" => format!("{:02}", dt.second()),
            "A" => (if dt.hour() < 12 { "AM" } else { "PM" }).to_string(),
            _ => (if dt.hour() < 12 { "am" } else { "pm" }).to_string(),
        };
        out.push_str(&piece);
        rest = &rest[token.len()..];
    }
    out
}
