//! What the record stage says about a statement besides how it ended: its query
//! group fingerprint and the tables it reads and writes. Computed once per
//! statement of a memoised text (`Parsed::labels`), so a repeated text costs a
//! pointer copy; texts settled without parsing (the relay's fast path, text that
//! does not parse) get a token-level fingerprint and no table lists.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{ObjectName, Statement, visit_relations};

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::fingerprint;
use super::view_ddl::MatViewStatement;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Label {
    pub fingerprint: u64,
    /// Tables named, lower case, as written (`schema.table` when qualified).
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
}

impl Label {
    /// One parsed statement.
    pub fn of_statement(stmt: &Statement) -> Label {
        let (tables_read, tables_written) = tables(stmt);
        Label {
            fingerprint: fingerprint::of_statement(stmt),
            tables_read,
            tables_written,
        }
    }

    /// Text Sluice did not parse.
    pub fn of_text(sql: &str) -> Label {
        Label {
            fingerprint: fingerprint::of_text(sql),
            ..Label::default()
        }
    }

    /// Gateway view DDL: the views it creates, refreshes or drops are written;
    /// a CREATE's query is read.
    pub fn of_view_ddl(sql: &str, stmt: &MatViewStatement) -> Label {
        let mut label = Label::of_text(sql);
        match stmt {
            MatViewStatement::Create { name, query, .. } => {
                label.tables_written.push(name.to_string());
                if let Ok(parsed) = Parser::parse_sql(&PostgreSqlDialect {}, query)
                    && let Some(q) = parsed.first()
                {
                    label.tables_read = tables(q).0;
                }
            }
            MatViewStatement::Refresh { name, .. } => label.tables_written.push(name.to_string()),
            MatViewStatement::Drop { names, .. } => {
                label.tables_written = names.iter().map(ToString::to_string).collect();
            }
        }
        label
    }

    /// Several statements sent as one query string and relayed as one: the group is
    /// the sequence of their groups; the tables, all of theirs.
    pub fn combined(labels: &[Arc<Label>]) -> Label {
        if let [one] = labels {
            return (**one).clone();
        }
        let mut out = Label {
            fingerprint: fingerprint::of_sequence(labels.iter().map(|l| l.fingerprint)),
            ..Label::default()
        };
        for l in labels {
            merge(&mut out.tables_read, &l.tables_read);
            merge(&mut out.tables_written, &l.tables_written);
        }
        out
    }
}

fn merge(into: &mut Vec<String>, from: &[String]) {
    for t in from {
        if !into.contains(t) {
            into.push(t.clone());
        }
    }
}

/// Which relations a statement writes: its first (the target of INSERT, UPDATE,
/// DELETE, MERGE, CREATE, ALTER, COPY FROM), all of them (DROP, TRUNCATE), or none.
/// The visitor meets the target first in each of those statements' syntax trees.
enum Writes {
    None,
    First,
    All,
}

fn tables(stmt: &Statement) -> (Vec<String>, Vec<String>) {
    let writes = match stmt {
        Statement::Insert(_)
        | Statement::Update { .. }
        | Statement::Delete(_)
        | Statement::Merge { .. }
        | Statement::CreateTable(_)
        | Statement::CreateView { .. }
        | Statement::AlterTable { .. } => Writes::First,
        Statement::Copy { to, .. } if !*to => Writes::First,
        Statement::Drop { .. } | Statement::Truncate { .. } => Writes::All,
        _ => Writes::None,
    };
    let mut read = Vec::new();
    let mut written = Vec::new();
    let mut first = true;
    let _ = visit_relations(stmt, |name| {
        let table = table_name(name);
        let is_write = match writes {
            Writes::None => false,
            Writes::First => first,
            Writes::All => true,
        };
        first = false;
        let list = if is_write { &mut written } else { &mut read };
        if !list.contains(&table) {
            list.push(table);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    // DROP and TRUNCATE name their tables outside the visitor's relations.
    let named: Vec<&ObjectName> = match stmt {
        Statement::Drop { names, .. } => names.iter().collect(),
        Statement::Truncate(t) => t.table_names.iter().map(|t| &t.name).collect(),
        _ => Vec::new(),
    };
    for name in named {
        let table = table_name(name);
        if !written.contains(&table) {
            written.push(table);
        }
    }
    // A table both written and read (INSERT INTO t SELECT … FROM t) is listed as written.
    read.retain(|t| !written.contains(t));
    (read, written)
}

fn table_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for part in &name.0 {
        if let Some(ident) = part.as_ident() {
            if !out.is_empty() {
                out.push('.');
            }
            if ident.quote_style.is_some() {
                out.push_str(&ident.value);
            } else {
                out.push_str(&ident.value.to_lowercase());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(sql: &str) -> Label {
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        Label::of_statement(&stmts[0])
    }

    #[test]
    fn tables_read_and_written() {
        let l = label("SELECT * FROM Demo.Trips t JOIN zones z ON t.z = z.id");
        assert_eq!(l.tables_read, ["demo.trips", "zones"]);
        assert!(l.tables_written.is_empty());
        let l = label("INSERT INTO audit.copy SELECT * FROM demo.trips");
        assert_eq!(l.tables_written, ["audit.copy"]);
        assert_eq!(l.tables_read, ["demo.trips"]);
        let l = label("DROP TABLE a, b");
        assert_eq!(l.tables_written, ["a", "b"]);
        let l = label("UPDATE t SET x = 1 WHERE y IN (SELECT y FROM u)");
        assert_eq!(
            (l.tables_written, l.tables_read),
            (vec!["t".into()], vec!["u".into()])
        );
    }

    #[test]
    fn combined_labels_keep_order_and_union_tables() {
        let a = Arc::new(label("SELECT 1 FROM a"));
        let b = Arc::new(label("SELECT 1 FROM b"));
        let ab = Label::combined(&[a.clone(), b.clone()]);
        let ba = Label::combined(&[b.clone(), a.clone()]);
        assert_ne!(ab.fingerprint, ba.fingerprint);
        assert_eq!(ab.tables_read, ["a", "b"]);
        assert_eq!(Label::combined(std::slice::from_ref(&a)), *a);
    }
}
