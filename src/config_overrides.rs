//! `kiln serve --set KEY=VALUE`: settings given on the command line, over the
//! config file's.
//!
//! Upstream's server.toml is shared by every server of a farm (a Kubernetes
//! ConfigMap, a package's /etc file), but a few settings belong to one process:
//! `public_addr` is the pod's IP, known only when it starts. `--set` lets the
//! file stay upstream's, unchanged, and the launcher add those
//! (`--set public_addr=$(POD_IP):10501`). Keys are the file's dotted paths
//! (`kiln.metrics_listen`); a value is read as TOML (`false`, `8`, `"text"`) and
//! otherwise taken as a string. The result is validated like a file, so an
//! unknown key or a bad value is the same error.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// One `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("--set {0:?}: expected KEY=VALUE (e.g. kiln.builders=8)")]
    Syntax(String),
    #[error("--set {key}: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("cannot read config file {path:?}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config with --set applied{}", path_note(.path))]
    Parse {
        path: Option<std::path::PathBuf>,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

fn path_note(path: &Option<std::path::PathBuf>) -> String {
    path.as_ref().map(|p| format!(" (file {p:?})")).unwrap_or_default()
}

impl std::str::FromStr for Override {
    type Err = OverrideError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let (key, raw) = arg.split_once('=').ok_or_else(|| OverrideError::Syntax(arg.to_owned()))?;
        let key = key.trim();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(OverrideError::Syntax(arg.to_owned()));
        }
        // A TOML value if it is one (`false`, `8`, `"a"`), else the text itself.
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut table| table.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        Ok(Override { key: key.to_owned(), value })
    }
}

/// Reads `path` (or nothing: the defaults), applies `overrides` in order and
/// validates the result.
pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<Config, OverrideError> {
    if overrides.is_empty() {
        return Ok(match path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        });
    }
    let mut table = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| OverrideError::Read { path: path.to_owned(), source })?;
            toml::from_str::<toml::Table>(&text)
                .map_err(|source| OverrideError::Parse { path: Some(path.to_owned()), source })?
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        set(&mut table, o)?;
    }
    let parse_error = |source| OverrideError::Parse { path: path.map(Path::to_owned), source };
    let config: Config = toml::Value::Table(table).try_into().map_err(parse_error)?;
    config.validate()?;
    Ok(config)
}

fn set(table: &mut toml::Table, o: &Override) -> Result<(), OverrideError> {
    let mut parts: Vec<&str> = o.key.split('.').collect();
    let last = parts.pop().expect("a key has at least one part");
    let mut current = table;
    for part in parts {
        let entry = current.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or(OverrideError::Key { key: o.key.clone(), reason: "a part of this key is a value, not a table" })?;
    }
    current.insert(last.to_owned(), o.value.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arg: &str) -> Override {
        arg.parse().unwrap()
    }

    #[test]
    fn values_are_toml_when_they_parse_and_text_otherwise() {
        assert_eq!(parse("kiln.sandbox.require_cgroups=false").value, toml::Value::Boolean(false));
        assert_eq!(parse("kiln.builders=8").value, toml::Value::Integer(8));
        assert_eq!(parse("public_addr=10.1.2.3:10501").value, toml::Value::String("10.1.2.3:10501".into()));
        assert!("no_equals".parse::<Override>().is_err());
        assert!("kiln..builders=1".parse::<Override>().is_err());
    }

    #[test]
    fn overrides_win_over_the_file_which_stays_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "public_addr = \"127.0.0.1:10501\"\ntoolchain_cache_size = 10737418240\n[kiln]\nbuilders = 2\n",
        )
        .unwrap();
        let sets = [parse("public_addr=10.1.2.3:10501"), parse("kiln.metrics_listen=0.0.0.0:10601")];
        let config = load(Some(&file), &sets).unwrap();
        assert_eq!(config.public_addr.to_string(), "10.1.2.3:10501");
        assert_eq!(config.kiln.metrics_listen.unwrap().to_string(), "0.0.0.0:10601");
        assert_eq!(config.kiln.builders, 2, "the file's other settings stay");
        // Checked like a file: unknown keys and invalid values are errors.
        let unknown = load(Some(&file), &[parse("kiln.no_such_key=1")]).unwrap_err();
        assert!(format!("{:?}", unknown).contains("no_such_key"), "{unknown:?}");
        let invalid = load(Some(&file), &[parse("public_addr=0.0.0.0:10501")]).unwrap_err();
        assert!(matches!(invalid, OverrideError::Invalid(_)), "{invalid:?}");
        let into_value = load(Some(&file), &[parse("kiln.builders.x=1")]).unwrap_err();
        assert!(matches!(into_value, OverrideError::Key { .. }), "{into_value:?}");
    }
}
