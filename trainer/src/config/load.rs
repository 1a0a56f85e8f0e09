//! Loading a config: TOML text, dotted overrides from the command line, and the typed parse
//! that names the full key of any unknown key, wrong type or missing field.

use super::{Config, DataFiles, DitConfig, GptConfig, ModelConfig};
use crate::{Error, Result};
use std::path::Path;

impl Config {
    /// Read `path`, apply `overrides` (`a.b=v`), parse and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::Other(format!("{}: not valid TOML: {e}", path.display())))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        Self::from_table(table)
    }

    /// Parse a TOML string (no overrides) and validate.
    pub fn from_toml(text: &str) -> Result<Config> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Other(format!("not valid TOML: {e}")))?;
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Config> {
        // `[model]` and `[data]` are chosen by their `kind`, and serde reads such a section
        // through a buffer that loses the key path: parse their bodies on their own first,
        // so that a value of the wrong type is named by its key (`model.width`).
        let body = |section: &str| {
            let t = table.get(section)?.as_table()?.clone();
            let kind = t.get("kind")?.as_str()?.to_string();
            Some((kind, t))
        };
        match body("model") {
            Some((k, t)) if k == "dit" => typed::<DitConfig>("model", t)?,
            Some((k, t)) if k == "gpt" => typed::<GptConfig>("model", t)?,
            _ => {}
        }
        if let Some((k, t)) = body("data") {
            if k == "latents" || k == "tokens" {
                typed::<DataFiles>("data", t)?;
            }
        }
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| key_error(None, e))?;
        let mut cfg = cfg;
        cfg.validate()?;
        if cfg.mup.enabled {
            let mup = cfg.mup.clone();
            match &mut cfg.model {
                ModelConfig::Dit(m) => m.attn_base_hd = Some(mup.base_hd(m.heads)),
                ModelConfig::Gpt(m) => m.attn_base_hd = Some(mup.base_hd(m.heads)),
            }
        }
        Ok(cfg)
    }
}

/// A typed-parse error as a config error naming the full key (`section.key`).
fn key_error(section: Option<&str>, e: serde_path_to_error::Error<toml::de::Error>) -> Error {
    let path = e.path().to_string();
    let key = match (section, path.as_str()) {
        (None, ".") => "(top level)".to_string(),
        (Some(s), ".") => s.to_string(),
        (Some(s), p) => format!("{s}.{p}"),
        (None, p) => p.to_string(),
    };
    let msg = e.inner().to_string();
    Error::config(key, msg.lines().next().unwrap_or_default())
}

/// Parse the body of the tagged section `section` (its `kind` removed) as `T`.
fn typed<T: serde::de::DeserializeOwned>(section: &str, mut body: toml::Table) -> Result<()> {
    body.remove("kind");
    serde_path_to_error::deserialize::<_, T>(toml::Value::Table(body))
        .map(drop)
        .map_err(|e| key_error(Some(section), e))
}

/// Apply one `a.b.c=value` override; `value` is read as a TOML value (number, bool, array,
/// quoted string) and otherwise taken as a bare string.
pub fn apply_override(table: &mut toml::Table, o: &str) -> Result<()> {
    let Some((key, raw)) = o.split_once('=') else {
        return Err(Error::config(o, "override must look like `section.key=value`"));
    };
    let key = key.trim().trim_start_matches("--");
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("split yields one part");
    let mut cur = table;
    for p in path {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| Error::config(key, format!("`{p}` is not a section")))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}
