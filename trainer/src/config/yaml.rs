//! Reading config YAML safely. Three bounds, each cheap and each enough on its own for what it
//! covers: the text has a size cap (the YAML library reads every event of a document into
//! memory before it builds anything, so the input's size bounds that memory); anchors and
//! aliases are refused with a line number where a scan of the text finds them (no config needs
//! them, and a few kilobytes of nested aliases expand into gigabytes, an "alias bomb"); and the
//! tree is built under a budget of nodes and scalar bytes, with each use of an alias counted
//! again, so whatever form of alias gets past the scan still cannot expand without bound. Then
//! non-finite numbers are refused, naming their key, before the tree becomes JSON.

use std::cell::Cell;
use std::fmt;

use serde::de::VariantAccess;
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_norway::value::{Tag, TaggedValue};
use serde_norway::{Mapping, Value};

use super::{validate, ConfigError};

/// The longest config text accepted, in bytes: a full config with every key and comment is a
/// few kilobytes.
pub const MAX_YAML_BYTES: usize = 256 << 10;
/// The most nodes (scalars, sequences, mappings; an alias counted at each use) a config may
/// expand to: the full schema has a few hundred.
const MAX_NODES: usize = 100_000;
/// The most bytes of scalar text a config may expand to.
const MAX_SCALAR_BYTES: usize = 4 << 20;

/// Parses config YAML into a JSON tree (see the module doc for the bounds). `.inf` and `.nan`
/// are refused, naming their key, while the tree is still YAML: JSON has no such numbers, so
/// the conversion would turn them into `null`, which reads as "not set" and would quietly give
/// the key its default.
pub(crate) fn parse_yaml(text: &str) -> Result<serde_json::Value, ConfigError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(ConfigError::Yaml(format!(
            "the config is {} bytes; at most {MAX_YAML_BYTES} are accepted",
            text.len()
        )));
    }
    if let Some(line) = anchor_or_alias_line(text) {
        return Err(ConfigError::Yaml(format!(
            "line {line}: YAML anchors and aliases (`&name`, `*name`) are not accepted in configs"
        )));
    }
    let tree = budgeted_tree(text)?;
    if let Some((path, x)) = validate::first_non_finite(&tree, String::new()) {
        // The key names the field (`TRAIN.OPTIMIZER.BETAS`); a list item's index goes into
        // the message.
        let key = path.split('[').next().unwrap_or(&path);
        let at = &path[key.len()..];
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" (item {at})")
        };
        return Err(ConfigError::invalid(
            key,
            format!("must be a finite number, got {x}{at}"),
        ));
    }
    serde_norway::from_value(tree).map_err(|e| ConfigError::Yaml(e.to_string()))
}

/// The YAML tree of `text`, built node by node under the budget. The YAML library expands an
/// alias by replaying its anchor's events as the tree is built, so counting here counts the
/// expanded tree, and stopping here stops the expansion.
fn budgeted_tree(text: &str) -> Result<Value, ConfigError> {
    let budget = Budget::default();
    let de = serde_norway::Deserializer::from_str(text);
    let tree = Node(&budget).deserialize(de);
    if budget.spent() {
        return Err(ConfigError::Yaml(format!(
            "the config expands to more than {MAX_NODES} values or {MAX_SCALAR_BYTES} bytes of \
             text (aliases count at each use)"
        )));
    }
    tree.map_err(|e| ConfigError::Yaml(e.to_string()))
}

/// What is left of the expansion budget.
struct Budget {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
    spent: Cell<bool>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            nodes: Cell::new(MAX_NODES),
            bytes: Cell::new(MAX_SCALAR_BYTES),
            spent: Cell::new(false),
        }
    }
}

impl Budget {
    /// Takes one node of `bytes` bytes of text from the budget, or fails once it runs out.
    fn take<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match (
            self.nodes.get().checked_sub(1),
            self.bytes.get().checked_sub(bytes),
        ) {
            (Some(n), Some(b)) => {
                self.nodes.set(n);
                self.bytes.set(b);
                Ok(())
            }
            _ => {
                self.spent.set(true);
                Err(E::custom("expansion budget spent"))
            }
        }
    }

    fn spent(&self) -> bool {
        self.spent.get()
    }
}

