//! Hive column types, as Glue stores them (`decimal(10,2)`, `array<struct<a:int>>`),
//! to Arrow types.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// Parses a Hive type string. Unknown or malformed types are an error naming them.
pub fn hive_to_arrow(text: &str) -> Result<DataType, String> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
        text,
    };
    let t = p.parse_type()?;
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(p.error("unexpected text after the type"));
    }
    Ok(t)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    text: &'a str,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!(
            "column type `{}`: {what} at position {}",
            self.text, self.at
        )
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", c as char)))
        }
    }

    fn word(&mut self) -> String {
        self.skip_ws();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).to_ascii_lowercase()
    }

    fn number(&mut self) -> Result<u32, String> {
        let w = self.word();
        w.parse().map_err(|_| self.error("expected a number"))
    }

    /// Struct field names: anything up to `:`, optionally in backquotes.
    fn field_name(&mut self) -> Result<String, String> {
        self.skip_ws();
        if self.eat(b'`') {
            let start = self.at;
            while self.s.get(self.at).is_some_and(|b| *b != b'`') {
                self.at += 1;
            }
            let name = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
            self.expect(b'`')?;
            return Ok(name);
        }
        let start = self.at;
        while self.s.get(self.at).is_some_and(|b| *b != b':') {
            self.at += 1;
        }
        let name = String::from_utf8_lossy(&self.s[start..self.at])
            .trim()
            .to_owned();
        if name.is_empty() {
            return Err(self.error("expected a struct field name"));
        }
        Ok(name)
    }

    /// Skips an optional `(n)` or `(n, m)` length, returning the numbers.
    fn params(&mut self) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        if self.eat(b'(') {
            loop {
                out.push(self.number()?);
                if !self.eat(b',') {
                    break;
                }
            }
            self.expect(b')')?;
        }
        Ok(out)
    }

    fn parse_type(&mut self) -> Result<DataType, String> {
        let name = self.word();
        Ok(match name.as_str() {
            "string" => DataType::Utf8,
            "varchar" | "char" | "character" => {
                self.params()?;
                DataType::Utf8
            }
            "tinyint" => DataType::Int8,
            "smallint" => DataType::Int16,
            "int" | "integer" => DataType::Int32,
            "bigint" => DataType::Int64,
            "float" | "real" => DataType::Float32,
            "double" => {
                // `double precision`
                let save = self.at;
                if self.word() != "precision" {
                    self.at = save;
                }
                DataType::Float64
            }
            "decimal" | "numeric" => {
                let p = self.params()?;
                // Hive's default is decimal(10,0).
                let (precision, scale) = match p.as_slice() {
                    [] => (10, 0),
                    [p] => (*p, 0),
                    [p, s] => (*p, *s),
                    _ => return Err(self.error("decimal takes (precision, scale)")),
                };
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(self.error("decimal precision must be 1–38 and scale ≤ precision"));
                }
                DataType::Decimal128(precision as u8, scale as i8)
            }
            "boolean" => DataType::Boolean,
            "date" => DataType::Date32,
            "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "binary" => DataType::Binary,
            "array" => {
                self.expect(b'<')?;
                let item = self.parse_type()?;
                self.expect(b'>')?;
                DataType::List(Arc::new(Field::new("item", item, true)))
            }
            "map" => {
                self.expect(b'<')?;
                let key = self.parse_type()?;
                self.expect(b',')?;
                let value = self.parse_type()?;
                self.expect(b'>')?;
                let entries = Fields::from(vec![
                    Field::new("key", key, false),
                    Field::new("value", value, true),
                ]);
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                    false,
                )
            }
            "struct" => {
                self.expect(b'<')?;
                let mut fields = Vec::new();
                if !self.eat(b'>') {
                    loop {
                        let name = self.field_name()?;
                        self.expect(b':')?;
                        let t = self.parse_type()?;
                        fields.push(Field::new(name, t, true));
                        if self.eat(b'>') {
                            break;
                        }
                        self.expect(b',')?;
                    }
                }
                DataType::Struct(Fields::from(fields))
            }
            "" => return Err(self.error("expected a type name")),
            other => {
                return Err(format!(
                    "column type `{}`: `{other}` is not supported",
                    self.text
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives() {
        for (hive, arrow) in [
            ("string", DataType::Utf8),
            ("varchar(10)", DataType::Utf8),
            ("char(3)", DataType::Utf8),
            ("TINYINT", DataType::Int8),
            ("smallint", DataType::Int16),
            ("int", DataType::Int32),
            ("bigint", DataType::Int64),
            ("float", DataType::Float32),
            ("double", DataType::Float64),
            ("double precision", DataType::Float64),
            ("decimal(12,2)", DataType::Decimal128(12, 2)),
            ("decimal", DataType::Decimal128(10, 0)),
            ("boolean", DataType::Boolean),
            ("date", DataType::Date32),
            (
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            ("binary", DataType::Binary),
        ] {
            assert_eq!(hive_to_arrow(hive).unwrap(), arrow, "{hive}");
        }
    }

    #[test]
    fn nested() {
        let t = hive_to_arrow("array<struct<name:string,`weird name`:map<string,array<int>>>>")
            .unwrap();
        let DataType::List(item) = t else {
            panic!("{t:?}")
        };
        let DataType::Struct(fields) = item.data_type() else {
            panic!("{item:?}")
        };
        assert_eq!(fields[0].name(), "name");
        assert_eq!(fields[1].name(), "weird name");
        assert!(matches!(fields[1].data_type(), DataType::Map(_, false)));
        assert!(matches!(
            hive_to_arrow("struct< a : int , b : string >").unwrap(),
            DataType::Struct(f) if f.len() == 2
        ));
    }

    #[test]
    fn errors_name_the_type() {
        for bad in [
            "uniontype<int,string>",
            "array<int",
            "decimal(50,2)",
            "map<string>",
            "int extra",
            "",
        ] {
            let e = hive_to_arrow(bad).unwrap_err();
            assert!(e.contains("column type"), "{bad}: {e}");
        }
    }
}
