//! `muster kv txn`: parses compares and ops from their one-line forms and runs the txn.
//!
//! Compares: `value(KEY) = VALUE`, `version(KEY) > N`, `create(KEY) = N`, `mod(KEY) < N`,
//! `lease(KEY) != ID` (hex). Ops: `put KEY VALUE`, `get [--prefix] KEY`, `del [--prefix] KEY`.
//! Double quotes group words with spaces; `\"` is a literal quote.

use muster_client::{Client, Compare, CompareOp, GetOptions, TxnOp, TxnOpResponse};
use serde_json::json;

use crate::cli::{parse_lease_id, Format};
use crate::output::{emit, kv_json, text, Table};
use crate::{CliError, Result, EXIT_NOT_FOUND};

/// Splits on whitespace, honouring double quotes.
fn words(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => cur.extend(chars.next()),
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(CliError::Usage(format!("unterminated quote in {s:?}")));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses one compare.
pub fn compare(s: &str) -> Result<Compare> {
    let bad = || {
        CliError::Usage(format!(
            "bad compare {s:?}: expected e.g. 'value(KEY) = VALUE' or 'version(KEY) > 0'"
        ))
    };
    let open = s.find('(').ok_or_else(bad)?;
    let close = s.find(')').filter(|c| *c > open).ok_or_else(bad)?;
    let target = s[..open].trim();
    let key = s[open + 1..close].to_string();
    let rest = words(&s[close + 1..])?;
    let (op, operand) = match rest.as_slice() {
        [op, operand] => (op.as_str(), operand.clone()),
        [op] => (op.as_str(), String::new()),
        _ => return Err(bad()),
    };
    let op = match op {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        _ => return Err(bad()),
    };
    let num = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| CliError::Usage(format!("bad compare {s:?}: {v:?} is not a number")))
    };
    Ok(match target {
        "value" => Compare::value(key, op, operand),
        "version" => Compare::version(key, op, num(&operand)?),
        "create" => Compare::create_revision(key, op, num(&operand)?),
        "mod" => Compare::mod_revision(key, op, num(&operand)?),
        "lease" => Compare::lease(key, op, parse_lease_id(&operand).map_err(CliError::Usage)?),
        _ => return Err(bad()),
    })
}

/// Parses one op.
pub fn op(s: &str) -> Result<TxnOp> {
    let bad = || {
        CliError::Usage(format!(
            "bad op {s:?}: expected 'put KEY VALUE', 'get [--prefix] KEY' or 'del [--prefix] KEY'"
        ))
    };
    let w = words(s)?;
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    Ok(match w.as_slice() {
        ["put", key, value] => TxnOp::put(*key, *value),
        ["get", "--prefix", key] => TxnOp::get(*key, GetOptions::new().with_prefix()),
        ["get", key] => TxnOp::get(*key, GetOptions::new()),
        ["del", "--prefix", key] => TxnOp::delete(*key, true),
        ["del", key] => TxnOp::delete(*key, false),
        _ => return Err(bad()),
    })
}

pub async fn run(
    client: &Client,
    f: Format,
    compares: &[String],
    then_ops: &[String],
    else_ops: &[String],
) -> Result<()> {
    let compares = compares
        .iter()
        .map(|c| compare(c))
        .collect::<Result<Vec<_>>>()?;
    let then_ops = then_ops.iter().map(|o| op(o)).collect::<Result<Vec<_>>>()?;
    let else_ops = else_ops.iter().map(|o| op(o)).collect::<Result<Vec<_>>>()?;
    let r = client
        .txn()
        .when(compares)
        .and_then(then_ops)
        .or_else(else_ops)
        .commit()
        .await?;
    let describe = |o: &TxnOpResponse| match o {
        TxnOpResponse::Get { kvs, .. } => kvs
            .iter()
            .map(|kv| format!("{}={}", text(&kv.key), text(&kv.value)))
            .collect::<Vec<_>>()
            .join(" "),
        TxnOpResponse::Put { .. } => "OK".to_string(),
        TxnOpResponse::Delete { deleted } => format!("deleted {deleted}"),
        TxnOpResponse::Txn { succeeded } => format!("txn succeeded={succeeded}"),
    };
    emit(
        f,
        || {
            let mut t = Table::new(&["OP", "RESULT"]);
            t.row(vec![
                "txn".into(),
                format!(
                    "{} (revision {})",
                    if r.succeeded { "SUCCEEDED" } else { "FAILED" },
                    r.revision
                ),
            ]);
            for (i, o) in r.responses.iter().enumerate() {
                t.row(vec![(i + 1).to_string(), describe(o)]);
            }
            t
        },
        || {
            let responses: Vec<_> = r
                .responses
                .iter()
                .map(|o| match o {
                    TxnOpResponse::Get { kvs, count } => {
                        json!({"get": {"count": count, "kvs": kvs.iter().map(kv_json).collect::<Vec<_>>()}})
                    }
                    TxnOpResponse::Put { prev_kv } => json!({"put": {"prev_kv": prev_kv.as_ref().map(kv_json)}}),
                    TxnOpResponse::Delete { deleted } => json!({"delete": {"deleted": deleted}}),
                    TxnOpResponse::Txn { succeeded } => json!({"txn": {"succeeded": succeeded}}),
                })
                .collect();
            json!({"succeeded": r.succeeded, "revision": r.revision, "responses": responses})
        },
    );
    if !r.succeeded {
        return Err(CliError::Quiet(EXIT_NOT_FOUND));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_with_quotes() -> Result<()> {
        assert_eq!(words(r#"put k "a b \" c""#)?, ["put", "k", "a b \" c"]);
        assert_eq!(words(r#"put k """#)?, ["put", "k", ""]);
        assert!(words(r#"put "k"#).is_err());
        Ok(())
    }

    #[test]
    fn parses_compares_and_ops() {
        assert!(compare("value(k) = v").is_ok());
        assert!(compare("version(k) > 0").is_ok());
        assert!(compare("mod(a/b) != 12").is_ok());
        assert!(compare("lease(k) = 694d7c").is_ok());
        assert!(compare("version(k) > x").is_err());
        assert!(compare("size(k) = 1").is_err());
        assert!(compare("value k = v").is_err());
        assert!(op("put k v").is_ok());
        assert!(op("get --prefix k").is_ok());
        assert!(op("del k").is_ok());
        assert!(op("put k").is_err());
        assert!(op("frob k").is_err());
    }
}
