//! Pictify's expression language inside `{{ … }}`: a recursive-descent parser and a JS-flavoured evaluator over JSON values.

use serde_json::{Map, Value};

use super::functions;
pub use super::value::{
    ExprError, ExprResult, loose_eq, number, to_display, to_number, truthy, type_name,
};

/// Names visible to an expression: supplied variables plus declared-but-absent ones (which read as `null`).
pub trait Scope {
    /// `None` when the name is neither supplied nor declared.
    fn lookup(&self, name: &str) -> Option<Value>;
}

impl Scope for Map<String, Value> {
    fn lookup(&self, name: &str) -> Option<Value> {
        self.get(name).cloned()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    Ident(String),
    Array(Vec<Expr>),
    Member(Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
    Plus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Str(String),
    Ident(String),
    Punct(&'static str),
}

const PUNCTS: [&str; 24] = [
    "===", "!==", "==", "!=", ">=", "<=", "&&", "||", "(", ")", "[", "]", ".", ",", "?", ":", "+",
    "-", "*", "/", "%", "!", ">", "<",
];

fn tokenize(src: &str) -> ExprResult<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if c.is_ascii_digit()
            || (c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit()))
        {
            let end = rest
                .find(|d: char| !(d.is_ascii_digit() || d == '.'))
                .unwrap_or(rest.len());
            let n = rest[..end]
                .parse::<f64>()
                .map_err(|_| ExprError::new(format!("invalid number '{}'", &rest[..end])))?;
            tokens.push(Token::Num(n));
            rest = &rest[end..];
        } else if c == '\'' || c == '"' {
            let (s, after) = string_literal(rest, c)?;
            tokens.push(Token::Str(s));
            rest = after;
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let end = rest
                .find(|d: char| !(d.is_alphanumeric() || d == '_' || d == '$'))
                .unwrap_or(rest.len());
            tokens.push(Token::Ident(rest[..end].to_string()));
            rest = &rest[end..];
        } else if let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            // `===` and `!==` mean the same as `==`/`!=` here: values are compared loosely anyway.
            tokens.push(Token::Punct(match *p {
                "===" => "==",
                "!==" => "!=",
                other => other,
            }));
            rest = &rest[p.len()..];
        } else {
            return Err(ExprError::new(format!("unexpected character '{c}'")));
        }
    }
    Ok(tokens)
}

/// Reads a quoted literal starting at `src[0] == quote`; returns its value and the text after it.
fn string_literal(src: &str, quote: char) -> ExprResult<(String, &str)> {
    let mut out = String::new();
    let mut chars = src.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, &src[i + c.len_utf8()..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, other)) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(ExprError::new("unterminated string literal"))
}

