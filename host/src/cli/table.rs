//! Text tables for the client commands: a header row in capitals, columns separated by two
//! spaces and padded to their widest cell (the last one is not padded, so no line ends in
//! spaces). Cells never contain line breaks.

use serde_json::Value;

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: &[S]) -> Self {
        Self {
            header: header
                .iter()
                .map(|h| h.as_ref().to_ascii_uppercase())
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| super::one_line(c)).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A JSON value as a table cell: strings bare, anything else as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A table of `values` when it is a non-empty array of objects that all have the same keys
/// (columns in key order), else `None`.
pub fn of_objects(values: &Value) -> Option<Table> {
    let rows = values.as_array()?;
    let first = rows.first()?.as_object()?;
    let keys: Vec<&String> = first.keys().collect();
    if keys.is_empty() {
        return None;
    }
    let mut table = Table::new(&keys);
    for row in rows {
        let row = row.as_object()?;
        if row.len() != keys.len() || !keys.iter().all(|k| row.contains_key(*k)) {
            return None;
        }
        table.row(keys.iter().map(|k| cell(&row[*k])).collect());
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_are_aligned_and_lines_not_padded() {
        let mut t = Table::new(&["name", "version", "partitions"]);
        t.row(vec!["wordcount".into(), "1".into(), "8".into()]);
        t.row(vec!["kv".into(), "12".into(), "4".into()]);
        assert_eq!(
            t.render(),
            "NAME       VERSION  PARTITIONS\n\
             wordcount  1        8\n\
             kv         12       4\n"
        );
    }

    #[test]
    fn cells_lose_line_breaks_and_short_rows_are_filled() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["x\ny".into()]);
        assert_eq!(t.render(), "A    B\nx y\n");
    }

    #[test]
    fn arrays_of_alike_objects_become_tables() {
        let v = json!([{"word": "the", "count": 5}, {"word": "cat", "count": 2}]);
        assert_eq!(
            of_objects(&v).unwrap().render(),
            "COUNT  WORD\n5      the\n2      cat\n"
        );
        assert!(of_objects(&json!([{"a": 1}, {"b": 1}])).is_none());
        assert!(of_objects(&json!([{"a": 1}, 2])).is_none());
        assert!(of_objects(&json!([])).is_none());
        assert!(of_objects(&json!({"a": 1})).is_none());
        assert!(of_objects(&json!([{}])).is_none());
    }

    #[test]
    fn cells() {
        assert_eq!(cell(&json!("s")), "s");
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(cell(&json!({"hash": "word"})), r#"{"hash":"word"}"#);
    }
}
