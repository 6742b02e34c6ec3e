//! Command-line overrides `--set a.b.c=value` (as DINOv2's `opts`), applied
//! to the recipe's text so every later error still points at the right
//! `FILE:LINE:COLUMN`:
//!
//! * an existing scalar or flow list (`[0.4, 1.0]`) is replaced in place;
//! * a missing key is inserted as new block lines under its parent (missing
//!   parents too), and line numbers after the insertion are mapped back.
//!
//! Path segments are mapping keys or list indices (`views.2.count=4`,
//! `pipeline.3.lower=0.1`). The value is YAML (`true`, `0.5`, `[1, 2]`, `a b`).

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A YAML node with positions, enough to find where a path's value is written.
#[derive(Debug)]
enum Node {
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(e) = m.next_entry()? {
                    entries.push(e);
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(e) = s.next_element()? {
                    items.push(e);
                }
                Ok(Node::Seq(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Lines an override inserted: `(first line, count, the --set text)`; and
/// the lines (of the edited text) whose value an override replaced, with the
/// `--set` text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Insertions(pub Vec<(u32, u32, String)>, pub Vec<(u32, String)>);

impl Insertions {
    /// The `--set` that replaced the value on `line` of the edited text (an
    /// error there is about the override, not the file's valid text).
    pub fn replaced_by(&self, line: u32) -> Option<&str> {
        self.1
            .iter()
            .rev()
            .find(|(l, _)| *l == line)
            .map(|(_, set)| set.as_str())
    }

    /// The original line of `line` in the edited text, or the `--set` that
    /// wrote it.
    pub fn original(&self, mut line: u32) -> Result<u32, &str> {
        for (at, n, set) in self.0.iter().rev() {
            if (*at..at + n).contains(&line) {
                return Err(set);
            }
            if line >= at + n {
                line -= n;
            }
        }
        Ok(line)
    }
}

/// Applies `sets` (each `path=value`) to the recipe text.
///
/// # Errors
/// A malformed override, a path through a scalar, or a block value that
/// cannot be replaced in place.
pub(crate) fn apply(text: &str, sets: &[String]) -> Result<(String, Insertions), String> {
    let mut text = text.to_string();
    let mut inserted = Insertions::default();
    for set in sets {
        let (path, value) = set
            .split_once('=')
            .ok_or_else(|| format!("--set {set}: expected path=value"))?;
        let segments: Vec<&str> = path.split('.').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("--set {set}: empty path segment"));
        }
        let root: Spanned<Node> = serde_saphyr::from_str(&text)
            .map_err(|e| format!("--set {set}: the recipe does not parse: {e}"))?;
        match locate(&text, &root, &segments, set)? {
            Found::Value(start, end) => {
                let line = text[..start].matches('\n').count() as u32 + 1;
                text.replace_range(start..end, value);
                inserted.1.push((line, set.clone()));
            }
            Found::Missing {
                line_start,
                indent,
                line,
                rest,
            } => {
                let mut block = String::new();
                for (depth, seg) in rest.iter().enumerate() {
                    let pad = " ".repeat(indent + 2 * depth);
                    if depth + 1 == rest.len() {
                        block.push_str(&format!("{pad}{seg}: {value}\n"));
                    } else {
                        block.push_str(&format!("{pad}{seg}:\n"));
                    }
                }
                text.insert_str(line_start, &block);
                let n = rest.len() as u32;
                for (replaced, _) in &mut inserted.1 {
                    if *replaced >= line {
                        *replaced += n;
                    }
                }
                inserted.0.push((line, n, set.clone()));
            }
        }
    }
    Ok((text, inserted))
}

enum Found<'a> {
    /// Byte range of the value's text.
    Value(usize, usize),
    /// Insert `rest` as a block at `line_start` (byte) = line `line`, `indent` spaces.
    Missing {
        line_start: usize,
        indent: usize,
        line: u32,
        rest: Vec<&'a str>,
    },
}

fn locate<'a>(
    text: &str,
    root: &Spanned<Node>,
    segments: &[&'a str],
    set: &str,
) -> Result<Found<'a>, String> {
    let mut node = root;
    for (depth, seg) in segments.iter().enumerate() {
        match &node.value {
            Node::Map(entries) => match entries.iter().find(|(k, _)| k.value == *seg) {
                Some((_, v)) => node = v,
                None => {
                    let Some((first_key, _)) = entries.first() else {
                        return Err(format!(
                            "--set {set}: `{seg}` cannot be added to an empty mapping"
                        ));
                    };
                    let loc = first_key.referenced;
                    let offset = byte_offset(&loc, set)?;
                    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
                    if text[line_start..offset].trim_start().starts_with('{')
                        || text[line_start..offset].contains('{')
                    {
                        return Err(format!(
                            "--set {set}: cannot add keys to a {{flow}} mapping"
                        ));
                    }
                    let indent = offset - line_start;
                    // A key after "- " shares the list item's line: insert on the next line instead.
                    let (line_start, line) = if text[line_start..offset].trim().is_empty() {
                        (line_start, loc.line() as u32)
                    } else {
                        let next = text[offset..]
                            .find('\n')
                            .map_or(text.len(), |i| offset + i + 1);
                        (next, loc.line() as u32 + 1)
                    };
                    return Ok(Found::Missing {
                        line_start,
                        indent,
                        line,
                        rest: segments[depth..].to_vec(),
                    });
                }
            },
            Node::Seq(items) => {
                let i: usize = seg
                    .parse()
                    .map_err(|_| format!("--set {set}: `{seg}` indexes a list: use a number"))?;
                node = items.get(i).ok_or_else(|| {
                    format!(
                        "--set {set}: index {i} is past the list's {} items",
                        items.len()
                    )
                })?;
            }
            Node::Scalar => {
                return Err(format!(
                    "--set {set}: `{}` is a value, not a mapping",
                    segments[..depth].join(".")
                ));
            }
        }
    }
    let start = byte_offset(&node.referenced, set)?;
    let end = match &node.value {
        Node::Scalar => start + node.referenced.span().byte_len().unwrap_or(0) as usize,
        Node::Seq(_) if text[start..].starts_with('[') => {
            start
                + text[start..]
                    .find(']')
                    .ok_or_else(|| format!("--set {set}: unclosed list"))?
                + 1
        }
        _ => {
            return Err(format!(
                "--set {set}: only a single value or a [flow, list] can be replaced; edit the recipe for blocks"
            ));
        }
    };
    Ok(Found::Value(start, end))
}