/// Builds one node of the tree (as `serde_norway::Value`'s own deserialisation does), taking
/// it from the budget first.
#[derive(Clone, Copy)]
struct Node<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(i.into()))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(u.into()))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Number(f.into()))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.take(s.len())?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.take(s.len())?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take(0)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Sequence(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take(0)?;
        let mut mapping = Mapping::new();
        while let Some(key) = map.next_key_seed(self)? {
            if mapping.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate entry with key {}",
                    serde_json::to_string(&key).unwrap_or_default()
                )));
            }
            let value = map.next_value_seed(self)?;
            mapping.insert(key, value);
        }
        Ok(Value::Mapping(mapping))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        // A tagged node (`!tag value`).
        self.0.take(0)?;
        let (tag, contents): (String, _) = data.variant()?;
        if tag.is_empty() {
            return Err(de::Error::custom("empty YAML tag is not allowed"));
        }
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

/// The first line (1-based) where a node starts with `&` or `*`, outside quotes and comments:
/// in YAML those characters there can only be an anchor or an alias (a plain scalar cannot
/// begin with them). A node starts a line, follows `- `, `? ` or `: `, an opening bracket or a
/// comma, a tag (`!!seq &a [...]`), or, inside brackets, a bare `:` (`{"k":*a}`, a JSON-style
/// key). A form this misses meets the expansion budget instead.
fn anchor_or_alias_line(text: &str) -> Option<usize> {
    // Brackets open across lines (a flow collection may span several).
    let mut flow_depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut quote: Option<char> = None;
        let mut in_tag = false;
        let mut node_start = true;
        for (i, &c) in chars.iter().enumerate() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                continue;
            }
            if in_tag {
                // A tag runs to the next space; the node it tags starts after it.
                in_tag = !c.is_whitespace();
                node_start = true;
                continue;
            }
            let spaced = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
            match c {
                c if c.is_whitespace() => continue,
                '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                '&' | '*' if node_start => return Some(n + 1),
                '\'' | '"' if node_start => quote = Some(c),
                '!' if node_start => {
                    in_tag = true;
                    continue;
                }
                '[' | '{' => {
                    flow_depth += 1;
                    node_start = true;
                    continue;
                }
                ']' | '}' => flow_depth = flow_depth.saturating_sub(1),
                ',' => {
                    node_start = true;
                    continue;
                }
                ':' if spaced || flow_depth > 0 => {
                    node_start = true;
                    continue;
                }
                '-' | '?' if spaced => {
                    node_start = true;
                    continue;
                }
                _ => {}
            }
            node_start = false;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget bounds what aliases expand to, whatever the scan finds. A flat alias bomb
    /// given straight to the tree builder (one anchor of 2,000 values used 100 times: 100 alias
    /// jumps, well inside the YAML library's own repetition limit of 100 per event) stops at
    /// the budget; a config-sized tree is built as `serde_norway` builds it.
    #[test]
    fn the_tree_is_built_under_an_expansion_budget() {
        let bomb = format!(
            "a: &a [{}]\nb: [{}]\n",
            vec!["1"; 2000].join(", "),
            vec!["*a"; 100].join(", ")
        );
        let e = budgeted_tree(&bomb).expect_err("alias bomb");
        assert!(e.to_string().contains("expands to more than"), "{e}");
        // Long text through an alias counts its bytes at each use.
        let text = format!(
            "a: &a '{}'\nb: [{}]\n",
            "y".repeat(100_000),
            vec!["*a"; 50].join(", ")
        );
        let e = budgeted_tree(&text).expect_err("5 MB of text");
        assert!(e.to_string().contains("bytes of text"), "{e}");

        let yaml = "A: 1\nB: [1.5, -2, x, null, true]\nC: {D: !t 3, E: ''}\n";
        let want: Value = serde_norway::from_str(yaml).expect("reference");
        assert_eq!(budgeted_tree(yaml).expect("small tree"), want);
        let e = budgeted_tree("A: 1\nA: 2\n").expect_err("duplicate key");
        assert!(
            e.to_string().contains("duplicate entry with key \"A\""),
            "{e}"
        );
    }
}
