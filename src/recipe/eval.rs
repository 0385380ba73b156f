//! `eval(expr)` values of recipes: the arithmetic SparseML's `restricted_eval` accepts (numbers,
//! variables, `+ - * / // ** %`, unary minus, parentheses and `abs float int min max round`),
//! with Python's int/float semantics, by recursive descent.

use std::collections::HashMap;

/// A Python number: `int` or `float`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// A name that is not (yet) a numeric variable.
    UnknownVariable(String),
    Invalid(String),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::UnknownVariable(v) => write!(f, "unknown variable `{v}`"),
            EvalError::Invalid(m) => f.write_str(m),
        }
    }
}

/// The body of an `eval(...)` string, or `None` when `s` is not one.
pub fn eval_body(s: &str) -> Option<&str> {
    s.strip_prefix("eval(").and_then(|r| r.strip_suffix(')'))
}

/// Evaluates `expr` with the given numeric variables.
pub fn evaluate(expr: &str, vars: &HashMap<String, Num>) -> Result<Num, EvalError> {
    let tokens = tokenize(expr)?;
    let mut p = Parser { tokens, pos: 0, vars, depth: 0 };
    let v = p.expr()?;
    if p.pos != p.tokens.len() {
        return Err(EvalError::Invalid(format!("unexpected `{}`", p.tokens[p.pos])));
    }
    Ok(v)
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(Num),
    Name(String),
    Op(&'static str),
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Num(Num::Int(i)) => write!(f, "{i}"),
            Tok::Num(Num::Float(x)) => write!(f, "{x}"),
            Tok::Name(n) => f.write_str(n),
            Tok::Op(o) => f.write_str(o),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, EvalError> {
    const OPS: &[&str] = &["**", "//", "+", "-", "*", "/", "%", "(", ")", ","];
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    i = j;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let text: String = s[start..i].chars().filter(|&c| c != '_').collect();
            let num = if text.contains(['.', 'e', 'E']) {
                Num::Float(text.parse().map_err(|_| EvalError::Invalid(format!("bad number `{text}`")))?)
            } else {
                Num::Int(text.parse().map_err(|_| EvalError::Invalid(format!("bad number `{text}`")))?)
            };
            out.push(Tok::Num(num));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[start..i].to_string()));
        } else if let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            return Err(EvalError::Invalid(format!("unsupported character `{c}`")));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    pos: usize,
    vars: &'a HashMap<String, Num>,
    depth: usize,
}

/// The deepest nesting of unary operators, powers, parentheses and calls an expression may have.
const MAX_DEPTH: usize = 100;