/// Parses one expression; the whole input must be consumed.
pub fn parse(src: &str) -> ExprResult<Expr> {
    let tokens = tokenize(src)?;
    if tokens.is_empty() {
        return Err(ExprError::new("empty expression"));
    }
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.ternary()?;
    match parser.peek() {
        None => Ok(expr),
        Some(t) => Err(ExprError::new(format!(
            "unexpected {} in '{src}'",
            describe(t)
        ))),
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Num(n) => format!("number {n}"),
        Token::Str(s) => format!("string '{s}'"),
        Token::Ident(s) => format!("name '{s}'"),
        Token::Punct(p) => format!("'{p}'"),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(p)) if *p == punct) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> ExprResult<()> {
        if self.eat(punct) {
            return Ok(());
        }
        match self.peek() {
            Some(t) => Err(ExprError::new(format!(
                "expected '{punct}' but found {}",
                describe(t)
            ))),
            None => Err(ExprError::new(format!(
                "expected '{punct}' but the expression ended"
            ))),
        }
    }

    fn ternary(&mut self) -> ExprResult<Expr> {
        let cond = self.binary(0)?;
        if !self.eat("?") {
            return Ok(cond);
        }
        let then = self.ternary()?;
        self.expect(":")?;
        let otherwise = self.ternary()?;
        Ok(Expr::Ternary(
            Box::new(cond),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    /// Precedence climbing over the binary operator levels, loosest first.
    fn binary(&mut self, level: usize) -> ExprResult<Expr> {
        const LEVELS: [&[(&str, BinaryOp)]; 6] = [
            &[("||", BinaryOp::Or)],
            &[("&&", BinaryOp::And)],
            &[("==", BinaryOp::Eq), ("!=", BinaryOp::Ne)],
            &[
                (">=", BinaryOp::Ge),
                ("<=", BinaryOp::Le),
                (">", BinaryOp::Gt),
                ("<", BinaryOp::Lt),
            ],
            &[("+", BinaryOp::Add), ("-", BinaryOp::Sub)],
            &[
                ("*", BinaryOp::Mul),
                ("/", BinaryOp::Div),
                ("%", BinaryOp::Rem),
            ],
        ];
        let Some(ops) = LEVELS.get(level) else {
            return self.unary();
        };
        let mut left = self.binary(level + 1)?;
        'outer: loop {
            for (punct, op) in ops.iter() {
                if self.eat(punct) {
                    let right = self.binary(level + 1)?;
                    left = Expr::Binary(*op, Box::new(left), Box::new(right));
                    continue 'outer;
                }
            }
            return Ok(left);
        }
    }

    fn unary(&mut self) -> ExprResult<Expr> {
        for (punct, op) in [
            ("!", UnaryOp::Not),
            ("-", UnaryOp::Neg),
            ("+", UnaryOp::Plus),
        ] {
            if self.eat(punct) {
                return Ok(Expr::Unary(op, Box::new(self.unary()?)));
            }
        }
        self.postfix()
    }

    fn postfix(&mut self) -> ExprResult<Expr> {
        let mut expr = self.primary()?;
        loop {
            if self.eat(".") {
                match self.next() {
                    Some(Token::Ident(name)) => {
                        expr = Expr::Member(
                            Box::new(expr),
                            Box::new(Expr::Literal(Value::String(name))),
                        );
                    }
                    _ => return Err(ExprError::new("expected a property name after '.'")),
                }
            } else if self.eat("[") {
                let index = self.ternary()?;
                self.expect("]")?;
                expr = Expr::Member(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn primary(&mut self) -> ExprResult<Expr> {
        match self.next() {
            Some(Token::Num(n)) => Ok(Expr::Literal(number(n)?)),
            Some(Token::Str(s)) => Ok(Expr::Literal(Value::String(s))),
            Some(Token::Ident(name)) => match name.as_str() {
                "true" => Ok(Expr::Literal(Value::Bool(true))),
                "false" => Ok(Expr::Literal(Value::Bool(false))),
                "null" | "undefined" => Ok(Expr::Literal(Value::Null)),
                _ if self.eat("(") => {
                    if !functions::exists(&name) {
                        return Err(ExprError::new(format!("unknown function '{name}'")));
                    }
                    let args = self.list(")")?;
                    Ok(Expr::Call(name, args))
                }
                _ => Ok(Expr::Ident(name)),
            },
            Some(Token::Punct("(")) => {
                let inner = self.ternary()?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Punct("[")) => Ok(Expr::Array(self.list("]")?)),
            Some(t) => Err(ExprError::new(format!("unexpected {}", describe(&t)))),
            None => Err(ExprError::new("unexpected end of expression")),
        }
    }

    /// Comma-separated expressions up to `close` (already past the opener).
    fn list(&mut self, close: &str) -> ExprResult<Vec<Expr>> {
        let mut items = Vec::new();
        if self.eat(close) {
            return Ok(items);
        }
        loop {
            items.push(self.ternary()?);
            if self.eat(close) {
                return Ok(items);
            }
            self.expect(",")?;
        }
    }
}

/// Evaluates `expr`; an undefined name is an error.
pub fn eval(expr: &Expr, scope: &dyn Scope) -> ExprResult<Value> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Ident(name) => scope
            .lookup(name)
            .ok_or_else(|| ExprError::new(format!("undefined variable '{name}'"))),
        Expr::Array(items) => items
            .iter()
            .map(|e| eval(e, scope))
            .collect::<ExprResult<Vec<_>>>()
            .map(Value::Array),
        Expr::Member(target, key) => {
            let target = eval(target, scope)?;
            let key = eval(key, scope)?;
            Ok(member(&target, &key))
        }
        Expr::Call(name, args) => call(name, args, scope),
        Expr::Unary(op, operand) => {
            let v = eval(operand, scope)?;
            match op {
                UnaryOp::Not => Ok(Value::Bool(!truthy(&v))),
                UnaryOp::Neg | UnaryOp::Plus => {
                    let n = to_number(&v).ok_or_else(|| {
                        ExprError::new(format!("cannot negate {}", type_name(&v)))
                    })?;
                    number(if *op == UnaryOp::Neg { -n } else { n })
                }
            }
        }
        Expr::Binary(BinaryOp::And, l, r) => {
            let l = eval(l, scope)?;
            if truthy(&l) { eval(r, scope) } else { Ok(l) }
        }
        Expr::Binary(BinaryOp::Or, l, r) => {
            let l = eval(l, scope)?;
            if truthy(&l) { Ok(l) } else { eval(r, scope) }
        }
        Expr::Binary(op, l, r) => binary(*op, &eval(l, scope)?, &eval(r, scope)?),
        Expr::Ternary(c, t, e) => {
            if truthy(&eval(c, scope)?) {
                eval(t, scope)
            } else {
                eval(e, scope)
            }
        }
    }
}

/// Like [`eval`], but an undefined name reads as `None` instead of failing (for `isDefined`, `default`, …).
pub fn eval_lenient(expr: &Expr, scope: &dyn Scope) -> ExprResult<Option<Value>> {
    match expr {
        Expr::Ident(name) => Ok(scope.lookup(name)),
        Expr::Member(target, key) => {
            let Some(target) = eval_lenient(target, scope)? else {
                return Ok(None);
            };
            let key = eval(key, scope)?;
            Ok(Some(member(&target, &key)))
        }
        other => eval(other, scope).map(Some),
    }
}

/// Calls a built-in: evaluates the arguments (leniently for the functions that must see an undefined
/// name as absent), then applies the function to the values.
fn call(name: &str, args: &[Expr], scope: &dyn Scope) -> ExprResult<Value> {
    if functions::is_lenient(name) {
        let vals = args
            .iter()
            .map(|a| eval_lenient(a, scope))
            .collect::<ExprResult<Vec<_>>>()?;
        return functions::apply_lenient(name, &vals);
    }
    let vals = args
        .iter()
        .map(|a| eval(a, scope))
        .collect::<ExprResult<Vec<_>>>()?;
    functions::apply(name, &vals)
}

/// Property or index access; anything missing reads as `null`, like optional chaining.
fn member(target: &Value, key: &Value) -> Value {
    match (target, key) {
        (Value::Object(map), key) => map.get(&to_display(key)).cloned().unwrap_or(Value::Null),
        (Value::Array(items), Value::String(k)) if k == "length" => Value::from(items.len()),
        (Value::String(s), Value::String(k)) if k == "length" => Value::from(s.chars().count()),
        (Value::Array(items), key) => index(key)
            .and_then(|i| items.get(i))
            .cloned()
            .unwrap_or(Value::Null),
        (Value::String(s), key) => index(key)
            .and_then(|i| s.chars().nth(i))
            .map(|c| Value::String(c.to_string()))
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn index(key: &Value) -> Option<usize> {
    let n = to_number(key)?;
    (n >= 0.0 && n.fract() == 0.0).then_some(n as usize)
}

fn binary(op: BinaryOp, l: &Value, r: &Value) -> ExprResult<Value> {
    let numbers = |what: &str| -> ExprResult<(f64, f64)> {
        match (to_number(l), to_number(r)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(ExprError::new(format!(
                "cannot {what} {} and {}",
                type_name(l),
                type_name(r)
            ))),
        }
    };
    match op {
        BinaryOp::Add if l.is_string() || r.is_string() => {
            Ok(Value::String(to_display(l) + &to_display(r)))
        }
        BinaryOp::Add => numbers("add").and_then(|(a, b)| number(a + b)),
        BinaryOp::Sub => numbers("subtract").and_then(|(a, b)| number(a - b)),
        BinaryOp::Mul => numbers("multiply").and_then(|(a, b)| number(a * b)),
        BinaryOp::Div | BinaryOp::Rem => {
            let (a, b) = numbers("divide")?;
            if b == 0.0 {
                return Err(ExprError::new("division by zero"));
            }
            number(if op == BinaryOp::Div { a / b } else { a % b })
        }
        BinaryOp::Eq => Ok(Value::Bool(loose_eq(l, r))),
        BinaryOp::Ne => Ok(Value::Bool(!loose_eq(l, r))),
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            let ord = match (l, r) {
                (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                _ => {
                    let (a, b) = numbers("compare")?;
                    a.partial_cmp(&b)
                }
            };
            let Some(ord) = ord else {
                return Ok(Value::Bool(false));
            };
            Ok(Value::Bool(match op {
                BinaryOp::Lt => ord.is_lt(),
                BinaryOp::Le => ord.is_le(),
                BinaryOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }))
        }
        BinaryOp::And | BinaryOp::Or => {
            Err(ExprError::new("internal: logical operators short-circuit"))
        }
    }
}

/// Parses and evaluates in one go (handy for tests and the expression endpoints).
pub fn evaluate(src: &str, scope: &dyn Scope) -> ExprResult<Value> {
    eval(&parse(src)?, scope)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> Map<String, Value> {
        let Value::Object(map) = json!({
            "title": "Hello", "price": 19.5, "count": 3, "on": true, "none": null, "empty": "",
            "user": {"name": "Zoë", "tags": ["a", "b"]},
            "items": [{"price": 10}, {"price": 2.25}],
        }) else {
            unreachable!()
        };
        map
    }

    fn ok(src: &str) -> Value {
        evaluate(src, &vars()).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn err(src: &str) -> String {
        match evaluate(src, &vars()) {
            Ok(v) => panic!("{src} evaluated to {v}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn literals_and_operators_follow_js_rules() {
        let table = [
            ("1 + 2 * 3", json!(7)),
            ("(1 + 2) * 3", json!(9)),
            ("10 / 4", json!(2.5)),
            ("10 % 4", json!(2)),
            ("-count + 1", json!(-2)),
            ("'a' + 1", json!("a1")),
            ("\"x\" + title", json!("xHello")),
            ("title + ' ' + count", json!("Hello 3")),
            ("price > 10", json!(true)),
            ("count >= 3 && count <= 3", json!(true)),
            ("count < 3 || on", json!(true)),
            ("!on", json!(false)),
            ("!none", json!(true)),
            ("count == '3'", json!(true)),
            ("count === 3", json!(true)),
            ("title != 'Hello'", json!(false)),
            ("'abc' < 'abd'", json!(true)),
            ("none ? 'yes' : 'no'", json!("no")),
            ("on ? count > 2 ? 'big' : 'small' : 'off'", json!("big")),
            ("empty || 'fallback'", json!("fallback")),
            ("title && title + '!'", json!("Hello!")),
            ("null", json!(null)),
            ("[1, 'two']", json!([1, "two"])),
        ];
        for (src, want) in table {
            assert_eq!(ok(src), want, "{src}");
        }
    }

    #[test]
    fn paths_reach_into_objects_and_arrays() {
        assert_eq!(ok("user.name"), json!("Zoë"));
        assert_eq!(ok("user.tags[1]"), json!("b"));
        assert_eq!(ok("items[0].price + items[1].price"), json!(12.25));
        assert_eq!(ok("user['name']"), json!("Zoë"));
        assert_eq!(ok("user.missing"), json!(null));
        assert_eq!(ok("title.length"), json!(5));
        assert_eq!(ok("user.tags.length"), json!(2));
        assert_eq!(ok("split('a,b', ',')[1]"), json!("b"));
    }

    #[test]
    fn bad_expressions_name_the_problem() {
        assert!(err("nope").contains("undefined variable 'nope'"));
        assert!(err("frobnicate(title)").contains("unknown function 'frobnicate'"));
        assert!(err("1 +").contains("unexpected end"));
        assert!(err("(1").contains("expected ')'"));
        assert!(err("'open").contains("unterminated"));
        assert!(err("1 / 0").contains("division by zero"));
        assert!(err("a # b").contains("unexpected character '#'"));
        assert!(err("1 2").contains("unexpected number 2"));
        assert!(err("user * 2").contains("cannot multiply object"));
    }

    #[test]
    fn display_prints_like_a_template_engine() {
        assert_eq!(to_display(&json!(null)), "");
        assert_eq!(to_display(&json!(3)), "3");
        assert_eq!(to_display(&json!(2.5)), "2.5");
        assert_eq!(to_display(&json!(["a", 1])), "a,1");
        assert_eq!(to_display(&json!(true)), "true");
    }

    #[test]
    fn lenient_evaluation_tolerates_undefined_names() {
        let scope = vars();
        assert_eq!(
            eval_lenient(&parse("ghost.name").unwrap(), &scope).unwrap(),
            None
        );
        assert_eq!(
            eval_lenient(&parse("user.name").unwrap(), &scope).unwrap(),
            Some(json!("Zoë"))
        );
    }
}
