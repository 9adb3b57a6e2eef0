//! Reading config YAML safely: anchors and aliases are refused before parsing (an "alias bomb"
//! expands a few kilobytes into gigabytes), and non-finite numbers are refused, naming their
//! key, before the tree becomes JSON.

use super::{validate, ConfigError};

/// Parses config YAML into a JSON tree. Anchors and aliases are refused first: a few kilobytes
/// of nested aliases expand into gigabytes (an "alias bomb"), and no config needs them. Then
/// `.inf` and `.nan` are refused, naming their key, while the tree is still YAML: JSON has no
/// such numbers, so the conversion would turn them into `null`, which reads as "not set" and
/// would quietly give the key its default.
pub(crate) fn parse_yaml(text: &str) -> Result<serde_json::Value, ConfigError> {
    if let Some(line) = anchor_or_alias_line(text) {
        return Err(ConfigError::Yaml(format!(
            "line {line}: YAML anchors and aliases (`&name`, `*name`) are not accepted in configs"
        )));
    }
    let tree: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
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

/// The first line (1-based) where a node starts with `&` or `*`, outside quotes and comments:
/// in YAML those characters there can only be an anchor or an alias (a plain scalar cannot
/// begin with them).
fn anchor_or_alias_line(text: &str) -> Option<usize> {
    for (n, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut quote: Option<char> = None;
        let mut node_start = true;
        for (i, &c) in chars.iter().enumerate() {
            if let Some(q) = quote {
                if c == q {
                    quote = None;
                }
                continue;
            }
            let spaced = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
            match c {
                c if c.is_whitespace() => continue,
                '#' if i == 0 || chars[i - 1].is_whitespace() => break,
                '&' | '*' if node_start => return Some(n + 1),
                '\'' | '"' if node_start => quote = Some(c),
                '[' | '{' | ',' => {
                    node_start = true;
                    continue;
                }
                ':' | '-' | '?' if spaced => {
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