impl Parser<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.tokens.get(self.pos) {
            Some(Tok::Op(o)) => Some(o),
            _ => None,
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), EvalError> {
        if self.peek_op() == Some(op) {
            self.pos += 1;
            Ok(())
        } else {
            Err(EvalError::Invalid(format!("expected `{op}`")))
        }
    }

    fn expr(&mut self) -> Result<Num, EvalError> {
        let mut v = self.term()?;
        while let Some(op @ ("+" | "-")) = self.peek_op() {
            self.pos += 1;
            let r = self.term()?;
            v = binary(op, v, r)?;
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<Num, EvalError> {
        let mut v = self.unary()?;
        while let Some(op @ ("*" | "/" | "//" | "%")) = self.peek_op() {
            self.pos += 1;
            let r = self.unary()?;
            v = binary(op, v, r)?;
        }
        Ok(v)
    }

    fn unary(&mut self) -> Result<Num, EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EvalError::Invalid(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let v = self.unary_inner();
        self.depth -= 1;
        v
    }

    fn unary_inner(&mut self) -> Result<Num, EvalError> {
        match self.peek_op() {
            Some("-") => {
                self.pos += 1;
                Ok(match self.unary()? {
                    Num::Int(i) => Num::Int(i.checked_neg().ok_or_else(|| EvalError::Invalid("overflow".into()))?),
                    Num::Float(f) => Num::Float(-f),
                })
            }
            Some("+") => {
                self.pos += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<Num, EvalError> {
        let base = self.atom()?;
        if self.peek_op() == Some("**") {
            self.pos += 1;
            let exp = self.unary()?;
            return binary("**", base, exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Num, EvalError> {
        let tok = self.tokens.get(self.pos).cloned().ok_or_else(|| EvalError::Invalid("unexpected end".into()))?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(n),
            Tok::Op("(") => {
                let v = self.expr()?;
                self.expect(")")?;
                Ok(v)
            }
            Tok::Name(name) if self.peek_op() == Some("(") => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek_op() != Some(")") {
                    loop {
                        args.push(self.expr()?);
                        if self.peek_op() == Some(",") {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(")")?;
                call(&name, &args)
            }
            Tok::Name(name) => self.vars.get(&name).copied().ok_or(EvalError::UnknownVariable(name)),
            Tok::Op(o) => Err(EvalError::Invalid(format!("unexpected `{o}`"))),
        }
    }
}

fn binary(op: &str, a: Num, b: Num) -> Result<Num, EvalError> {
    use Num::{Float, Int};
    let zero = || EvalError::Invalid("division by zero".into());
    Ok(match (op, a, b) {
        ("+", Int(x), Int(y)) => Int(x.checked_add(y).ok_or_else(|| EvalError::Invalid("overflow".into()))?),
        ("-", Int(x), Int(y)) => Int(x.checked_sub(y).ok_or_else(|| EvalError::Invalid("overflow".into()))?),
        ("*", Int(x), Int(y)) => Int(x.checked_mul(y).ok_or_else(|| EvalError::Invalid("overflow".into()))?),
        ("//", Int(x), Int(y)) => {
            if y == 0 {
                return Err(zero());
            }
            let overflow = || EvalError::Invalid("overflow".into());
            let q = x.checked_div_euclid(y).ok_or_else(overflow)?;
            let r = x.checked_rem_euclid(y).ok_or_else(overflow)?;
            Int(q.checked_sub(i64::from(r != 0 && y < 0)).ok_or_else(overflow)?)
        }
        ("%", Int(x), Int(y)) => {
            if y == 0 {
                return Err(zero());
            }
            let r = x.checked_rem(y).ok_or_else(|| EvalError::Invalid("overflow".into()))?;
            Int(if r != 0 && ((r < 0) != (y < 0)) { r + y } else { r })
        }
        ("**", Int(x), Int(y)) if y >= 0 => Int(u32::try_from(y)
            .ok()
            .and_then(|e| x.checked_pow(e))
            .ok_or_else(|| EvalError::Invalid("overflow in `**`".into()))?),
        (op, a, b) => {
            let (x, y) = (a.as_f64(), b.as_f64());
            Float(match op {
                "+" => x + y,
                "-" => x - y,
                "*" => x * y,
                "/" => {
                    if y == 0.0 {
                        return Err(zero());
                    }
                    x / y
                }
                "//" => {
                    if y == 0.0 {
                        return Err(zero());
                    }
                    (x / y).floor()
                }
                "%" => {
                    if y == 0.0 {
                        return Err(zero());
                    }
                    x - y * (x / y).floor()
                }
                "**" => x.powf(y),
                _ => unreachable!("operator set is closed"),
            })
        }
    })
}

fn call(name: &str, args: &[Num]) -> Result<Num, EvalError> {
    let one = || match args {
        [a] => Ok(*a),
        _ => Err(EvalError::Invalid(format!("{name}() takes one argument, got {}", args.len()))),
    };
    match name {
        "abs" => Ok(match one()? {
            Num::Int(i) => Num::Int(i.checked_abs().ok_or_else(|| EvalError::Invalid("overflow in abs()".into()))?),
            Num::Float(f) => Num::Float(f.abs()),
        }),
        "float" => Ok(Num::Float(one()?.as_f64())),
        "int" => Ok(Num::Int(one()?.as_f64().trunc() as i64)),
        "min" | "max" => {
            let mut it = args.iter().copied();
            let first = it.next().ok_or_else(|| EvalError::Invalid(format!("{name}() needs arguments")))?;
            Ok(it.fold(first, |acc, x| {
                let better = if name == "min" { x.as_f64() < acc.as_f64() } else { x.as_f64() > acc.as_f64() };
                if better {
                    x
                } else {
                    acc
                }
            }))
        }
        "round" => match args {
            [a] => Ok(Num::Int(a.as_f64().round_ties_even() as i64)),
            [a, Num::Int(n)] => {
                let p = 10f64.powi(*n as i32);
                Ok(match a {
                    Num::Int(i) => Num::Int(*i),
                    Num::Float(f) => Num::Float((f * p).round_ties_even() / p),
                })
            }
            _ => Err(EvalError::Invalid("round() takes a number and an optional int".into())),
        },
        other => Err(EvalError::Invalid(format!(
            "unsupported function `{other}` (allowed: abs, float, int, min, max, round)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Num {
        let vars: HashMap<String, Num> =
            [("num_epochs".to_string(), Num::Int(30)), ("lr".to_string(), Num::Float(1e-4))].into_iter().collect();
        evaluate(s, &vars).unwrap()
    }

    #[test]
    fn follows_python_arithmetic() {
        assert_eq!(ev("num_epochs - 4"), Num::Int(26));
        assert_eq!(ev("num_epochs / 4"), Num::Float(7.5));
        assert_eq!(ev("num_epochs // 4"), Num::Int(7));
        assert_eq!(ev("-7 // 2"), Num::Int(-4));
        assert_eq!(ev("-7 % 3"), Num::Int(2));
        assert_eq!(ev("2 ** 3 ** 2"), Num::Int(512));
        assert_eq!(ev("-2 ** 2"), Num::Int(-4));
        assert_eq!(ev("2 ** -1"), Num::Float(0.5));
        assert_eq!(ev("(1 + 2) * 3"), Num::Int(9));
        assert_eq!(ev("max(1, 2.5, 2)"), Num::Float(2.5));
        assert_eq!(ev("min(num_epochs, 4)"), Num::Int(4));
        assert_eq!(ev("int(7.9)"), Num::Int(7));
        assert_eq!(ev("round(2.5)"), Num::Int(2));
        assert_eq!(ev("round(0.125, 2)"), Num::Float(0.12));
        assert_eq!(ev("abs(-3)"), Num::Int(3));
        assert_eq!(ev("lr * 0.1"), Num::Float(1e-4 * 0.1));
        assert_eq!(ev("1e-7"), Num::Float(1e-7));
    }

    #[test]
    fn rejects_unknown_names_and_calls() {
        let vars = HashMap::new();
        assert_eq!(evaluate("x + 1", &vars), Err(EvalError::UnknownVariable("x".into())));
        assert!(matches!(evaluate("exp(1)", &vars), Err(EvalError::Invalid(_))));
        assert!(matches!(evaluate("1 +", &vars), Err(EvalError::Invalid(_))));
        assert!(matches!(evaluate("1 / 0", &vars), Err(EvalError::Invalid(_))));
    }

    #[test]
    fn integer_overflow_and_deep_nesting_are_errors() {
        let vars = HashMap::new();
        let min = "(-9223372036854775807 - 1)";
        assert_eq!(ev("7 // -2"), Num::Int(-4));
        assert_eq!(ev("-7 // -2"), Num::Int(3));
        assert_eq!(ev(&format!("{min} // 2")), Num::Int(i64::MIN / 2));
        for e in [format!("-{min}"), format!("abs({min})"), format!("{min} // -1"), format!("{min} % -1")] {
            assert!(matches!(evaluate(&e, &vars), Err(EvalError::Invalid(_))), "{e}");
        }
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(matches!(evaluate(&deep, &vars), Err(EvalError::Invalid(m)) if m.contains("nested")));
        let minus = format!("{}1", "-".repeat(100_000));
        assert!(matches!(evaluate(&minus, &vars), Err(EvalError::Invalid(m)) if m.contains("nested")));
        assert_eq!(ev(&format!("{}1{}", "(".repeat(50), ")".repeat(50))), Num::Int(1));
    }
}