fn byte_offset(loc: &serde_saphyr::Location, set: &str) -> Result<usize, String> {
    loc.span()
        .byte_offset()
        .map(|o| o as usize)
        .ok_or_else(|| format!("--set {set}: no source position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
task: pretrain   # comment kept
seed: 0
data:
  manifest: a.json
views:
  - name: local
    role: local
    count: 8
    pipeline:
      - name: RandomResizedCrop3d
        in_slice_scale: [0.16, 0.48]
batch:
  size: 2
";

    fn set(s: &[&str]) -> (String, Insertions) {
        apply(TEXT, &s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn scalars_and_flow_lists_are_replaced_in_place() {
        let (t, ins) = set(&[
            "seed=7",
            "views.0.count=4",
            "views.0.pipeline.0.in_slice_scale=[0.2, 0.3]",
        ]);
        assert!(t.contains("seed: 7\n"));
        assert!(t.contains("    count: 4\n"));
        assert!(t.contains("in_slice_scale: [0.2, 0.3]\n"));
        assert!(t.contains("task: pretrain   # comment kept"));
        assert_eq!(t.lines().count(), TEXT.lines().count());
        assert!(ins.0.is_empty());
        let seed_line = t.lines().position(|l| l.starts_with("seed")).unwrap() as u32 + 1;
        assert_eq!(ins.replaced_by(seed_line), Some("seed=7"));
        assert_eq!(ins.replaced_by(seed_line + 1), None);
        // A replaced line moves with lines inserted above it.
        let (t, ins) = set(&["batch.size=3", "batch.threads=1"]);
        let size_line = t.lines().position(|l| l.contains("size: 3")).unwrap() as u32 + 1;
        assert_eq!(ins.replaced_by(size_line), Some("batch.size=3"));
    }

    #[test]
    fn missing_keys_are_inserted_and_lines_map_back() {
        let (t, ins) = set(&["batch.threads=1", "cache.dir=/tmp/c"]);
        assert!(t.contains("batch:\n  threads: 1\n  size: 2\n"), "{t}");
        assert!(t.contains("cache:\n  dir: /tmp/c\ntask: pretrain"), "{t}");
        // cache went in at line 1 (2 lines), threads at line 13 of the text then.
        assert_eq!(ins.original(1), Err("cache.dir=/tmp/c"));
        assert_eq!(ins.original(3), Ok(1));
        let threads_line = t.lines().position(|l| l.contains("threads")).unwrap() as u32 + 1;
        assert_eq!(ins.original(threads_line), Err("batch.threads=1"));
        let size_line = t.lines().position(|l| l.contains("size: 2")).unwrap() as u32 + 1;
        assert_eq!(ins.original(size_line), Ok(13));
        // A key inside a list item.
        let (t, _) = set(&["views.0.pipeline.0.size=32"]);
        assert!(
            t.contains("      - name: RandomResizedCrop3d\n        size: 32\n"),
            "{t}"
        );
    }

    #[test]
    fn bad_overrides_say_why() {
        let bad = |s: &str| apply(TEXT, &[s.to_string()]).unwrap_err();
        assert!(bad("seed").contains("path=value"));
        assert!(bad("seed.x=1").contains("is a value"));
        assert!(bad("views.x.count=1").contains("use a number"));
        assert!(bad("views.3.count=1").contains("past the list"));
        assert!(bad("views=[]").contains("only a single value"));
    }
}
