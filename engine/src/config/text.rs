//! A config's text before it is parsed: read with a bound on its size, environment
//! variables expanded, and weighed with every YAML alias expanded (without expanding any).

use super::{ConfigError, error};

/// The most bytes a config may hold (before and after expanding variables): far more than
/// thousands of databases need, and a bound on the memory reading one takes.
pub(super) const MAX_CONFIG_BYTES: usize = 4 << 20;

/// The most a config may stand for once every alias is expanded, counting each node as
/// [`NODE_WEIGHT`] bytes plus the bytes of its text. Aliases are copied where they are
/// used, so a few lines that alias aliases (a "billion laughs"), or one long string aliased
/// many times, would otherwise expand to gigabytes.
pub(super) const MAX_CONFIG_EXPANDED: u64 = 64 << 20;

/// What one node costs once loaded, besides its text.
pub(super) const NODE_WEIGHT: u64 = 64;

/// Reads a config file, refusing one larger than [`MAX_CONFIG_BYTES`] without reading it all.
pub(super) fn read_config(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| error(&name, e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| error(&name, e.to_string()))?;
    if text.len() > MAX_CONFIG_BYTES {
        return Err(error(
            &name,
            format!("larger than {MAX_CONFIG_BYTES} bytes: not a config file"),
        ));
    }
    Ok(text)
}

/// Weighs what the YAML text stands for with every alias expanded, without expanding any,
/// and refuses more than [`MAX_CONFIG_EXPANDED`].
pub(super) fn check_expansion(text: &str) -> Result<(), ConfigError> {
    use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
    use yaml_rust2::scanner::Marker;

    /// Weights per open collection and per anchor, and in all.
    #[derive(Default)]
    struct Weight {
        /// Open collections: (anchor, weight so far).
        open: Vec<(usize, u64)>,
        /// What each anchor weighs.
        anchors: std::collections::HashMap<usize, u64>,
        /// Everything so far, aliases expanded.
        all: u64,
    }
    impl Weight {
        /// `w` more in the innermost open collection.
        fn add(&mut self, w: u64) {
            self.all = self.all.saturating_add(w);
            if let Some((_, weight)) = self.open.last_mut() {
                *weight = weight.saturating_add(w);
            }
        }
    }
    impl MarkedEventReceiver for Weight {
        fn on_event(&mut self, event: Event, _: Marker) {
            if self.all > MAX_CONFIG_EXPANDED {
                return;
            }
            match event {
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    self.all = self.all.saturating_add(NODE_WEIGHT);
                    self.open.push((anchor, NODE_WEIGHT));
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    if let Some((anchor, w)) = self.open.pop() {
                        if anchor > 0 {
                            self.anchors.insert(anchor, w);
                        }
                        // Counted in `all` as it came; now part of the enclosing one.
                        if let Some((_, weight)) = self.open.last_mut() {
                            *weight = weight.saturating_add(w);
                        }
                    }
                }
                Event::Scalar(value, _, anchor, _) => {
                    let w = NODE_WEIGHT + value.len() as u64;
                    if anchor > 0 {
                        self.anchors.insert(anchor, w);
                    }
                    self.add(w);
                }
                Event::Alias(anchor) => {
                    let w = self.anchors.get(&anchor).copied().unwrap_or(NODE_WEIGHT);
                    self.add(w);
                }
                _ => {}
            }
        }
    }
    let mut weight = Weight::default();
    Parser::new_from_str(text)
        .load(&mut weight, true)
        .map_err(|e| error("(file)", e.to_string()))?;
    if weight.all > MAX_CONFIG_EXPANDED {
        return Err(error(
            "(file)",
            format!(
                "the YAML stands for more than {} MiB once its aliases are resolved (aliases are copied where they are used): refused",
                MAX_CONFIG_EXPANDED >> 20
            ),
        ));
    }
    Ok(())
}

/// `$VAR` and `${VAR}` replaced by the variable's value. An unset variable becomes empty,
/// as in Litestream, with a warning naming it.
pub(super) fn expand_env(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) => (&body[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        match std::env::var(name) {
            Ok(value) => out.push_str(&value),
            Err(_) => tracing::warn!(
                variable = name,
                "the config names an unset environment variable; it expands to nothing (-no-expand-env turns expansion off)"
            ),
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}
