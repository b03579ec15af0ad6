//! JSON text the engines store (events' details, lists passed as one parameter to
//! `json_each(?)`): the core has no serde, and these are the only shapes it needs.

use crate::task::TaskId;

/// `[1,2,3]`
pub fn ids(ids: impl IntoIterator<Item = TaskId>) -> String {
    let mut out = String::from("[");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

/// `["a","b"]`
pub fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(string).collect();
    format!("[{}]", quoted.join(","))
}

/// One JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_what_json_requires() {
        assert_eq!(super::string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
        assert_eq!(super::ids([1, 22]), "[1,22]");
        assert_eq!(super::strings(["x", "y"]), r#"["x","y"]"#);
    }
}
